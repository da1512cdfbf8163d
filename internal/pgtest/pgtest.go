// Package pgtest runs throwaway PostgreSQL servers for tests.
//
// A package that tests against PostgreSQL calls Main from its TestMain and
// NewDatabase from each test:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
//	func TestX(t *testing.T) {
//		url := pgtest.NewDatabase(t) // a fresh, empty database, dropped at the end of t
//		...
//	}
//
// The first NewDatabase starts one server for the whole test binary: initdb
// into a new temporary directory, then postgres on a free port of 127.0.0.1
// (and a Unix socket in the same directory), trust authentication for the
// superuser "postgres". Main stops it and removes the directory once the
// tests are done. Without Main, every NewDatabase gets its own server,
// stopped when its test ends.
//
// The binaries come from $PGTEST_BINDIR, `pg_config --bindir`,
// /usr/lib/postgresql/<version>/bin, or $PATH, in this order. PostgreSQL
// refuses to run as root: when the tests run as root, the server runs as
// the system user "postgres" (the one the Debian package creates) or else
// "mlsds", which is created with useradd if it does not exist. The server
// is a direct child of the test binary that receives SIGQUIT if the test
// binary dies, so a killed test run leaves no server behind.
//
// The servers of NewDatabase run with fsync off (tests of semantics do not
// need durability against a machine crash, and creating databases is much
// faster), unless PGTEST_FSYNC=on. A benchmark that compares durable write
// rates starts a server of its own with Start(Options{}).
//
// If PostgreSQL cannot be started, NewDatabase skips the test with the
// reason, or fails it when the environment variable CI is "true". Setting
// PGTEST_URL to the URL of an existing server (a superuser that may create
// databases) makes pgtest use that server instead of starting one.
package pgtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options tunes Start. The zero value is fine.
type Options struct {
	// NoFsync turns off fsync and synchronous_commit: faster, but a
	// crash of the machine (not of the server) may lose transactions.
	// Tests of the engine's semantics don't care; benchmarks that compare
	// durability with another database should leave it off.
	NoFsync bool
	// StartTimeout bounds initdb plus the server's start-up; default 60s.
	StartTimeout time.Duration
	// Logf, when set, receives progress lines (t.Logf fits).
	Logf func(format string, args ...any)
}

// Server is a running throwaway PostgreSQL server.
type Server struct {
	dir     string // temporary directory: data/, sockets, log
	port    int
	version string
	user    string // OS user the server runs as
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the postmaster has exited
	waitErr error
	base    *url.URL // URL of the maintenance database "postgres"
	ext     bool     // an external server from PGTEST_URL: never stopped
	dbSeq   atomic.Int64
	stopMu  sync.Mutex
	stopped bool
}

// Start initialises and starts a new server. Stop it with Stop.
func Start(opts Options) (*Server, error) {
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 60 * time.Second
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if u := os.Getenv("PGTEST_URL"); u != "" {
		return external(u)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.StartTimeout)
	defer cancel()

	bin, err := findBinDir()
	if err != nil {
		return nil, err
	}
	version, err := serverVersion(bin)
	if err != nil {
		return nil, err
	}
	cred, userName, err := runAs()
	if err != nil {
		return nil, err
	}

	base, err := tempBase()
	if err != nil {
		return nil, err
	}
	sweepStale(base)
	dir, err := os.MkdirTemp(base, "mlsds-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{dir: dir, version: version, user: userName, exited: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	// Who owns the directory, for sweepStale.
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("pgtest: chown %s to %s: %w", dir, userName, err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}

	data := filepath.Join(dir, "data")
	opts.Logf("pgtest: initdb %s (PostgreSQL %s, as %s)", data, version, userName)
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
	initdb.Dir = dir
	initdb.Env = childEnv()
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgtest: initdb as %s failed: %v\n%s", userName, err, lastLines(out, 20))
	}

	// A free port can be taken by someone else between our probe and the
	// server's bind: try a few.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.port = port
		lastErr = s.launch(ctx, bin, data, cred, opts)
		if lastErr == nil {
			break
		}
		if !errors.Is(lastErr, errPortInUse) {
			return nil, lastErr
		}
	}
	if lastErr != nil {
		return nil, lastErr
	}
	s.base = &url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/postgres",
		RawQuery: "sslmode=disable",
	}
	if err := s.waitReady(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	opts.Logf("pgtest: PostgreSQL %s listening on 127.0.0.1:%d, data in %s", version, s.port, data)
	ok = true
	return s, nil
}

var errPortInUse = errors.New("pgtest: port in use")

// launch starts the postmaster as a child process. Without a data
// directory lock of pg_ctl's, the server stays our child: SIGQUIT
// (immediate shutdown) reaches it if this process dies.
func (s *Server) launch(ctx context.Context, bin, data string, cred *syscall.Credential, opts Options) error {
	logPath := filepath.Join(s.dir, "postgres.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	args := []string{
		"-D", data,
		"-p", strconv.Itoa(s.port),
		"-k", s.dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=200",
		"-c", "shared_buffers=32MB",
		"-c", "log_min_messages=warning",
		"-c", "timezone=UTC",
	}
	if opts.NoFsync {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Dir = s.dir
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: cred,
		Setpgid:    true, // a ^C on the terminal goes to the tests, which then stop the server cleanly
		Pdeathsig:  syscall.SIGQUIT,
	}
	// Pdeathsig fires when the thread that started the child exits, not
	// the process: start it from a thread that lives as long as the child.
	started := make(chan error, 1)
	s.exited = make(chan struct{})
	exited := s.exited
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine, after the child
		if err := cmd.Start(); err != nil {
			started <- err
			close(exited)
			return
		}
		started <- nil
		s.waitErr = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	if err := <-started; err != nil {
		logf.Close()
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	s.cmd = cmd

	// Wait until the server accepts connections or exits.
	for {
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			if bytes.Contains(log, []byte("could not bind")) || bytes.Contains(log, []byte("Address already in use")) {
				return errPortInUse
			}
			return fmt.Errorf("pgtest: postgres exited during start-up (%v):\n%s", s.waitErr, lastLines(log, 20))
		case <-ctx.Done():
			log, _ := os.ReadFile(logPath)
			s.kill()
			return fmt.Errorf("pgtest: postgres did not start in time:\n%s", lastLines(log, 20))
		case <-time.After(50 * time.Millisecond):
		}
		if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)), time.Second); err == nil {
			c.Close()
			return nil
		}
	}
}

// waitReady waits until a session can be opened (the server accepts TCP
// connections a little before it accepts sessions).
func (s *Server) waitReady(ctx context.Context) error {
	for {
		conn, err := pgx.Connect(ctx, s.base.String())
		if err == nil {
			defer conn.Close(context.Background())
			return conn.Ping(ctx)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: server on port %d never accepted a session: %w", s.port, err)
		case <-s.exited:
			return fmt.Errorf("pgtest: postgres exited during start-up (%v)", s.waitErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func external(raw string) (*Server, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("pgtest: PGTEST_URL: %w", err)
	}
	s := &Server{base: u, ext: true, exited: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, raw)
	if err != nil {
		return nil, fmt.Errorf("pgtest: PGTEST_URL: %w", err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&s.version); err != nil {
		return nil, fmt.Errorf("pgtest: PGTEST_URL: %w", err)
	}
	return s, nil
}

// Version returns the server's version, such as "15.18".
func (s *Server) Version() string { return s.version }

// Port returns the TCP port on 127.0.0.1 (0 for a PGTEST_URL server).
func (s *Server) Port() int { return s.port }

// URL returns the URL of database name on the server, as its superuser.
func (s *Server) URL(name string) string {
	u := *s.base
	u.Path = "/" + name
	return u.String()
}

// CreateDatabase creates a new, empty database and returns its name. The
// name is derived from hint (a test name, say), made unique.
func (s *Server) CreateDatabase(ctx context.Context, hint string) (string, error) {
	name := fmt.Sprintf("t%d_%s", s.dbSeq.Add(1), sanitize(hint))
	if len(name) > 63 {
		name = name[:63]
	}
	conn, err := pgx.Connect(ctx, s.base.String())
	if err != nil {
		return "", fmt.Errorf("pgtest: connect to %s: %w", s.base.Redacted(), err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	return name, nil
}

// DropDatabase drops database name, disconnecting its sessions.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.base.String())
	if err != nil {
		return fmt.Errorf("pgtest: connect to %s: %w", s.base.Redacted(), err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pgtest: drop database %s: %w", name, err)
	}
	return nil
}

// Stop shuts the server down (fast shutdown: sessions are disconnected) and
// removes its directory. It is safe to call more than once.
func (s *Server) Stop() error {
	s.stopMu.Lock()
	defer s.stopMu.Unlock()
	if s.stopped || s.ext {
		return nil
	}
	s.stopped = true
	var err error
	if s.cmd != nil && s.cmd.Process != nil {
		err = s.signalAndWait(syscall.SIGINT, 30*time.Second)
		if err != nil {
			s.kill()
		}
	}
	if rerr := os.RemoveAll(s.dir); rerr != nil && err == nil {
		err = fmt.Errorf("pgtest: remove %s: %w", s.dir, rerr)
	}
	return err
}

func (s *Server) signalAndWait(sig syscall.Signal, timeout time.Duration) error {
	select {
	case <-s.exited:
		return nil
	default:
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return err
	}
	select {
	case <-s.exited:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("pgtest: postgres did not stop within %s after %v", timeout, sig)
	}
}

// kill ends the server without a clean shutdown: immediate shutdown, then
// SIGKILL to its whole process group.
func (s *Server) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	if s.signalAndWait(syscall.SIGQUIT, 10*time.Second) == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
	}
}

// --- the shared server of a test binary ---

var (
	mainActive bool
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error
)

// Main runs the tests of m with one shared server, started on first use,
// and stops it afterwards. Call it from TestMain: os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	mainActive = true
	code := m.Run()
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	return code
}

// Unavailable skips t because PostgreSQL is not available, or fails it
// when CI=true.
func Unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("PostgreSQL is required under CI=true but is not available: %v", err)
	}
	t.Skipf("PostgreSQL is not available, skipping (install PostgreSQL 15, e.g. apt-get install postgresql, or set PGTEST_URL): %v", err)
}

// Shared returns the test binary's shared server (started on first use;
// Main must be in use), or skips/fails t as Unavailable does.
func Shared(t testing.TB) *Server {
	t.Helper()
	if !mainActive {
		t.Fatal("pgtest.Shared needs TestMain to call pgtest.Main")
	}
	sharedOnce.Do(func() { shared, sharedErr = Start(Options{Logf: t.Logf, NoFsync: os.Getenv("PGTEST_FSYNC") != "on"}) })
	if sharedErr != nil {
		Unavailable(t, sharedErr)
	}
	return shared
}

// NewDatabase returns the URL of a new, empty database, dropped when t
// ends. It uses the shared server when Main is in use, and otherwise a
// server of t's own.
func NewDatabase(t testing.TB) string {
	t.Helper()
	var s *Server
	if mainActive {
		s = Shared(t)
	} else {
		var err error
		s, err = Start(Options{Logf: t.Logf, NoFsync: os.Getenv("PGTEST_FSYNC") != "on"})
		if err != nil {
			Unavailable(t, err)
		}
		t.Cleanup(func() {
			if err := s.Stop(); err != nil {
				t.Error(err)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name, err := s.CreateDatabase(ctx, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.DropDatabase(ctx, name); err != nil {
			t.Error(err)
		}
	})
	return s.URL(name)
}

// --- environment ---

// findBinDir finds the directory holding initdb and postgres.
func findBinDir() (string, error) {
	has := func(dir string) bool {
		for _, b := range []string{"initdb", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	var tried []string
	if d := os.Getenv("PGTEST_BINDIR"); d != "" {
		if has(d) {
			return d, nil
		}
		return "", fmt.Errorf("pgtest: PGTEST_BINDIR=%s holds no initdb and postgres", d)
	}
	if pgc, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.Command(pgc, "--bindir").Output(); err == nil {
			d := strings.TrimSpace(string(out))
			if has(d) {
				return d, nil
			}
			tried = append(tried, d)
		}
	}
	// Debian and Ubuntu keep the server binaries out of PATH; prefer 15,
	// then the newest.
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	dirs = append([]string{"/usr/lib/postgresql/15/bin"}, dirs...)
	for _, d := range dirs {
		if has(d) {
			return d, nil
		}
		tried = append(tried, d)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		// Follow a symbolic link (/usr/local/bin/initdb -> .../15/bin/initdb)
		// to find postgres beside it.
		if r, err := filepath.EvalSymlinks(p); err == nil && has(filepath.Dir(r)) {
			return filepath.Dir(r), nil
		}
		if has(filepath.Dir(p)) {
			return filepath.Dir(p), nil
		}
		tried = append(tried, filepath.Dir(p))
	}
	return "", fmt.Errorf("pgtest: no PostgreSQL server binaries (initdb, postgres) found in PGTEST_BINDIR, pg_config --bindir, /usr/lib/postgresql/*/bin or PATH (tried %s)", strings.Join(tried, ", "))
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+(\.\d+)?)`)

func serverVersion(bin string) (string, error) {
	out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("pgtest: %s --version: %w", filepath.Join(bin, "postgres"), err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("pgtest: cannot read the version in %q", strings.TrimSpace(string(out)))
	}
	major, _ := strconv.Atoi(strings.SplitN(string(m[1]), ".", 2)[0])
	if major < 13 {
		return "", fmt.Errorf("pgtest: PostgreSQL %s is too old; 13 or newer is needed (15 is the reference)", m[1])
	}
	return string(m[1]), nil
}

// runAs returns the credentials to run the server with: nil (the current
// user) unless we are root, which PostgreSQL refuses to run as.
func runAs() (*syscall.Credential, string, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		name := strconv.Itoa(os.Geteuid())
		if err == nil {
			name = u.Username
		}
		return nil, name, nil
	}
	for _, name := range []string{"postgres", "mlsds"} {
		if u, err := user.Lookup(name); err == nil {
			return credOf(u)
		}
	}
	// Create a system user without a home or login shell.
	out, err := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
		"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
		"--comment", "mlsds tests (throwaway PostgreSQL)", "mlsds").CombinedOutput()
	if err != nil {
		return nil, "", fmt.Errorf("pgtest: running as root, and there is no postgres or mlsds user to run PostgreSQL as; useradd mlsds failed: %v: %s", err, bytes.TrimSpace(out))
	}
	u, err := user.Lookup("mlsds")
	if err != nil {
		return nil, "", fmt.Errorf("pgtest: user mlsds was created but cannot be looked up: %w", err)
	}
	return credOf(u)
}

func credOf(u *user.User) (*syscall.Credential, string, error) {
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, "", fmt.Errorf("pgtest: user %s has a non-numeric uid or gid", u.Username)
	}
	if uid == 0 {
		return nil, "", fmt.Errorf("pgtest: user %s is root; PostgreSQL refuses to run as root", u.Username)
	}
	// No supplementary groups: root's (group 0 among them) must not leak.
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, u.Username, nil
}

// tempBase returns a directory for the server's temporary directory that
// the server's user can reach: $TMPDIR unless one of its ancestors is
// closed to others (when we run as root and the server does not), else /tmp.
func tempBase() (string, error) {
	base := os.TempDir()
	if os.Geteuid() != 0 || reachable(base) {
		return base, nil
	}
	if reachable("/tmp") {
		return "/tmp", nil
	}
	return "", fmt.Errorf("pgtest: neither %s nor /tmp can be entered by other users (the server runs as one)", base)
}

func reachable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// childEnv is the environment of initdb and postgres: ours without the
// libpq variables that could point them elsewhere, in the C locale.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LANG=C", "LC_ALL=C", "TZ=UTC")
}

// sweepStale removes the directories of servers whose test binary was
// killed before it could clean up (the server died with it): those whose
// owner (the pid in owner.pid) is gone.
func sweepStale(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, "mlsds-pgtest-*"))
	for _, d := range dirs {
		fi, err := os.Stat(d)
		if err != nil || !fi.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			if time.Since(fi.ModTime()) > time.Hour {
				os.RemoveAll(d) // not ours, or broken long ago
			}
			continue // perhaps being set up right now
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // its test binary still runs
		}
		os.RemoveAll(d)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var unsafeChars = regexp.MustCompile(`[^a-z0-9_]+`)

func sanitize(s string) string {
	return strings.Trim(unsafeChars.ReplaceAllString(strings.ToLower(s), "_"), "_")
}

func lastLines(b []byte, n int) string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
