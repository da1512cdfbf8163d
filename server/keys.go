package server

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

func (a *accountService) AddSignatureKey(ctx context.Context, req *connect.Request[mlsdsv1.AddSignatureKeyRequest]) (*connect.Response[mlsdsv1.AddSignatureKeyResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("AddSignatureKey is not built yet"))
}

func (a *accountService) RemoveSignatureKey(ctx context.Context, req *connect.Request[mlsdsv1.RemoveSignatureKeyRequest]) (*connect.Response[mlsdsv1.RemoveSignatureKeyResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("RemoveSignatureKey is not built yet"))
}
