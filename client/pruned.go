package client

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

// Pruned messages. A Delivery Service deletes a group's messages once every
// member has them, and in any case after its retention (mlsds: 30 days by
// default). A client that was away longer, or whose position is older than
// what the server keeps for another reason, learns it from the server (the
// Pruned error of Fetch, the PrunedEvent of the stream): the messages
// between its position and the oldest one kept are gone, and with them
// possibly a Commit it needed to follow the group. The client reports it
// with EventPruned and then:
//
//   - in a transparent group, rejoins on its own by a resync external
//     Commit from the GroupInfo the server serves, and reports it with
//     EventRejoined (Err wraps ErrPruned);
//   - in an opaque group, asks the server for the group's epoch (the
//     remote trees' one): if the group is still at this client's epoch no
//     Commit was lost, only application messages, and the group goes on;
//     otherwise the client cannot follow the group (the Group's methods
//     return ErrGroupBroken, EventPruned's Err says so) until it rejoins
//     with Client.JoinExternalWith and a GroupInfo from another member, or
//     a member removes it and adds it again.

// ErrPruned is the reason (errors.Is) in EventPruned and in the
// EventRejoined that follows it: the server deleted messages of the group
// that this client had not received, because every other member had them
// or they outlived the server's retention.
var ErrPruned = errors.New("client: the server pruned messages of the group before this client received them")

// prunedFrom returns the oldest GroupSeq the server still keeps if err is
// its Pruned refusal, else 0.
func prunedFrom(err error) uint64 {
	if p := errorDetail[*mlsdsv1.Pruned](err); p != nil {
		return p.OldestSeq
	}
	return 0
}

// handlePruned handles the stream's PrunedEvent: the messages of the group
// after this client's position and before p.OldestSeq are gone.
func (c *Client) handlePruned(ctx context.Context, p *mlsdsv1.PrunedEvent) error {
	g := c.group(p.GroupId)
	if g == nil {
		return nil
	}
	g.mu.Lock()
	err := g.prunedLocked(ctx, p.OldestSeq)
	g.mu.Unlock()
	if err != nil {
		return err
	}
	g.afterProcessing(ctx) // rejoins a transparent group (maybeRecover)
	return nil
}

// prunedLocked moves the group's position to just before oldest, over the
// messages the server pruned, reports it (EventPruned) and marks the group
// broken if a Commit may be among them (see the top of this file). It
// writes the state.
func (g *Group) prunedLocked(ctx context.Context, oldest uint64) error {
	if g.removed || g.closed || oldest <= g.processed+1 {
		return nil
	}
	reason := fmt.Errorf("%w: group %x, GroupSeq %d to %d", ErrPruned, g.id, g.processed+1, oldest-1)
	ev := Event{Kind: EventPruned, GroupID: g.id, Seq: oldest, Epoch: g.st.Epoch(), Err: reason}
	broken := true
	if g.opaque {
		// The remote trees come with the group's current epoch: the same
		// as this client's means that no Commit was lost.
		res, err := g.c.rpc.groups.GetRemoteTree(ctx, connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: g.id}))
		switch {
		case err == nil && res.Msg.Epoch == g.st.Epoch():
			broken = false
		case err != nil && transient(err):
			return fmt.Errorf("client: asking the epoch of group %x after pruned messages: %w", g.id, err)
		default:
			ev.Err = fmt.Errorf("%w; a Commit was among them, and an opaque group cannot be rejoined from the server: "+
				"rejoin with Client.JoinExternalWith and a GroupInfo from another member, or have a member remove this client and add it again", reason)
		}
	}
	g.processed = oldest - 1
	for seq := range g.own {
		if seq < oldest {
			delete(g.own, seq)
		}
	}
	g.dirty = true
	if broken {
		// A transparent group is rejoined by maybeRecover, with reason.
		g.broken, g.refused, g.brokenErr = true, false, reason
	}
	g.unsaved = append(g.unsaved, ev)
	return g.persist(nil)
}

// skipPrunedLocked passes over a message of a group that pruning broke:
// it cannot be read, and was reported already (EventPruned). A transparent
// group is rejoined after it.
func (g *Group) skipPrunedLocked(seq uint64) bool {
	if !g.broken || !errors.Is(g.brokenErr, ErrPruned) {
		return false
	}
	g.processed, g.dirty = seq, true
	return true
}
