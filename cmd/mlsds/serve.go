package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/postgres"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/server"
)

// serveFlags are the flags of `mlsds serve`.
type serveFlags struct {
	budgets budgetFlags // byte budgets of answers and streams, below

	listen, dataDir, store         string
	tlsCert, tlsKey                string
	logLevel, logFormat            string
	registration, enrollmentToken  string
	jwtKey, jwtAudience, jwtIssuer string
	loginJWKS, loginIssuer         string
	loginAudience, x509Roots       string
	authSecretFile                 string
	adminTokenFile                 string
	sessionTTL                     time.Duration

	maxMessageSize  byteSize
	quotas          quotaFlags // quotas.go flags, below
	maxGroupSize    int
	maxKeyPackages  int
	rateLimit       float64
	claimRate       float64
	claimerRate     float64
	authRateLimit   float64
	appEpochWindow  uint64
	lowWater        int
	keepAlive       time.Duration
	maxStreams      int
	maxGroupStreams int
	shutdownTimeout time.Duration
	drainDelay      time.Duration
	corsOrigins     string
	externalJoin    string
	retention       time.Duration
	pruneInterval   time.Duration
}

func newServeFlagSet(f *serveFlags, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("mlsds serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.listen, "listen", "127.0.0.1:7400", "address to serve Connect, gRPC and gRPC-Web on, with /healthz and /metrics")
	fs.StringVar(&f.dataDir, "data-dir", "./mlsds-data", "directory for the SQLite database and the authentication secret")
	fs.StringVar(&f.store, "store", "", "storage engine: empty for SQLite in the data directory, sqlite:PATH, or a postgres:// URL (several nodes may share one; give them the same --auth-secret-file)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate chain; with --tls-key serves TLS instead of h2c")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&f.corsOrigins, "cors-origins", "", "comma-separated browser origins (https://app.example) allowed to call the API, or *")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&f.registration, "registration", "open", "who may register clients: open, token (needs --enrollment-token) or jwt (needs --jwt-key, --jwt-audience and --jwt-issuer)")
	fs.StringVar(&f.enrollmentToken, "enrollment-token", "", "shared secret that --registration=token requires; prefer the environment variable")
	fs.StringVar(&f.jwtKey, "jwt-key", "", "PEM public key (or certificate) that signs enrollment JWTs for --registration=jwt")
	fs.StringVar(&f.jwtAudience, "jwt-audience", "", "audience (\"aud\") that enrollment JWTs must carry; required with --registration=jwt")
	fs.StringVar(&f.jwtIssuer, "jwt-issuer", "", "issuer (\"iss\") that enrollment JWTs must carry; required with --registration=jwt")
	fs.StringVar(&f.loginJWKS, "login-jwks", "", "JWKS file (RFC 7517) of the app identity provider's keys; turns on logins with its tokens (Authenticate id_token; RS256, ES256, EdDSA); needs --login-issuer and --login-audience")
	fs.StringVar(&f.loginIssuer, "login-issuer", "", "issuer (\"iss\") that id_token logins must carry; required with --login-jwks")
	fs.StringVar(&f.loginAudience, "login-audience", "", "audience (\"aud\") that id_token logins must carry; required with --login-jwks")
	fs.StringVar(&f.x509Roots, "x509-roots", "", "PEM file of the CA certificates that x509 credentials (RFC 9420 §5.3) must chain to; without it only basic credentials are accepted")
	fs.StringVar(&f.authSecretFile, "auth-secret-file", "", "file with the secret that keys session tokens (hex, at least 32 bytes); default DATA_DIR/auth.key, created if missing. Share it between nodes")
	fs.StringVar(&f.adminTokenFile, "admin-token-file", "", "file with the operator's admin token (at least 16 bytes); turns on AdminService (mlsds admin --server) for callers that send it")
	fs.DurationVar(&f.sessionTTL, "session-ttl", time.Hour, "lifetime of a session token")
	f.maxMessageSize = 1 << 20
	fs.Var(&f.maxMessageSize, "max-message-size", "largest MLSMessage accepted, as a `size` in bytes (KiB, MiB suffixes allowed)")
	f.budgets.register(fs)
	fs.IntVar(&f.maxGroupSize, "max-group-size", 50_000, "most members of a group")
	fs.IntVar(&f.maxKeyPackages, "max-key-packages", 1_000, "most unclaimed KeyPackages stored per client")
	f.quotas.register(fs)
	fs.Float64Var(&f.rateLimit, "rate-limit", 50, "requests per second per client (bursts of twice that); negative turns it off")
	fs.Float64Var(&f.claimRate, "claim-rate", 60, "KeyPackage claims per target client per minute; negative turns it off")
	fs.Float64Var(&f.claimerRate, "claimer-rate", 120, "KeyPackage claims per claiming client per minute; negative turns it off")
	fs.Float64Var(&f.authRateLimit, "auth-rate-limit", 20, "registration and authentication calls per second per remote address; negative turns it off")
	fs.Uint64Var(&f.appEpochWindow, "app-epoch-window", 2, "how many epochs old an application message may be")
	fs.StringVar(&f.externalJoin, "external-join", "links", "who may fetch a transparent group's GroupInfo and tree and join it by external Commit: links (members, new devices of members' users, holders of a join link), members, or any (every registered client: weakens security, any client can join any transparent group)")
	fs.DurationVar(&f.retention, "retention", 30*24*time.Hour, "how long a message or Welcome is kept at most, delivered or not (messages acknowledged by every recipient go at once); 0 keeps them until every recipient acknowledged them")
	fs.DurationVar(&f.pruneInterval, "prune-interval", time.Minute, "how often the server deletes delivered and expired messages, expired KeyPackages and empty groups (one node at a time); 0 turns it off")
	fs.IntVar(&f.lowWater, "key-package-low-water", 10, "a client is told when its KeyPackages for a suite fall below this")
	fs.DurationVar(&f.keepAlive, "keepalive", 30*time.Second, "keep-alive interval on delivery streams")
	fs.IntVar(&f.maxStreams, "max-streams-per-client", 4, "open Subscribe streams per client, and as many SendStreams; one more ends the oldest")
	fs.IntVar(&f.maxGroupStreams, "max-group-streams", 1024, "open SubscribeGroup streams per client, or per address for deniable groups; one more is refused")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 20*time.Second, "on SIGTERM, how long to wait for calls in flight")
	fs.DurationVar(&f.drainDelay, "drain-delay", 0, "on SIGTERM, how long to keep serving with health NOT_SERVING before closing the listener")
	addEnvToUsage(fs, serveEnvPrefix)
	return fs
}

func runServe(args []string, stdout, stderr io.Writer) int {
	var f serveFlags
	fs := newServeFlagSet(&f, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mlsds serve: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if err := applyEnv(fs, lookupEnv); err != nil {
		fmt.Fprintf(stderr, "mlsds serve: %v\n", err)
		return 2
	}
	log, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "mlsds serve: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first signal, a second one ends the process at once.
		<-ctx.Done()
		stop()
	}()
	if err := serve(ctx, &f, log); err != nil {
		log.Error("mlsds serve failed", "error", err)
		return 1
	}
	return 0
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

// serve runs the server until ctx is done.
func serve(ctx context.Context, f *serveFlags, log *slog.Logger) error {
	var externalJoin ds.ExternalJoinPolicy
	switch f.externalJoin {
	case "links", "":
		externalJoin = ds.ExternalJoinLinks
	case "members":
		externalJoin = ds.ExternalJoinMembersOnly
	case "any":
		// An explicit opt-out of the default: strangers may join.
		externalJoin = ds.ExternalJoinAny
		log.Warn("--external-join any: every registered client may join every transparent group by external Commit")
	default:
		return fmt.Errorf("--external-join must be links, members or any, not %q", f.externalJoin)
	}
	reg, err := server.ParseRegistration(f.registration)
	if err != nil {
		return err
	}
	// Bind first: a busy port must not leave a new database behind.
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	unlock, err := lockDataDir(f.dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	postgresURL := isPostgres(f.store)
	var dbPath string
	if !postgresURL {
		if dbPath, err = sqlitePath(f.store, f.dataDir); err != nil {
			return err
		}
	}
	secretFile := f.authSecretFile
	if secretFile == "" {
		secretFile = filepath.Join(f.dataDir, "auth.key")
	}
	secret, err := loadOrCreateSecret(secretFile, f.authSecretFile == "")
	if err != nil {
		return err
	}
	var adminToken string
	if f.adminTokenFile != "" {
		if adminToken, err = readAdminToken(f.adminTokenFile); err != nil { // admin.go
			return err
		}
	}

	cfg := server.Config{
		Registration:        reg,
		EnrollmentToken:     f.enrollmentToken,
		JWTAudience:         f.jwtAudience,
		JWTIssuer:           f.jwtIssuer,
		AuthSecret:          secret,
		AdminToken:          adminToken,
		SessionTTL:          f.sessionTTL,
		AuthRatePerSecond:   f.authRateLimit,
		MaxMessageSize:      int(f.maxMessageSize),
		KeepAlive:           f.keepAlive,
		MaxStreamsPerClient: f.maxStreams,
		MaxGroupStreams:     f.maxGroupStreams,
		ShutdownTimeout:     f.shutdownTimeout,
		DrainDelay:          f.drainDelay,
		CORSOrigins:         splitList(f.corsOrigins),
		Logger:              log,
		Metrics:             server.NewMetrics(),
	}
	cfg.WriteTimeout, cfg.FetchBufferedMaxBytes = f.budgets.slowConsumerTimeout, int64(f.budgets.fetchBufferedMaxBytes)
	cfg.RegistrationsPerHour = offIfZero(f.quotas.registrationsPerHour)
	cfg.RegistrationBurst = f.quotas.registrationBurst
	if reg == server.RegistrationJWT {
		if f.jwtKey == "" {
			return errors.New("--registration=jwt needs --jwt-key")
		}
		if f.jwtAudience == "" || f.jwtIssuer == "" {
			return errors.New("--registration=jwt needs --jwt-audience and --jwt-issuer: the audience and issuer your identity service puts in enrollment JWTs")
		}
		if cfg.JWTKey, err = server.LoadJWTKey(f.jwtKey); err != nil {
			return err
		}
	}
	if f.loginJWKS != "" || f.loginIssuer != "" || f.loginAudience != "" {
		if f.loginJWKS == "" || f.loginIssuer == "" || f.loginAudience == "" {
			return errors.New("id_token logins need --login-jwks, --login-issuer and --login-audience together: the identity provider's JWKS file and the issuer and audience of its tokens")
		}
		if cfg.LoginKeys, err = server.LoadJWKS(f.loginJWKS); err != nil {
			return err
		}
		cfg.LoginIssuer, cfg.LoginAudience = f.loginIssuer, f.loginAudience
	}
	var x509Roots *x509.CertPool
	if f.x509Roots != "" {
		if x509Roots, err = server.LoadX509Roots(f.x509Roots); err != nil {
			return err
		}
	}
	var certs *certReloader
	if f.tlsCert != "" || f.tlsKey != "" {
		if f.tlsCert == "" || f.tlsKey == "" {
			return errors.New("TLS needs both --tls-cert and --tls-key")
		}
		if certs, err = newCertReloader(f.tlsCert, f.tlsKey); err != nil {
			return err
		}
		cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get}
	}

	var st ds.Store
	database := dbPath
	if postgresURL {
		database = "postgres"
		if f.authSecretFile == "" {
			log.Warn("PostgreSQL store without --auth-secret-file: other nodes will not accept this node's session tokens")
		}
		if st, err = postgres.Open(ctx, f.store, postgres.Options{}); err != nil {
			return err
		}
	} else if st, err = sqlite.Open(ctx, dbPath, sqlite.Options{}); err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("closing the store", "error", err)
		}
	}()
	window := f.appEpochWindow
	svc := ds.New(cfg.Metrics.InstrumentStore(st), ds.Config{
		MaxMessageSize:            int(f.maxMessageSize),
		MaxGroupSize:              f.maxGroupSize,
		MaxKeyPackagesPerClient:   f.maxKeyPackages,
		KeyPackageLowWater:        f.lowWater,
		AppMessageEpochWindow:     window,
		ZeroAppMessageEpochWindow: window == 0,
		RequestsPerSecond:         f.rateLimit,
		ClaimsPerMinute:           f.claimerRate,
		ClaimsPerTargetPerMinute:  f.claimRate,
		ExternalJoin:              externalJoin,
		MaxKeyPackageSize:         int(offIfZero(float64(f.quotas.maxKeyPackageSize))),
		MaxKeyPackageBytes:        int64(offIfZero(float64(f.quotas.maxKeyPackageBytes))),
		MaxGroupsPerDay:           int(offIfZero(float64(f.quotas.maxGroupsPerDay))),
		MaxBytesPerDay:            int64(offIfZero(float64(f.quotas.maxBytesPerDay))),
		MaxClientsPerUser:         int(offIfZero(float64(f.quotas.maxClientsPerUser))),
		X509Roots:                 x509Roots,
		Retention:                 orNegative(f.retention),
		PruneInterval:             orNegative(f.pruneInterval),

		FetchMaxBytes:              int(f.budgets.fetchMaxBytes),
		SubscriptionMaxBytes:       int(f.budgets.subscriptionMaxBytes),
		ClientSubscriptionMaxBytes: int(f.budgets.clientSubscriptionMaxBytes),
		BufferedMaxBytes:           int64(f.budgets.bufferedMaxBytes),
		SlowConsumerTimeout:        f.budgets.slowConsumerTimeout,
	})
	defer svc.Close() // stops the pruner before the store closes
	srv, err := server.New(svc, cfg)
	if err != nil {
		return err
	}
	scheme := "h2c"
	if cfg.TLS != nil {
		scheme = "tls"
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for range hup {
				if err := certs.reload(); err != nil {
					log.Error("reloading the TLS certificate", "error", err)
				} else {
					log.Info("reloaded the TLS certificate")
				}
			}
		}()
	}
	log.Info("mlsds serving", "addr", ln.Addr().String(), "transport", scheme, "version", version(),
		"database", database, "registration", string(reg), "max_message_size", int(f.maxMessageSize))
	err = srv.Serve(ctx, ln)
	// What this node counted against the daily quotas since its last
	// write, so that a restart does not forget it.
	fctx, fcancel := context.WithTimeout(context.Background(), 10*time.Second)
	if ferr := svc.FlushQuotas(fctx); ferr != nil {
		log.Warn("writing the daily quota counters", "error", ferr)
	}
	fcancel()
	log.Info("mlsds stopped")
	return err
}

// isPostgres reports whether --store names a PostgreSQL database.
func isPostgres(store string) bool {
	return strings.HasPrefix(store, "postgres://") || strings.HasPrefix(store, "postgresql://")
}

// sqlitePath picks the database file from --store and --data-dir.
func sqlitePath(store, dataDir string) (string, error) {
	switch {
	case store == "":
		return filepath.Join(dataDir, "mlsds.db"), nil
	case strings.HasPrefix(store, "sqlite:"):
		p := strings.TrimPrefix(strings.TrimPrefix(store, "sqlite:"), "//")
		if p == "" {
			return "", errors.New("--store sqlite:PATH needs a path")
		}
		return p, nil
	}
	// Never echo the value: it may be a database URL with a password.
	return "", errors.New("--store: use an empty value (SQLite in --data-dir), sqlite:PATH or a postgres:// URL")
}

// loadOrCreateSecret reads the session-token secret from path (hex, or raw
// bytes), creating a random one if create is set and the file is missing.
func loadOrCreateSecret(path string, create bool) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && create {
		secret := make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("writing the authentication secret: %w", err)
		}
		return secret, nil
	}
	if err != nil {
		return nil, fmt.Errorf("authentication secret: %w", err)
	}
	t := strings.TrimSpace(string(data))
	if b, err := hex.DecodeString(t); err == nil && len(b) >= 32 {
		return b, nil
	}
	if len(data) >= 32 {
		return data, nil
	}
	return nil, fmt.Errorf("authentication secret %s: want at least 32 bytes (64 hex digits)", path)
}

// certReloader serves a certificate that SIGHUP reloads from its files.
type certReloader struct {
	certFile, keyFile string
	mu                sync.RWMutex
	cert              *tls.Certificate
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	return r, r.reload()
}

func (r *certReloader) reload() error {
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("TLS certificate: %w", err)
	}
	r.mu.Lock()
	r.cert = &c
	r.mu.Unlock()
	return nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cert, nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// orNegative maps a flag's 0 ("off") to the negative value that means off
// in ds.Config, where 0 means the default.
func orNegative(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// quotaFlags are the flags of the per-client quotas; 0 turns one off.
type quotaFlags struct {
	maxKeyPackageSize    byteSize
	maxKeyPackageBytes   byteSize
	maxBytesPerDay       byteSize
	maxGroupsPerDay      int
	maxClientsPerUser    int
	registrationsPerHour float64
	registrationBurst    int
}

func (q *quotaFlags) register(fs *flag.FlagSet) {
	q.maxKeyPackageSize = 64 << 10
	fs.Var(&q.maxKeyPackageSize, "max-key-package-size", "largest KeyPackage accepted, as a `size`")
	q.maxKeyPackageBytes = 4 << 20
	fs.Var(&q.maxKeyPackageBytes, "max-key-package-bytes", "most bytes of unclaimed KeyPackages stored per client, as a `size`; 0 turns it off")
	q.maxBytesPerDay = 1 << 30
	fs.Var(&q.maxBytesPerDay, "max-bytes-per-day", "most bytes of messages, Welcomes, GroupInfos and trees a client submits per UTC day, as a `size`; 0 turns it off")
	fs.IntVar(&q.maxGroupsPerDay, "max-groups-per-day", 100, "most groups a client creates per UTC day; 0 turns it off")
	fs.IntVar(&q.maxClientsPerUser, "max-clients-per-user", 20, "most clients (devices) registered under one user; 0 turns it off")
	fs.Float64Var(&q.registrationsPerHour, "registrations-per-hour", 10, "new clients that open or token registration admits per hour from one remote address (each node counts its own); 0 turns it off, as does a negative --auth-rate-limit")
	fs.IntVar(&q.registrationBurst, "registration-burst", 5, "new clients one remote address may register at once before --registrations-per-hour applies")
}

// offIfZero maps a flag's 0 ("off") to the negative value that means off
// in the configurations, where 0 means the default.
func offIfZero(v float64) float64 {
	if v == 0 {
		return -1
	}
	return v
}

// budgetFlags are the byte budgets of answers and delivery streams, and
// the time a client may take to read (ds.Config.FetchMaxBytes and the
// subscription budgets; server.Config.WriteTimeout).
type budgetFlags struct {
	fetchMaxBytes              byteSize
	subscriptionMaxBytes       byteSize
	clientSubscriptionMaxBytes byteSize
	bufferedMaxBytes           byteSize
	fetchBufferedMaxBytes      byteSize
	slowConsumerTimeout        time.Duration
}

func (b *budgetFlags) register(fs *flag.FlagSet) {
	b.fetchMaxBytes, b.subscriptionMaxBytes = 4<<20, 4<<20
	b.clientSubscriptionMaxBytes, b.bufferedMaxBytes, b.fetchBufferedMaxBytes = 8<<20, 64<<20, 32<<20
	fs.Var(&b.fetchMaxBytes, "fetch-max-bytes", "most bytes of messages in one Fetch page (at least one message comes), as a `size`")
	fs.Var(&b.subscriptionMaxBytes, "subscription-max-bytes", "most bytes of messages buffered for one delivery stream; beyond, it reads them from the store once the client took some, as a `size`")
	fs.Var(&b.clientSubscriptionMaxBytes, "client-subscription-max-bytes", "most bytes of messages buffered for all delivery streams of one client, as a `size`")
	fs.Var(&b.bufferedMaxBytes, "buffered-max-bytes", "most bytes of messages buffered for all delivery streams of the server, as a `size`")
	fs.Var(&b.fetchBufferedMaxBytes, "fetch-buffered-max-bytes", "most bytes of messages in all the Fetch answers the server is writing at once; beyond, Fetch answers smaller pages (one message at least), as a `size`")
	fs.DurationVar(&b.slowConsumerTimeout, "slow-consumer-timeout", 30*time.Second, "a client that reads nothing of an answer or a delivery stream for this long is cut (it resumes from its acknowledged position)")
}
