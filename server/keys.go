package server

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
)

// AddSignatureKey and RemoveSignatureKey manage the caller's signature
// keys (ds/keys.go).

func (a *accountService) AddSignatureKey(ctx context.Context, req *connect.Request[mlsdsv1.AddSignatureKeyRequest]) (*connect.Response[mlsdsv1.AddSignatureKeyResponse], error) {
	s, client := a.s, mustClient(ctx)
	m := req.Msg
	proof := ds.KeyProof{Signature: m.GetSignature(), KeyPackage: m.GetKeyPackage()}
	if err := s.ds.AddSignatureKey(ctx, client, m.SignatureKey, proof); err != nil {
		if errors.Is(err, ds.ErrPermissionDenied) {
			s.metrics.authFailures.WithLabelValues("bad_proof").Inc()
		}
		return nil, s.toConnect(ctx, err, nil)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "signature key added", slog.String("client", client))
	return connect.NewResponse(&mlsdsv1.AddSignatureKeyResponse{}), nil
}

func (a *accountService) RemoveSignatureKey(ctx context.Context, req *connect.Request[mlsdsv1.RemoveSignatureKeyRequest]) (*connect.Response[mlsdsv1.RemoveSignatureKeyResponse], error) {
	s, client := a.s, mustClient(ctx)
	err := s.ds.RemoveSignatureKey(ctx, client, req.Msg.SignatureKey)
	switch {
	case errors.Is(err, ds.ErrLastKey):
		return nil, connect.NewError(connect.CodeFailedPrecondition, ds.ErrLastKey)
	case err != nil:
		return nil, s.toConnect(ctx, err, nil)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "signature key removed", slog.String("client", client))
	return connect.NewResponse(&mlsdsv1.RemoveSignatureKeyResponse{}), nil
}
