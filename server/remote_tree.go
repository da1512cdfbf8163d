package server

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
)

// PutRemoteTree stores an opaque-mode group's encrypted GroupInfo and
// ratchet tree for its current epoch (members only); see
// ds.Service.PutRemoteTree.
func (g *groupService) PutRemoteTree(ctx context.Context, req *connect.Request[mlsdsv1.PutRemoteTreeRequest]) (*connect.Response[mlsdsv1.PutRemoteTreeResponse], error) {
	if _, ok := ClientID(ctx); !ok {
		return g.putRemoteTreeDeniable(ctx, req) // deniable.go
	}
	s, client := g.s, mustClient(ctx)
	m := req.Msg
	if err := needGroupID(m.GroupId); err != nil {
		return nil, err
	}
	if m.RemoteTree == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("remote_tree is missing: give the epoch and the encrypted GroupInfo and ratchet tree"))
	}
	err := s.ds.PutRemoteTree(ctx, client, m.GroupId, ds.RemoteTree{Epoch: m.RemoteTree.Epoch, Blob: m.RemoteTree.Blob})
	if err != nil {
		return nil, s.toConnect(ctx, err, m.GroupId)
	}
	return connect.NewResponse(&mlsdsv1.PutRemoteTreeResponse{}), nil
}

// GetRemoteTree serves an opaque-mode group's encrypted GroupInfo and
// ratchet tree of the current and the previous epoch, newest first, to
// members and to clients with a pending Welcome of the group.
func (g *groupService) GetRemoteTree(ctx context.Context, req *connect.Request[mlsdsv1.GetRemoteTreeRequest]) (*connect.Response[mlsdsv1.GetRemoteTreeResponse], error) {
	if _, ok := ClientID(ctx); !ok {
		return g.getRemoteTreeDeniable(ctx, req) // deniable.go
	}
	s, client := g.s, mustClient(ctx)
	if err := needGroupID(req.Msg.GroupId); err != nil {
		return nil, err
	}
	r, err := s.ds.RemoteTrees(ctx, client, req.Msg.GroupId)
	if err != nil {
		return nil, s.toConnect(ctx, err, req.Msg.GroupId)
	}
	return connect.NewResponse(remoteTrees(r)), nil
}

// remoteTrees is the GetRemoteTree answer holding r.
func remoteTrees(r ds.RemoteTreesResult) *mlsdsv1.GetRemoteTreeResponse {
	res := &mlsdsv1.GetRemoteTreeResponse{GroupId: r.GroupID, Epoch: r.Epoch}
	for _, t := range r.Trees {
		res.RemoteTrees = append(res.RemoteTrees, remoteTree(t))
	}
	return res
}

func remoteTree(t ds.RemoteTree) *mlsdsv1.RemoteTree {
	return &mlsdsv1.RemoteTree{Epoch: t.Epoch, Blob: t.Blob}
}

// bundleRemoteTree converts the remote tree of a commit bundle.
func bundleRemoteTree(t *mlsdsv1.RemoteTree) *ds.RemoteTree {
	if t == nil {
		return nil
	}
	return &ds.RemoteTree{Epoch: t.Epoch, Blob: t.Blob}
}
