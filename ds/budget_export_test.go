package ds

// BufferedForTest returns the largest figures the byte budgets of s have
// held since the last call: per subscription, per client, in all.
func BufferedForTest(s *Service) (sub, client, total int64) {
	b := s.fan.buf
	b.mu.Lock()
	defer b.mu.Unlock()
	sub, client, total = b.peakSub, b.peakClient, b.peakTotal
	b.peakSub, b.peakClient, b.peakTotal = 0, 0, 0
	return
}
