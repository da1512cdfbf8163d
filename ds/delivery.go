package ds

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlsds/mlsds/mls"
)

// Delivery: every message is stored once in its group; a client sees the
// messages that fall in its membership windows. Each client has a cursor
// per group, moved by Ack, from which a subscription replays.

const (
	defaultFetchLimit = 100
	maxFetchLimit     = 1000
	pumpPage          = 256
)

// ErrSlowConsumer ends a subscription whose consumer took no event for
// Config.SlowConsumerTimeout. Nothing is lost: the client reconnects and
// the replay starts again from its acknowledged cursors.
var ErrSlowConsumer = errors.New("ds: subscription ended: the consumer did not keep up; reconnect to resume from the acknowledged position")

// Fetch returns up to limit messages of the group from GroupSeq fromSeq on,
// as far as the client may see them (its membership windows), in order.
// Unlike a subscription it includes the client's own messages, so that a
// client that lost track can rebuild the group's history. The client must
// be or have been a member (ErrNotMember). A limit of 0 (or less) means
// 100; above 1000, and a fromSeq above 2^63-1 (no group gets there), are
// refused with ErrInvalidArgument. A page holds at most
// Config.FetchMaxBytes of messages (at least one message): a caller pages
// on from the last message returned.
func (s *Service) Fetch(ctx context.Context, client string, groupID []byte, fromSeq uint64, limit int) ([]Envelope, error) {
	return s.FetchWithin(ctx, client, groupID, fromSeq, limit, s.cfg.FetchMaxBytes)
}

// FetchWithin is Fetch with a page of at most maxBytes of messages (at
// least one message), but never more than Config.FetchMaxBytes. A server
// that bounds the bytes of all the answers it is writing asks for less
// when little is left.
func (s *Service) FetchWithin(ctx context.Context, client string, groupID []byte, fromSeq uint64, limit, maxBytes int) ([]Envelope, error) {
	maxBytes = max(1, min(maxBytes, s.cfg.FetchMaxBytes))
	if err := s.allow(client); err != nil {
		return nil, err
	}
	if err := checkSeq("from_seq", fromSeq); err != nil {
		return nil, err
	}
	if limit > maxFetchLimit {
		return nil, fmt.Errorf("%w: limit %d is above the maximum of %d messages per call; fetch in pages", ErrInvalidArgument, limit, maxFetchLimit)
	}
	if limit <= 0 {
		limit = defaultFetchLimit
	}
	// An unknown group has no memberships: one answer for outsiders.
	ws, err := s.store.Memberships(ctx, groupID, client)
	if err != nil {
		return nil, err
	}
	if len(ws) == 0 {
		return nil, notMember(client, groupID)
	}
	// The store stops reading once the page reaches the budget; the
	// message that went beyond it (if not the only one) is left for the
	// next page.
	envs, err := s.store.Messages(ctx, MessageQuery{GroupID: groupID, ClientID: client, FromSeq: fromSeq, Limit: limit, MaxBytes: maxBytes})
	if err != nil {
		return nil, err
	}
	envs = withinBudget(envs, maxBytes)
	// Messages from fromSeq on that were pruned: *PrunedError (prune.go).
	if err := s.checkPruned(ctx, groupID, ws, fromSeq, envs); err != nil {
		return nil, err
	}
	return envs, nil
}

// withinBudget returns the longest prefix of envs whose Data sums to at
// most maxBytes, and at least the first envelope.
func withinBudget(envs []Envelope, maxBytes int) []Envelope {
	n := 0
	for i := range envs {
		if n += len(envs[i].Data); n > maxBytes && i > 0 {
			clear(envs[i:])
			return envs[:i]
		}
	}
	return envs
}

// Ack records durably that the client has processed the group's messages
// up to GroupSeq seq. A cursor never moves back: acknowledging less than
// before is not an error and changes nothing. Acknowledging the Commit
// that added the client (the CommitSeq of its WelcomeEvent) also marks the
// Welcome delivered.
func (s *Service) Ack(ctx context.Context, client string, groupID []byte, seq uint64) error {
	if err := s.allow(client); err != nil {
		return err
	}
	if err := checkSeq("seq", seq); err != nil {
		return err
	}
	// ErrNotFound for an unknown group, ErrInvalidArgument beyond its last
	// message (ackbatch.go). An outsider gets one answer whether the group
	// exists or not.
	// Membership (past or present) first, so that an outsider learns
	// nothing of the group's length either.
	if !s.fan.members.known(s.cfg.Now(), client, groupID) || s.fan.leaving.has(client, groupID) {
		ws, err := s.store.Memberships(ctx, groupID, client)
		if err != nil {
			return err
		}
		if len(ws) == 0 {
			return notMember(client, groupID)
		}
		s.fan.members.note(s.cfg.Now(), client, groupID)
	}
	err := s.ackDurably(ctx, client, groupID, seq)
	if isNotFound(err) || errors.Is(err, ErrNotMember) {
		return notMember(client, groupID)
	}
	return err
}

// Subscribe starts the client's stream of events: first everything not
// yet acknowledged (pending Welcomes, a low KeyPackage stock, then each
// group's messages after the client's cursor, in group order), then one
// event with CaughtUp set, then new events as they come, until ctx ends.
// The client's own messages are left out.
//
// The channel is closed when the subscription ends: after ctx ends, or
// after an event with Err set (a store failure, or ErrSlowConsumer when
// the consumer took nothing for Config.SlowConsumerTimeout). Events stay
// unacknowledged until the client calls Ack, so a new subscription after
// any ending resumes without loss.
//
// The Envelope of a message event may be shared with other subscriptions:
// it must not be modified.
func (s *Service) Subscribe(ctx context.Context, client string) (<-chan Event, error) {
	if err := s.allow(client); err != nil {
		return nil, err
	}
	// The lookup runs on a goroutine of its own: an engine may need a deep
	// stack, which the caller's goroutine would otherwise keep for as long
	// as it follows the stream (a server's handler, for hours).
	var c Client
	var err error
	looked := make(chan struct{})
	go func() {
		defer close(looked)
		c, err = s.store.Client(ctx, client)
	}()
	<-looked
	if err != nil {
		return nil, err
	}
	buf := max(1, s.cfg.SubscriptionBuffer)
	inChan := min(buf, subscriptionChanCap)
	sub := &subscription{
		s:        s,
		fan:      s.fanout(),
		client:   c,
		ctx:      ctx,
		out:      make(chan Event, inChan),
		queueMax: buf - inChan,
		groups:   make(map[string]*groupSub),
		pollSlot: -1,
		running:  true, // the first worker is started below
	}
	// Listen before the first read, so that nothing written after the read
	// goes unnoticed.
	sub.stopClient = s.notifier.Listen(ClientTopic(client), func() {
		sub.clientGen.Add(1)
		sub.clientDirty.Store(true)
		sub.kick()
	})
	sub.stopCtx = context.AfterFunc(ctx, sub.kick)
	sub.fan.poll.add(sub)
	sub.fan.buf.join(sub)
	go sub.work()
	return sub.out, nil
}

// BufferStats describes what the subscriptions of a Service buffer for
// their consumers (see Config.SubscriptionMaxBytes).
type BufferStats struct {
	Bytes         int64  // messages and Welcomes taken in and not yet taken by the consumers
	BackPressure  uint64 // events held back (to be read again from the store) because a budget was full
	SlowConsumers uint64 // subscriptions ended with ErrSlowConsumer
}

// BufferStats returns the current figures.
func (s *Service) BufferStats() BufferStats {
	b := s.fan.buf
	return BufferStats{Bytes: b.bytes(), BackPressure: b.backPressure.Load(), SlowConsumers: b.slowCuts.Load()}
}

// subscriptionChanCap is how many of a subscription's buffered events sit
// in its channel; the rest of Config.SubscriptionBuffer is a queue that
// only takes memory while it holds events.
const subscriptionChanCap = 8

// A subscription has no goroutine of its own while it is idle. Wake-ups
// (its client's topic, its groups' tails, the poller, the end of its
// context) set a flag and kick it: a worker goroutine starts if none runs,
// does what the flags say, hands the events over and ends once nothing is
// left to do and no kick came for workerLinger. The events beyond the
// channel's few slots wait in a queue that is only allocated while it is
// needed.
type subscription struct {
	s      *Service
	fan    *fanout
	client Client
	ctx    context.Context
	out    chan Event

	// Owned by the worker.
	queue       []Event // events waiting for room in out, from queue[qHead]
	qHead       int
	queueMax    int
	caughtUp    bool
	groups      map[string]*groupSub
	sentWelcome map[welcomeKey]bool
	lowSent     bool
	lowLast     int
	// Byte budgets (fanout.go's buffered). chanSizes are the sizes of the
	// events put into out and not yet seen taken, oldest first: whatever
	// out no longer holds, the consumer took.
	chanSizes []int64
	stalled   bool      // an event was held back for a full budget
	freed     bool      // the consumer took something since the last stall
	lastTaken time.Time // when the consumer last took an event, or the buffer began to fill

	// Under the fan-out's buffered.mu.
	cb      *clientBuffered
	bytes   int64 // held in the queue and in out
	waiting bool  // in buffered.waiting

	clientDirty atomic.Bool // the client's topic was notified
	// clientGen counts the notifications of the client's topic; windows
	// read before the last one may be out of date (see windowsStale).
	clientGen atomic.Uint64
	pollDue   atomic.Bool // the poller came by

	mu sync.Mutex
	// running: a worker goroutine, or a publisher delivering a message
	// straight away (deliverNow), owns the state above.
	running bool
	again   bool // kicked while running
	// parked: an idle worker goroutine waits on wake without owning the
	// state; whoever starts the next run hands it over (startLocked).
	parked bool
	done   bool          // ended: kicks do nothing
	wake   chan struct{} // interrupts a worker that waits for the consumer; made on first need

	stopClient func()
	stopCtx    func() bool

	// The poller's list (under the poller's lock).
	pollSlot           int
	pollPrev, pollNext *subscription
}

// groupSub is a subscription's position in one group.
type groupSub struct {
	sub     *subscription
	id      []byte
	pos     uint64 // every message up to pos was sent or is not for the client
	windows []MembershipWindow
	// winOK: windows are exact for every GroupSeq up to the first Commit
	// after pos (membership changes only with a Commit). A Commit served
	// from the tail, or reading the store, clears it.
	winOK bool
	// winGen is the subscription's clientGen before windows were read.
	winGen uint64
	dirty  atomic.Bool // the group's tail was notified
	tail   *groupTail  // nil when not following the group
	// passed is pos as the tail sees it (it may lag): the tail keeps
	// nothing that every subscription has passed.
	passed atomic.Uint64
	// stalled: a message after pos was held back for a full budget.
	stalled bool
}

type welcomeKey struct {
	group string
	seq   uint64
}

// kick makes sure a worker looks at the flags. It must not block.
func (sub *subscription) kick() {
	sub.mu.Lock()
	if sub.done {
		sub.mu.Unlock()
		return
	}
	if sub.running {
		sub.again = true
		wake := sub.wake
		sub.mu.Unlock()
		signal(wake)
		return
	}
	sub.running = true
	sub.startLocked()
}

// startLocked hands the state, which the caller owns (running), to a
// worker: the parked one if there is one, else a new goroutine. It is
// called with sub.mu held and releases it.
func (sub *subscription) startLocked() {
	sub.fan.workerRuns.Add(1)
	if sub.parked {
		sub.parked = false
		wake := sub.wake
		sub.mu.Unlock()
		signal(wake)
		return
	}
	sub.mu.Unlock()
	go sub.work()
}

// signal puts a wake-up in wake (nil: none) unless one is there.
func signal(wake chan struct{}) {
	if wake == nil {
		return
	}
	select {
	case wake <- struct{}{}:
	default:
	}
}

// deliverNow is how a publisher on this node hands g's subscription the
// messages it just put into the group's tail (envs, in GroupSeq order):
// when no worker owns the subscription and nothing else waits for one,
// it sends them itself, straight into the channel of a consumer that is
// waiting for them, and no worker goroutine need wake up. Otherwise, or
// for what it leaves, it marks g and kicks the subscription as any
// wake-up does.
func (sub *subscription) deliverNow(g *groupSub, envs []*Envelope) {
	if !sub.claim() {
		g.dirty.Store(true)
		sub.kick()
		return
	}
	done := sub.deliverOwned(g, envs)
	if !done {
		g.dirty.Store(true)
	}
	sub.release(!done)
}

// claim takes the state for the caller if no worker owns it.
func (sub *subscription) claim() bool {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.done || sub.running {
		return false
	}
	sub.running = true
	return true
}

// release gives back what claim took; a worker takes over if start is
// set or a kick came in between.
func (sub *subscription) release(start bool) {
	sub.mu.Lock()
	if start || sub.again {
		sub.startLocked()
		return
	}
	sub.running = false
	sub.mu.Unlock()
}

// deliverOwned sends envs to the consumer as pumpGroup would, for as long
// as nothing calls for the worker: the subscription is caught up and has
// no other work flagged; g's windows are exact; nothing is queued or
// waits in the channel (the consumer took everything, so the byte budgets
// hold nothing of it); the messages continue g.pos without a gap; and the
// consumer takes each event at once. It
// reports whether it did all; where it stopped, the worker goes on from
// g.pos (the tail holds envs).
func (sub *subscription) deliverOwned(g *groupSub, envs []*Envelope) bool {
	// (An ended ctx needs no check: its kick came before the claim, which
	// then failed, or after, and release hands over to the worker.)
	if !sub.caughtUp || sub.stalled || sub.pollDue.Load() || sub.clientDirty.Load() ||
		g.tail == nil || g.dirty.Load() || !g.winOK || sub.queued() > 0 {
		return false
	}
	sub.settle()
	if len(sub.chanSizes) > 0 || sub.windowsStale(g) {
		return false
	}
	defer func() { g.passed.Store(g.pos) }()
	for _, e := range envs {
		if e.GroupSeq <= g.pos {
			continue
		}
		if e.GroupSeq != g.pos+1 || !g.active() {
			return false
		}
		buffered := false
		if g.visible(e.GroupSeq) && e.Sender != sub.client.ID {
			ev := Event{Message: e}
			select {
			case sub.out <- ev:
			default:
				return false
			}
			// A consumer that waited took the event in the send itself,
			// and the budgets never held it. One that did not leaves it
			// in the channel: it counts against the budgets (a
			// subscription that holds nothing may always take one event,
			// see buffered.reserve) and the worker watches it.
			if len(sub.out) > 0 {
				size := eventBytes(ev)
				sub.lastTaken = time.Now()
				sub.fan.buf.force(sub, size)
				sub.placed(size)
				buffered = true
			}
		}
		g.pos = e.GroupSeq
		if e.ContentType == mls.ContentTypeCommit {
			g.winOK = false // it may have changed the membership
			return false
		}
		if buffered {
			return false
		}
	}
	return true
}

// work is the worker: it runs until the flags are clear and every event
// is handed over and taken, or the subscription ends.
func (sub *subscription) work() {
	ctx := sub.ctx
	// The linger timer calls a function that wakes the worker through its
	// wake channel, so that an idle worker waits on that one channel (a
	// select on a timer's channel costs a trip to the timer heap each time).
	var linger *time.Timer
	var lingerDue atomic.Bool
	defer func() {
		if linger != nil {
			linger.Stop()
		}
	}()
	for {
		sub.mu.Lock()
		sub.again = false
		sub.mu.Unlock()
		if ctx.Err() != nil {
			sub.finish(nil)
			return
		}
		if sub.stalled {
			// Try again what a full budget held back.
			sub.stalled = false
			for _, g := range sub.groups {
				if g.stalled {
					g.stalled = false
					g.dirty.Store(true)
				}
			}
		}
		if err := sub.step(ctx); err != nil {
			if ctx.Err() != nil {
				err = nil
			}
			sub.finish(err)
			return
		}
		again, ended := sub.handOver(ctx)
		if ended {
			return
		}
		if again || sub.stalled && sub.freed {
			continue
		}
		// Nothing to do: wait a little for the next wake-up before
		// ending, so that a busy subscription keeps its goroutine (and its
		// grown stack) instead of starting one per message. One held back
		// by budgets that others hold is kicked when they release some.
		// The worker parks: it gives up the state (a publisher may then
		// deliver a message straight away, see deliverNow) and waits on
		// wake until a run is handed to it or it lingered long enough.
		wake := sub.wakeChan()
		sub.mu.Lock()
		if sub.again {
			sub.mu.Unlock()
			continue
		}
		sub.queue, sub.qHead = nil, 0
		sub.running, sub.parked = false, true
		sub.mu.Unlock()
		idleAt := time.Now()
		lingerDue.Store(false)
		if linger == nil {
			linger = time.AfterFunc(workerLinger, func() {
				lingerDue.Store(true)
				signal(wake)
			})
		} else {
			linger.Reset(workerLinger)
		}
		// A run handed over clears parked; a wake-up without that is the
		// linger timer's, or one left over from an earlier kick.
		for {
			<-wake
			sub.mu.Lock()
			if !sub.parked {
				sub.mu.Unlock()
				break
			}
			if lingerDue.Load() && time.Since(idleAt) >= workerLinger {
				sub.parked = false
				sub.mu.Unlock()
				return
			}
			sub.mu.Unlock()
			if lingerDue.Swap(false) {
				// It fired for an earlier wait, as it was set again.
				linger.Reset(workerLinger - time.Since(idleAt))
			}
		}
	}
}

// Between these bounds (doubling while nothing changes), a worker looks
// how much of its channel the consumer took.
const (
	handOverPollMin = 2 * time.Millisecond
	handOverPollMax = 64 * time.Millisecond
)

// handOver moves the queue into the channel and watches the consumer take
// what is buffered, releasing its bytes. It returns again when the worker
// has more to do (a kick came, or a stalled subscription has room again)
// and neither when everything was taken. It ends the subscription (ended)
// when ctx ends or when the consumer took nothing for
// SlowConsumerTimeout while events waited for it.
func (sub *subscription) handOver(ctx context.Context) (again, ended bool) {
	timeout := sub.s.cfg.SlowConsumerTimeout
	poll := handOverPollMin
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		sub.settle()
		if sub.queued() == 0 && len(sub.chanSizes) == 0 {
			return false, false
		}
		if sub.stalled && sub.hasRoom() {
			return true, false
		}
		idle := time.Since(sub.lastTaken)
		if idle >= timeout {
			sub.finish(ErrSlowConsumer)
			return false, true
		}
		wait := min(poll, timeout-idle)
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		var out chan Event // nil (never ready) when the queue is empty
		var next Event
		if sub.queued() > 0 {
			out, next = sub.out, sub.queue[sub.qHead]
		}
		select {
		case out <- next:
			sub.placed(eventBytes(next))
			sub.pop()
			poll = handOverPollMin
		case <-sub.wakeChan():
			return true, false
		case <-ctx.Done():
			sub.finish(nil)
			return false, true
		case <-timer.C:
			poll = min(2*poll, handOverPollMax)
		}
	}
}

// settle releases what the consumer took from the channel and moves the
// queue into the channel's free room.
func (sub *subscription) settle() {
	if taken := len(sub.chanSizes) - len(sub.out); taken > 0 {
		var n int64
		for _, x := range sub.chanSizes[:taken] {
			n += x
		}
		sub.chanSizes = append(sub.chanSizes[:0], sub.chanSizes[taken:]...)
		sub.lastTaken = time.Now()
		sub.freed = true
		sub.fan.buf.release(sub, n)
	}
	for sub.queued() > 0 {
		select {
		case sub.out <- sub.queue[sub.qHead]:
			sub.placed(eventBytes(sub.queue[sub.qHead]))
			sub.pop()
			continue
		default:
		}
		break
	}
}

// placed records an event of size bytes put into the channel.
func (sub *subscription) placed(size int64) { sub.chanSizes = append(sub.chanSizes, size) }

// hasRoom reports whether a stalled subscription should try again before
// its consumer took everything: the consumer took some since the stall,
// and the subscription holds at most half its budgets.
func (sub *subscription) hasRoom() bool {
	if !sub.freed {
		return false
	}
	b := sub.fan.buf
	b.mu.Lock()
	defer b.mu.Unlock()
	return sub.bytes <= b.subMax/2 && len(sub.out)+sub.queued() <= max(1, sub.s.cfg.SubscriptionBuffer)/2
}

// stall holds g back: a budget is full, and what comes after g.pos is
// read again (from the tail or the store) once there is room.
func (sub *subscription) stall(g *groupSub) {
	g.stalled, sub.stalled, sub.freed = true, true, false
}

// errFull tells the pumps that a budget is full: the event was not taken.
var errFull = errors.New("ds: a subscription buffer budget is full")

// eventBytes is what an event counts against the byte budgets.
func eventBytes(ev Event) int64 {
	switch {
	case ev.Message != nil:
		return int64(len(ev.Message.Data) + envelopeOverhead)
	case ev.Welcome != nil:
		w := ev.Welcome
		return int64(len(w.Data) + len(w.KeyPackageRef) + len(w.GroupID) + envelopeOverhead)
	}
	return 0
}

// workerLinger is how long a subscription's worker waits for more work
// before it ends.
const workerLinger = 50 * time.Millisecond

func (sub *subscription) wakeChan() chan struct{} {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.wake == nil {
		sub.wake = make(chan struct{}, 1)
		if sub.again {
			sub.wake <- struct{}{} // a kick came before there was a channel
		}
	}
	return sub.wake
}

func (sub *subscription) queued() int { return len(sub.queue) - sub.qHead }

func (sub *subscription) pop() {
	sub.queue[sub.qHead] = Event{}
	sub.qHead++
	if sub.qHead == len(sub.queue) {
		sub.queue, sub.qHead = sub.queue[:0], 0
	}
}

func (sub *subscription) push(ev Event) {
	if len(sub.queue) == cap(sub.queue) && sub.qHead > 0 {
		n := copy(sub.queue, sub.queue[sub.qHead:])
		clear(sub.queue[n:])
		sub.queue, sub.qHead = sub.queue[:n], 0
	}
	sub.queue = append(sub.queue, ev)
}

// finish ends the subscription: with err, the consumer gets what is queued
// and then an event with err (unless ctx ends first).
func (sub *subscription) finish(err error) {
	sub.mu.Lock()
	sub.done = true
	sub.mu.Unlock()
	sub.stopCtx()
	sub.stopClient()
	sub.fan.poll.remove(sub)
	sub.fan.poll.pollDone(sub)
	for _, g := range sub.groups {
		if g.tail != nil {
			sub.fan.detach(g.tail, g)
			g.tail = nil
		}
	}
	sub.fan.buf.leave(sub)
	sub.chanSizes = nil
	if errors.Is(err, ErrSlowConsumer) {
		sub.fan.buf.slowCuts.Add(1)
	}
	if err != nil {
		sub.push(Event{Err: err})
	send:
		for sub.queued() > 0 {
			select {
			case sub.out <- sub.queue[sub.qHead]:
				sub.pop()
			case <-sub.ctx.Done():
				break send
			}
		}
	}
	sub.queue = nil
	close(sub.out)
}

// step does what the flags say: the replay first, then what changed.
func (sub *subscription) step(ctx context.Context) error {
	if !sub.caughtUp {
		sub.clientDirty.Store(false)
		sub.fan.poll.pollDone(sub)
		if err := sub.refreshClient(ctx); err != nil {
			return err
		}
		for _, g := range sub.groups {
			g.dirty.Store(false)
			if err := sub.pumpGroup(ctx, g, false); err != nil {
				return err
			}
		}
		if sub.stalled {
			return nil // the replay goes on once there is room
		}
		sub.caughtUp = true
		return sub.send(ctx, Event{CaughtUp: true})
	}
	poll := sub.pollDue.Load()
	if poll {
		defer sub.fan.poll.pollDone(sub)
	}
	if sub.clientDirty.Swap(false) || poll {
		if err := sub.refreshClient(ctx); err != nil {
			return err
		}
	}
	for _, g := range sub.groups {
		if g.dirty.Swap(false) || poll {
			if err := sub.pumpGroup(ctx, g, poll); err != nil {
				return err
			}
		}
	}
	return nil
}

// refreshClient re-reads the client's groups, Welcomes and KeyPackage
// stock. Groups found for the first time are pumped by the caller, after
// the Welcomes that introduce them.
func (sub *subscription) refreshClient(ctx context.Context) error {
	gen := sub.clientGen.Load()
	curs, err := sub.s.store.Cursors(ctx, sub.client.ID)
	if err != nil {
		return err
	}
	listed := make(map[string]bool, len(curs))
	for _, c := range curs {
		key := string(c.GroupID)
		listed[key] = true
		g, ok := sub.groups[key]
		if !ok {
			g = &groupSub{sub: sub, id: c.GroupID, pos: c.Acked}
			sub.groups[key] = g
		}
		g.windows, g.winOK, g.winGen = c.Windows, true, gen
		if g.tail == nil && g.active() {
			g.tail = sub.fan.attach(g)
			g.dirty.Store(true)
		}
	}
	for key, g := range sub.groups {
		if !listed[key] {
			// No window any more: the client left before the first
			// message of its only window (Store.Leave deletes it).
			g.windows, g.winOK, g.winGen = nil, true, gen
		}
	}
	ws, err := sub.s.store.PendingWelcomes(ctx, sub.client.ID)
	if err != nil {
		return err
	}
	for i := range ws {
		k := welcomeKey{string(ws[i].GroupID), ws[i].CommitSeq}
		if sub.sentWelcome[k] {
			continue
		}
		if err := sub.send(ctx, Event{Welcome: &ws[i]}); err != nil {
			if err == errFull {
				// Read again once there is room.
				sub.clientDirty.Store(true)
				sub.stalled, sub.freed = true, false
				return nil
			}
			return err
		}
		if sub.sentWelcome == nil {
			sub.sentWelcome = make(map[welcomeKey]bool)
		}
		sub.sentWelcome[k] = true
	}
	// Welcomes of deniable groups, stored under the client's KeyPackages.
	if stalled, err := sub.sendDeniableWelcomes(ctx); err != nil || stalled {
		if stalled {
			sub.clientDirty.Store(true)
			sub.stalled, sub.freed = true, false
		}
		return err
	}
	return sub.checkLowWater(ctx)
}

// active reports whether the group may still have messages for the
// subscription: the client is a member, or its last window ends after
// what was sent.
func (g *groupSub) active() bool {
	if len(g.windows) == 0 {
		return false
	}
	last := g.windows[len(g.windows)-1]
	return last.Open() || g.pos < last.UntilSeq
}

// windowsStale reports whether g's windows may be out of date although
// no Commit came: the client's topic was notified since they were read
// (LeaveGroup on any node notifies it once the store has closed the
// window), or LeaveGroup is closing the window on this node right now and
// has not notified yet. Membership changes only with a Commit otherwise.
func (sub *subscription) windowsStale(g *groupSub) bool {
	return sub.clientGen.Load() != g.winGen || sub.fan.leaving.has(sub.client.ID, g.id)
}

// visible reports whether the client receives the group's message seq.
func (g *groupSub) visible(seq uint64) bool {
	for _, w := range g.windows {
		if seq >= w.FromSeq && (w.Open() || seq <= w.UntilSeq) {
			return true
		}
	}
	return false
}

// pumpGroup sends the group's messages after g.pos: from the group's tail,
// or from the store for what is older than the tail.
func (sub *subscription) pumpGroup(ctx context.Context, g *groupSub, poll bool) error {
pump:
	for g.active() {
		if g.tail == nil {
			g.tail = sub.fan.attach(g)
		}
		envs, first, err := g.tail.read(ctx, g, poll)
		if err != nil {
			return err
		}
		poll = false
		if g.pos+1 < first {
			if err := sub.pumpStore(ctx, g, first); err != nil {
				if err == errFull {
					sub.stall(g)
					break pump
				}
				return err
			}
			continue
		}
		if len(envs) == 0 {
			break
		}
		// Every envelope in envs was stored before this check: windows
		// read after it are right for all of them.
		if g.winOK && sub.windowsStale(g) {
			g.winOK = false
		}
		for _, e := range envs {
			if e.GroupSeq <= g.pos {
				continue
			}
			if !g.winOK {
				gen := sub.clientGen.Load()
				ws, err := sub.s.store.Memberships(ctx, g.id, sub.client.ID)
				if err != nil {
					return err
				}
				g.windows, g.winOK, g.winGen = ws, true, gen
			}
			if g.visible(e.GroupSeq) && e.Sender != sub.client.ID {
				if err := sub.send(ctx, Event{Message: e}); err != nil {
					if err == errFull {
						sub.stall(g)
						break pump
					}
					return err
				}
			}
			g.pos = e.GroupSeq
			if e.ContentType == mls.ContentTypeCommit {
				g.winOK = false // it may have changed the membership
			}
			if !g.active() {
				break
			}
		}
	}
	g.passed.Store(g.pos)
	if !g.active() && g.tail != nil {
		sub.fan.detach(g.tail, g)
		g.tail = nil
	}
	return nil
}

// pumpStore sends, from the store, the group's messages after g.pos and
// before bound, the tail's first GroupSeq (all of them are stored), one
// page at a time.
func (sub *subscription) pumpStore(ctx context.Context, g *groupSub, bound uint64) error {
	// Read no more than the subscription can take now.
	room := sub.fan.buf.room(sub)
	if room == 0 {
		sub.fan.buf.backPressure.Add(1)
		return errFull
	}
	q := MessageQuery{
		GroupID: g.id, ClientID: sub.client.ID, FromSeq: g.pos + 1, Limit: pumpPage, ExcludeOwn: true,
		MaxBytes: int(min(room, int64(sub.s.cfg.SubscriptionMaxBytes))),
	}
	envs, err := sub.s.store.Messages(ctx, q)
	if err != nil {
		return err
	}
	if gap := len(envs) == 0 && bound > g.pos+1 || len(envs) > 0 && envs[0].GroupSeq > g.pos+1; gap {
		// Pruned before the client acknowledged them (prune.go): say so
		// and go on after them.
		next, err := sub.s.prunedFrom(ctx, g.id, g.windows, g.pos+1)
		if err != nil {
			return err
		}
		if next != 0 {
			if err := sub.send(ctx, Event{Pruned: &PrunedEvent{GroupID: g.id, OldestSeq: next}}); err != nil {
				return err
			}
			g.pos, g.winOK = next-1, false
			return nil
		}
	}
	reached := !pageFull(envs, q)
	for i := range envs {
		if envs[i].GroupSeq >= bound {
			reached = true
			break
		}
		if err := sub.send(ctx, Event{Message: &envs[i]}); err != nil {
			g.winOK = false // what was sent may hold a Commit
			return err
		}
		g.pos = envs[i].GroupSeq
	}
	if reached {
		// Nothing else before bound is for the client.
		g.pos = max(g.pos, bound-1)
	}
	g.winOK = false
	return nil
}

// checkLowWater tells the client when its stock of KeyPackages for its
// suite is below the low-water mark: once per subscription, and again
// each time it drops further.
func (sub *subscription) checkLowWater(ctx context.Context) error {
	counts, err := sub.s.store.CountKeyPackages(ctx, sub.client.ID, sub.s.now())
	if err != nil {
		return err
	}
	n, low := counts[sub.client.CipherSuite], sub.s.cfg.KeyPackageLowWater
	if n >= low {
		sub.lowSent = false
		return nil
	}
	if sub.lowSent && n >= sub.lowLast {
		return nil
	}
	if err := sub.send(ctx, Event{KeyPackageLow: &LowWaterEvent{CipherSuite: sub.client.CipherSuite, Remaining: n, LowWater: low}}); err != nil {
		return err
	}
	sub.lowSent, sub.lowLast = true, n
	return nil
}

// send hands an event to the consumer, or queues it. A message or a
// Welcome is refused with errFull when the subscription holds as many
// events as SubscriptionBuffer or a byte budget has no room for it: the
// caller stops there and sends it later. Other events (small, and one of
// each at most per step) are always taken; when the buffer is full of
// others they wait up to SlowConsumerTimeout for the consumer to take one.
func (sub *subscription) send(ctx context.Context, ev Event) error {
	sub.settle()
	if sub.queued() == 0 && len(sub.chanSizes) == 0 {
		sub.lastTaken = time.Now() // the consumer owed nothing until now
	}
	size := eventBytes(ev)
	if ev.Message != nil || ev.Welcome != nil {
		if len(sub.out)+sub.queued() >= max(1, sub.s.cfg.SubscriptionBuffer) || !sub.fan.buf.reserve(sub, size) {
			sub.fan.buf.backPressure.Add(1)
			return errFull
		}
	} else {
		sub.fan.buf.force(sub, size)
	}
	if sub.queued() == 0 {
		select {
		case sub.out <- ev:
			sub.placed(size)
			return nil
		default:
		}
	}
	if sub.queued() < sub.queueMax {
		sub.push(ev)
		return nil
	}
	timer := time.NewTimer(sub.s.cfg.SlowConsumerTimeout)
	defer timer.Stop()
	next := ev
	if sub.queued() > 0 {
		next = sub.queue[sub.qHead]
	}
	select {
	case sub.out <- next:
		sub.placed(eventBytes(next))
		if sub.queued() > 0 {
			sub.pop()
			sub.push(ev)
		}
		return nil
	case <-timer.C:
		return ErrSlowConsumer
	case <-ctx.Done():
		return ctx.Err()
	}
}
