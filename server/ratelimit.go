package server

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ipLimiter limits the unauthenticated calls (registration, challenges,
// authentication) per remote address, so that nobody can make the server
// verify signatures or mint challenges as fast as the network allows.
// Calls that act for a client are limited per client by ds.
type ipLimiter struct {
	limit rate.Limit
	burst int
	max   int

	mu      sync.Mutex
	entries map[netip.Addr]*ipEntry
}

type ipEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

func newIPLimiter(perSecond float64, burst, max int) *ipLimiter {
	if perSecond < 0 {
		return nil
	}
	return &ipLimiter{limit: rate.Limit(perSecond), burst: burst, max: max, entries: make(map[netip.Addr]*ipEntry)}
}

// reserve charges one call to the address of peer ("host:port") and
// returns how long the caller must wait if it is over the limit.
func (l *ipLimiter) reserve(now time.Time, peer string) time.Duration {
	if l == nil {
		return 0
	}
	if l.entry(now, peerAddr(peer)).AllowN(now, 1) {
		return 0 // the usual case, without a Reservation to allocate
	}
	d, _ := l.take(now, peer)
	return d
}

// entry returns the limiter of addr, creating it if needed.
func (l *ipLimiter) entry(now time.Time, addr netip.Addr) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[addr]
	if e == nil {
		if len(l.entries) >= l.max {
			l.evict(now)
		}
		e = &ipEntry{lim: rate.NewLimiter(l.limit, l.burst)}
		l.entries[addr] = e
	}
	e.seen = now
	return e.lim
}

// evict forgets the addresses that were idle long enough for their bucket
// to refill, or the older half if none was. Forgetting an address can only
// make the limit more lenient for it.
func (l *ipLimiter) evict(now time.Time) {
	full := time.Duration(float64(l.burst) / float64(l.limit) * float64(time.Second))
	for a, e := range l.entries {
		if now.Sub(e.seen) > full {
			delete(l.entries, a)
		}
	}
	if len(l.entries) < l.max {
		return
	}
	n := 0
	for a := range l.entries { // map order is random enough here
		delete(l.entries, a)
		if n++; n >= l.max/2 {
			break
		}
	}
}

// peerAddr extracts the IP of a "host:port" peer address. IPv6 addresses
// are limited per /64, since one host usually holds a whole /64.
func peerAddr(peer string) netip.Addr {
	host, _, err := net.SplitHostPort(peer)
	if err != nil {
		host = peer
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		a = p.Addr()
	}
	return a
}

// newRegistrationLimiter returns the limiter of new registrations per
// address (Config.RegistrationsPerHour), or nil when it is off.
func newRegistrationLimiter(cfg Config) *ipLimiter {
	if cfg.RegistrationsPerHour < 0 || cfg.AuthRatePerSecond < 0 || cfg.Registration == RegistrationJWT {
		return nil
	}
	return newIPLimiter(cfg.RegistrationsPerHour/3600, cfg.RegistrationBurst, 100_000)
}

// take charges one event to the address of peer ("host:port"). Over the
// limit it returns how long the caller must wait, and a nil refund;
// otherwise refund gives the event back (for one that did not happen
// after all).
func (l *ipLimiter) take(now time.Time, peer string) (d time.Duration, refund func()) {
	if l == nil {
		return 0, func() {}
	}
	r := l.entry(now, peerAddr(peer)).ReserveN(now, 1)
	if !r.OK() {
		return time.Minute, nil
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, nil
	}
	return 0, func() { r.CancelAt(now) }
}
