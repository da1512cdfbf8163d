package client

import (
	"context"
	"errors"
	"fmt"
	"math"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// proposeUpdate sends an Update proposal of this client's leaf in the
// current epoch, making it again on the new state if the group moves on
// under it (at most maxAttempts times).
func (g *Group) proposeUpdate(ctx context.Context) (Receipt, error) {
	return g.sendRetrying(ctx, "proposing an Update in", func(wire *[]byte) (Receipt, error) { return g.proposeUpdateOnce(ctx, wire) })
}

func (g *Group) proposeUpdateOnce(ctx context.Context, wire *[]byte) (Receipt, error) {
	if err := g.lockActive(); err != nil {
		return Receipt{}, err
	}
	defer g.mu.Unlock()
	if *wire == nil {
		// Catch up first: a proposal is only good in the group's
		// current epoch.
		if err := g.catchUpLocked(ctx, math.MaxUint64); err != nil {
			return Receipt{}, err
		}
		if g.removed {
			return Receipt{}, ErrRemoved
		}
		// Made on the real state: it keeps the new leaf's private key,
		// which this client needs once another member commits the
		// proposal (§12.1.2), and takes the proposal into its cache.
		pm, err := g.st.ProposeUpdate()
		if err != nil {
			return Receipt{}, err
		}
		b, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})
		if err != nil {
			return Receipt{}, err
		}
		// Saved before it leaves, so that a restart still holds the key.
		if err := g.persist(nil); err != nil {
			return Receipt{}, err
		}
		*wire = b
	}
	res, err := g.c.rpc.groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: *wire}))
	if err != nil {
		return Receipt{}, fmt.Errorf("client: sending an Update proposal to group %x: %w", g.id, err)
	}
	rc := res.Msg.Receipt
	// The stream leaves out this client's own messages: account for the
	// proposal here, in the group's order.
	if err := g.catchUpLocked(ctx, rc.GroupSeq-1); err != nil && !errors.Is(err, ErrRemoved) {
		g.c.log.Debug("catching up after an Update proposal; will finish later")
	}
	if g.processed == rc.GroupSeq-1 {
		g.processed = rc.GroupSeq
		g.dirty = true
	}
	if !g.hasProposalLocked(*wire) {
		g.proposals = append(g.proposals, *wire)
		g.dirty = true
	}
	if err := g.flushLocked(); err != nil {
		return Receipt{}, err
	}
	return Receipt{Seq: rc.GroupSeq, Epoch: rc.Epoch, AcceptedAt: rc.AcceptedAt.AsTime()}, nil
}

func (g *Group) hasProposalLocked(b []byte) bool {
	for _, p := range g.proposals {
		if string(p) == string(b) {
			return true
		}
	}
	return false
}
