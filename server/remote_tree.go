package server

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

// PutRemoteTree stores an opaque-mode group's encrypted GroupInfo and
// ratchet tree. Not implemented yet.
func (g *groupService) PutRemoteTree(ctx context.Context, req *connect.Request[mlsdsv1.PutRemoteTreeRequest]) (*connect.Response[mlsdsv1.PutRemoteTreeResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("PutRemoteTree is not implemented yet"))
}

// GetRemoteTree serves an opaque-mode group's encrypted GroupInfo and
// ratchet tree. Not implemented yet.
func (g *groupService) GetRemoteTree(ctx context.Context, req *connect.Request[mlsdsv1.GetRemoteTreeRequest]) (*connect.Response[mlsdsv1.GetRemoteTreeResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("GetRemoteTree is not implemented yet"))
}
