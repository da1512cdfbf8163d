package server

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

func (g *groupService) CreateJoinLink(ctx context.Context, req *connect.Request[mlsdsv1.CreateJoinLinkRequest]) (*connect.Response[mlsdsv1.CreateJoinLinkResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("CreateJoinLink is not built yet"))
}

func (g *groupService) RevokeJoinLink(ctx context.Context, req *connect.Request[mlsdsv1.RevokeJoinLinkRequest]) (*connect.Response[mlsdsv1.RevokeJoinLinkResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("RevokeJoinLink is not built yet"))
}

func (g *groupService) ListJoinLinks(ctx context.Context, req *connect.Request[mlsdsv1.ListJoinLinksRequest]) (*connect.Response[mlsdsv1.ListJoinLinksResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("ListJoinLinks is not built yet"))
}
