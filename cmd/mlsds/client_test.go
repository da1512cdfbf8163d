package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/server"
)

func TestClientEveryFlagHasATwin(t *testing.T) {
	for name, cmd := range clientCommands {
		var o clientOpts
		var out bytes.Buffer
		fs := newClientFlagSet(name, cmd, &o, &out)
		fs.PrintDefaults()
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if c := strings.Count(out.String(), "(env MLSDS_CLIENT_"); c != n {
			t.Errorf("client %s: %d of %d flags document their environment twin", name, c, n)
		}
	}
}

func TestClientEnvTwins(t *testing.T) {
	env := map[string]string{
		"MLSDS_CLIENT_ID":      "carol", // the flag wins
		"MLSDS_CLIENT_STATE":   "/tmp/x.db",
		"MLSDS_CLIENT_SERVER":  "http://127.0.0.1:1",
		"MLSDS_CLIENT_TIMEOUT": "5s",
		"MLSDS_CLIENT_JSON":    "true",
		"MLSDS_CLIENT_USER":    "u1",
		"MLSDS_CLIENT_TOKEN":   "s3cret",
		"MLSDS_ID":             "not-a-client-twin",
	}
	var o clientOpts
	fs := newClientFlagSet("init", clientCommands["init"], &o, io.Discard)
	if _, err := parseInterspersed(fs, []string{"--id", "alice"}, 0); err != nil {
		t.Fatal(err)
	}
	err := applyClientEnv(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	if o.id != "alice" || o.state != "/tmp/x.db" || o.server != "http://127.0.0.1:1" || o.timeout != 5*time.Second ||
		!o.json || o.user != "u1" || o.token != "s3cret" || o.logLevel != "warn" {
		t.Fatalf("flags after env: %+v", o)
	}
	// Through runClient: a malformed value names the variable.
	defer func(f func(string) (string, bool)) { lookupEnv = f }(lookupEnv)
	lookupEnv = func(k string) (string, bool) {
		if k == "MLSDS_CLIENT_TIMEOUT" {
			return "soon", true
		}
		return "", false
	}
	var errb bytes.Buffer
	if code := run([]string{"client", "groups"}, io.Discard, &errb); code != 2 || !strings.Contains(errb.String(), "MLSDS_CLIENT_TIMEOUT") {
		t.Fatalf("malformed env: exit %d, %q", code, errb.String())
	}
}

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args         []string
		literalAfter int
		want         string
		id           string
	}{
		{[]string{"chat", "--id", "alice", "bob"}, 0, "chat|bob", "alice"},
		{[]string{"--id", "alice", "chat", "bob", "carol"}, 0, "chat|bob|carol", "alice"},
		{[]string{"--id", "alice", "chat", "--", "--id"}, 0, "chat|--id", "alice"},
		{[]string{"--id", "alice", "chat", "-5", "--id", "x"}, 1, "chat|-5|--id|x", "alice"},
		{[]string{"chat", "--", "-5"}, 1, "chat|-5", ""},
		{[]string{"chat", "-"}, 1, "chat|-", ""},
	} {
		var o clientOpts
		fs := newClientFlagSet("send", clientCommands["send"], &o, io.Discard)
		pos, err := parseInterspersed(fs, tc.args, tc.literalAfter)
		if err != nil || strings.Join(pos, "|") != tc.want || o.id != tc.id {
			t.Errorf("%q: %q, id %q, %v; want %q, id %q", tc.args, pos, o.id, err, tc.want, tc.id)
		}
	}
}

// testServer runs the Delivery Service in-process on a loopback port.
func testServer(t *testing.T) string {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "mlsds.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(ds.New(st, ds.Config{RequestsPerSecond: 10_000, ClaimsPerMinute: 10_000, ClaimsPerTargetPerMinute: 10_000}),
		server.Config{AuthRatePerSecond: -1, ShutdownTimeout: 5 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-done
		st.Close()
	})
	return "http://" + ln.Addr().String()
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cli runs `mlsds client args...` in-process and returns its exit code,
// standard output and standard error.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"client"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errb := cli(t, args...)
	if code != 0 {
		t.Fatalf("mlsds client %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errb)
	}
	return out
}

// listenCLI starts `mlsds client listen args...` and returns its output
// and a function that interrupts it and returns its exit code.
func listenCLI(t *testing.T, args ...string) (*syncBuffer, func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	old := clientSignals
	clientSignals = func() (context.Context, context.CancelFunc) { return ctx, cancel }
	out, errb := &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(append([]string{"client", "listen"}, args...), out, errb) }()
	// Wait until it opened its client (it says so on standard error).
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(errb.String(), "listening as") {
		if time.Now().After(deadline) {
			t.Fatalf("listen did not start: %s", errb.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	clientSignals = old
	return out, func() int {
		cancel()
		return <-done
	}
}

func waitOutput(t *testing.T, b *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(b.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the output within 30s:\n%s", want, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestClientCommands(t *testing.T) {
	url := testServer(t)
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	t.Setenv("HOME", cfg)
	t.Setenv("MLSDS_CLIENT_SERVER", url)

	// Before init, commands say what to do.
	if code, _, errb := cli(t, "groups"); code != 1 || !strings.Contains(errb, "mlsds client init --id") {
		t.Fatalf("groups before init: exit %d, %q", code, errb)
	}
	if code, _, errb := cli(t, "init"); code != 1 || !strings.Contains(errb, "--id") {
		t.Fatalf("init without --id: exit %d, %q", code, errb)
	}
	if code, _, errb := cli(t, "init", "--id", "alice", "--server", "http://127.0.0.1:1"); code != 1 || !strings.Contains(errb, "mlsds serve") {
		t.Fatalf("init against no server: exit %d, %q", code, errb)
	}

	mustCLI(t, "init", "--id", "alice")
	// With one identity, --id is optional.
	if out := mustCLI(t, "groups"); !strings.Contains(out, "alice is in no group") {
		t.Fatalf("groups: %q", out)
	}
	bobState := filepath.Join(t.TempDir(), "bob.db")
	mustCLI(t, "init", "--id", "bob", "--state", bobState, "--key-packages", "3")
	mustCLI(t, "init", "--id", "carol")
	if code, _, errb := cli(t, "groups"); code != 1 || !strings.Contains(errb, "several identities") {
		t.Fatalf("groups with two identities in the directory: exit %d, %q", code, errb)
	}
	// init again is harmless; as someone else on the same state it fails.
	mustCLI(t, "init", "--id", "bob", "--state", bobState)
	if code, _, errb := cli(t, "init", "--id", "mallory", "--state", bobState); code != 1 || !strings.Contains(errb, `belongs to client "bob"`) {
		t.Fatalf("init over another identity: exit %d, %q", code, errb)
	}
	// The id is taken on the server: a new state for it fails and leaves no file.
	other := filepath.Join(t.TempDir(), "x.db")
	if code, _, errb := cli(t, "init", "--id", "alice", "--state", other); code != 1 || !strings.Contains(errb, "--id") {
		t.Fatalf("init of a taken id: exit %d, %q", code, errb)
	}
	if _, err := os.Stat(other); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a failed init left its state file: %v", err)
	}

	out := mustCLI(t, "create", "--id", "alice", "chat")
	if !strings.Contains(out, "[chat] you created the group (epoch 0, members: alice)") {
		t.Fatalf("create: %q", out)
	}
	if code, _, errb := cli(t, "create", "--id", "carol", "chat"); code != 1 || !strings.Contains(errb, "has a group \"chat\" already") {
		t.Fatalf("create of an existing group: exit %d, %q", code, errb)
	}
	bobOut, stopBob := listenCLI(t, "--state", bobState)
	// While bob listens, his state is locked.
	if code, _, errb := cli(t, "send", "--state", bobState, "chat", "hi"); code != 1 || !strings.Contains(errb, "in use by another mlsds client process") {
		t.Fatalf("second process on bob's state: exit %d, %q", code, errb)
	}
	out = mustCLI(t, "add", "--id", "alice", "chat", "bob", "carol")
	if !strings.Contains(out, "[chat] you added bob, carol") || !strings.Contains(out, "[chat] epoch 1 (members: alice, bob, carol)") {
		t.Fatalf("add: %q", out)
	}
	mustCLI(t, "send", "--id", "alice", "chat", "Hello,", "Bob")
	clientStdin = strings.NewReader("from stdin\n")
	mustCLI(t, "send", "--id", "alice", "chat", "-")
	waitOutput(t, bobOut, "[chat] you joined (epoch 1, members: alice, bob, carol)\n[chat] alice: Hello, Bob\n[chat] alice: from stdin\n")

	// carol was not running: her next command shows what she missed.
	out = mustCLI(t, "send", "--id", "carol", "chat", "hi all")
	if !strings.Contains(out, "[chat] you joined") || !strings.Contains(out, "[chat] alice: Hello, Bob") {
		t.Fatalf("carol's first command: %q", out)
	}
	waitOutput(t, bobOut, "[chat] carol: hi all\n")
	mustCLI(t, "update", "--id", "carol", "chat")
	waitOutput(t, bobOut, "[chat] epoch 2 (members: alice, bob, carol)\n")
	out = mustCLI(t, "remove", "--id", "alice", "chat", "carol")
	if !strings.Contains(out, "[chat] carol: hi all") || !strings.Contains(out, "[chat] you removed carol") {
		t.Fatalf("remove: %q", out)
	}
	waitOutput(t, bobOut, "[chat] alice removed carol\n[chat] epoch 3 (members: alice, bob)\n")
	code, out, errb := cli(t, "send", "--id", "carol", "chat", "still here?")
	if code != 1 || !strings.Contains(out, "you are no longer a member (removed by alice)") || !strings.Contains(errb, "no longer a member of chat") {
		t.Fatalf("send after removal: exit %d, %q, %q", code, out, errb)
	}
	if out := mustCLI(t, "groups", "--id", "carol"); !strings.Contains(out, "(removed)") {
		t.Fatalf("carol's groups: %q", out)
	}
	// carol joins again by external Commit.
	mustCLI(t, "join", "--id", "carol", "chat")
	waitOutput(t, bobOut, "[chat] carol joined\n[chat] epoch 4 (members: alice, bob, carol)\n")

	if code := stopBob(); code != 0 {
		t.Fatalf("listen exit %d", code)
	}
	// bob leaves; alice listens in JSON and commits his removal.
	aliceOut, stopAlice := listenCLI(t, "--id", "alice", "--json", "chat")
	mustCLI(t, "leave", "--state", bobState, "chat")
	waitOutput(t, aliceOut, `"event":"members-removed"`)
	if !strings.Contains(aliceOut.String(), `"members":["bob"]`) {
		t.Fatalf("alice's JSON events: %s", aliceOut.String())
	}
	if code := stopAlice(); code != 0 {
		t.Fatalf("listen exit %d", code)
	}
	out = mustCLI(t, "groups", "--id", "alice", "--json")
	if !strings.Contains(out, `"group":"chat"`) || !strings.Contains(out, `"members":["alice","carol"]`) || !strings.Contains(out, `"status":"member"`) {
		t.Fatalf("groups --json: %q", out)
	}
	if code, _, errb := cli(t, "send", "--id", "alice", "nosuch", "x"); code != 1 || !strings.Contains(errb, "not in a group \"nosuch\"") {
		t.Fatalf("send to an unknown group: exit %d, %q", code, errb)
	}
	if code, _, _ := cli(t, "send", "--id", "alice", "chat"); code != 2 {
		t.Fatalf("send without text: exit %d", code)
	}
}
