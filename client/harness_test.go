package client

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/server"
)

// The tests run a real server in-process: the Connect handlers over a
// ds.Service on a SQLite file, on a loopback port, spoken to over h2c by
// Clients with real MLS.

type testEnv struct {
	t      testing.TB
	url    string
	addr   string
	dbPath string
	opts   []envOption
	stop   func()
}

type envOption func(*ds.Config, *server.Config)

func startEnv(t testing.TB, opts ...envOption) *testEnv {
	t.Helper()
	e := &testEnv{t: t, dbPath: filepath.Join(t.TempDir(), "mlsds.db"), addr: "127.0.0.1:0", opts: opts}
	e.start()
	t.Cleanup(func() { e.stop() })
	return e
}

// start runs a server over the env's database, on its address.
func (e *testEnv) start() {
	t := e.t
	t.Helper()
	st, err := sqlite.Open(context.Background(), e.dbPath, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dsCfg := ds.Config{
		RequestsPerSecond:        10_000,
		ClaimsPerMinute:          100_000,
		ClaimsPerTargetPerMinute: 100_000,
		PollInterval:             time.Second,
	}
	srvCfg := server.Config{
		AuthRatePerSecond: -1,
		KeepAlive:         30 * time.Second,
		ShutdownTimeout:   5 * time.Second,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, o := range e.opts {
		o(&dsCfg, &srvCfg)
	}
	srv, err := server.New(ds.New(st, dsCfg), srvCfg)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", e.addr)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	e.url = "http://" + e.addr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
			st.Close()
		})
	}
}

// restart stops the server and starts a new one (with a new session
// token key) over the same database and address.
func (e *testEnv) restart() {
	e.t.Helper()
	e.stop()
	e.start()
}

// tclient is a Client with an event recorder.
type tclient struct {
	*Client
	t    testing.TB
	path string

	mu     sync.Mutex
	cond   *sync.Cond
	events []Event
	done   chan struct{}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// open opens a client with its state in dir (a new identity for id if the
// state is new) and records its events.
func (e *testEnv) open(id, dir string, cfg ...func(*Config)) *tclient {
	e.t.Helper()
	c := Config{Server: e.url, StatePath: filepath.Join(dir, id+".db"), ClientID: id, Logger: quiet, KeyPackages: 5}
	for _, f := range cfg {
		f(&c)
	}
	cl, err := Open(context.Background(), c)
	if err != nil {
		e.t.Fatalf("Open(%s): %v", id, err)
	}
	tc := &tclient{Client: cl, t: e.t, path: c.StatePath, done: make(chan struct{})}
	tc.cond = sync.NewCond(&tc.mu)
	go func() {
		defer close(tc.done)
		for ev := range cl.Events() {
			tc.mu.Lock()
			tc.events = append(tc.events, ev)
			tc.mu.Unlock()
			tc.cond.Broadcast()
		}
	}()
	e.t.Cleanup(func() { tc.Close() })
	return tc
}

func (e *testEnv) client(id string) *tclient { return e.open(id, e.t.TempDir()) }

// Close closes the client and waits for its Events channel to close.
func (c *tclient) Close() error {
	err := c.Client.Close()
	<-c.done
	return err
}

// waitFor waits until the recorded events hold one that f accepts (after
// index from) and returns its index. It fails the test after a generous
// timeout (a hang, not a speed check).
func (c *tclient) waitFor(what string, from int, f func(Event) bool) int {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	stop := time.AfterFunc(30*time.Second, c.cond.Broadcast)
	defer stop.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for i := from; i < len(c.events); i++ {
			if f(c.events[i]) {
				return i
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: no %s within 30s; events: %s", c.ID(), what, describe(c.events))
		}
		c.cond.Wait()
	}
}

func (c *tclient) snapshot() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events)
}

func describe(evs []Event) string {
	var b bytes.Buffer
	for _, e := range evs {
		fmt.Fprintf(&b, "\n  %v seq=%d epoch=%d sender=%s members=%v data=%q err=%v", e.Kind, e.Seq, e.Epoch, e.Sender, e.Members, e.Data, e.Err)
	}
	return b.String()
}

func kind(k EventKind, gid []byte) func(Event) bool {
	return func(e Event) bool { return e.Kind == k && bytes.Equal(e.GroupID, gid) }
}

// messages returns the data of the EventMessages of group gid, in order.
func (c *tclient) messages(gid []byte) []string {
	var out []string
	for _, e := range c.snapshot() {
		if e.Kind == EventMessage && bytes.Equal(e.GroupID, gid) {
			out = append(out, e.Sender+":"+string(e.Data))
		}
	}
	return out
}

// waitMessages waits until c has received n messages in group gid.
func (c *tclient) waitMessages(gid []byte, n int) []string {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%d messages", n), 0, func(Event) bool { return len(c.messagesLocked(gid)) >= n })
	return c.messages(gid)
}

func (c *tclient) messagesLocked(gid []byte) []string {
	var out []string
	for _, e := range c.events {
		if e.Kind == EventMessage && bytes.Equal(e.GroupID, gid) {
			out = append(out, e.Sender+":"+string(e.Data))
		}
	}
	return out
}

// noUndecryptable fails if c reported an undecryptable message.
func (c *tclient) noUndecryptable() {
	c.t.Helper()
	for _, e := range c.snapshot() {
		if e.Kind == EventUndecryptable {
			c.t.Errorf("%s: undecryptable message: seq %d: %v", c.ID(), e.Seq, e.Err)
		}
	}
}

// waitEpoch waits until c's group gid is at epoch n.
func waitEpoch(t testing.TB, c *tclient, gid []byte, n uint64) {
	t.Helper()
	c.waitFor(fmt.Sprintf("epoch %d", n), 0, func(e Event) bool {
		return bytes.Equal(e.GroupID, gid) && (e.Kind == EventEpoch || e.Kind == EventJoined) && e.Epoch >= n
	})
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
