package server

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

func (g *groupService) LeaveGroup(ctx context.Context, req *connect.Request[mlsdsv1.LeaveGroupRequest]) (*connect.Response[mlsdsv1.LeaveGroupResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("LeaveGroup is not built yet"))
}
