package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/mls"
)

// rpc holds the Connect clients of the services and the session
// token, which it renews on its own: before it expires, and once again
// when the server says a call is unauthenticated.
type rpc struct {
	auth     mlsdsv1connect.AuthServiceClient
	kps      mlsdsv1connect.KeyPackageServiceClient
	groups   mlsdsv1connect.GroupServiceClient
	delivery mlsdsv1connect.DeliveryServiceClient
	account  mlsdsv1connect.AccountServiceClient
	// sends carries the session's Send calls over SendStream
	// (sendstream.go); routedGroups.Send hands them to it.
	sends *sendStreams

	clientID string
	suite    mls.CipherSuite
	sigPriv  []byte

	mu      sync.Mutex // held while logging in
	tokMu   sync.Mutex
	token   string
	expires time.Time
	ttl     time.Duration
	logins  int // successful logins, for tests
}

// httpClientFor returns the default HTTP client for a server URL.
func httpClientFor(server string) *http.Client {
	if strings.HasPrefix(server, "https://") {
		tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
		return &http.Client{Transport: tr}
	}
	tr := &http.Transport{ForceAttemptHTTP2: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

func newRPC(hc *http.Client, server string, clientID string, suite mls.CipherSuite, sigPriv []byte) *rpc {
	r := &rpc{clientID: clientID, suite: suite, sigPriv: sigPriv}
	// The rate-limit wait is inside the authentication: a call refused as
	// rate-limited goes again with the same token and the same bytes.
	opts := connect.WithInterceptors(&authInterceptor{r}, rateLimitWaiter{})
	server = strings.TrimRight(server, "/")
	r.auth = mlsdsv1connect.NewAuthServiceClient(hc, server, connect.WithInterceptors(rateLimitWaiter{}))
	r.kps = mlsdsv1connect.NewKeyPackageServiceClient(hc, server, opts)
	r.groups = mlsdsv1connect.NewGroupServiceClient(hc, server, opts)
	r.delivery = mlsdsv1connect.NewDeliveryServiceClient(hc, server, opts)
	r.account = mlsdsv1connect.NewAccountServiceClient(hc, server, opts)
	r.sends = newSendStreams(r, r.groups, mlsdsv1connect.NewGroupServiceClient(streamHTTPClient(hc), server, opts))
	return r
}

// currentToken returns a session token that is not about to expire,
// logging in if needed.
func (r *rpc) currentToken(ctx context.Context) (string, error) {
	r.tokMu.Lock()
	tok, exp := r.token, r.expires
	r.tokMu.Unlock()
	if tok != "" && !r.renewDue(exp) {
		return tok, nil
	}
	return r.login(ctx, tok)
}

// tokenNow returns the session token held now, without renewing it.
func (r *rpc) tokenNow() string {
	r.tokMu.Lock()
	defer r.tokMu.Unlock()
	return r.token
}

// login gets a new session token unless another call already replaced
// stale.
func (r *rpc) login(ctx context.Context, stale string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tokMu.Lock()
	tok, exp := r.token, r.expires
	r.tokMu.Unlock()
	if tok != stale && tok != "" && !r.renewDue(exp) {
		return tok, nil
	}
	ch, err := r.auth.GetChallenge(ctx, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: r.clientID}))
	if err != nil {
		return "", fmt.Errorf("client: getting an authentication challenge: %w", err)
	}
	label := ch.Msg.Label
	if label == "" {
		label = "mlsds auth"
	}
	sig, err := r.suite.SignWithLabel(r.sigPriv, label, ch.Msg.Challenge)
	if err != nil {
		return "", fmt.Errorf("client: signing the authentication challenge: %w", err)
	}
	res, err := r.auth.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{
		ClientId: r.clientID, Challenge: ch.Msg.Challenge, Signature: sig}))
	if err != nil {
		return "", fmt.Errorf("client: authenticating as %q: %w (is this the key the client registered with?)", r.clientID, err)
	}
	ttl := time.Hour
	if res.Msg.ExpiresAt != nil {
		ttl = time.Until(res.Msg.ExpiresAt.AsTime())
	}
	r.tokMu.Lock()
	r.token, r.expires, r.ttl = res.Msg.SessionToken, time.Now().Add(ttl), ttl
	r.logins++
	r.tokMu.Unlock()
	return res.Msg.SessionToken, nil
}

// renewDue reports whether a token expiring at exp should be renewed
// now: in the last tenth of its lifetime (at most 30s before it ends).
func (r *rpc) renewDue(exp time.Time) bool {
	r.tokMu.Lock()
	margin := min(r.ttl/10, 30*time.Second)
	r.tokMu.Unlock()
	return time.Until(exp) <= margin
}

func (r *rpc) loginCount() int {
	r.tokMu.Lock()
	defer r.tokMu.Unlock()
	return r.logins
}

// authInterceptor adds the session token to every call and, when the
// server refuses a unary call as unauthenticated, logs in again and
// retries it once.
type authInterceptor struct{ r *rpc }

func (a *authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		tok, err := a.r.currentToken(ctx)
		if err != nil {
			return nil, err
		}
		req.Header().Set("Authorization", "Bearer "+tok)
		res, err := next(ctx, req)
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			return res, err
		}
		if tok, err = a.r.login(ctx, tok); err != nil {
			return nil, err
		}
		req.Header().Set("Authorization", "Bearer "+tok)
		return next(ctx, req)
	}
}

func (a *authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if tok, err := a.r.currentToken(ctx); err == nil {
			conn.RequestHeader().Set("Authorization", "Bearer "+tok)
		}
		return conn
	}
}

func (a *authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// maxRateLimitWait bounds the wait for one rate-limited call: a longer
// retry_after (the registration limit counts per hour) is the caller's to
// see, as is one that would outlast the call's context.
const maxRateLimitWait = 10 * time.Second

// rateLimitWaiter waits out the server's RateLimited refusals of unary
// calls and sends the same request again. The server refuses such a call
// before it acts on it, so resending is always safe; it does so until the
// call passes, the wait would exceed maxRateLimitWait or the context's
// deadline, or the context ends.
type rateLimitWaiter struct{}

func (rateLimitWaiter) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		for {
			res, err := next(ctx, req)
			if !waitRateLimited(ctx, err) {
				return res, err
			}
		}
	}
}

func (rateLimitWaiter) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (rateLimitWaiter) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// rateLimitedFor returns how long the server asked to wait, if err is its
// RateLimited refusal.
// waitRateLimited waits out a RateLimited refusal err and reports whether
// the call should be made again: false for any other error, a wait longer
// than maxRateLimitWait or than ctx allows, or ctx ending.
func waitRateLimited(ctx context.Context, err error) bool {
	d, ok := rateLimitedFor(err)
	if !ok || d > maxRateLimitWait {
		return false
	}
	d += jitter(20 * time.Millisecond)
	if dl, has := ctx.Deadline(); has && time.Until(dl) < d {
		return false
	}
	return sleep(ctx, d) == nil
}

func rateLimitedFor(err error) (time.Duration, bool) {
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		return 0, false
	}
	rl := errorDetail[*mlsdsv1.RateLimited](err)
	if rl == nil {
		return 0, false
	}
	return max(rl.GetRetryAfter().AsDuration(), time.Millisecond), true
}

// errorDetail returns the detail of type P that err carries, or nil.
func errorDetail[P any](err error) P {
	var zero P
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return zero
	}
	for _, d := range ce.Details() {
		v, err := d.Value()
		if err != nil {
			continue
		}
		if p, ok := v.(P); ok {
			return p
		}
	}
	return zero
}

// epochConflict reports whether err is the server's WrongEpoch or
// StaleEpoch refusal: the group moved on and the message must be made
// again on the new state.
func epochConflict(err error) bool {
	if err == nil {
		return false
	}
	return errorDetail[*mlsdsv1.WrongEpoch](err) != nil || errorDetail[*mlsdsv1.StaleEpoch](err) != nil
}

// transient reports whether err may go away by itself: the server is
// unreachable, restarting or rate-limiting.
func transient(err error) bool {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return false
	}
	switch ce.Code() {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeDeadlineExceeded, connect.CodeInternal:
		return true
	case connect.CodeResourceExhausted:
		return errorDetail[*mlsdsv1.RateLimited](err) != nil
	}
	return false
}

// retryAfter is how long to wait after a transient err.
func retryAfter(err error, attempt int) time.Duration {
	if rl := errorDetail[*mlsdsv1.RateLimited](err); rl != nil && rl.RetryAfter != nil {
		return rl.RetryAfter.AsDuration() + jitter(50*time.Millisecond)
	}
	return backoff(attempt)
}

// backoff is an exponential delay with full jitter: up to 20ms * 2^attempt,
// capped at 5s.
func backoff(attempt int) time.Duration {
	d := 20 * time.Millisecond << min(attempt, 8)
	return jitter(min(d, 5*time.Second))
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
