// Package server is the network face of mlsds: the Connect handlers of the
// mlsds.v1 API over a ds.Service, client authentication, per-address limits
// on the unauthenticated calls, streaming with keep-alives, Prometheus
// metrics and health checks. It maps the API onto ds and the typed errors
// of ds onto Connect codes with one detail message each; the policy lives
// in ds.
//
// One listener serves the Connect, gRPC and gRPC-Web protocols, over
// HTTP/1.1 and HTTP/2 (h2c without TLS).
package server

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
)

// Config configures a Server. Zero fields take the defaults in comments.
type Config struct {
	// Registration is who may register clients; default RegistrationOpen.
	Registration    Registration
	EnrollmentToken string           // for RegistrationToken
	JWTKey          crypto.PublicKey // for RegistrationJWT
	JWTAudience     string           // "aud" an enrollment JWT must carry (required for RegistrationJWT)
	JWTIssuer       string           // "iss" an enrollment JWT must carry (required for RegistrationJWT)

	// LoginKeys, when not empty, turn on logins with a token of the app's
	// identity provider (AuthenticateRequest.id_token, login.go), signed
	// by one of these keys, carrying LoginIssuer and LoginAudience (both
	// required then).
	LoginKeys     LoginKeys
	LoginIssuer   string
	LoginAudience string

	// AuthSecret keys the session tokens (at least 32 bytes). Servers that
	// share it accept each other's tokens. Default: random, so tokens die
	// with the process.
	AuthSecret   []byte
	SessionTTL   time.Duration // default 1h
	ChallengeTTL time.Duration // default 1m

	// AuthRatePerSecond limits the unauthenticated AuthService calls per
	// remote IP address; default 20, negative turns the limit off.
	// AuthBurst defaults to 5 times the rate.
	AuthRatePerSecond float64
	AuthBurst         int
	// RegistrationsPerHour limits the new clients that open and token
	// registration admit from one remote address (one /64 for IPv6);
	// default 10, in bursts of up to RegistrationBurst (default 5).
	// Registering an existing client again costs nothing. Each node
	// counts on its own. Negative, or a negative AuthRatePerSecond, turns
	// it off.
	RegistrationsPerHour float64
	RegistrationBurst    int

	// MaxMessageSize is the ds bound on one MLSMessage, used to size the
	// largest request body: MaxRequestBytes defaults to
	// 4*MaxMessageSize+64 KiB (a Commit bundle carries three objects).
	MaxMessageSize  int // default 1 MiB
	MaxRequestBytes int

	KeepAlive time.Duration // keep-alive interval on Subscribe streams; default 30s
	// WriteTimeout bounds every write to a client: a unary answer from its
	// first byte, each event of a Subscribe stream at least this long
	// from its start and at most twice that (the deadline is kept while
	// events flow). A client that reads nothing for this long is cut
	// (within twice it on a busy stream). Default: the
	// Service's SlowConsumerTimeout.
	WriteTimeout time.Duration
	// FetchBufferedMaxBytes bounds the bytes of messages in all the Fetch
	// answers being written at once: when little is left, a Fetch answers
	// a smaller page (one message at least). Default 32 MiB.
	FetchBufferedMaxBytes int64
	// MaxStreamsPerClient bounds the open Subscribe streams of one client,
	// and apart from them its SendStreams; opening one more ends the
	// oldest. Default 4.
	MaxStreamsPerClient int
	// MaxGroupStreams bounds the open SubscribeGroup streams of one client
	// (by session) or of one remote address (by membership proof, for
	// deniable groups): one more is refused with QuotaExceeded until one
	// ends. Default 1024.
	MaxGroupStreams   int
	ReadHeaderTimeout time.Duration // default 10s
	IdleTimeout       time.Duration // default 2m
	ShutdownTimeout   time.Duration // how long Serve waits for calls in flight; default 20s
	// DrainDelay is how long Serve keeps accepting calls after health
	// turned NOT_SERVING, so that load balancers stop sending new ones
	// first; default 0.
	DrainDelay time.Duration

	// CORSOrigins lists the browser origins (scheme://host[:port], or "*")
	// that may call the API; none by default.
	CORSOrigins []string

	// TLS, when set, serves HTTPS (HTTP/2 negotiated by ALPN); otherwise
	// the listener speaks h2c and HTTP/1.1 in the clear.
	TLS *tls.Config

	// AdminToken, when set (at least MinAdminTokenSize bytes), turns on
	// AdminService for callers that send it as their bearer token.
	AdminToken string
	// LiveClientTTL is how long a node trusts, without reading the store
	// again, that the client of a session token exists; a client deleted
	// on another node can call this one for that long. Default 5s.
	LiveClientTTL time.Duration

	Logger  *slog.Logger // default slog.Default()
	Metrics *Metrics     // default NewMetrics()
	Now     func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Registration == "" {
		c.Registration = RegistrationOpen
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = time.Hour
	}
	if c.ChallengeTTL == 0 {
		c.ChallengeTTL = time.Minute
	}
	if c.AuthRatePerSecond == 0 {
		c.AuthRatePerSecond = 20
	}
	if c.AuthBurst == 0 {
		c.AuthBurst = max(1, int(5*c.AuthRatePerSecond))
	}
	if c.RegistrationsPerHour == 0 {
		c.RegistrationsPerHour = 10
	}
	if c.RegistrationBurst <= 0 {
		c.RegistrationBurst = 5
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = 1 << 20
	}
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = 4*c.MaxMessageSize + 64<<10
	}
	if c.MaxStreamsPerClient <= 0 {
		c.MaxStreamsPerClient = 4
	}
	if c.MaxGroupStreams <= 0 {
		c.MaxGroupStreams = 1024
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = 30 * time.Second
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = 10 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 2 * time.Minute
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 20 * time.Second
	}
	if c.LiveClientTTL <= 0 {
		c.LiveClientTTL = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Server serves the mlsds API over a ds.Service.
type Server struct {
	ds      *ds.Service
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	tokens  *tokens

	adminTokenHash []byte       // SHA-256 of Config.AdminToken; nil: AdminService is off
	live           *liveClients // deletion.go

	// fetchHeld is the bytes of the Fetch answers being written (flush.go).
	fetchHeld atomic.Int64

	jwtMethods   []string
	authLimit    *ipLimiter
	regLimit     *ipLimiter // new registrations per address (ratelimit.go)
	streams      *streams
	sendStreams  *streams     // SendStreams, bounded as Subscribe streams are
	groupStreams streamCounts // SubscribeGroup streams by client or address
	health       *grpchealth.StaticChecker
	mux          *http.ServeMux
	handler      http.Handler

	// draining is closed when shutdown begins: streams end so that clients
	// reconnect elsewhere, and in-flight unary calls finish.
	draining  chan struct{}
	drainOnce sync.Once
}

// Services lists the fully-qualified names of the services, as reported by
// grpc.health.v1.
var Services = []string{
	mlsdsv1connect.AuthServiceName,
	mlsdsv1connect.KeyPackageServiceName,
	mlsdsv1connect.GroupServiceName,
	mlsdsv1connect.DeliveryServiceName,
	mlsdsv1connect.AccountServiceName,
	mlsdsv1connect.AdminServiceName,
}

// New returns a Server over svc.
// compressMinBytes is the smallest response the server compresses.
const compressMinBytes = 16 << 10

func New(svc *ds.Service, cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	s := &Server{ds: svc, cfg: cfg, log: cfg.Logger, metrics: cfg.Metrics, draining: make(chan struct{})}
	if err := cfg.Metrics.watchKeyPackageStock(svc); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if err := cfg.Metrics.watchBuffers(svc); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if s.cfg.WriteTimeout <= 0 {
		s.cfg.WriteTimeout = svc.Config().SlowConsumerTimeout
	}
	if s.cfg.FetchBufferedMaxBytes <= 0 {
		s.cfg.FetchBufferedMaxBytes = 32 << 20
	}
	if err := cfg.Metrics.watchPruning(svc); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if len(cfg.LoginKeys) > 0 && (cfg.LoginIssuer == "" || cfg.LoginAudience == "") {
		return nil, errors.New("server: id_token logins (LoginKeys) need LoginIssuer and LoginAudience: the issuer and audience the app's identity provider puts in its tokens")
	}
	switch cfg.Registration {
	case RegistrationOpen:
	case RegistrationToken:
		if len(cfg.EnrollmentToken) < 16 {
			return nil, errors.New("server: registration mode token needs an enrollment token of at least 16 characters")
		}
	case RegistrationJWT:
		if cfg.JWTKey == nil {
			return nil, errors.New("server: registration mode jwt needs a JWT public key")
		}
		// Without both, a token the identity service issued for another
		// relying party, or another issuer's token signed with a shared
		// key, would register clients here (RFC 8725 §3.8, §3.9).
		if cfg.JWTAudience == "" || cfg.JWTIssuer == "" {
			return nil, errors.New("server: registration mode jwt needs JWTAudience and JWTIssuer (the \"aud\" and \"iss\" enrollment JWTs must carry)")
		}
		m, err := jwtMethods(cfg.JWTKey)
		if err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
		s.jwtMethods = m
	default:
		return nil, fmt.Errorf("server: unknown registration mode %q", cfg.Registration)
	}
	secret := cfg.AuthSecret
	if len(secret) == 0 {
		secret = make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, err
		}
	}
	t, err := newTokens(secret, cfg.ChallengeTTL, cfg.SessionTTL, cfg.Now)
	if err != nil {
		return nil, err
	}
	s.tokens = t
	if cfg.AdminToken != "" {
		if len(cfg.AdminToken) < MinAdminTokenSize {
			return nil, fmt.Errorf("server: the admin token must be at least %d bytes", MinAdminTokenSize)
		}
		h := sha256.Sum256([]byte(cfg.AdminToken))
		s.adminTokenHash = h[:]
	}
	s.live = newLiveClients(cfg.LiveClientTTL, 100_000)
	s.authLimit = newIPLimiter(cfg.AuthRatePerSecond, cfg.AuthBurst, 100_000)
	s.regLimit = newRegistrationLimiter(cfg)
	cfg.Metrics.watchQuotas(svc, cfg)
	s.streams = newStreams(cfg.MaxStreamsPerClient)
	s.sendStreams = newStreams(cfg.MaxStreamsPerClient)

	opts := []connect.HandlerOption{
		connect.WithReadMaxBytes(cfg.MaxRequestBytes),
		// MLS messages are ciphertext, keys and signatures: gzip gains
		// nothing on them and cost a fifth of the CPU of a busy stream.
		// Only large answers (whole trees, rosters, pages) are compressed
		// for clients that ask for it.
		connect.WithCompressMinBytes(compressMinBytes),
		connect.WithRecover(s.recovered),
		connect.WithInterceptors(&observer{s: s}, &authenticator{s: s}),
	}
	s.mux = http.NewServeMux()
	s.mux.Handle(mlsdsv1connect.NewAuthServiceHandler(&authService{s}, opts...))
	s.mux.Handle(mlsdsv1connect.NewKeyPackageServiceHandler(&keyPackageService{s}, opts...))
	s.mux.Handle(mlsdsv1connect.NewGroupServiceHandler(&groupService{s}, opts...))
	s.mux.Handle(mlsdsv1connect.NewDeliveryServiceHandler(&deliveryService{s}, opts...))
	s.mux.Handle(mlsdsv1connect.NewAccountServiceHandler(&accountService{s}, opts...))
	s.mux.Handle(mlsdsv1connect.NewAdminServiceHandler(&adminService{s}, opts...))
	s.health = grpchealth.NewStaticChecker(Services...)
	s.mux.Handle(grpchealth.NewHandler(s.health))
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.Handle("GET /metrics", s.metrics.Handler())
	s.handler = limitBody(s.withCORS(s.withWriteDeadlines(withBatchingWriter(s.mux))), int64(cfg.MaxRequestBytes)+64<<10)
	return s, nil
}

// limitBody stops reading a request body after n bytes. WithReadMaxBytes
// alone refuses an oversized message but then reads (and discards) the
// rest of the body, however long, to keep the connection reusable; n
// leaves room for the framing of the protocols around one message.
//
// SendStream's body is a stream of messages, each limited by
// WithReadMaxBytes, for as long as the stream lasts; its answers bound what
// it holds (sendstream.go).
func limitBody(h http.Handler, n int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != mlsdsv1connect.GroupServiceSendStreamProcedure {
			r.Body = http.MaxBytesReader(w, r.Body, n)
		}
		h.ServeHTTP(w, r)
	})
}

// Handler returns the HTTP handler of every service, /healthz and
// /metrics.
func (s *Server) Handler() http.Handler { return s.handler }

// recovered turns a panic in a handler into an internal error, logged with
// its stack, instead of a crash of the whole server.
func (s *Server) recovered(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
	s.log.LogAttrs(ctx, slog.LevelError, "panic in handler", slog.String("procedure", spec.Procedure),
		slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
	return connect.NewError(connect.CodeInternal, errors.New("internal error; the server logged it"))
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	select {
	case <-s.draining:
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "shutting down")
	default:
		fmt.Fprintln(w, "ok")
	}
}

// Drain starts a graceful shutdown without closing the listener: health
// turns NOT_SERVING and Subscribe streams end. Serve calls it.
func (s *Server) Drain() {
	s.drainOnce.Do(func() {
		s.health.SetStatus("", grpchealth.StatusNotServing)
		for _, name := range Services {
			s.health.SetStatus(name, grpchealth.StatusNotServing)
		}
		close(s.draining)
		s.streams.drain()
	})
}

// Serve serves on ln until ctx is done, then shuts down gracefully: it
// stops accepting connections, ends the Subscribe streams, waits up to
// ShutdownTimeout for the calls in flight and returns. A call that got a
// receipt is durable in the store whatever happens after it.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		Protocols:         new(http.Protocols),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 250,
			// Ping idle connections so that dead peers of long streams
			// are noticed.
			SendPingTimeout: s.cfg.KeepAlive,
			PingTimeout:     15 * time.Second,
		},
	}
	hs.Protocols.SetHTTP1(true)
	if s.cfg.TLS != nil {
		hs.Protocols.SetHTTP2(true)
		tc := s.cfg.TLS.Clone()
		if tc.MinVersion < tls.VersionTLS12 {
			tc.MinVersion = tls.VersionTLS12
		}
		hs.TLSConfig = tc
	} else {
		// h2c with prior knowledge, as gRPC clients speak it.
		hs.Protocols.SetUnencryptedHTTP2(true)
	}
	errc := make(chan error, 1)
	go func() {
		if s.cfg.TLS != nil {
			errc <- hs.ServeTLS(ln, "", "")
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down", "drain_delay", s.cfg.DrainDelay, "timeout", s.cfg.ShutdownTimeout)
	s.Drain()
	if s.cfg.DrainDelay > 0 {
		time.Sleep(s.cfg.DrainDelay)
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := hs.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("calls still in flight at the shutdown deadline; closing them")
		err = hs.Close()
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
