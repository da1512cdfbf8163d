package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
)

type clientKey struct{}

// ClientID returns the authenticated client a call acts for.
func ClientID(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(clientKey{}).(string)
	return id, ok && id != ""
}

// mustClient returns the authenticated client of a call; the authenticator
// guarantees there is one for every procedure outside AuthService.
func mustClient(ctx context.Context) string {
	id, ok := ClientID(ctx)
	if !ok {
		panic("server: handler reached without an authenticated client")
	}
	return id
}

var authPrefix = "/" + mlsdsv1connect.AuthServiceName + "/"

// authenticator checks the session token of every call outside
// AuthService and puts the client id in the context; AuthService calls are
// limited per remote address instead.
type authenticator struct {
	s *Server

	// verified remembers the tokens that verified, until they expire, so
	// that a client's every call does not decode and MAC its token again.
	// A token is a function of the server's secret alone, so a verified
	// one stays good until its expiry; whether its client still exists is
	// checked at every call (checkLive).
	mu       sync.Mutex
	verified map[string]verifiedToken
}

type verifiedToken struct {
	id  string
	exp time.Time
}

// maxVerifiedTokens bounds the verified tokens remembered; when full, the
// cache starts over.
const maxVerifiedTokens = 100_000

// verify returns the client of a session token, from the cache when the
// token verified before and has not expired since.
func (a *authenticator) verify(token string) (string, error) {
	now := a.s.cfg.Now()
	a.mu.Lock()
	v, ok := a.verified[token]
	a.mu.Unlock()
	if ok && now.Before(v.exp) {
		return v.id, nil
	}
	id, err := a.s.tokens.verify(token)
	if err != nil {
		return "", err
	}
	if exp, ok := sessionExpiry(token); ok {
		a.mu.Lock()
		if a.verified == nil || len(a.verified) >= maxVerifiedTokens {
			a.verified = make(map[string]verifiedToken)
		}
		a.verified[token] = verifiedToken{id: id, exp: exp}
		a.mu.Unlock()
	}
	return id, nil
}

var errNoToken = errors.New("this call needs a session token: send \"Authorization: Bearer <token>\" from AuthService.Authenticate")

func (a *authenticator) check(ctx context.Context, procedure, peer string, header interface{ Get(string) string }) (context.Context, error) {
	if strings.HasPrefix(procedure, authPrefix) {
		if d := a.s.authLimit.reserve(a.s.cfg.Now(), peer); d > 0 {
			a.s.metrics.authFailures.WithLabelValues("rate_limited").Inc()
			return ctx, rateLimited(d, "authentication calls from this address")
		}
		return ctx, nil
	}
	if strings.HasPrefix(procedure, adminPrefix) {
		return a.checkAdmin(ctx, peer, header) // admin.go
	}
	if membershipCall(procedure, header) {
		return ctx, nil // no session: the handler verifies the proof (deniable.go)
	}
	h := header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		a.s.metrics.authFailures.WithLabelValues("no_token").Inc()
		return ctx, connect.NewError(connect.CodeUnauthenticated, errNoToken)
	}
	token = strings.TrimSpace(token)
	id, err := a.verify(token)
	if err != nil {
		a.s.metrics.authFailures.WithLabelValues("bad_token").Inc()
		return ctx, connect.NewError(connect.CodeUnauthenticated, err)
	}
	// The client may have been deleted since the token was issued
	// (deletion.go).
	exp, _ := sessionExpiry(token)
	if err := a.s.checkLive(ctx, id, exp); err != nil {
		return ctx, err
	}
	noteClient(ctx, id)
	return context.WithValue(ctx, clientKey{}, id), nil
}

func (a *authenticator) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		ctx, err := a.check(ctx, req.Spec().Procedure, req.Peer().Addr, req.Header())
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (a *authenticator) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a *authenticator) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := a.check(ctx, conn.Spec().Procedure, conn.Peer().Addr, conn.RequestHeader())
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

func rateLimited(d time.Duration, what string) error {
	ce := connect.NewError(connect.CodeResourceExhausted,
		errors.New("rate limited ("+what+"); retry after "+d.Round(time.Millisecond).String()))
	addDetail(ce, &mlsdsv1.RateLimited{RetryAfter: durationpb.New(d), What: what})
	return ce
}

// observer counts and logs every call. It is the outermost interceptor, so
// it sees the code the client sees.
type observer struct{ s *Server }

func shortProcedure(p string) string {
	// "/mlsds.v1.GroupService/Send" -> "GroupService/Send"
	p = strings.TrimPrefix(p, "/")
	if i := strings.LastIndex(p[:max(0, strings.Index(p, "/"))], "."); i >= 0 {
		p = p[i+1:]
	}
	return p
}

func codeLabel(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}

func (o *observer) done(ctx context.Context, procedure string, start time.Time, err error, streaming bool) {
	proc := shortProcedure(procedure)
	code := codeLabel(err)
	o.s.metrics.requests.WithLabelValues(proc, code).Inc()
	d := time.Since(start)
	if !streaming {
		o.s.metrics.requestDuration.WithLabelValues(proc).Observe(d.Seconds())
	}
	// One line per call: refusals at info (the code and the client, never
	// a token or a message), failures of the server at error, the rest at
	// debug. A client hanging up is not the server's failure.
	level := slog.LevelDebug
	switch c := connect.CodeOf(err); {
	case err == nil, c == connect.CodeCanceled:
	case c == connect.CodeInternal || c == connect.CodeUnknown || c == connect.CodeDataLoss:
		level = slog.LevelError
	default:
		level = slog.LevelInfo
	}
	if !o.s.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{slog.String("procedure", proc), slog.String("code", code), slog.Duration("duration", d)}
	if id, ok := ClientID(ctx); ok {
		attrs = append(attrs, slog.String("client", id))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	o.s.log.LogAttrs(ctx, level, "rpc", attrs...)
}

func (o *observer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		start := time.Now()
		cc := &callClient{}
		res, err := next(context.WithValue(ctx, callClientKey{}, cc), req)
		err = hungUp(ctx, err)
		o.done(cc.ctx(ctx), req.Spec().Procedure, start, err, false)
		return res, err
	}
}

func (o *observer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (o *observer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		cc := &callClient{}
		err := hungUp(ctx, next(context.WithValue(ctx, callClientKey{}, cc), conn))
		o.done(cc.ctx(ctx), conn.Spec().Procedure, start, err, true)
		return err
	}
}

// hungUp turns the bare context error of a call whose client went away
// (or whose deadline passed) into the matching Connect code, so that it
// counts and logs as that and not as an unknown failure of the server.
func hungUp(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil {
		return err
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	return err
}

// callClient lets the observer, which runs outside the authenticator, log
// the client a call acted for: the handler records it.
type callClient struct{ id string }
type callClientKey struct{}

func (c *callClient) ctx(ctx context.Context) context.Context {
	if c.id == "" {
		return ctx
	}
	return context.WithValue(ctx, clientKey{}, c.id)
}

// noteClient records the authenticated client for the observer's log line.
func noteClient(ctx context.Context, id string) {
	if cc, ok := ctx.Value(callClientKey{}).(*callClient); ok {
		cc.id = id
	}
}
