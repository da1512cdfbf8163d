package server

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

func (a *accountService) DeleteClient(ctx context.Context, req *connect.Request[mlsdsv1.DeleteClientRequest]) (*connect.Response[mlsdsv1.DeleteClientResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("DeleteClient is not built yet"))
}
