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

// Leaving a group takes another member's Commit of this client's Remove
// proposal. A proposal lives one epoch only (RFC 9420 §12.4): if a Commit
// made before the proposal was seen ends the epoch, the proposal is gone
// and nobody commits it. So the intent to leave is part of the group's
// saved state (Group.leaving), and the client proposes its removal again
// whenever it finds itself a member of an epoch whose proposals do not
// remove it: after processing messages (maybeLeave), after its own Commit,
// and on Open. The intent ends with the removal (applyCommit) or a Rejoin.

// leave records the intent to leave and proposes the removal of this
// client in the current epoch.
func (g *Group) leave(ctx context.Context) error {
	if err := g.lockActive(); err != nil {
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
	return g.proposeLeave(ctx)
}

// maybeLeave proposes the removal of this client again if it means to
// leave and the proposals of the current epoch do not remove it. A
// failure is logged: the next messages of the group try again.
func (g *Group) maybeLeave(ctx context.Context) {
	g.mu.Lock()
	due := g.leaving && !g.removed && !g.broken && !g.closed && !g.selfRemoveProposedLocked()
	g.mu.Unlock()
	if !due {
		return
	}
	err := g.proposeLeave(ctx)
	if err != nil && !errors.Is(err, ErrRemoved) && !errors.Is(err, ErrClosed) && ctx.Err() == nil {
		g.c.log.Warn("proposing the removal of this client again failed", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
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

// proposeLeave sends a Remove proposal of this client unless one is in the
// current epoch already, making it again on the new state when the group
// moves on under it (at most maxAttempts times per call). Finding this
// client removed is success: that is what it asked for.
func (g *Group) proposeLeave(ctx context.Context) error {
	g.leaveMu.Lock()
	defer g.leaveMu.Unlock()
	var lastErr error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, backoff(attempt)); err != nil {
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
			} else if err != nil && !transient(err) {
				return err
			}
		case transient(err):
		default:
			if err := g.checkRemoved(ctx, err); !errors.Is(err, ErrRemoved) {
				return err
			}
			return nil
		}
	}
	return fmt.Errorf("client: leaving group %x failed %d times; try again later: %w", g.id, maxAttempts, lastErr)
}

// leaveOnce sends a Remove proposal of this client in the current epoch,
// after making sure (by catching up with the group's log) that none is
// there already: one this client sent before a restart, or another
// member's.
func (g *Group) leaveOnce(ctx context.Context) error {
	if err := g.lockActive(); err != nil {
		return err
	}
	defer g.mu.Unlock()
	if !g.leaving || g.selfRemoveProposedLocked() {
		return nil
	}
	if err := g.catchUpLocked(ctx, math.MaxUint64); err != nil {
		return err
	}
	switch {
	case g.removed:
		return ErrRemoved
	case g.broken:
		return ErrGroupBroken
	case g.selfRemoveProposedLocked():
		return nil
	}
	// The proposal is made on a copy: the state takes it in when it comes
	// back in the group's order.
	tmp, err := cloneState(g.st)
	if err != nil {
		return err
	}
	pm, err := tmp.Propose(&mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: g.st.Self()}})
	if err != nil {
		return err
	}
	wire, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})
	if err != nil {
		return err
	}
	res, err := g.c.rpc.groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: wire}))
	if err != nil {
		return fmt.Errorf("client: sending a Remove proposal to group %x: %w", g.id, err)
	}
	if err := g.catchUpLocked(ctx, res.Msg.Receipt.GroupSeq); err != nil {
		g.c.log.Debug("catching up after leaving", slog.String("error", err.Error()))
	}
	return nil
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
