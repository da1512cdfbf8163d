package ds

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlsds/mlsds/mls"
)

// Fan-out. The subscriptions of one Service share, per group, a tail of
// the group's recent messages (groupTail): when a message is appended, one
// store read by whichever subscription comes first brings the tail up to
// date, and every subscription of the group on this node serves itself
// from it, applying its own membership windows and leaving out its own
// messages. A subscription whose position is behind the tail (replay after
// a reconnect) reads the store, as before. The store stays the source of
// truth: the tail only holds what was read back from it, so it is right
// whatever node accepted the messages.
//
// Wake-ups are per group, not per subscription: the tail listens to the
// group's topic once and marks its subscriptions. A subscription has no
// goroutine while idle (see subscription), and the Service shares one poll
// timer among its subscriptions (poller) instead of a ticker each.

// Bounds of a group's tail. A subscription that falls further behind reads
// the store.
const (
	maxTailEntries = 1024
	maxTailBytes   = 4 << 20
	// tailLoad is how many of the group's last messages a new tail loads.
	tailLoad = 64
	// envelopeOverhead approximates an Envelope's memory besides its Data.
	envelopeOverhead = 160
)

// fanout is the delivery state of a Service shared by its subscriptions.
type fanout struct {
	store    Store
	notifier Notifier
	cfg      Config

	mu     sync.Mutex
	groups map[string]*groupTail // groups with subscriptions on this node

	poll poller

	// leaving holds the clients leaving a group on this node (leave.go).
	leaving leavingSet

	// buf holds the byte budgets of the subscriptions' buffers.
	buf *buffered

	// members remembers who acknowledged as a member lately (Ack).
	members memberCache

	// workerRuns counts the runs handed to a subscription's worker
	// goroutine (a new one or a parked one).
	workerRuns atomic.Uint64
}

// memberCache remembers for a short while the clients that Ack found to be
// or have been members of a group, so that a client acknowledging as it
// reads does not cost a read of its memberships each time. Windows are
// only ever added or closed, never removed, but for two cases: a client
// deleted (it cannot call any more), and a client that leaves before the
// first message of its only window (Store.Leave). In the latter, for up to
// memberCacheTTL, an Ack of the group still moves the cursor the client
// keeps, instead of being refused; nothing is learnt from it.
type memberCache struct {
	mu sync.Mutex
	m  map[memberKey]time.Time // until when the entry holds
}

type memberKey struct{ client, group string }

const (
	memberCacheTTL = 5 * time.Second
	memberCacheMax = 100_000
)

func (c *memberCache) known(now time.Time, client string, groupID []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.m[memberKey{client, string(groupID)}]
	return ok && now.Before(until)
}

func (c *memberCache) note(now time.Time, client string, groupID []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= memberCacheMax {
		c.m = make(map[memberKey]time.Time) // start over rather than sweep
	}
	c.m[memberKey{client, string(groupID)}] = now.Add(memberCacheTTL)
}

// newFanout returns the fan-out of a Service (Service.New makes one).
func newFanout(store Store, notifier Notifier, cfg Config) *fanout {
	f := &fanout{store: store, notifier: notifier, cfg: cfg, groups: make(map[string]*groupTail), buf: newBuffered(cfg)}
	f.poll.init(cfg.PollInterval)
	return f
}

func (s *Service) fanout() *fanout { return s.fan }

// groupTail is the recent end of one group's messages, shared by the
// subscriptions of this node that follow the group.
//
// It holds the messages with GroupSeq in [first, next) without a gap, in
// order. Every message with GroupSeq < first is durably stored. gen counts
// the wake-ups of the group; the tail is up to date for the wake-ups up to
// filledGen: a fill that began after wake-up n saw the message behind it.
type groupTail struct {
	key  string
	id   []byte
	fan  *fanout
	stop func() // stops listening to the group's topic

	gen    atomic.Uint64
	fillMu sync.Mutex // one store read at a time
	// echo is set while a wake-up of the group's topic is still to come
	// for messages that publish already put into the tail: it needs no
	// fill. The wake-up that takes it may be another's (a node's that
	// notified in between): the echo then counts as that one, a moment
	// later, so none is lost. A flag, not a count: the wake-ups of several
	// batches may go out as one (batcher.notifyLater), and a count would
	// wait for echoes that never come, swallowing real wake-ups; an echo
	// that finds the flag clear costs one read of the store. (A Notifier
	// that never called back the node's own listeners would leave it set,
	// delaying the next wake-up until the subscriptions poll; both of
	// mlsds's call them from Notify.)
	echo atomic.Bool

	mu    sync.Mutex
	subs  []*groupSub // copied on write
	envs  []*Envelope // GroupSeq first, first+1, ..., next-1; never changed in place
	first uint64
	next  uint64 // 0: nothing loaded yet
	// lastCommit is the GroupSeq of the last Commit the tail took in.
	lastCommit uint64
	bytes      int
	filledGen  uint64
	filledAt   time.Time // when the last complete fill began
}

// attach adds g to the tail of its group, creating the tail (and its
// listener) for the first subscription.
func (f *fanout) attach(g *groupSub) *groupTail {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := string(g.id)
	t := f.groups[key]
	if t == nil {
		t = &groupTail{key: key, id: g.id, fan: f}
		t.gen.Store(1) // the first reader fills
		f.groups[key] = t
		t.stop = f.notifier.Listen(GroupTopic(g.id), t.notified)
	}
	g.passed.Store(g.pos)
	t.mu.Lock()
	t.subs = append(slices.Clip(t.subs), g)
	t.mu.Unlock()
	return t
}

// detach removes g; the last subscription to go drops the tail.
func (f *fanout) detach(t *groupTail, g *groupSub) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t.mu.Lock()
	if i := slices.Index(t.subs, g); i >= 0 {
		t.subs = slices.Delete(slices.Clone(t.subs), i, i+1)
	}
	n := len(t.subs)
	t.mu.Unlock()
	if n == 0 && f.groups[t.key] == t {
		delete(f.groups, t.key)
		t.stop()
	}
}

// notified is the group topic's listener: something was appended.
func (t *groupTail) notified() {
	if t.echo.CompareAndSwap(true, false) {
		return // publish put what this wake-up is for into the tail already
	}
	t.gen.Add(1)
	t.mu.Lock()
	subs := t.subs
	t.mu.Unlock()
	for _, g := range subs {
		g.dirty.Store(true)
		g.sub.kick()
	}
}

// publish hands to the tails of this node the messages it has just
// accepted, once they are durably stored, so that its subscriptions
// serve them from memory instead of reading them back from the store.
// envs is in acceptance order (so in GroupSeq order within a group), and
// the caller wakes the topic of each of their groups after publish
// returns (an echo the tail expects, see groupTail.echo). The store stays the
// source of truth: a tail takes only messages that continue it without a
// gap, and one that cannot (it has not loaded yet, or another node or
// path accepted messages in between) reads the store on the wake-up, as
// before. Other nodes learn of the messages from the Notifier and read
// them from the store.
//
// The envelopes are shared from then on: they must not be modified.
func (f *fanout) publish(envs []Envelope) {
	for i := 0; i < len(envs); {
		j := i + 1
		for j < len(envs) && string(envs[j].GroupID) == string(envs[i].GroupID) {
			j++
		}
		f.mu.Lock()
		t := f.groups[string(envs[i].GroupID)]
		f.mu.Unlock()
		if t != nil {
			t.publish(envs[i:j])
		}
		i = j
	}
}

// publish appends what of envs continues the tail and, if the tail then
// holds every message up to the last of envs, expects the echo of the
// group's wake-up.
func (t *groupTail) publish(envs []Envelope) {
	t.mu.Lock()
	covered := t.next > 0
	var added []*Envelope
	for i := range envs {
		e := &envs[i]
		if !covered || e.GroupSeq < t.next {
			continue
		}
		if e.GroupSeq > t.next {
			covered = false // a gap: the wake-up fills it from the store
			continue
		}
		t.pushLocked(e)
		added = append(added, e)
	}
	if len(added) > 0 {
		t.trimLocked()
	}
	subs := t.subs
	if covered {
		t.echo.Store(true)
	}
	t.mu.Unlock()
	if len(added) == 0 {
		return
	}
	// Subscriptions whose consumers wait get the messages from here; the
	// others are kicked (deliverNow). A large group's are served on a
	// goroutine of their own, off the path of the caller (the batch
	// committer, whose next batch waits). Two such goroutines of one
	// group may overlap: a subscription takes a message straight away
	// only if it continues its position, and the worker does the rest.
	deliver := func() {
		for _, g := range subs {
			g.sub.deliverNow(g, added)
		}
	}
	if len(subs) <= publishInline {
		deliver()
	} else {
		go deliver()
	}
}

// publishInline is how many subscriptions of a group publish serves on
// its caller's goroutine.
const publishInline = 8

// read returns the group's messages after g.pos that the tail holds, once
// the tail has caught up with every wake-up so far (reading the store as
// g's client if no one did yet). first is the tail's first GroupSeq: when
// g.pos+1 < first, the messages between are not in the tail and must be
// read from the store; every message before first is stored. With poll,
// the tail is brought up to date from the store even without a wake-up if
// the last time was more than the poll interval ago.
//
// The returned envelopes are shared: they must not be modified.
func (t *groupTail) read(ctx context.Context, g *groupSub, poll bool) (envs []*Envelope, first uint64, err error) {
	t.mu.Lock()
	if poll && time.Since(t.filledAt) >= t.fan.cfg.PollInterval {
		t.gen.Add(1)
	}
	want := t.gen.Load()
	fresh := t.filledGen >= want
	t.mu.Unlock()
	if !fresh {
		if err := t.fill(ctx, g, want); err != nil {
			return nil, 0, err
		}
	}
	pos := g.pos
	t.mu.Lock()
	defer t.mu.Unlock()
	if pos+1 < t.first || pos+1 >= t.next {
		return nil, t.first, nil
	}
	return t.envs[pos+1-t.first:], t.first, nil
}

// fill brings the tail up to date with the store, reading the messages as
// g's client sees them: whatever part of them it may not see ends the fill
// early, leaving the tail behind for the next reader to complete.
//
// Usually one query does: when the reader is known to be a member from
// before the tail's end on (its windows are exact up to its position, and
// no Commit came since), what it reads from the tail's end on is all there
// is, unless the last thing it reads is a Commit (which may have removed
// it). Otherwise the group's head says how far to read.
func (t *groupTail) fill(ctx context.Context, g *groupSub, want uint64) error {
	t.fillMu.Lock()
	defer t.fillMu.Unlock()
	t.mu.Lock()
	done := t.filledGen >= want
	member := false
	if !done && t.next > 0 && g.winOK && len(g.windows) > 0 && g.pos+1 >= t.first && t.lastCommit <= g.pos {
		last := g.windows[len(g.windows)-1]
		member = last.Open() && last.FromSeq <= t.next
	}
	next := t.next
	t.mu.Unlock()
	if done {
		return nil // filled while we waited
	}
	reader := g.sub.client.ID
	gen := t.gen.Load() // before the reads: later wake-ups need another fill
	if member && g.sub.windowsStale(g) {
		// The reader may have left the group since its windows were
		// read (LeaveGroup closes a window without a Commit): what it
		// cannot see is not proof that there is nothing.
		member = false
	}
	started := time.Now()

	if member {
		q := MessageQuery{GroupID: t.id, ClientID: reader, FromSeq: next, Limit: pumpPage, MaxBytes: maxTailBytes}
		got, err := t.fan.store.Messages(ctx, q)
		if err != nil {
			return err
		}
		t.mu.Lock()
		k := t.appendLocked(got)
		if k == len(got) && !pageFull(got, q) && (k == 0 || got[k-1].ContentType != mls.ContentTypeCommit) {
			t.filledGen = max(t.filledGen, gen)
			t.filledAt = started
			t.mu.Unlock()
			return nil
		}
		t.mu.Unlock()
	}

	head, err := t.fan.store.Group(ctx, t.id)
	if err != nil {
		return err
	}
	last := head.LastSeq
	t.mu.Lock()
	if t.next == 0 || last+1-min(last+1, t.next) > maxTailEntries {
		// A new tail, or one too far behind to catch up: start near the end.
		t.envs, t.bytes = nil, 0
		t.first = max(1, last+1-min(last, tailLoad))
		t.next = t.first
	}
	next = t.next
	t.mu.Unlock()

	for next <= last {
		limit := int(min(last+1-next, pumpPage))
		// The budget keeps one read within the tail's bounds; the tail
		// drops the oldest as it takes in more.
		q := MessageQuery{GroupID: t.id, ClientID: reader, FromSeq: next, Limit: limit, MaxBytes: maxTailBytes}
		got, err := t.fan.store.Messages(ctx, q)
		if err != nil {
			return err
		}
		t.mu.Lock()
		if len(t.envs) == 0 && len(got) > 0 && got[0].GroupSeq > t.next {
			// reader cannot see the start; an empty tail may begin later.
			t.first, t.next = got[0].GroupSeq, got[0].GroupSeq
		}
		k := t.appendLocked(got)
		next = t.next
		t.mu.Unlock()
		if k < len(got) || !pageFull(got, q) {
			break // a gap: reader does not see everything
		}
	}
	if next > last {
		t.mu.Lock()
		t.filledGen = max(t.filledGen, gen)
		t.filledAt = started
		t.mu.Unlock()
	}
	return nil
}

// pageFull reports whether got, the answer to q, may have been cut short
// by q's Limit or MaxBytes: only then may more messages follow it.
func pageFull(got []Envelope, q MessageQuery) bool {
	if len(got) >= q.Limit {
		return true
	}
	if q.MaxBytes <= 0 {
		return false
	}
	n := 0
	for i := range got {
		n += len(got[i].Data)
	}
	return n >= q.MaxBytes
}

// appendLocked appends the envelopes of got that continue the tail without
// a gap and returns how many of got it took, counting those the tail held
// already (publish may have put them in while the store was read).
func (t *groupTail) appendLocked(got []Envelope) int {
	k := 0
	for k < len(got) && got[k].GroupSeq < t.next && t.next > 0 {
		k++
	}
	for k < len(got) && got[k].GroupSeq == t.next {
		t.pushLocked(&got[k])
		k++
	}
	t.trimLocked()
	return k
}

// pushLocked appends e, the message at t.next.
func (t *groupTail) pushLocked(e *Envelope) {
	t.envs = append(t.envs, e)
	t.bytes += len(e.Data) + envelopeOverhead
	if e.ContentType == mls.ContentTypeCommit {
		t.lastCommit = e.GroupSeq
	}
	t.next++
}

// trimLocked drops the messages that every subscription of the tail has
// passed, and the oldest beyond the bounds. A subscription that comes
// later and needs them reads them from the store.
func (t *groupTail) trimLocked() {
	passed := uint64(0)
	for i, g := range t.subs {
		if p := g.passed.Load(); i == 0 || p < passed {
			passed = p
		}
	}
	drop := 0
	for drop < len(t.envs) && t.envs[drop].GroupSeq <= passed {
		drop++
	}
	for len(t.envs)-drop > maxTailEntries || (t.bytes > maxTailBytes && len(t.envs)-drop > 1) {
		drop++
	}
	if drop == 0 {
		return
	}
	for _, e := range t.envs[:drop] {
		t.bytes -= len(e.Data) + envelopeOverhead
	}
	t.first += uint64(drop)
	// Slices handed out by read must stay as they were, so the dropped
	// entries are not cleared in place; the array is let go of instead
	// once it holds more garbage than messages.
	switch rest := t.envs[drop:]; {
	case len(rest) == 0:
		t.envs = nil
	case drop >= len(rest):
		t.envs = slices.Clone(rest)
	default:
		t.envs = rest
	}
}

// poller wakes each subscription once per poll interval, spread over the
// interval: the subscriptions are distributed over slots, and one timer
// visits one slot per tick. Its goroutine runs while there are
// subscriptions.
type poller struct {
	interval time.Duration
	tick     time.Duration

	inflight atomic.Int64 // polls asked for and not done yet

	mu      sync.Mutex
	slots   []*subscription // heads of the slots' lists
	n       int             // subscriptions
	nextIn  int             // slot of the next subscription added
	running bool
}

// maxPollsInFlight bounds the polls under way: beyond it, the poller
// waits, so that a slow store delays polls instead of gathering a worker
// goroutine for every subscription.
const maxPollsInFlight = 32

// pollDone tells the poller that sub's poll is done (or will not be).
func (p *poller) pollDone(sub *subscription) {
	if sub.pollDue.Swap(false) {
		p.inflight.Add(-1)
	}
}

func (p *poller) init(interval time.Duration) {
	n := min(64, max(1, int(interval/(50*time.Millisecond))))
	p.interval = interval
	p.tick = interval / time.Duration(n)
	p.slots = make([]*subscription, n)
}

func (p *poller) add(sub *subscription) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := p.nextIn
	p.nextIn = (p.nextIn + 1) % len(p.slots)
	sub.pollSlot = i
	sub.pollNext = p.slots[i]
	sub.pollPrev = nil
	if sub.pollNext != nil {
		sub.pollNext.pollPrev = sub
	}
	p.slots[i] = sub
	p.n++
	if !p.running {
		p.running = true
		go p.run()
	}
}

func (p *poller) remove(sub *subscription) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if sub.pollSlot < 0 {
		return
	}
	if sub.pollPrev != nil {
		sub.pollPrev.pollNext = sub.pollNext
	} else {
		p.slots[sub.pollSlot] = sub.pollNext
	}
	if sub.pollNext != nil {
		sub.pollNext.pollPrev = sub.pollPrev
	}
	sub.pollNext, sub.pollPrev, sub.pollSlot = nil, nil, -1
	p.n--
}

func (p *poller) run() {
	t := time.NewTicker(p.tick)
	defer t.Stop()
	slot := 0
	var due []*subscription
	for range t.C {
		if p.inflight.Load() > maxPollsInFlight {
			continue // the store is slow: let the polls wait, not pile up
		}
		p.mu.Lock()
		if p.n == 0 {
			p.running = false
			p.mu.Unlock()
			return
		}
		due = due[:0]
		for s := p.slots[slot]; s != nil; s = s.pollNext {
			due = append(due, s)
		}
		slot = (slot + 1) % len(p.slots)
		p.mu.Unlock()
		for _, s := range due {
			if s.pollDue.CompareAndSwap(false, true) {
				p.inflight.Add(1)
				s.kick()
			}
		}
		clear(due)
	}
}

// buffered keeps the byte budgets of what subscriptions hold for their
// consumers (Config.SubscriptionMaxBytes, ClientSubscriptionMaxBytes,
// BufferedMaxBytes): the messages and Welcomes taken in, from their queue
// until the consumer takes them from the channel. A subscription that
// finds a budget full does not queue the event: it leaves its position
// where it is and reads the rest later, from the group's tail or the
// store (back-pressure). One that waits for room that others hold is
// kicked when they release some.
type buffered struct {
	subMax, clientMax, totalMax int64

	backPressure atomic.Uint64 // events held back for a full budget
	slowCuts     atomic.Uint64 // subscriptions ended with ErrSlowConsumer

	mu      sync.Mutex
	total   int64
	clients map[string]*clientBuffered
	waiting []*subscription // held back by a budget others share, oldest first
	// The largest figures since a test last looked (budget_export_test.go).
	peakSub, peakClient, peakTotal int64
}

// clientBuffered is what the subscriptions of one client hold.
type clientBuffered struct {
	bytes int64
	subs  int
}

// bufferedWakeups is how many waiting subscriptions a release kicks. Each
// that gets room kicks more once its consumer took what it sent.
const bufferedWakeups = 4

func newBuffered(cfg Config) *buffered {
	return &buffered{
		subMax: int64(cfg.SubscriptionMaxBytes), clientMax: int64(cfg.ClientSubscriptionMaxBytes), totalMax: cfg.BufferedMaxBytes,
		clients: make(map[string]*clientBuffered),
	}
}

// join counts sub among its client's subscriptions.
func (b *buffered) join(sub *subscription) {
	b.mu.Lock()
	defer b.mu.Unlock()
	cb := b.clients[sub.client.ID]
	if cb == nil {
		cb = &clientBuffered{}
		b.clients[sub.client.ID] = cb
	}
	cb.subs++
	sub.cb = cb
}

// leave releases all that sub holds and forgets it.
func (b *buffered) leave(sub *subscription) {
	b.mu.Lock()
	n := sub.bytes
	sub.bytes = 0
	b.total -= n
	sub.cb.bytes -= n
	if sub.cb.subs--; sub.cb.subs == 0 {
		delete(b.clients, sub.client.ID)
	}
	if sub.waiting {
		sub.waiting = false
		if i := slices.Index(b.waiting, sub); i >= 0 {
			b.waiting = slices.Delete(b.waiting, i, i+1)
		}
	}
	wake := b.wakeLocked(n)
	b.mu.Unlock()
	for _, w := range wake {
		w.kick()
	}
}

// reserve takes n bytes for sub if every budget has room. When its own
// budget is full, sub waits for its consumer; when its client's or the
// Service's is, it is kicked when some is released.
//
// A subscription that holds nothing may always take one event: streams
// whose clients read are never starved by streams that do not (which hold
// the shared budgets until the slow-consumer timeout ends them), and a
// message larger than a budget still goes out. The shared budgets can so
// be passed by at most one message per reading stream.
func (b *buffered) reserve(sub *subscription, n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if sub.bytes == 0 {
		sub.bytes += n
		sub.cb.bytes += n
		b.total += n
		b.peakLocked(sub)
		return true
	}
	if sub.bytes+n > b.subMax {
		return false
	}
	if sub.cb.bytes+n > b.clientMax || b.total+n > b.totalMax {
		if !sub.waiting {
			sub.waiting = true
			b.waiting = append(b.waiting, sub)
		}
		return false
	}
	sub.bytes += n
	sub.cb.bytes += n
	b.total += n
	b.peakLocked(sub)
	return true
}

func (b *buffered) peakLocked(sub *subscription) {
	b.peakSub = max(b.peakSub, sub.bytes)
	b.peakClient = max(b.peakClient, sub.cb.bytes)
	b.peakTotal = max(b.peakTotal, b.total)
}

// room returns how many bytes sub could take now, at most: at least one
// byte when it holds nothing (it may always take one event), and 0 when a
// budget is full.
func (b *buffered) room(sub *subscription) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := min(b.subMax-sub.bytes, b.clientMax-sub.cb.bytes, b.totalMax-b.total)
	if sub.bytes == 0 {
		return max(r, 1)
	}
	return max(r, 0)
}

// force takes n bytes for sub whatever the budgets say (small events that
// are never held back).
func (b *buffered) force(sub *subscription, n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	sub.bytes += n
	sub.cb.bytes += n
	b.total += n
	b.peakLocked(sub)
	b.mu.Unlock()
}

// release gives back n bytes of sub and kicks some waiting subscriptions.
func (b *buffered) release(sub *subscription, n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	sub.bytes -= n
	sub.cb.bytes -= n
	b.total -= n
	wake := b.wakeLocked(n)
	b.mu.Unlock()
	for _, w := range wake {
		w.kick()
	}
}

func (b *buffered) wakeLocked(released int64) []*subscription {
	if released == 0 || len(b.waiting) == 0 {
		return nil
	}
	k := min(len(b.waiting), bufferedWakeups)
	wake := slices.Clone(b.waiting[:k])
	b.waiting = slices.Delete(b.waiting, 0, k)
	for _, w := range wake {
		w.waiting = false
	}
	return wake
}

// bytes returns what all subscriptions hold.
func (b *buffered) bytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.total
}
