package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// Leaving a group: the client hands the server its own Remove proposal
// with LeaveGroup (transparent groups; in opaque ones it sends the
// proposal first), the server stops delivering the group to it at once,
// and the client drops the group (EventLeft). The other members' clients
// commit the removal: the designated one commits the pending proposals,
// and should the proposal be lost (a Commit made before it was seen ends
// the epoch), the removal of clients whose proposal an epoch ended without
// or who are no longer on the server's roster (removeStale). The intent
// to leave is saved (Group.leaving) until the server confirms, so that a
// client that stops in between finishes on Open.

// leave records the intent to leave and leaves.
func (g *Group) leave(ctx context.Context) error {
	if err := g.lockOpen(); err != nil {
		return err
	}
	if !g.leaving {
		g.leaving = true
		if err := g.persist(nil); err != nil {
			g.leaving = false
			g.mu.Unlock()
			return err
		}
	}
	g.mu.Unlock()
	return g.finishLeave(ctx)
}

// maybeLeave finishes a Leave that was interrupted (a failure, or the
// client stopped). A failure is logged: the next messages of the group,
// or the next Open, try again.
func (g *Group) maybeLeave(ctx context.Context) {
	g.mu.Lock()
	due := g.leaving && !g.removed && !g.closed
	g.mu.Unlock()
	if !due {
		return
	}
	err := g.finishLeave(ctx)
	if err != nil && !errors.Is(err, ErrClosed) && ctx.Err() == nil {
		g.c.log.Warn("leaving the group failed; will try again", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
	}
}

// syncAndLeave is sync, then maybeLeave.
func (g *Group) syncAndLeave(ctx context.Context) error {
	if err := g.sync(ctx); err != nil {
		return err
	}
	g.maybeLeave(ctx)
	return nil
}

// finishLeave leaves the group on the server and drops it, making the
// Remove proposal again on the new state when the group moves on under it
// (at most maxAttempts times per call). Finding this client removed is
// success: that is what it asked for.
func (g *Group) finishLeave(ctx context.Context) error {
	g.leaveMu.Lock()
	defer g.leaveMu.Unlock()
	var lastErr error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, retryAfter(lastErr, attempt)); err != nil {
				return err
			}
		}
		err := g.leaveOnce(ctx)
		if err == nil || errors.Is(err, ErrRemoved) {
			return nil
		}
		lastErr = err
		switch {
		case epochConflict(err):
			g.c.rebases.Add(1)
			if err := g.sync(ctx); errors.Is(err, ErrRemoved) {
				return nil
			} else if err != nil && !transient(err) && !errors.Is(err, ErrGroupBroken) {
				return err
			}
		case transient(err):
		default:
			return err
		}
	}
	return fmt.Errorf("client: leaving group %x failed %d times; try again later: %w", g.id, maxAttempts, lastErr)
}

// leaveOnce makes this client's Remove proposal for the current epoch
// (after catching up with the group's log; none if the state is broken),
// hands it to the server with LeaveGroup, takes in what the server
// delivered up to then, and drops the group.
func (g *Group) leaveOnce(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.closed:
		return ErrClosed
	case g.removed:
		return ErrRemoved
	case !g.leaving:
		return nil
	}
	var proposal []byte
	if !g.broken {
		if err := g.catchUpLocked(ctx, math.MaxUint64); err != nil {
			return err
		}
		if g.removed {
			return ErrRemoved
		}
	}
	if !g.broken && !g.selfRemoveProposedLocked() {
		// Made on a copy: the state takes it in when it comes back in
		// the group's order.
		tmp, err := cloneState(g.st)
		if err != nil {
			return err
		}
		pm, err := tmp.Propose(&mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: g.st.Self()}})
		if err != nil {
			return err
		}
		if proposal, err = mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm}); err != nil {
			return err
		}
	}
	if g.opaque && proposal != nil {
		// LeaveGroup takes the proposal of transparent groups only.
		if _, err := g.c.rpc.groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: proposal})); err != nil {
			return fmt.Errorf("client: sending a Remove proposal to group %x: %w", g.id, err)
		}
		proposal = nil
	}
	res, err := g.c.rpc.groups.LeaveGroup(ctx, connect.NewRequest(&mlsdsv1.LeaveGroupRequest{GroupId: g.id, RemoveProposal: proposal}))
	var lastSeq uint64
	switch {
	case err == nil:
		lastSeq = res.Msg.LastSeq
	case connect.CodeOf(err) == connect.CodeUnimplemented:
		// A server without LeaveGroup keeps delivering the group (this
		// client ignores it); the proposal goes as a message.
		if proposal != nil {
			sres, err := g.c.rpc.groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: proposal}))
			if err != nil {
				return fmt.Errorf("client: sending a Remove proposal to group %x: %w", g.id, err)
			}
			lastSeq = sres.Msg.Receipt.GroupSeq
		}
	case errorDetail[*mlsdsv1.NotMember](err) != nil:
		// The server has this client out already.
	default:
		return fmt.Errorf("client: leaving group %x: %w", g.id, err)
	}
	if lastSeq > g.processed && !g.broken {
		// What the server delivered up to the leave is this client's to
		// read; nothing after it comes.
		if err := g.catchUpLocked(ctx, lastSeq); err != nil {
			g.c.log.Debug("catching up while leaving", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
		}
	}
	if g.removed {
		return nil // a Commit removed this client meanwhile: EventRemoved
	}
	e := Event{Kind: EventLeft, GroupID: g.id, Seq: max(lastSeq, g.processed), Epoch: g.st.Epoch(), Sender: g.c.id, Members: memberIDs(g.st)}
	g.removed, g.leaving, g.pending, g.proposals, g.own = true, false, nil, nil, nil
	g.unsaved = append(g.unsaved, e)
	return g.persist(nil)
}

// selfRemoveProposedLocked reports whether the proposals of the current
// epoch remove this client.
func (g *Group) selfRemoveProposedLocked() bool {
	for _, b := range g.proposals {
		m, err := mls.ParseMLSMessage(b)
		if err != nil || m.PublicMessage == nil || m.PublicMessage.Content.Proposal == nil {
			continue
		}
		if p := m.PublicMessage.Content.Proposal; p.ProposalType == mls.ProposalTypeRemove && p.Remove != nil && p.Remove.Removed == g.st.Self() {
			return true
		}
	}
	return false
}

// checkRemoved turns the server's NotMember refusal of a message into
// ErrRemoved when the group's log shows that this client was removed (a
// Commit it had not processed yet); otherwise it returns err.
func (g *Group) checkRemoved(ctx context.Context, err error) error {
	if errorDetail[*mlsdsv1.NotMember](err) == nil {
		return err
	}
	if serr := g.sync(ctx); errors.Is(serr, ErrRemoved) || g.isRemoved() {
		return ErrRemoved
	}
	return err
}

// waitRemoved waits until the state written says this client is removed.
func (g *Group) waitRemoved(ctx context.Context) error {
	for {
		g.mu.Lock()
		switch {
		case g.removed && !g.dirty:
			g.mu.Unlock()
			return nil
		case g.broken && !g.dirty:
			g.mu.Unlock()
			return ErrGroupBroken
		case g.closed:
			g.mu.Unlock()
			return ErrClosed
		}
		if g.ended == nil {
			g.ended = make(chan struct{})
		}
		ch := g.ended
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-g.c.ctx.Done():
			return ErrClosed
		}
	}
}
