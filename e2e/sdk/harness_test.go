// Package sdk proves the Go SDK (package client) and the `mlsds client`
// commands end to end: against a real `mlsds serve` child process on
// loopback, with SQLite state files in temporary directories.
package sdk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mlsds/mlsds/client"
)

// binPath is the mlsds binary, built once by TestMain.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mlsds-e2e-sdk")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "mlsds")
	if out, err := exec.Command("go", "build", "-o", binPath, "github.com/mlsds/mlsds/cmd/mlsds").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is one `mlsds serve` child process at a time over one data
// directory, always on the same loopback address (so that clients keep
// their URL across a restart).
type server struct {
	t       testing.TB
	dataDir string
	addr    string // 127.0.0.1:0 until the first start
	url     string

	mu   sync.Mutex
	cmd  *exec.Cmd
	exit chan error
}

func startServer(t testing.TB) *server {
	t.Helper()
	s := &server{t: t, dataDir: t.TempDir(), addr: "127.0.0.1:0"}
	s.start()
	t.Cleanup(func() {
		s.mu.Lock()
		cmd := s.cmd
		s.mu.Unlock()
		if cmd != nil {
			cmd.Process.Kill()
			<-s.exit
		}
	})
	return s
}

func (s *server) start() {
	t := s.t
	t.Helper()
	cmd := exec.Command(binPath, "serve", "--listen", s.addr, "--data-dir", s.dataDir,
		"--log-format", "json", "--log-level", "info",
		"--rate-limit", "-1", "--claim-rate", "-1", "--claimer-rate", "-1", "--auth-rate-limit", "-1",
		"--shutdown-timeout", "2s")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exit := make(chan error, 1)
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var line struct{ Level, Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			if line.Msg == "mlsds serving" {
				addr <- line.Addr
			}
			if line.Level == "ERROR" {
				fmt.Fprintf(os.Stderr, "mlsds serve: %s\n", sc.Bytes())
			}
		}
		io.Copy(io.Discard, stderr)
		exit <- cmd.Wait()
	}()
	select {
	case a := <-addr:
		s.mu.Lock()
		s.cmd, s.exit, s.addr, s.url = cmd, exit, a, "http://"+a
		s.mu.Unlock()
	case err := <-exit:
		t.Fatalf("mlsds serve exited on start: %v", err)
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("mlsds serve did not report its address")
	}
}

// stop ends the server with SIGTERM and checks that it stopped cleanly;
// signaled is called once the signal is sent. start runs it again on the
// same data directory and address.
func (s *server) stop(signaled func()) {
	s.t.Helper()
	s.mu.Lock()
	cmd, exit := s.cmd, s.exit
	s.cmd = nil
	s.mu.Unlock()
	cmd.Process.Signal(syscall.SIGTERM)
	if signaled != nil {
		signaled()
	}
	select {
	case err := <-exit:
		if err != nil {
			s.t.Errorf("mlsds serve after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exit
		s.t.Fatal("mlsds serve did not stop within 30s of SIGTERM")
	}
}

// sdkClient is an SDK client with a recorder of its events.
type sdkClient struct {
	*client.Client
	t    testing.TB
	path string

	mu     sync.Mutex
	cond   *sync.Cond
	events []client.Event
	done   chan struct{}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// open opens an SDK client with a new identity id, its state in a
// temporary directory.
func (s *server) open(id string) *sdkClient {
	s.t.Helper()
	path := filepath.Join(s.t.TempDir(), id+".db")
	c, err := client.Open(context.Background(), client.Config{Server: s.url, StatePath: path, ClientID: id, KeyPackages: 5, Logger: quiet})
	if err != nil {
		s.t.Fatalf("client.Open(%s): %v", id, err)
	}
	sc := &sdkClient{Client: c, t: s.t, path: path, done: make(chan struct{})}
	sc.cond = sync.NewCond(&sc.mu)
	go func() {
		defer close(sc.done)
		for ev := range c.Events() {
			sc.mu.Lock()
			sc.events = append(sc.events, ev)
			sc.mu.Unlock()
			sc.cond.Broadcast()
		}
	}()
	s.t.Cleanup(func() { sc.Close() })
	return sc
}

// Close closes the client and waits for its last events.
func (c *sdkClient) Close() error {
	err := c.Client.Close()
	<-c.done
	return err
}

// waitFor waits until an event at index from or later satisfies f, and
// returns its index. It fails after a generous timeout (a hang, not a
// speed check).
func (c *sdkClient) waitFor(what string, from int, f func(client.Event) bool) int {
	c.t.Helper()
	const limit = 45 * time.Second
	deadline := time.Now().Add(limit)
	stop := time.AfterFunc(limit, c.cond.Broadcast)
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
			c.t.Fatalf("%s: no %s within %v; last events: %s", c.ID(), what, limit, describe(c.events[max(0, len(c.events)-10):]))
		}
		c.cond.Wait()
	}
}

func (c *sdkClient) snapshot() []client.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events)
}

func describe(evs []client.Event) string {
	var b bytes.Buffer
	for _, e := range evs {
		fmt.Fprintf(&b, "\n  %v seq=%d epoch=%d sender=%s members=%v data=%q err=%v", e.Kind, e.Seq, e.Epoch, e.Sender, e.Members, e.Data, e.Err)
	}
	return b.String()
}

func kind(k client.EventKind, gid []byte) func(client.Event) bool {
	return func(e client.Event) bool { return e.Kind == k && bytes.Equal(e.GroupID, gid) }
}

// messages returns "sender:text" of the application messages c received
// in group gid, in the order they arrived.
func messagesOf(evs []client.Event, gid []byte) []string {
	var out []string
	for _, e := range evs {
		if e.Kind == client.EventMessage && bytes.Equal(e.GroupID, gid) {
			out = append(out, e.Sender+":"+string(e.Data))
		}
	}
	return out
}

// waitMessages waits until c received at least n messages in group gid.
func (c *sdkClient) waitMessages(gid []byte, n int) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%d messages", n), 0, func(client.Event) bool { return len(messagesOf(c.events, gid)) >= n })
}

// waitEpoch waits until c has processed epoch n of group gid.
func (c *sdkClient) waitEpoch(gid []byte, n uint64) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("epoch %d", n), 0, func(e client.Event) bool {
		return bytes.Equal(e.GroupID, gid) && (e.Kind == client.EventEpoch || e.Kind == client.EventJoined) && e.Epoch >= n
	})
}

// noUndecryptable fails if c reported a message it could not process.
func (c *sdkClient) noUndecryptable() {
	c.t.Helper()
	for _, e := range c.snapshot() {
		if e.Kind == client.EventUndecryptable {
			c.t.Errorf("%s: message %d not processed: %v", c.ID(), e.Seq, e.Err)
		}
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
