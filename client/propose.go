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
	// Made on the real state: it keeps the new leaf's private key, which
	// this client needs once another member commits the proposal
	// (§12.1.2), and takes the proposal into its cache.
	err := g.proposeLocked(ctx, wire, func() (*mls.MLSMessage, error) {
		pm, err := g.st.ProposeUpdate()
		if err != nil {
			return nil, err
		}
		return &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm}, nil
	})
	if err != nil {
		return Receipt{}, err
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

// proposeLocked makes *wire, unless it is made already: a proposal of
// this client's, by propose, on the group's real state once caught up with
// the group (a proposal is only good in the group's current epoch). The
// state is saved before the proposal leaves, so that a restart still holds
// what propose changed (a new leaf's private key, the handshake ratchet).
func (g *Group) proposeLocked(ctx context.Context, wire *[]byte, propose func() (*mls.MLSMessage, error)) error {
	if *wire != nil {
		return nil
	}
	if err := g.catchUpLocked(ctx, math.MaxUint64); err != nil {
		return err
	}
	if g.removed {
		return ErrRemoved
	}
	msg, err := propose()
	if err != nil {
		return err
	}
	b, err := mlsMessage(msg)
	if err != nil {
		return err
	}
	if err := g.persist(nil); err != nil {
		return err
	}
	*wire = b
	return nil
}

func (g *Group) hasProposalLocked(b []byte) bool {
	for _, p := range g.proposals {
		if string(p) == string(b) {
			return true
		}
	}
	return false
}
