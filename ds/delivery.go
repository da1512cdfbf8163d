package ds

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
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
// be or have been a member (ErrNotMember).
func (s *Service) Fetch(ctx context.Context, client string, groupID []byte, fromSeq uint64, limit int) ([]Envelope, error) {
	if err := s.allow(client); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = defaultFetchLimit
	}
	if limit > maxFetchLimit {
		limit = maxFetchLimit
	}
	if _, err := s.store.Group(ctx, groupID); err != nil {
		return nil, err
	}
	ws, err := s.store.Memberships(ctx, groupID, client)
	if err != nil {
		return nil, err
	}
	if len(ws) == 0 {
		return nil, fmt.Errorf("%w: %q in group %x", ErrNotMember, client, groupID)
	}
	return s.store.Messages(ctx, MessageQuery{GroupID: groupID, ClientID: client, FromSeq: fromSeq, Limit: limit})
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
	head, err := s.store.Group(ctx, groupID)
	if err != nil {
		return err
	}
	if seq > head.LastSeq {
		return fmt.Errorf("%w: cannot acknowledge group_seq %d, the group's last message is %d", ErrInvalidArgument, seq, head.LastSeq)
	}
	return s.store.Ack(ctx, client, groupID, seq)
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
func (s *Service) Subscribe(ctx context.Context, client string) (<-chan Event, error) {
	if err := s.allow(client); err != nil {
		return nil, err
	}
	c, err := s.store.Client(ctx, client)
	if err != nil {
		return nil, err
	}
	sub := &subscription{
		s:           s,
		client:      c,
		out:         make(chan Event, s.cfg.SubscriptionBuffer+1), // +1: see send
		wake:        make(chan struct{}, 1),
		groups:      make(map[string]*groupSub),
		dirty:       make(map[string]bool),
		sentWelcome: make(map[welcomeKey]bool),
	}
	// Listen before the first read, so that nothing written after the read
	// goes unnoticed.
	sub.stopClient = s.notifier.Listen(ClientTopic(client), func() { sub.mark(clientKey) })
	go sub.run(ctx)
	return sub.out, nil
}

// clientKey marks the client's own topic in the dirty set (group keys are
// never empty).
const clientKey = ""

type subscription struct {
	s      *Service
	client Client
	out    chan Event
	wake   chan struct{}

	mu    sync.Mutex
	dirty map[string]bool // group id (as string) or clientKey

	stopClient  func()
	groups      map[string]*groupSub
	sentWelcome map[welcomeKey]bool
	lowSent     bool
	lowLast     int
}

type groupSub struct {
	id      []byte
	pos     uint64 // last GroupSeq sent (or acknowledged before the subscription)
	windows []MembershipWindow
	stop    func() // stops listening; nil when not listening
}

type welcomeKey struct {
	group string
	seq   uint64
}

// mark records that key changed and wakes the loop. It is called by the
// Notifier and must not block.
func (sub *subscription) mark(key string) {
	sub.mu.Lock()
	sub.dirty[key] = true
	sub.mu.Unlock()
	select {
	case sub.wake <- struct{}{}:
	default:
	}
}

func (sub *subscription) takeDirty() map[string]bool {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	d := sub.dirty
	sub.dirty = make(map[string]bool)
	return d
}

func (sub *subscription) run(ctx context.Context) {
	defer close(sub.out)
	defer func() {
		sub.stopClient()
		for _, g := range sub.groups {
			if g.stop != nil {
				g.stop()
			}
		}
	}()
	err := sub.loop(ctx)
	if err == nil || ctx.Err() != nil {
		return
	}
	sub.out <- Event{Err: err} // never blocks: send keeps a slot free
}

func (sub *subscription) loop(ctx context.Context) error {
	sub.takeDirty()
	if err := sub.refreshClient(ctx); err != nil {
		return err
	}
	for _, g := range sub.groups {
		if err := sub.pumpGroup(ctx, g); err != nil {
			return err
		}
	}
	if err := sub.send(ctx, Event{CaughtUp: true}); err != nil {
		return err
	}
	poll := time.NewTicker(sub.s.cfg.PollInterval)
	defer poll.Stop()
	for {
		var all bool
		select {
		case <-ctx.Done():
			return nil
		case <-sub.wake:
		case <-poll.C:
			all = true
		}
		dirty := sub.takeDirty()
		if all || dirty[clientKey] {
			if err := sub.refreshClient(ctx); err != nil {
				return err
			}
			for k := range sub.takeDirty() { // groups found just now
				dirty[k] = true
			}
		}
		for key, g := range sub.groups {
			if !all && !dirty[key] {
				continue
			}
			if err := sub.pumpGroup(ctx, g); err != nil {
				return err
			}
		}
	}
}

// refreshClient re-reads the client's groups, Welcomes and KeyPackage
// stock. Groups found for the first time are pumped by the caller, after
// the Welcomes that introduce them.
func (sub *subscription) refreshClient(ctx context.Context) error {
	curs, err := sub.s.store.Cursors(ctx, sub.client.ID)
	if err != nil {
		return err
	}
	for _, c := range curs {
		key := string(c.GroupID)
		g, ok := sub.groups[key]
		if !ok {
			g = &groupSub{id: c.GroupID, pos: c.Acked}
			sub.groups[key] = g
		}
		g.windows = c.Windows
		if !ok || g.stop == nil {
			if g.active() {
				g.stop = sub.s.notifier.Listen(GroupTopic(g.id), func() { sub.mark(key) })
				sub.mark(key)
			}
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
			return err
		}
		sub.sentWelcome[k] = true
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

// pumpGroup sends the group's messages after g.pos.
func (sub *subscription) pumpGroup(ctx context.Context, g *groupSub) error {
	if !g.active() {
		if g.stop != nil {
			g.stop()
			g.stop = nil
		}
		return nil
	}
	for {
		envs, err := sub.s.store.Messages(ctx, MessageQuery{
			GroupID: g.id, ClientID: sub.client.ID, FromSeq: g.pos + 1, Limit: pumpPage, ExcludeOwn: true,
		})
		if err != nil {
			return err
		}
		for i := range envs {
			if err := sub.send(ctx, Event{Message: &envs[i]}); err != nil {
				return err
			}
			g.pos = envs[i].GroupSeq
		}
		if len(envs) < pumpPage {
			return nil
		}
	}
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

// send hands an event to the consumer. One slot of the buffer is kept for
// the event that ends the subscription; when the rest is full, send waits
// up to SlowConsumerTimeout for the consumer to make room.
func (sub *subscription) send(ctx context.Context, ev Event) error {
	// Only this goroutine sends, so room seen here is still there below.
	if len(sub.out) < cap(sub.out)-1 {
		sub.out <- ev
		return nil
	}
	timeout := sub.s.cfg.SlowConsumerTimeout
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(min(max(timeout/20, time.Millisecond), 20*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return ErrSlowConsumer
		case <-tick.C:
			if len(sub.out) < cap(sub.out)-1 {
				sub.out <- ev
				return nil
			}
		}
	}
}
