package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"log/slog"
	"strings"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
)

// AdminService is for the operator, with the admin token of
// Config.AdminToken. The authenticator admits a call to it only with that
// token (checkAdmin), and the token is accepted nowhere else: it is no
// session token, so every other service refuses it as malformed.

var adminPrefix = "/" + mlsdsv1connect.AdminServiceName + "/"

// MinAdminTokenSize is the shortest admin token the server accepts.
const MinAdminTokenSize = 16

var (
	errAdminOff    = errors.New("AdminService is off on this server: start it with an admin token (mlsds serve --admin-token-file FILE)")
	errAdminDenied = errors.New("AdminService needs the admin token of this server: send \"Authorization: Bearer <admin token>\"; session tokens of clients are not accepted")
)

// checkAdmin admits a call to AdminService if it carries the admin token.
// The comparison takes the same time whatever the token sent; neither
// token is ever logged.
func (a *authenticator) checkAdmin(ctx context.Context, peer string, header interface{ Get(string) string }) (context.Context, error) {
	s := a.s
	if s.adminTokenHash == nil {
		return ctx, connect.NewError(connect.CodeUnimplemented, errAdminOff)
	}
	if d := s.authLimit.reserve(s.cfg.Now(), peer); d > 0 {
		s.metrics.authFailures.WithLabelValues("rate_limited").Inc()
		return ctx, rateLimited(d, "admin calls from this address")
	}
	scheme, token, ok := strings.Cut(header.Get("Authorization"), " ")
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	if !ok || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(got[:], s.adminTokenHash) != 1 {
		s.metrics.authFailures.WithLabelValues("admin").Inc()
		return ctx, connect.NewError(connect.CodePermissionDenied, errAdminDenied)
	}
	return context.WithValue(ctx, adminKey{}, true), nil
}

type adminKey struct{}

// adminService implements mlsds.v1.AdminService.
type adminService struct{ s *Server }

func (a *adminService) DeleteClient(ctx context.Context, req *connect.Request[mlsdsv1.AdminServiceDeleteClientRequest]) (*connect.Response[mlsdsv1.AdminServiceDeleteClientResponse], error) {
	s := a.s
	if ctx.Value(adminKey{}) != true {
		return nil, connect.NewError(connect.CodePermissionDenied, errAdminDenied)
	}
	d, err := s.ds.DeleteClientAdmin(ctx, req.Msg.ClientId)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	s.clientDeleted(ctx, d.ClientID, "admin", len(d.Groups), len(d.DeletedGroups))
	return connect.NewResponse(&mlsdsv1.AdminServiceDeleteClientResponse{GroupsLeft: uint32(len(d.Groups))}), nil
}

func (a *adminService) DeleteUser(ctx context.Context, req *connect.Request[mlsdsv1.AdminServiceDeleteUserRequest]) (*connect.Response[mlsdsv1.AdminServiceDeleteUserResponse], error) {
	s := a.s
	if ctx.Value(adminKey{}) != true {
		return nil, connect.NewError(connect.CodePermissionDenied, errAdminDenied)
	}
	ds, err := s.ds.DeleteUser(ctx, req.Msg.UserId)
	out := &mlsdsv1.AdminServiceDeleteUserResponse{}
	for _, d := range ds {
		s.clientDeleted(ctx, d.ClientID, "admin", len(d.Groups), len(d.DeletedGroups))
		out.ClientIds = append(out.ClientIds, d.ClientID)
	}
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "user deleted", slog.String("user", req.Msg.UserId), slog.Int("clients", len(out.ClientIds)))
	return connect.NewResponse(out), nil
}
