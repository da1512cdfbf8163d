package server

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

// accountService implements mlsds.v1.AccountService.
type accountService struct{ s *Server }

func (a *accountService) CreateDeviceLink(ctx context.Context, req *connect.Request[mlsdsv1.CreateDeviceLinkRequest]) (*connect.Response[mlsdsv1.CreateDeviceLinkResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("CreateDeviceLink is not built yet"))
}

func (a *accountService) GetClientKeys(ctx context.Context, req *connect.Request[mlsdsv1.GetClientKeysRequest]) (*connect.Response[mlsdsv1.GetClientKeysResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("GetClientKeys is not built yet"))
}
