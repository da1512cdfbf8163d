package ds

import (
	"bytes"
	"context"
	"time"
)

// Group streams. SubscribeGroup follows one group from a GroupSeq on, for a
// caller that keeps its own position: the members of a deniable group
// (who prove membership by MAC and have no cursor here), and members of
// other groups that want one group's messages only. It takes its wake-ups
// from the group's topic, as the fan-out does, and reads the store on each
// (and every Config.PollInterval, in case a wake-up was lost).

// SubscribeGroup starts a stream of the group's messages from fromSeq:
// the stored ones in order, then one event with CaughtUp set, then new
// ones as they come, until ctx ends. A PrunedEvent says that messages the
// caller may read were pruned, and where the stream goes on. The caller's
// own messages are included.
//
// With pr (a deniable group), the caller proves membership with the key of
// an epoch e, and the stream starts at max(fromSeq, the GroupSeq of the
// Commit that started e); it ends with an event whose Err is the answer
// for outsiders once that key expires (Config.Retention after the Commit
// that superseded it). Without pr, client must be or have been a member of
// the group, and the stream holds what its membership windows cover.
// Anyone else gets the answer for a group that does not exist.
//
// The channel is closed when the stream ends; an event with Err set comes
// before, unless ctx ended (ErrSlowConsumer when the consumer took nothing
// for Config.SlowConsumerTimeout).
func (s *Service) SubscribeGroup(ctx context.Context, client string, pr *MembershipProof, groupID []byte, fromSeq uint64) (<-chan Event, error) {
	if err := checkSeq("from_seq", fromSeq); err != nil {
		return nil, err
	}
	gs := &groupStream{s: s, id: bytes.Clone(groupID), client: client}
	if pr != nil {
		key, err := s.verifyMembership(ctx, groupID, pr)
		if err != nil {
			return nil, err
		}
		gs.keyEpoch, gs.deniable = key.Epoch, true
		gs.windows = []MembershipWindow{{FromSeq: key.StartSeq}}
		gs.pos = max(fromSeq, key.StartSeq, 1) - 1
	} else {
		if err := s.allow(client); err != nil {
			return nil, err
		}
		ws, err := s.store.Memberships(ctx, groupID, client)
		if err != nil {
			return nil, err
		}
		if len(ws) == 0 {
			return nil, notMember(client, groupID)
		}
		gs.windows = ws
		gs.pos = max(fromSeq, 1) - 1
	}
	gs.out = make(chan Event, max(1, min(s.cfg.SubscriptionBuffer, subscriptionChanCap)))
	wake := make(chan struct{}, 1)
	// Listen before the first read, so that nothing written after it goes
	// unnoticed.
	stop := s.notifier.Listen(GroupTopic(groupID), func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	go gs.run(ctx, wake, stop)
	return gs.out, nil
}

// groupStream is one SubscribeGroup stream.
type groupStream struct {
	s        *Service
	id       []byte
	client   string // "" for a deniable stream
	deniable bool
	keyEpoch uint64 // deniable: the epoch of the key it was opened with
	windows  []MembershipWindow
	pos      uint64 // every message up to pos was sent or is not for the caller
	out      chan Event
}

func (gs *groupStream) run(ctx context.Context, wake <-chan struct{}, stop func()) {
	defer close(gs.out)
	defer stop()
	poll := time.NewTicker(gs.s.cfg.PollInterval)
	defer poll.Stop()
	caughtUp := false
	for {
		if err := gs.pump(ctx); err != nil {
			gs.fail(ctx, err)
			return
		}
		if !caughtUp {
			if err := gs.send(ctx, Event{CaughtUp: true}); err != nil {
				gs.fail(ctx, err)
				return
			}
			caughtUp = true
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-poll.C:
			if err := gs.check(ctx); err != nil {
				gs.fail(ctx, err)
				return
			}
		}
	}
}

// check ends a deniable stream whose key expired, and re-reads a
// member's windows.
func (gs *groupStream) check(ctx context.Context) error {
	if gs.deniable {
		k, err := gs.s.store.MembershipKey(ctx, gs.id, gs.keyEpoch)
		if isNotFound(err) || err == nil && gs.s.keyExpired(k) {
			return notDeniableMember(gs.id)
		}
		return err
	}
	ws, err := gs.s.store.Memberships(ctx, gs.id, gs.client)
	if err != nil {
		return err
	}
	if len(ws) == 0 {
		return notMember(gs.client, gs.id)
	}
	gs.windows = ws
	return nil
}

// pump sends what the store holds after gs.pos.
func (gs *groupStream) pump(ctx context.Context) error {
	for {
		q := MessageQuery{GroupID: gs.id, ClientID: gs.client, FromSeq: gs.pos + 1, Limit: pumpPage, MaxBytes: gs.s.cfg.SubscriptionMaxBytes}
		var envs []Envelope
		var err error
		if gs.deniable {
			envs, err = gs.s.store.GroupMessages(ctx, q)
		} else {
			envs, err = gs.s.store.Messages(ctx, q)
		}
		if err != nil {
			return err
		}
		if len(envs) == 0 || envs[0].GroupSeq > gs.pos+1 {
			// Messages the caller may read were pruned before it got them.
			next, err := gs.s.prunedFrom(ctx, gs.id, gs.windows, gs.pos+1)
			if err != nil {
				return err
			}
			if next != 0 {
				if err := gs.send(ctx, Event{Pruned: &PrunedEvent{GroupID: gs.id, OldestSeq: next}}); err != nil {
					return err
				}
				gs.pos = next - 1
				continue
			}
		}
		for i := range envs {
			if err := gs.send(ctx, Event{Message: &envs[i]}); err != nil {
				return err
			}
			gs.pos = envs[i].GroupSeq
		}
		if !pageFull(envs, q) {
			return nil
		}
	}
}

// send hands ev to the consumer, waiting up to SlowConsumerTimeout.
func (gs *groupStream) send(ctx context.Context, ev Event) error {
	select {
	case gs.out <- ev:
		return nil
	default:
	}
	t := time.NewTimer(gs.s.cfg.SlowConsumerTimeout)
	defer t.Stop()
	select {
	case gs.out <- ev:
		return nil
	case <-t.C:
		return ErrSlowConsumer
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fail ends the stream with err, unless ctx ended.
func (gs *groupStream) fail(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	select {
	case gs.out <- Event{Err: err}:
	case <-ctx.Done():
	case <-time.After(gs.s.cfg.SlowConsumerTimeout):
	}
}
