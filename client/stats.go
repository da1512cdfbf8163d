package client

// Stats are counters of a Client's work since Open, for monitoring and
// load tests.
type Stats struct {
	// Rebases counts the messages and Commits the client had to make
	// again because the group moved on under them (the server refused
	// them with WrongEpoch or StaleEpoch): each one is a lost race for an
	// epoch.
	Rebases int64
	// Streams counts the Subscribe streams the client opened: 1 plus the
	// reconnects.
	Streams int64
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{Rebases: c.rebases.Load(), Streams: c.streams.Load()}
}
