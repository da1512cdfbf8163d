package ds

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Quotas bound what one client may make the Delivery Service store, so
// that no account can fill the disk:
//
//   - the bytes of its unclaimed KeyPackages (Config.MaxKeyPackageBytes),
//     checked by the store in the transaction that adds them, so it holds
//     exactly on every node; it frees up as KeyPackages are claimed or
//     deleted;
//   - the groups it creates per UTC day (Config.MaxGroupsPerDay), charged
//     by the store atomically with a check against the limit, so it holds
//     exactly on every node;
//   - the bytes it submits per UTC day (Config.MaxBytesPerDay): messages,
//     Welcomes, GroupInfos, ratchet trees and remote trees;
//   - the clients of one user (Config.MaxClientsPerUser), checked in the
//     registration's transaction.
//
// The daily byte quota is on the hot path of every message, so it costs
// no store write per message: each node adds up what its clients had
// accepted in memory (dailyMeter) and writes the sums to the store every
// Config.QuotaFlushInterval, one row per client and day; it refuses a
// submission when the store's total (as last read, at most one interval
// old) plus what the node holds unwritten plus the submission exceeds the
// quota. Two kinds of slack follow, both bounded by the interval:
//
//   - over-admission across nodes: a node does not see what other nodes
//     accepted for the same client in the last interval or two, so with N
//     nodes a client can exceed its quota by what N-1 nodes accept from it
//     in about two intervals (at most what its request rate limit lets
//     through; on one node there is none);
//   - under-counting after a crash: what a node accepted since its last
//     write (one interval) is lost. A graceful stop writes it
//     (Service.FlushQuotas).
//
// Days are UTC days; a daily quota refused today frees up at the next UTC
// midnight, which RetryAfter says.

// What each quota counts, as QuotaExceededError.What and TooLargeError.What
// say it.
const (
	QuotaKeyPackageBytes = "stored key package bytes"
	QuotaBytesPerDay     = "bytes accepted per day"
	QuotaGroupsPerDay    = "groups created per day"
	QuotaClientsPerUser  = "clients per user"
	// LimitKeyPackageSize is the TooLargeError.What of a KeyPackage over
	// Config.MaxKeyPackageSize.
	LimitKeyPackageSize = "key package bytes"
)

// QuotaExceededError refuses a request that would take a client (or its
// user) over a quota. A daily quota sets RetryAfter, the time until it
// frees up (the next UTC midnight); a stock quota (KeyPackage bytes,
// clients per user) frees up only when the caller gives something back,
// and leaves RetryAfter zero.
type QuotaExceededError struct {
	What       string // QuotaKeyPackageBytes, QuotaBytesPerDay, ...
	Limit      int64  // the quota, in the unit of What
	RetryAfter time.Duration
}

func (e *QuotaExceededError) Error() string {
	if e.RetryAfter > 0 {
		return fmt.Sprintf("ds: quota of %d %s used up; it frees up in %s", e.Limit, e.What, e.RetryAfter.Round(time.Second))
	}
	return fmt.Sprintf("ds: quota of %d %s used up; free some before adding more", e.Limit, e.What)
}

// KeyPackageLimits bound the unclaimed KeyPackages of one client.
type KeyPackageLimits struct {
	Count int   // KeyPackages; a *TooLargeError beyond it
	Bytes int64 // sum of their Data; a *QuotaExceededError beyond it; 0: no bound
}

// DailyUsage is what one client used of its daily quotas on one UTC day,
// or (as an argument to the store) an amount to add to it.
type DailyUsage struct {
	ClientID string
	Day      int64 // days since 1970-01-01 UTC (see UsageDay)
	Groups   int64 // groups created
	Bytes    int64 // bytes accepted
}

// UsageDay returns the UTC day of t, as DailyUsage.Day counts it.
func UsageDay(t time.Time) int64 {
	return t.UTC().Unix() / 86400
}

// untilNextDay returns how long it is from t to the next UTC midnight.
func untilNextDay(t time.Time) time.Duration {
	next := time.Unix((UsageDay(t)+1)*86400, 0)
	return next.Sub(t)
}

// QuotaStats are the counters of this node's daily byte accounting, for
// metrics.
type QuotaStats struct {
	BytesAccepted int64 // bytes charged to clients' daily quotas on this node
	Flushes       int64 // writes of the sums to the store
	FlushErrors   int64 // failed writes (retried at the next interval)
}

// QuotaStats returns the counters of this node's daily byte accounting.
func (s *Service) QuotaStats() QuotaStats {
	m := s.meter
	return QuotaStats{BytesAccepted: m.accepted.Load(), Flushes: m.flushes.Load(), FlushErrors: m.flushErrs.Load()}
}

// FlushQuotas writes the bytes this node accepted and has not written yet
// to the store. A server calls it when it stops, so that a restart loses
// none of a day's usage.
func (s *Service) FlushQuotas(ctx context.Context) error {
	return s.meter.flush(ctx)
}

// usageKey names one client's counter of one day.
type usageKey struct {
	client string
	day    int64
}

// dailyMeter is the per-node accumulator of the daily byte quota (see
// above). Like the Ack coalescer it holds a goroutine only while it has
// something to write, so an idle Service needs no Close.
type dailyMeter struct {
	store Store
	limit int64 // bytes per day; <= 0: no quota
	every time.Duration
	now   func() time.Time

	mu       sync.Mutex
	seen     map[string]*storedUsage // the store's totals, as last read
	pending  map[usageKey]int64      // accepted here, not yet written
	inflight map[usageKey]int64      // reserved by submissions in progress
	running  bool                    // a flusher goroutine runs

	flushMu sync.Mutex // one flush at a time

	accepted, flushes, flushErrs atomic.Int64
}

type storedUsage struct {
	day    int64
	bytes  int64
	readAt time.Time
	gen    uint64 // bumped by every flush that wrote for the client
}

func newDailyMeter(store Store, cfg Config) *dailyMeter {
	return &dailyMeter{
		store: store, limit: cfg.MaxBytesPerDay, every: cfg.QuotaFlushInterval, now: cfg.Now,
		seen: make(map[string]*storedUsage), pending: make(map[usageKey]int64), inflight: make(map[usageKey]int64),
	}
}

// byteCharge is n bytes reserved for a submission of one client: keep
// them once the submission is accepted; release gives back what was not
// kept. Both are safe on a nil *byteCharge (no quota).
type byteCharge struct {
	m    *dailyMeter
	k    usageKey
	n    int64
	done bool
}

// reserve reserves n bytes of client's quota for today, or fails with a
// *QuotaExceededError if they would take it over the quota.
func (m *dailyMeter) reserve(ctx context.Context, client string, n int64) (*byteCharge, error) {
	if m.limit <= 0 || n <= 0 {
		return nil, nil
	}
	now := m.now()
	k := usageKey{client, UsageDay(now)}
	// Freshness goes by the real clock, days by the configured one.
	wall := time.Now()
	m.mu.Lock()
	su := m.seen[client]
	if su == nil || su.day != k.day || wall.Sub(su.readAt) >= m.every {
		// Refresh the store's total, outside the lock.
		var gen uint64
		if su != nil && su.day == k.day {
			gen = su.gen
		}
		m.mu.Unlock()
		u, err := m.store.DailyUsage(ctx, client, k.day)
		if err != nil {
			return nil, err
		}
		m.mu.Lock()
		su = m.seen[client]
		switch {
		case su == nil || su.day != k.day:
			su = &storedUsage{day: k.day, bytes: u.Bytes, readAt: wall}
			m.seen[client] = su
		case su.gen == gen:
			su.bytes, su.readAt = u.Bytes, wall
		default:
			// A flush wrote for the client while we read: the read may
			// miss it, the count we hold does not.
			su.readAt = wall
		}
	}
	used := su.bytes + m.pending[k] + m.inflight[k]
	if used+n > m.limit {
		m.mu.Unlock()
		return nil, &QuotaExceededError{What: QuotaBytesPerDay, Limit: m.limit, RetryAfter: untilNextDay(now)}
	}
	m.inflight[k] += n
	m.mu.Unlock()
	return &byteCharge{m: m, k: k, n: n}, nil
}

// keep charges the reserved bytes for good: the submission was accepted.
func (c *byteCharge) keep() {
	if c == nil || c.done {
		return
	}
	c.done = true
	m := c.m
	m.mu.Lock()
	m.dropInflight(c.k, c.n)
	m.pending[c.k] += c.n
	start := !m.running
	m.running = true
	m.mu.Unlock()
	m.accepted.Add(c.n)
	if start {
		go m.run()
	}
}

// release gives back the reserved bytes unless they were kept.
func (c *byteCharge) release() {
	if c == nil || c.done {
		return
	}
	c.done = true
	c.m.mu.Lock()
	c.m.dropInflight(c.k, c.n)
	c.m.mu.Unlock()
}

func (m *dailyMeter) dropInflight(k usageKey, n int64) {
	if m.inflight[k] -= n; m.inflight[k] <= 0 {
		delete(m.inflight, k)
	}
}

// maxFlushFailures is how many writes in a row may fail before the meter
// drops what it holds (the store is gone or closed): a quota may then
// admit that much more, rather than a goroutine retrying forever.
const maxFlushFailures = 30

// run writes the pending sums every interval until none is left.
func (m *dailyMeter) run() {
	failures := 0
	for {
		time.Sleep(m.every)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := m.flush(ctx); err != nil {
			failures++
		} else {
			failures = 0
		}
		cancel()
		m.mu.Lock()
		if failures >= maxFlushFailures {
			clear(m.pending)
		}
		if len(m.pending) == 0 {
			m.running = false
			m.mu.Unlock()
			return
		}
		m.mu.Unlock()
	}
}

// flush writes the pending sums to the store in one call; on failure they
// stay pending for the next one.
func (m *dailyMeter) flush(ctx context.Context) error {
	m.flushMu.Lock()
	defer m.flushMu.Unlock()
	m.mu.Lock()
	if len(m.pending) == 0 {
		m.mu.Unlock()
		return nil
	}
	batch := make([]DailyUsage, 0, len(m.pending))
	for k, n := range m.pending {
		batch = append(batch, DailyUsage{ClientID: k.client, Day: k.day, Bytes: n})
	}
	clear(m.pending)
	m.mu.Unlock()

	err := m.store.AddDailyUsage(ctx, batch)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.flushErrs.Add(1)
		for _, u := range batch {
			m.pending[usageKey{u.ClientID, u.Day}] += u.Bytes
		}
		return err
	}
	m.flushes.Add(1)
	for _, u := range batch {
		if su := m.seen[u.ClientID]; su != nil && su.day == u.Day {
			su.bytes += u.Bytes
			su.gen++
		}
	}
	// Forget the totals nobody asked for lately, so that the map holds
	// the active clients only.
	wall, today := time.Now(), UsageDay(m.now())
	for id, su := range m.seen {
		if wall.Sub(su.readAt) > 60*m.every || su.day != today {
			delete(m.seen, id)
		}
	}
	return nil
}

// chargeGroup charges the creation of one group (and its bytes) to
// creator's daily quotas, refusing with a *QuotaExceededError when either
// is used up. undo gives both back, for a creation that failed.
func (s *Service) chargeGroup(ctx context.Context, creator string, bytes int) (keep, undo func(), err error) {
	bc, err := s.meter.reserve(ctx, creator, int64(bytes))
	if err != nil {
		return nil, nil, err
	}
	if s.cfg.MaxGroupsPerDay <= 0 {
		return bc.keep, bc.release, nil
	}
	now := s.now()
	u := DailyUsage{ClientID: creator, Day: UsageDay(now), Groups: 1}
	if _, err := s.store.ChargeDailyUsage(ctx, u, DailyUsage{Groups: int64(s.cfg.MaxGroupsPerDay)}); err != nil {
		bc.release()
		if qe := (*QuotaExceededError)(nil); errors.As(err, &qe) {
			qe.RetryAfter = untilNextDay(now)
		}
		return nil, nil, err
	}
	undo = func() {
		bc.release()
		// Best effort: a failed refund leaves the creator one group
		// short for the day, never over its quota.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		u.Groups = -1
		_ = s.store.AddDailyUsage(ctx, []DailyUsage{u})
	}
	return bc.keep, undo, nil
}

// KeyPackageBytes returns the bytes kps count against
// Config.MaxKeyPackageBytes: the sum of their Data.
func KeyPackageBytes(kps []KeyPackageRecord) int64 {
	var n int64
	for _, kp := range kps {
		n += int64(len(kp.Data))
	}
	return n
}

// CheckDailyLimit returns a *QuotaExceededError (without RetryAfter) for
// the first of groups and bytes that is over its bound in limit (a bound
// of 0: none), or nil. Engines call it under the transaction of
// ChargeDailyUsage, so that all refuse alike.
func CheckDailyLimit(groups, bytes int64, limit DailyUsage) error {
	if limit.Groups > 0 && groups > limit.Groups {
		return &QuotaExceededError{What: QuotaGroupsPerDay, Limit: limit.Groups}
	}
	if limit.Bytes > 0 && bytes > limit.Bytes {
		return &QuotaExceededError{What: QuotaBytesPerDay, Limit: limit.Bytes}
	}
	return nil
}

// submittedBytes is what a submission counts against the daily byte
// quota: the message and what its bundle carries.
func submittedBytes(data []byte, b *CommitBundle) int64 {
	n := int64(len(data))
	if b != nil {
		n += int64(len(b.Welcome) + len(b.GroupInfo))
		if b.RemoteTree != nil {
			n += int64(len(b.RemoteTree.Blob))
		}
	}
	return n
}
