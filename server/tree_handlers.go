package server

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// Tree queries of transparent groups (issue 5): the whole ratchet tree, the
// roster's leaves and one leaf's path. Each answer names the epoch and
// tree hash it belongs to; partial answers carry an mls.TreeProof.

func (g *groupService) GetRatchetTree(ctx context.Context, req *connect.Request[mlsdsv1.GetRatchetTreeRequest]) (*connect.Response[mlsdsv1.GetRatchetTreeResponse], error) {
	s, client := g.s, mustClient(ctx)
	if err := needGroupID(req.Msg.GroupId); err != nil {
		return nil, err
	}
	rt, err := s.ds.RatchetTree(ctx, client, req.Msg.GroupId)
	if err != nil {
		return nil, s.toConnect(ctx, err, req.Msg.GroupId)
	}
	return connect.NewResponse(&mlsdsv1.GetRatchetTreeResponse{
		GroupId:     rt.GroupID,
		Epoch:       rt.Epoch,
		TreeHash:    rt.TreeHash,
		RatchetTree: rt.RatchetTree,
	}), nil
}

func (g *groupService) GetPath(ctx context.Context, req *connect.Request[mlsdsv1.GetPathRequest]) (*connect.Response[mlsdsv1.GetPathResponse], error) {
	s, client := g.s, mustClient(ctx)
	if err := needGroupID(req.Msg.GroupId); err != nil {
		return nil, err
	}
	p, err := s.ds.TreePath(ctx, client, req.Msg.GroupId, mls.LeafIndex(req.Msg.LeafIndex))
	if err != nil {
		return nil, s.toConnect(ctx, err, req.Msg.GroupId)
	}
	return connect.NewResponse(&mlsdsv1.GetPathResponse{
		GroupId:   p.GroupID,
		Epoch:     p.Epoch,
		TreeHash:  p.TreeHash,
		LeafIndex: uint32(p.Leaf),
		LeafCount: p.LeafCount,
		Proof:     p.Proof,
	}), nil
}

// addRosterLeaves fills in the leaves part of a GetRoster answer
// (include_leaves).
func (g *groupService) addRosterLeaves(ctx context.Context, client string, groupID []byte, leafIndices []uint32, resp *mlsdsv1.GetRosterResponse) error {
	s := g.s
	const maxLeafIndices = 1 << 16
	if len(leafIndices) > maxLeafIndices {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("ask for at most %d leaves at once, or for all with no leaf_indices", maxLeafIndices))
	}
	leaves := make([]mls.LeafIndex, len(leafIndices))
	for k, l := range leafIndices {
		leaves[k] = mls.LeafIndex(l)
	}
	r, err := s.ds.TreeRoster(ctx, client, groupID, leaves...)
	if err != nil {
		return s.toConnect(ctx, err, groupID)
	}
	resp.Epoch, resp.TreeHash, resp.LeafCount, resp.Proof = r.Epoch, r.TreeHash, r.LeafCount, r.Proof
	resp.Leaves = make([]*mlsdsv1.RosterLeaf, len(r.Leaves))
	for k, l := range r.Leaves {
		resp.Leaves[k] = &mlsdsv1.RosterLeaf{LeafIndex: uint32(l.Index), LeafNode: l.LeafNode}
	}
	return nil
}
