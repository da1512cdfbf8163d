package loadgen

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/client"
)

// bench is one run in progress.
type bench struct {
	cfg    Config
	url    string
	child  *childServer
	res    *Result
	logf   func(string, ...any)
	prefix string // client ids are prefix-gG-mM

	groups []*group
	sdks   []*client.Client
	cancel []context.CancelFunc // raw members' streams

	// Counters, updated by many goroutines.
	accepted, commits, deliveries, dups atomic.Int64
	proposals                           atomic.Int64
	errs, undecryptable                 atomic.Int64
	firstErr                            atomic.Pointer[string]

	latency, sendRTT, commitRTT, commitOp Histogram
	proposalRTT                           Histogram
	timing                                atomic.Bool // record RPC round trips
}

// group is one group of the run.
type group struct {
	idx     int
	id      []byte
	members []*member
	track   groupTrack
}

// member is one member of a group: an SDK client, or a raw member.
type member struct {
	g   *group
	idx int
	id  string
	sdk *client.Client
	grp *client.Group // the SDK client's group, once joined
	raw *rawMember

	joined  chan struct{} // closed once the member is in the group
	lastApp uint64        // highest GroupSeq delivered; owned by its receiver
}

func (b *bench) fail(err error) {
	if err == nil {
		return
	}
	b.errs.Add(1)
	s := err.Error()
	b.firstErr.CompareAndSwap(nil, &s)
}

// groupTrack matches deliveries with sends: the sender reports the
// GroupSeq of its message (from the receipt) and when it sent it; each
// receiver reports when it got the message. Either may come first.
type groupTrack struct {
	mu   sync.Mutex
	want int // receivers per message
	msgs map[uint64]*msgTrack
}

type msgTrack struct {
	start time.Time
	known bool
	early []time.Time
	got   int
}

func (t *groupTrack) sent(seq uint64, start time.Time, h *Histogram) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.msgs[seq]
	if m == nil {
		m = &msgTrack{}
		t.msgs[seq] = m
	}
	m.start, m.known = start, true
	for _, at := range m.early {
		h.Observe(at.Sub(start))
	}
	m.early = nil
	if m.got >= t.want {
		delete(t.msgs, seq)
	}
}

func (t *groupTrack) received(seq uint64, at time.Time, h *Histogram) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.msgs[seq]
	if m == nil {
		m = &msgTrack{}
		t.msgs[seq] = m
	}
	m.got++
	if !m.known {
		m.early = append(m.early, at)
		return
	}
	h.Observe(at.Sub(m.start))
	if m.got >= t.want {
		delete(t.msgs, seq)
	}
}

// deliver records that m received the application message at seq. Only
// application messages come here: the SDK makes no EventMessage of a
// Proposal or a Commit, and raw members hand over only envelopes of
// content type application. Proposals and Commits take positions in the
// group's order too, so the positions of application messages a member
// receives rise but have gaps.
func (b *bench) deliver(m *member, seq uint64, at time.Time) {
	if seq <= m.lastApp {
		b.dups.Add(1)
		return
	}
	m.lastApp = seq
	b.deliveries.Add(1)
	m.g.track.received(seq, at, &b.latency)
}

// timedTransport records the round trips of SendCommitBundle calls while
// the load runs. (The SDK sends application messages and proposals over
// one SendStream, whose HTTP request spans the run: runMixed times those
// around the Group.Send and Group.ProposeUpdate calls.)
type timedTransport struct {
	base http.RoundTripper
	b    *bench
}

func (t *timedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.b.timing.Load() || !strings.HasSuffix(req.URL.Path, "/SendCommitBundle") {
		return t.base.RoundTrip(req)
	}
	start := time.Now()
	res, err := t.base.RoundTrip(req)
	if err != nil || res.StatusCode != http.StatusOK {
		return res, err
	}
	t.b.commitRTT.Observe(time.Since(start))
	return res, nil
}

// h2c is an HTTP/2 client without TLS (prior knowledge), as the SDK's
// default, or an HTTP/2 client over TLS for https:// URLs.
func (b *bench) httpClient() *http.Client {
	tr := &http.Transport{ForceAttemptHTTP2: true}
	if strings.HasPrefix(b.url, "http://") {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	return &http.Client{Transport: &timedTransport{base: tr, b: b}}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// parallel runs f(0..n-1) on up to workers goroutines and returns the
// first error.
func parallel(ctx context.Context, n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// setup builds the groups: opens the clients, creates each group from its
// first member, which adds the others in Commits of up to AddBatch, and
// waits until every member is in. With stream false, raw members do not
// subscribe (the commit scenario needs only their leaves).
func (b *bench) setup(ctx context.Context, stream bool) error {
	cfg := b.cfg
	start := time.Now()
	nSDK := cfg.Members
	if cfg.Receivers == ReceiversRaw {
		nSDK = cfg.Senders
	}
	var all []*member
	for gi := range cfg.Groups {
		g := &group{idx: gi, track: groupTrack{want: cfg.Members - 1, msgs: map[uint64]*msgTrack{}}}
		for mi := range cfg.Members {
			m := &member{g: g, idx: mi, id: fmt.Sprintf("%s-g%d-m%d", b.prefix, gi, mi), joined: make(chan struct{})}
			g.members = append(g.members, m)
			all = append(all, m)
		}
		b.groups = append(b.groups, g)
	}
	b.logf("setup: %d group(s) of %d members (%d SDK client(s) each, the rest raw) on %s", cfg.Groups, cfg.Members, nSDK, b.url)

	// One HTTP client per 50 raw members: a connection carries their
	// streams, as a connection of the SDK carries one client's.
	var rawHTTP []*http.Client
	var mu sync.Mutex
	var opened atomic.Int64
	err := parallel(ctx, len(all), cfg.Workers, func(i int) error {
		m := all[i]
		defer func() {
			if n := opened.Add(1); n%1000 == 0 {
				b.logf("setup: %d of %d clients registered", n, len(all))
			}
		}()
		if m.idx < nSDK {
			var c *client.Client
			hc := b.httpClient()
			err := retryLimited(ctx, m, func(id string) (err error) {
				c, err = client.Open(ctx, client.Config{Server: b.url, ClientID: id, KeyPackages: 1, Logger: quiet, HTTPClient: hc})
				return err
			})
			if err != nil {
				return err
			}
			m.sdk = c
			mu.Lock()
			b.sdks = append(b.sdks, c)
			mu.Unlock()
			go b.receiveSDK(m)
			return nil
		}
		mu.Lock()
		k := i / 50
		for len(rawHTTP) <= k {
			rawHTTP = append(rawHTTP, b.httpClient())
		}
		hc := rawHTTP[k]
		mu.Unlock()
		err := retryLimited(ctx, m, func(id string) (err error) {
			m.raw, err = newRawMember(ctx, hc, b.url, id, 1)
			return err
		})
		if err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("setup: opening clients: %w", err)
	}
	b.logf("setup: %d clients registered in %.1fs", len(all), time.Since(start).Seconds())

	err = parallel(ctx, len(b.groups), cfg.Workers, func(gi int) error {
		g := b.groups[gi]
		creator := g.members[0]
		grp, err := creator.sdk.CreateGroup(ctx, client.GroupOptions{})
		if err != nil {
			return err
		}
		g.id, creator.grp = grp.ID(), grp
		close(creator.joined)
		for _, m := range g.members[1:] {
			if m.raw != nil && stream {
				sctx, cancel := context.WithCancel(context.Background())
				mu.Lock()
				b.cancel = append(b.cancel, cancel)
				mu.Unlock()
				go m.raw.follow(sctx, g.id, cfg.AckInterval, func(seq uint64, at time.Time) { b.deliver(m, seq, at) }, b.fail)
				go func() {
					select {
					case <-m.raw.joined:
						close(m.joined)
					case <-sctx.Done():
					}
				}()
			}
		}
		if stream {
			// A raw member's Welcome comes on its stream: let the streams
			// start first.
			for _, m := range g.members[1:] {
				if m.raw != nil {
					select {
					case <-m.raw.caughtUp:
					case <-time.After(10 * time.Second):
					case <-ctx.Done():
						return ctx.Err()
					}
				}
			}
		}
		ids := make([]string, 0, len(g.members)-1)
		for _, m := range g.members[1:] {
			ids = append(ids, m.id)
		}
		for len(ids) > 0 {
			n := min(len(ids), cfg.AddBatch)
			t := time.Now()
			if err := grp.Add(ctx, ids[:n]...); err != nil {
				return fmt.Errorf("adding %d members to group %d: %w", n, gi, err)
			}
			if len(g.members) > 1000 {
				b.logf("setup: group %d: added %d members in %.1fs (%d to go)", gi, n, time.Since(t).Seconds(), len(ids)-n)
			}
			ids = ids[n:]
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("setup: building the groups: %w", err)
	}
	// Wait until every member that receives is in its group.
	deadline := time.After(5 * time.Minute)
	for _, g := range b.groups {
		for _, m := range g.members {
			if m.raw != nil && !stream {
				continue
			}
			select {
			case <-m.joined:
			case <-deadline:
				return fmt.Errorf("setup: %s did not join its group within 5 minutes", m.id)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	b.res.SetupSec = time.Since(start).Seconds()
	b.logf("setup: done in %.1fs", b.res.SetupSec)
	return nil
}

// retryLimited calls open with the member's client id until the server
// stops refusing it for its rate limits (a --target server keeps its
// limits on registrations and logins per address), for up to 5 minutes.
// Each retry takes a fresh client id: the refused attempt may have
// registered the last one already, with a key that is now lost.
func retryLimited(ctx context.Context, m *member, open func(id string) error) error {
	deadline := time.Now().Add(5 * time.Minute)
	base := m.id
	for attempt := 1; ; attempt++ {
		err := open(m.id)
		if err == nil || connect.CodeOf(err) != connect.CodeResourceExhausted || time.Now().After(deadline) {
			return err
		}
		// Exponential backoff with jitter, at least what the server asks.
		wait := 50 * time.Millisecond << min(attempt, 6)
		wait = wait/2 + rand.N(wait/2+1)
		var ce *connect.Error
		if errors.As(err, &ce) {
			for _, d := range ce.Details() {
				if v, e := d.Value(); e == nil {
					if rl, ok := v.(*mlsdsv1.RateLimited); ok && rl.RetryAfter != nil {
						wait = max(wait, rl.RetryAfter.AsDuration())
					}
				}
			}
		}
		sleepCtx(ctx, wait)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		m.id = fmt.Sprintf("%s-r%d", base, attempt)
	}
}

// receiveSDK reads an SDK client's events.
func (b *bench) receiveSDK(m *member) {
	for ev := range m.sdk.Events() {
		switch ev.Kind {
		case client.EventMessage:
			b.deliver(m, ev.Seq, time.Now())
		case client.EventJoined:
			if m.grp == nil {
				m.grp = m.sdk.Group(ev.GroupID)
				close(m.joined)
			}
		case client.EventUndecryptable:
			b.undecryptable.Add(1)
			b.fail(ev.Err)
		}
	}
}

// epochs sums the epochs of the groups as their creators (SDK clients in
// every mode) have processed them.
func (b *bench) epochs() int64 {
	var n int64
	for _, g := range b.groups {
		if c := g.members[0]; c.grp != nil {
			n += int64(c.grp.Epoch())
		}
	}
	return n
}

func (b *bench) rebases() int64 {
	var n int64
	for _, c := range b.sdks {
		n += c.Stats().Rebases
	}
	return n
}

// usage is a snapshot of what the bench measures around the load.
type usage struct {
	at     time.Time
	server procUsage
	m      metrics
	self   time.Duration
}

func (b *bench) snapshot(ctx context.Context) usage {
	u := usage{at: time.Now()}
	if b.child != nil {
		u.server = readProc(b.child.pid())
	}
	u.m = scrape(ctx, http.DefaultClient, b.url)
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		u.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return u
}

// setUsage fills the resource figures from snapshots at the start and
// the end of the load.
func (b *bench) setUsage(s, e usage) {
	r := b.res
	window := e.at.Sub(s.at)
	switch {
	case s.server.OK && e.server.OK:
		r.ServerCPUSeconds = (e.server.CPU - s.server.CPU).Seconds()
		r.ServerRSSBytes, r.ServerRSSPeakByte = e.server.RSS, e.server.PeakRSS
	case s.m.OK && e.m.OK:
		r.ServerCPUSeconds = e.m.CPUSeconds - s.m.CPUSeconds
		r.ServerRSSBytes = int64(e.m.RSS)
	}
	r.ServerCPUPercent = 100 * ratio(r.ServerCPUSeconds, window.Seconds())
	r.BenchCPUSeconds = (e.self - s.self).Seconds()
	r.SDKRebases = b.rebases()
	r.CommitConflicts = r.SDKRebases
	if s.m.OK && e.m.OK {
		r.CommitConflicts = int64(e.m.CommitConflicts - s.m.CommitConflicts)
	}
	if n := e.m.Batch.Count - s.m.Batch.Count; n > 0 {
		r.AcceptBatchesPerSec = n / window.Seconds()
		r.AcceptBatchMean = (e.m.Batch.Sum - s.m.Batch.Sum) / n
	}
	for op, eo := range e.m.Store {
		so := s.m.Store[op]
		n, sum := eo.Count-so.Count, eo.Sum-so.Sum
		if n <= 0 {
			continue
		}
		r.ServerStore = append(r.ServerStore, StoreOp{Operation: op, PerSec: n / window.Seconds(), MeanMs: 1000 * sum / n, BusySec: sum})
	}
	slices.SortFunc(r.ServerStore, func(a, b StoreOp) int { return cmp.Compare(b.BusySec, a.BusySec) })
}

// progress prints the live line every second until stop is closed.
func (b *bench) progress(start time.Time, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastA, lastD, lastT := int64(0), int64(0), start
	end := "\n"
	if b.cfg.TTY {
		end = "\r"
	}
	for {
		select {
		case <-stop:
			if b.cfg.TTY {
				fmt.Fprintln(b.cfg.Progress)
			}
			return
		case now := <-t.C:
			a, d := b.accepted.Load(), b.deliveries.Load()
			if b.cfg.Scenario == ScenarioCommit {
				a = b.commits.Load()
			}
			dt := now.Sub(lastT).Seconds()
			line := progressLine(now.Sub(start), float64(a-lastA)/dt, float64(d-lastD)/dt, b.latency.Quantile(0.99), b.rebases(), b.errs.Load())
			if b.cfg.Scenario == ScenarioCommit {
				line = fmt.Sprintf("%5.1fs  commits %d  accept p50 %.1fms p99 %.1fms  errors %d", now.Sub(start).Seconds(), a,
					ms(b.commitRTT.Quantile(0.5)), ms(b.commitRTT.Quantile(0.99)), b.errs.Load())
			}
			fmt.Fprint(b.cfg.Progress, line+end)
			lastA, lastD, lastT = a, d, now
		}
	}
}

// runMixed runs the mixed scenario.
func (b *bench) runMixed(ctx context.Context) error {
	cfg := b.cfg
	if err := b.setup(ctx, true); err != nil {
		return err
	}
	var senders []*member
	for _, g := range b.groups {
		senders = append(senders, g.members[:cfg.Senders]...)
	}
	if cfg.Proposals > 0 && cfg.Receivers == ReceiversRaw && cfg.Senders < 2 {
		b.logf("note: Proposals are accepted but not committed: a member cannot commit its own Update proposal, and raw members commit nothing (use --senders 2 or more)")
	}
	payload := make([]byte, cfg.Size)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	opCtx, opCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer opCancel()
	var stopping atomic.Bool
	var wg sync.WaitGroup

	epochs0 := b.epochs()
	s := b.snapshot(ctx)
	start := s.at
	b.timing.Store(true)
	if cfg.OnLoad != nil {
		cfg.OnLoad(cfg.Duration)
	}
	stopProgress, progressDone := make(chan struct{}), make(chan struct{})
	go b.progress(start, stopProgress, progressDone)
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(len(senders)) / cfg.Rate * float64(time.Second))
	}
	for i, m := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))
			next := start
			if interval > 0 {
				next = start.Add(interval * time.Duration(i) / time.Duration(len(senders)))
			}
			for !stopping.Load() {
				at := time.Now()
				if interval > 0 {
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
					at = next
					next = next.Add(interval)
					if stopping.Load() {
						return
					}
				}
				// One draw picks the operation: a Commit with probability
				// Commits, a Proposal with probability Proposals, else an
				// application message.
				x := rng.Float64()
				if x < cfg.Commits {
					t := time.Now()
					if err := m.grp.Update(opCtx); err != nil {
						if opCtx.Err() == nil {
							b.fail(err)
						}
						continue
					}
					b.commitOp.Observe(time.Since(t))
					b.commits.Add(1)
					continue
				}
				if x < cfg.Commits+cfg.Proposals {
					// A handshake message: it takes a position in the
					// group's order but is no application message, so it
					// is not tracked for delivery.
					t := time.Now()
					if _, err := m.grp.ProposeUpdate(opCtx); err != nil {
						if opCtx.Err() == nil {
							b.fail(err)
						}
						continue
					}
					b.proposalRTT.Observe(time.Since(t))
					b.proposals.Add(1)
					continue
				}
				t := time.Now()
				if interval == 0 {
					at = t
				}
				rc, err := m.grp.Send(opCtx, payload)
				if err != nil {
					if opCtx.Err() == nil {
						b.fail(err)
					}
					continue
				}
				b.sendRTT.Observe(time.Since(t))
				b.accepted.Add(1)
				m.g.track.sent(rc.Seq, at, &b.latency)
			}
		}()
	}
	select {
	case <-time.After(cfg.Duration):
	case <-ctx.Done():
	}
	stopping.Store(true)
	e := b.snapshot(context.WithoutCancel(ctx))
	accepted, commits, proposals, deliveries := b.accepted.Load(), b.commits.Load(), b.proposals.Load(), b.deliveries.Load()
	// Calls in flight finish (their messages count), within the drain time.
	waitDone := make(chan struct{})
	go func() { wg.Wait(); close(waitDone) }()
	select {
	case <-waitDone:
	case <-time.After(cfg.Drain):
		opCancel()
		<-waitDone
	}
	b.timing.Store(false)
	close(stopProgress)
	<-progressDone

	// Drain: wait until every accepted message reached every member.
	drainStart := time.Now()
	want := func() int64 { return b.accepted.Load() * int64(cfg.Members-1) }
	for b.deliveries.Load() < want() && time.Since(drainStart) < cfg.Drain {
		time.Sleep(20 * time.Millisecond)
	}
	// A little longer, to see duplicates that would follow.
	time.Sleep(100 * time.Millisecond)
	epochs1 := b.epochs()

	r := b.res
	window := e.at.Sub(start)
	r.DurationSec = window.Seconds()
	r.DrainSec = time.Since(drainStart).Seconds()
	r.AcceptedAppMessages, r.AcceptedCommits, r.AcceptedProposals = b.accepted.Load(), b.commits.Load(), b.proposals.Load()
	r.AcceptedPerSec = float64(accepted) / window.Seconds()
	r.CommitsPerSec = float64(commits) / window.Seconds()
	r.ProposalsPerSec = float64(proposals) / window.Seconds()
	r.Epochs = epochs1 - epochs0
	r.DeliveriesPerSec = float64(deliveries) / window.Seconds()
	r.Deliveries, r.ExpectedDeliveries, r.DuplicateDeliveries = b.deliveries.Load(), want(), b.dups.Load()
	r.MissingDeliveries = max(0, r.ExpectedDeliveries-r.Deliveries)
	b.setUsage(s, e)
	r.AcceptedPerServerCPUSec = ratio(float64(accepted), r.ServerCPUSeconds)
	r.DeliveriesPerServerCPUSec = ratio(float64(deliveries), r.ServerCPUSeconds)
	b.setLatency()
	return nil
}

func (b *bench) setLatency() {
	r := b.res
	r.LatencySamples = b.latency.Count()
	r.LatencyMsP50, r.LatencyMsP95, r.LatencyMsP99 = ms(b.latency.Quantile(0.5)), ms(b.latency.Quantile(0.95)), ms(b.latency.Quantile(0.99))
	r.LatencyMsMax = ms(b.latency.Max())
	r.SendRTTMsP50, r.SendRTTMsP99 = ms(b.sendRTT.Quantile(0.5)), ms(b.sendRTT.Quantile(0.99))
	r.ProposalSamples = b.proposalRTT.Count()
	r.ProposalRTTMsP50, r.ProposalRTTMsP99 = ms(b.proposalRTT.Quantile(0.5)), ms(b.proposalRTT.Quantile(0.99))
	r.CommitSamples = b.commitRTT.Count()
	r.CommitAcceptMsP50, r.CommitAcceptMsP95, r.CommitAcceptMsP99 = ms(b.commitRTT.Quantile(0.5)), ms(b.commitRTT.Quantile(0.95)), ms(b.commitRTT.Quantile(0.99))
	r.CommitOpMsP50, r.CommitOpMsP99 = ms(b.commitOp.Quantile(0.5)), ms(b.commitOp.Quantile(0.99))
	r.Errors, r.Undecryptable = b.errs.Load(), b.undecryptable.Load()
	if p := b.firstErr.Load(); p != nil {
		r.FirstError = *p
	}
}

// runCommit runs the commit scenario: one group of Members, whose creator
// commits Updates one after the other for the duration.
func (b *bench) runCommit(ctx context.Context) error {
	cfg := b.cfg
	if err := b.setup(ctx, false); err != nil {
		return err
	}
	creator := b.groups[0].members[0]
	s := b.snapshot(ctx)
	start := s.at
	b.timing.Store(true)
	if cfg.OnLoad != nil {
		cfg.OnLoad(cfg.Duration)
	}
	stopProgress, progressDone := make(chan struct{}), make(chan struct{})
	go b.progress(start, stopProgress, progressDone)
	deadline := start.Add(cfg.Duration)
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) / cfg.Rate)
	}
	next := start
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(interval)
		}
		t := time.Now()
		if err := creator.grp.Update(context.WithoutCancel(ctx)); err != nil {
			b.fail(err)
			if errors.Is(err, client.ErrGroupBroken) || errors.Is(err, client.ErrClosed) {
				break
			}
			continue
		}
		b.commitOp.Observe(time.Since(t))
		b.commits.Add(1)
	}
	e := b.snapshot(context.WithoutCancel(ctx))
	b.timing.Store(false)
	close(stopProgress)
	<-progressDone
	r := b.res
	window := e.at.Sub(start)
	r.DurationSec = window.Seconds()
	r.AcceptedCommits = b.commits.Load()
	r.CommitsPerSec = float64(r.AcceptedCommits) / window.Seconds()
	b.setUsage(s, e)
	b.setLatency()
	return nil
}

// close stops the raw members' streams and closes the SDK clients.
func (b *bench) close() {
	for _, c := range b.cancel {
		c()
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, c := range b.sdks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			c.Close()
			<-sem
		}()
	}
	wg.Wait()
}
