package server

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

// accountService implements mlsds.v1.AccountService.
type accountService struct{ s *Server }

func (a *accountService) CreateDeviceLink(ctx context.Context, req *connect.Request[mlsdsv1.CreateDeviceLinkRequest]) (*connect.Response[mlsdsv1.CreateDeviceLinkResponse], error) {
	s, client := a.s, mustClient(ctx)
	ttl := time.Duration(req.Msg.TtlSeconds) * time.Second
	l, err := s.ds.CreateDeviceLink(ctx, client, ttl)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	return connect.NewResponse(&mlsdsv1.CreateDeviceLinkResponse{
		DeviceLink: l.Secret,
		UserId:     l.UserID,
		ExpiresAt:  timestamppb.New(l.ExpiresAt),
	}), nil
}

func (a *accountService) GetClientKeys(ctx context.Context, req *connect.Request[mlsdsv1.GetClientKeysRequest]) (*connect.Response[mlsdsv1.GetClientKeysResponse], error) {
	s, client := a.s, mustClient(ctx)
	keys, err := s.ds.ClientKeys(ctx, client, req.Msg.ClientIds)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	out := make([]*mlsdsv1.ClientKeys, len(keys))
	for i, k := range keys {
		out[i] = &mlsdsv1.ClientKeys{ClientId: k.ClientID, UserId: k.UserID, CipherSuite: uint32(k.CipherSuite), SignatureKeys: k.SignatureKeys}
	}
	return connect.NewResponse(&mlsdsv1.GetClientKeysResponse{Clients: out}), nil
}
