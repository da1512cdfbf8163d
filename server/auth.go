package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"unicode"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// authService implements mlsds.v1.AuthService.
type authService struct{ s *Server }

var errAuthFailed = errors.New("authentication failed: unknown client, or the signature does not verify with the registered key over this challenge")

// clientIDFromCredential returns the client id of a TLS-encoded MLS
// Credential: the identity of a basic credential (RFC 9420 §5.3.1).
func clientIDFromCredential(data []byte) (string, error) {
	var c mls.Credential
	if err := c.UnmarshalBinary(data); err != nil {
		return "", fmt.Errorf("credential: %w", err)
	}
	if c.CredentialType != mls.CredentialTypeBasic {
		return "", fmt.Errorf("credential is of type %d; mlsds identifies clients by basic credentials (type 1)", c.CredentialType)
	}
	id := string(c.Identity)
	if err := checkPrintable(id); err != nil {
		return "", fmt.Errorf("credential identity %w", err)
	}
	return id, nil
}

// checkPrintable keeps ids that end up in logs and in other clients'
// answers free of control characters. ds checks length and UTF-8.
func checkPrintable(id string) error {
	for _, r := range id {
		if unicode.IsControl(r) {
			return errors.New("contains control characters")
		}
	}
	return nil
}

func (a *authService) RegisterClient(ctx context.Context, req *connect.Request[mlsdsv1.RegisterClientRequest]) (*connect.Response[mlsdsv1.RegisterClientResponse], error) {
	s := a.s
	m := req.Msg
	id, err := clientIDFromCredential(m.Credential)
	if err != nil {
		return nil, withDetail(connect.CodeInvalidArgument, err, &mlsdsv1.InvalidMessage{Reason: err.Error(), RfcSection: "5.3"})
	}
	if err := checkPrintable(m.UserId); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("user id %w", err))
	}
	if m.CipherSuite > 0xffff {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cipher suite %d is not a 16-bit value", m.CipherSuite))
	}
	userID, err := s.checkEnrollment(id, m.UserId, m.GetEnrollmentToken(), m.GetJwt())
	if err != nil {
		s.metrics.authFailures.WithLabelValues("enrollment").Inc()
		return nil, connect.NewError(connect.CodePermissionDenied, err)
	}
	c := ds.Client{ID: id, UserID: userID, CipherSuite: mls.CipherSuite(m.CipherSuite), SignatureKey: m.SignatureKey}
	if err := s.ds.RegisterClient(ctx, c); err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	got, err := s.ds.Client(ctx, id)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "client registered", slog.String("client", got.ID), slog.String("user", got.UserID),
		slog.Int("cipher_suite", int(got.CipherSuite)))
	return connect.NewResponse(&mlsdsv1.RegisterClientResponse{ClientId: got.ID, UserId: got.UserID}), nil
}

func (a *authService) GetChallenge(ctx context.Context, req *connect.Request[mlsdsv1.GetChallengeRequest]) (*connect.Response[mlsdsv1.GetChallengeResponse], error) {
	id := req.Msg.ClientId
	if id == "" || len(id) > 1024 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("client_id must name a registered client"))
	}
	// A challenge is issued for any id, registered or not, so that the
	// call does not tell who is registered.
	c, exp, err := a.s.tokens.challenge(id)
	if err != nil {
		return nil, a.s.toConnect(ctx, err, nil)
	}
	return connect.NewResponse(&mlsdsv1.GetChallengeResponse{Challenge: c, ExpiresAt: timestamppb.New(exp), Label: AuthLabel}), nil
}

func (a *authService) Authenticate(ctx context.Context, req *connect.Request[mlsdsv1.AuthenticateRequest]) (*connect.Response[mlsdsv1.AuthenticateResponse], error) {
	s := a.s
	m := req.Msg
	if err := s.tokens.redeem(m.ClientId, m.Challenge); err != nil {
		s.metrics.authFailures.WithLabelValues("bad_challenge").Inc()
		return nil, connect.NewError(connect.CodeUnauthenticated, err)
	}
	c, err := s.ds.Client(ctx, m.ClientId)
	if errors.Is(err, ds.ErrNotFound) {
		s.metrics.authFailures.WithLabelValues("bad_signature").Inc()
		return nil, connect.NewError(connect.CodeUnauthenticated, errAuthFailed)
	}
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	if err := c.CipherSuite.VerifyWithLabel(c.SignatureKey, AuthLabel, m.Challenge, m.Signature); err != nil {
		s.metrics.authFailures.WithLabelValues("bad_signature").Inc()
		return nil, connect.NewError(connect.CodeUnauthenticated, errAuthFailed)
	}
	token, exp := s.tokens.session(c.ID)
	s.log.LogAttrs(ctx, slog.LevelDebug, "client authenticated", slog.String("client", c.ID))
	return connect.NewResponse(&mlsdsv1.AuthenticateResponse{SessionToken: token, ExpiresAt: timestamppb.New(exp)}), nil
}
