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
// Credential (RFC 9420 §5.3.1): the identity of a basic credential, or the
// client an x509 credential's verified leaf certificate names
// (ds.CredentialClientID).
func (s *Server) clientIDFromCredential(ctx context.Context, data, signatureKey []byte) (string, error) {
	id, err := s.ds.CredentialClientID(data, signatureKey)
	switch {
	case err == nil:
		return id, nil
	case errors.Is(err, ds.ErrPermissionDenied):
		s.metrics.authFailures.WithLabelValues("bad_credential").Inc()
		return "", connect.NewError(connect.CodePermissionDenied, err)
	}
	var im *ds.InvalidMessageError
	if errors.As(err, &im) || errors.Is(err, ds.ErrInvalidArgument) {
		return "", withDetail(connect.CodeInvalidArgument, fmt.Errorf("credential: %w", err), &mlsdsv1.InvalidMessage{Reason: err.Error(), RfcSection: "5.3"})
	}
	return "", s.toConnect(ctx, err, nil)
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
	id, err := s.clientIDFromCredential(ctx, m.Credential, m.SignatureKey)
	if err != nil {
		return nil, err
	}
	if m.UserId != "" {
		if err := ds.CheckIdentifier("user", m.UserId); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, err)
		}
	}
	if m.CipherSuite > 0xffff {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cipher suite %d is not a 16-bit value", m.CipherSuite))
	}
	cs := mls.CipherSuite(m.CipherSuite)
	if !cs.Supported() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cipher suite %d is not supported", m.CipherSuite))
	}
	// Proof of possession first: nothing below answers a caller that does
	// not hold the key it registers. A KeyPackage made with the key proves
	// it too, for MLS libraries that cannot sign chosen bytes.
	if len(m.KeyPackage) > 0 {
		if len(m.Proof) > 0 {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("give proof or key_package, not both"))
		}
		err = s.ds.VerifyRegisterKeyPackage(m.Credential, m.SignatureKey, cs, m.KeyPackage)
	} else {
		err = ds.VerifyRegisterProof(m.Credential, m.SignatureKey, cs, m.UserId, m.Proof)
	}
	if err != nil {
		s.metrics.authFailures.WithLabelValues("bad_proof").Inc()
		return nil, s.toConnect(ctx, err, nil)
	}
	en, err := s.checkEnrollment(id, m.UserId, m.GetEnrollmentToken(), m.GetJwt())
	if err != nil {
		s.metrics.authFailures.WithLabelValues("enrollment").Inc()
		return nil, connect.NewError(connect.CodePermissionDenied, err)
	}
	refund, err := s.chargeRegistration(ctx, id, req.Peer().Addr)
	if err != nil {
		return nil, err
	}
	got, err := s.ds.Register(ctx, ds.Registration{
		Client:      ds.Client{ID: id, UserID: en.userID, CipherSuite: cs, SignatureKey: m.SignatureKey},
		DeviceLink:  m.DeviceLink,
		UserVouched: en.vouched,
		Once:        en.once,
	})
	if err != nil {
		refund()
	}
	switch {
	case errors.Is(err, ds.ErrRegistrationRefused):
		// One answer whatever the cause, so that a refusal does not tell
		// which ids are registered; the cause goes to the log.
		s.metrics.authFailures.WithLabelValues("id_unavailable").Inc()
		s.log.LogAttrs(ctx, slog.LevelInfo, "registration refused", slog.String("client", id), slog.String("error", err.Error()))
		return nil, connect.NewError(connect.CodePermissionDenied, ds.ErrRegistrationRefused)
	case errors.Is(err, ds.ErrAlreadyUsed):
		s.metrics.authFailures.WithLabelValues("enrollment").Inc()
		return nil, connect.NewError(connect.CodePermissionDenied,
			fmt.Errorf("%w: this JWT registered a client already; ask the identity service for a new one", errEnrollment))
	case err != nil:
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
	if m.IdToken != "" {
		if len(m.Challenge) > 0 || len(m.Signature) > 0 {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("give id_token or challenge and signature, not both"))
		}
		return a.loginIDToken(ctx, m.IdToken)
	}
	nonce, exp, err := s.tokens.redeem(m.ClientId, m.Challenge)
	if err != nil {
		s.metrics.authFailures.WithLabelValues("bad_challenge").Inc()
		return nil, connect.NewError(connect.CodeUnauthenticated, err)
	}
	// Single use on every node that shares the store, not only this one.
	if err := s.ds.SpendOnce(ctx, "challenge", nonce, exp); errors.Is(err, ds.ErrAlreadyUsed) {
		s.metrics.authFailures.WithLabelValues("bad_challenge").Inc()
		return nil, connect.NewError(connect.CodeUnauthenticated, errBadChallenge)
	} else if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	// Any of the client's registered keys may sign (ds/keys.go).
	c, err := s.ds.VerifyClientSignature(ctx, m.ClientId, AuthLabel, m.Challenge, m.Signature)
	if errors.Is(err, ds.ErrNotFound) || errors.Is(err, ds.ErrPermissionDenied) {
		s.metrics.authFailures.WithLabelValues("bad_signature").Inc()
		return nil, connect.NewError(connect.CodeUnauthenticated, errAuthFailed)
	}
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	token, exp := s.tokens.session(c.ID)
	s.log.LogAttrs(ctx, slog.LevelDebug, "client authenticated", slog.String("client", c.ID))
	return connect.NewResponse(&mlsdsv1.AuthenticateResponse{SessionToken: token, ExpiresAt: timestamppb.New(exp)}), nil
}

// WhatRegistrations is the RateLimited.what of the limit on new
// registrations per address.
const WhatRegistrations = "registrations from this address"

// chargeRegistration charges the registration of client id to the
// caller's address (Config.RegistrationsPerHour), unless id is registered
// already (registering again is free; a refusal costs nothing either). It
// returns a function that gives the charge back, for a registration that
// fails.
func (s *Server) chargeRegistration(ctx context.Context, id, peer string) (refund func(), err error) {
	if s.regLimit == nil {
		return func() {}, nil
	}
	if _, err := s.ds.Client(ctx, id); err == nil {
		return func() {}, nil
	} else if !errors.Is(err, ds.ErrNotFound) {
		return nil, s.toConnect(ctx, err, nil)
	}
	d, refund := s.regLimit.take(s.cfg.Now(), peer)
	if refund == nil {
		s.metrics.quotaRefusals.WithLabelValues(quotaLabel(WhatRegistrations)).Inc()
		return nil, rateLimited(d, WhatRegistrations)
	}
	return refund, nil
}
