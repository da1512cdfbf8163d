package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/client"
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
	if code, _, errb := cli(t, "create", "--id", "alice", "chat"); code != 1 || !strings.Contains(errb, "have a group named \"chat\" already") {
		t.Fatalf("create of a name taken: exit %d, %q", code, errb)
	}
	gid := groupID(t, "chat", "--id", "alice")
	short := gid[:8]
	bobOut, stopBob := listenCLI(t, "--state", bobState)
	// While bob listens, his state is locked.
	if code, _, errb := cli(t, "send", "--state", bobState, "chat", "hi"); code != 1 || !strings.Contains(errb, "in use by another mlsds client process") {
		t.Fatalf("second process on bob's state: exit %d, %q", code, errb)
	}
	out = mustCLI(t, "add", "--id", "alice", "chat", "bob", "carol")
	if !strings.Contains(out, "[chat] you added bob and carol") || !strings.Contains(out, "[chat] epoch 1 (members: alice, bob, carol)") {
		t.Fatalf("add: %q", out)
	}
	// send prints the receipt: the message's place in the group's order.
	if out := mustCLI(t, "send", "--id", "alice", "chat", "Hello,", "Bob"); !strings.Contains(out, "[chat] sent: message 2 of the group, epoch 1\n") {
		t.Fatalf("send: %q", out)
	}
	clientStdin = strings.NewReader("from stdin\n")
	mustCLI(t, "send", "--id", "alice", "chat", "-")
	// bob has no name for the group: it shows as its id's first digits.
	waitOutput(t, bobOut, "["+short+"] you joined (epoch 1, members: alice, bob, carol)\n["+short+"] alice: Hello, Bob\n["+short+"] alice: from stdin\n")

	// carol was not running: her next command shows what she missed. She
	// names the group by its id's first digits, then by a name of hers.
	code, out, errb := cli(t, "send", "--id", "carol", "chat", "hi all")
	if code != 1 || !strings.Contains(errb, `not in a group "chat"`) {
		t.Fatalf("carol sends to a name she did not give: exit %d, %q", code, errb)
	}
	if !strings.Contains(out, "["+short+"] you joined") || !strings.Contains(out, "["+short+"] alice: Hello, Bob") {
		t.Fatalf("carol's first command: %q", out)
	}
	mustCLI(t, "send", "--id", "carol", short, "hi all")
	waitOutput(t, bobOut, "["+short+"] carol: hi all\n")
	mustCLI(t, "label", "--id", "carol", short, "friends")
	mustCLI(t, "update", "--id", "carol", "friends")
	// Another member's Update reads as what it is.
	waitOutput(t, bobOut, "["+short+"] carol updated their keys (epoch 2)\n")
	out = mustCLI(t, "remove", "--id", "alice", "chat", "carol")
	if !strings.Contains(out, "[chat] carol: hi all") || !strings.Contains(out, "[chat] you removed carol") {
		t.Fatalf("remove: %q", out)
	}
	waitOutput(t, bobOut, "["+short+"] alice removed carol\n["+short+"] epoch 3 (members: alice, bob)\n")
	code, out, errb = cli(t, "send", "--id", "carol", "friends", "still here?")
	if code != 1 || !strings.Contains(out, "[friends] alice removed you: you are no longer a member") || !strings.Contains(errb, "no longer a member of friends") {
		t.Fatalf("send after removal: exit %d, %q, %q", code, out, errb)
	}
	if out := mustCLI(t, "groups", "--id", "carol"); !strings.Contains(out, "friends  epoch") || !strings.Contains(out, "(removed)") {
		t.Fatalf("carol's groups: %q", out)
	}
	// carol cannot join again by naming the group; with a link she can.
	if code, _, errb := cli(t, "join", "--id", "carol", "friends"); code != 1 || !strings.Contains(errb, "ask one of its members for a join link") {
		t.Fatalf("join by name after removal: exit %d, %q", code, errb)
	}
	link := joinLink(t, "chat", "--id", "alice")
	out = mustCLI(t, "join", "--id", "carol", link)
	if !strings.Contains(out, "[friends] you joined (epoch 4") {
		t.Fatalf("carol's join: %q", out)
	}
	waitOutput(t, bobOut, "["+short+"] carol joined\n["+short+"] epoch 4 (members: alice, bob, carol)\n")

	if code := stopBob(); code != 0 {
		t.Fatalf("listen exit %d", code)
	}
	// bob leaves; alice listens in JSON and commits his removal.
	aliceOut, stopAlice := listenCLI(t, "--id", "alice", "--json", "chat")
	if out := mustCLI(t, "leave", "--state", bobState, short); !strings.Contains(out, "] you left\n") {
		t.Fatalf("leave: %q", out)
	}
	waitOutput(t, aliceOut, `"event":"members-removed"`)
	// bob asked to leave: nobody removed him.
	if !strings.Contains(aliceOut.String(), `"members":["bob"]`) || !strings.Contains(aliceOut.String(), `"line":"bob left"`) {
		t.Fatalf("alice's JSON events: %s", aliceOut.String())
	}
	if code := stopAlice(); code != 0 {
		t.Fatalf("listen exit %d", code)
	}
	out = mustCLI(t, "groups", "--id", "alice", "--json")
	if !strings.Contains(out, `"group":"chat"`) || !strings.Contains(out, `"label":"chat"`) || !strings.Contains(out, `"group_id":"`+gid+`"`) ||
		!strings.Contains(out, `"members":["alice","carol"]`) || !strings.Contains(out, `"status":"member"`) {
		t.Fatalf("groups --json: %q", out)
	}
	if code, _, errb := cli(t, "send", "--id", "alice", "nosuch", "x"); code != 1 || !strings.Contains(errb, "not in a group \"nosuch\"") {
		t.Fatalf("send to an unknown group: exit %d, %q", code, errb)
	}
	if code, _, _ := cli(t, "send", "--id", "alice", "chat"); code != 2 {
		t.Fatalf("send without text: exit %d", code)
	}
}

// groupID returns the id, in hex, of the group named name in the groups
// of the identity that args pick.
func groupID(t *testing.T, name string, args ...string) string {
	t.Helper()
	out := mustCLI(t, append([]string{"groups", "--json"}, args...)...)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var st groupStatus
		if json.Unmarshal([]byte(line), &st) == nil && st.Group == name {
			return st.GroupID
		}
	}
	t.Fatalf("no group %q in %q", name, out)
	return ""
}

// joinLink makes a join link of the group named name, as the identity that
// args pick, and returns it with its id.
func joinLinkID(t *testing.T, name string, args ...string) (link, id string) {
	t.Helper()
	out := mustCLI(t, append([]string{"link", "--json", name}, args...)...)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var l linkJSON
		if json.Unmarshal([]byte(line), &l) == nil && l.Link != "" {
			return l.Link, l.LinkID
		}
	}
	t.Fatalf("link printed no link: %q", out)
	return "", ""
}

func joinLink(t *testing.T, name string, args ...string) string {
	t.Helper()
	link, _ := joinLinkID(t, name, args...)
	return link
}

// TestClientSameNameNoCollision: two users each create a group named
// "chat". The names are their own: the group ids are random, so neither
// create fails, and each one's "chat" is its own group.
func TestClientSameNameNoCollision(t *testing.T) {
	url := testServer(t)
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	t.Setenv("HOME", cfg)
	t.Setenv("MLSDS_CLIENT_SERVER", url)
	for _, id := range []string{"alice", "bob", "carol"} {
		mustCLI(t, "init", "--id", id)
	}
	mustCLI(t, "create", "--id", "alice", "chat")
	if out := mustCLI(t, "create", "--id", "bob", "chat"); !strings.Contains(out, "[chat] you created the group (epoch 0, members: bob)") {
		t.Fatalf("bob's create: %q", out)
	}
	aliceChat, bobChat := groupID(t, "chat", "--id", "alice"), groupID(t, "chat", "--id", "bob")
	if aliceChat == bobChat || len(aliceChat) != 32 || len(bobChat) != 32 {
		t.Fatalf("group ids %s and %s: want two different random 16-byte ids", aliceChat, bobChat)
	}
	// carol is in both; each of alice and bob talks in its own.
	mustCLI(t, "add", "--id", "alice", "chat", "carol")
	mustCLI(t, "add", "--id", "bob", "chat", "carol")
	mustCLI(t, "send", "--id", "alice", "chat", "from alice")
	mustCLI(t, "send", "--id", "bob", "chat", "from bob")
	out := mustCLI(t, "groups", "--id", "carol")
	if !strings.Contains(out, aliceChat[:8]+"  epoch 1  members: alice, carol") || !strings.Contains(out, bobChat[:8]+"  epoch 1  members: bob, carol") {
		t.Fatalf("carol's groups: %q", out)
	}
	if !strings.Contains(out, "["+aliceChat[:8]+"] alice: from alice") || !strings.Contains(out, "["+bobChat[:8]+"] bob: from bob") {
		t.Fatalf("carol's messages: %q", out)
	}
	// carol names both; a name names one group only.
	mustCLI(t, "label", "--id", "carol", aliceChat[:8], "chat")
	if code, _, errb := cli(t, "label", "--id", "carol", bobChat, "chat"); code != 1 || !strings.Contains(errb, `another group named "chat"`) {
		t.Fatalf("label with a name taken: exit %d, %q", code, errb)
	}
	mustCLI(t, "label", "--id", "carol", bobChat, "bobs-chat")
	mustCLI(t, "send", "--id", "carol", "chat", "to alice")
	mustCLI(t, "send", "--id", "carol", "bobs-chat", "to bob")
	if out := mustCLI(t, "groups", "--id", "alice"); !strings.Contains(out, "[chat] carol: to alice") || strings.Contains(out, "to bob") {
		t.Fatalf("alice's view: %q", out)
	}
	if out := mustCLI(t, "groups", "--id", "bob"); !strings.Contains(out, "[chat] carol: to bob") || strings.Contains(out, "to alice") {
		t.Fatalf("bob's view: %q", out)
	}
	// Labels are checked, with the profile of ids: no look-alikes (a
	// Cyrillic "с"), no invisible or bidi characters, one case.
	for _, bad := range []string{"", "two words", "-x", "0123456789abcdef", "mlsds-join:x", "\u0441hat", "ch\u200bat", "chat\u202e", "Chat"} {
		if code, _, _ := cli(t, "label", "--id", "carol", "chat", "--", bad); code != 1 {
			t.Errorf("label %q: exit %d, want 1", bad, code)
		}
	}
}

// TestClientJoinNeedsLink: a group's name joins nothing; a join link from
// a member does, until it is revoked.
func TestClientJoinNeedsLink(t *testing.T) {
	url := testServer(t)
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	t.Setenv("HOME", cfg)
	t.Setenv("MLSDS_CLIENT_SERVER", url)
	for _, id := range []string{"alice", "eve", "frank"} {
		mustCLI(t, "init", "--id", id)
	}
	mustCLI(t, "create", "--id", "alice", "chat")
	gid := groupID(t, "chat", "--id", "alice")

	// eve knows the name, or even the id: neither joins.
	for _, name := range []string{"chat", gid} {
		code, _, errb := cli(t, "join", "--id", "eve", name)
		if code != 1 || !strings.Contains(errb, "is not a join link: to join a group, ask one of its members for a join link") {
			t.Fatalf("join %s: exit %d, %q", name, code, errb)
		}
	}
	if code, _, errb := cli(t, "join", "--id", "eve", "mlsds-join:!!.x"); code != 1 || !strings.Contains(errb, "base64url") {
		t.Fatalf("join with a garbled link: exit %d, %q", code, errb)
	}

	link, linkID := joinLinkID(t, "chat", "--id", "alice")
	if !strings.HasPrefix(link, "mlsds-join:") {
		t.Fatalf("link %q", link)
	}
	if out := mustCLI(t, "links", "--id", "alice", "chat"); !strings.Contains(out, linkID+"  made by alice") {
		t.Fatalf("links: %q", out)
	}
	out := mustCLI(t, "join", "--id", "eve", link, "alices-chat")
	if !strings.Contains(out, "[alices-chat] you joined (epoch 1, members: alice, eve)") {
		t.Fatalf("eve's join: %q", out)
	}
	mustCLI(t, "send", "--id", "eve", "alices-chat", "hello from eve")
	if out := mustCLI(t, "groups", "--id", "alice"); !strings.Contains(out, "[chat] eve joined") || !strings.Contains(out, "[chat] eve: hello from eve") {
		t.Fatalf("alice's view: %q", out)
	}
	if code, _, errb := cli(t, "join", "--id", "eve", link); code != 1 || !strings.Contains(errb, "member of alices-chat already") {
		t.Fatalf("join again: exit %d, %q", code, errb)
	}

	// Once alice revokes the link, it admits nobody.
	mustCLI(t, "unlink", "--id", "alice", "chat", linkID)
	code, _, errb := cli(t, "join", "--id", "frank", link)
	if code != 1 || !strings.Contains(errb, "refuses this join link: it was revoked or has expired") {
		t.Fatalf("join with a revoked link: exit %d, %q", code, errb)
	}
	if out := mustCLI(t, "groups", "--id", "frank"); !strings.Contains(out, "frank is in no group") {
		t.Fatalf("frank's groups: %q", out)
	}
	if out := mustCLI(t, "groups", "--id", "alice"); !strings.Contains(out, "chat  epoch 1  members: alice, eve") {
		t.Fatalf("alice's groups after the refused join: %q", out)
	}
	if code, _, errb := cli(t, "unlink", "--id", "alice", "chat", linkID); code != 1 || !strings.Contains(errb, "no live join link") {
		t.Fatalf("unlink twice: exit %d, %q", code, errb)
	}
}

// TestStateFileNames: every valid client id names a state file, plain ids
// keep the names they always had, and the escaping is reversible.
func TestStateFileNames(t *testing.T) {
	for _, c := range []struct{ id, file string }{
		{"alice", "alice.db"},
		{"bob@example.com", "bob@example.com.db"},
		{"a+b_c-d.e", "a+b_c-d.e.db"},
		{"7c9e6679-7425-40de-944b-e07fc1f90ae7:ab12@example.com", "7c9e6679-7425-40de-944b-e07fc1f90ae7%3Aab12@example.com.db"},
		{".hidden", "%2Ehidden.db"},
		{"../x", "%2E.%2Fx.db"},
		{"a/b\\c", "a%2Fb%5Cc.db"},
		{"50%", "50%25.db"},
		{"josé", "jos%C3%A9.db"},
	} {
		if got := stateFileName(c.id); got != c.file {
			t.Errorf("stateFileName(%q) = %q, want %q", c.id, got, c.file)
		}
		if got := idOfStateFile(c.file); got != c.id {
			t.Errorf("idOfStateFile(%q) = %q, want %q", c.file, got, c.id)
		}
		if strings.ContainsAny(c.file[:len(c.file)-3], `/\:*?"<>|`) || strings.HasPrefix(c.file, ".") {
			t.Errorf("stateFileName(%q) = %q is not a portable file name", c.id, c.file)
		}
	}
	// Names stateFileName never makes name no client.
	for _, name := range []string{"alice", "a%3a.db", "%61lice.db", "%zz.db", ".x.db"} {
		if id := idOfStateFile(name); id != "" {
			t.Errorf("idOfStateFile(%q) = %q, want none", name, id)
		}
	}
}

// TestClientIDWithColon: a client id that is valid on the server but holds
// characters a file name cannot (here ":") still gets a state file under
// the default directory, and commands find it by --id and without.
func TestClientIDWithColon(t *testing.T) {
	url := testServer(t)
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	t.Setenv("HOME", cfg)
	t.Setenv("MLSDS_CLIENT_SERVER", url)
	const id = "7c9e6679-7425-40de-944b-e07fc1f90ae7:ab12@example.com"
	mustCLI(t, "init", "--id", id)
	dir, err := clientStateDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, stateFileName(id))); err != nil {
		t.Fatalf("no state file for %q: %v", id, err)
	}
	if out := mustCLI(t, "groups", "--id", id); !strings.Contains(out, id+" is in no group") {
		t.Fatalf("groups --id: %q", out)
	}
	if out := mustCLI(t, "groups"); !strings.Contains(out, id+" is in no group") {
		t.Fatalf("groups with the only identity: %q", out)
	}
	mustCLI(t, "init", "--id", "alice")
	if code, _, errb := cli(t, "groups"); code != 1 || !strings.Contains(errb, id) {
		t.Fatalf("groups with two identities should name both: exit %d, %q", code, errb)
	}
}

// liveServer is an in-process Delivery Service that a test can stop and
// start again on the same address and store.
type liveServer struct {
	t      *testing.T
	url    string
	addr   string
	dcfg   ds.Config
	scfg   server.Config
	st     *sqlite.Store
	cancel context.CancelFunc
	done   chan error
}

// startLiveServer starts a server with the default rate limits (unless
// dcfg sets others) on a loopback port; tlsCfg, if not nil, makes it
// serve TLS.
func startLiveServer(t *testing.T, dcfg ds.Config, tlsCfg *tls.Config) *liveServer {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "mlsds.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte{7}, 32)
	l := &liveServer{t: t, dcfg: dcfg, st: st, scfg: server.Config{ShutdownTimeout: 2 * time.Second, AuthSecret: secret, TLS: tlsCfg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.addr = ln.Addr().String()
	l.url = "http://" + l.addr
	if tlsCfg != nil {
		l.url = "https://" + l.addr
	}
	l.serve(ln)
	t.Cleanup(func() {
		l.stop()
		st.Close()
	})
	return l
}

func (l *liveServer) serve(ln net.Listener) {
	srv, err := server.New(ds.New(l.st, l.dcfg), l.scfg)
	if err != nil {
		l.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel, l.done = cancel, make(chan error, 1)
	go func() { l.done <- srv.Serve(ctx, ln) }()
}

func (l *liveServer) stop() {
	if l.cancel != nil {
		l.cancel()
		<-l.done
		l.cancel = nil
	}
}

// restart starts the server again on its address.
func (l *liveServer) restart() {
	var ln net.Listener
	var err error
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", l.addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		l.t.Fatal(err)
	}
	l.serve(ln)
}

// TestClientScriptedSends runs 40 sends back to back, as a script would,
// against a server at its default rate limit: each must exit 0, and the
// listening member must get each message exactly once.
func TestClientScriptedSends(t *testing.T) {
	srv := startLiveServer(t, ds.Config{}, nil)
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	t.Setenv("HOME", cfg)
	t.Setenv("MLSDS_CLIENT_SERVER", srv.url)
	mustCLI(t, "init", "--id", "alice")
	mustCLI(t, "init", "--id", "bob")
	mustCLI(t, "create", "--id", "alice", "chat")
	mustCLI(t, "add", "--id", "alice", "chat", "bob")
	bobOut, stopBob := listenCLI(t, "--id", "bob")
	const n = 40
	for i := 0; i < n; i++ {
		code, out, errb := cli(t, "send", "--id", "alice", "chat", fmt.Sprintf("message %d", i))
		if code != 0 {
			t.Fatalf("send %d: exit %d\nstdout: %s\nstderr: %s", i, code, out, errb)
		}
		if !strings.Contains(out, "[chat] sent: message ") {
			t.Fatalf("send %d printed no receipt: %q", i, out)
		}
	}
	waitOutput(t, bobOut, fmt.Sprintf("alice: message %d\n", n-1))
	if code := stopBob(); code != 0 {
		t.Fatalf("listen exit %d", code)
	}
	for i := 0; i < n; i++ {
		if c := strings.Count(bobOut.String(), fmt.Sprintf("alice: message %d\n", i)); c != 1 {
			t.Errorf("bob got message %d %d times", i, c)
		}
	}
}

// TestClientGroupsOffline: groups answers from the local state when the
// server is away, and says so.
func TestClientGroupsOffline(t *testing.T) {
	srv := startLiveServer(t, ds.Config{}, nil)
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	t.Setenv("HOME", cfg)
	t.Setenv("MLSDS_CLIENT_SERVER", srv.url)
	mustCLI(t, "init", "--id", "alice")
	mustCLI(t, "init", "--id", "bob")
	mustCLI(t, "create", "--id", "alice", "chat")
	mustCLI(t, "add", "--id", "alice", "chat", "bob")
	srv.stop()
	code, out, errb := cli(t, "groups", "--id", "alice")
	if code != 0 || !strings.Contains(out, "chat  epoch 1  members: alice, bob") || !strings.Contains(errb, "local state") {
		t.Fatalf("groups offline: exit %d\nstdout: %q\nstderr: %q", code, out, errb)
	}
	// Commands that need the server still say it is away.
	if code, _, errb := cli(t, "send", "--id", "alice", "--timeout", "5s", "chat", "hi"); code != 1 || !strings.Contains(errb, "cannot reach") {
		t.Fatalf("send offline: exit %d, %q", code, errb)
	}
}

// TestClientListenReconnects: listen says when it lost the server and
// when it is back, and goes on receiving.
func TestClientListenReconnects(t *testing.T) {
	srv := startLiveServer(t, ds.Config{}, nil)
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	t.Setenv("HOME", cfg)
	t.Setenv("MLSDS_CLIENT_SERVER", srv.url)
	mustCLI(t, "init", "--id", "alice")
	mustCLI(t, "init", "--id", "bob")
	mustCLI(t, "create", "--id", "alice", "chat")
	mustCLI(t, "add", "--id", "alice", "chat", "bob")
	bobOut, bobErr, stopBob := listenCLIErr(t, "--id", "bob")
	defer stopBob()
	srv.stop()
	waitOutput(t, bobErr, "reconnecting...")
	srv.restart()
	waitOutput(t, bobErr, "reconnected\n")
	mustCLI(t, "send", "--id", "alice", "chat", "after the restart")
	waitOutput(t, bobOut, "alice: after the restart\n")
}

// listenCLIErr is listenCLI with the standard error too.
func listenCLIErr(t *testing.T, args ...string) (out, errb *syncBuffer, stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	old := clientSignals
	clientSignals = func() (context.Context, context.CancelFunc) { return ctx, cancel }
	out, errb = &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(append([]string{"client", "listen"}, args...), out, errb) }()
	waitOutput(t, errb, "listening as")
	clientSignals = old
	var once sync.Once
	code := 0
	return out, errb, func() int {
		once.Do(func() {
			cancel()
			code = <-done
		})
		return code
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 (valid from
// notBefore to notAfter) and its key, and returns their paths and the TLS
// configuration serving it.
func selfSigned(t *testing.T, notBefore, notAfter time.Time) (certFile, keyFile string, cfg *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mlsds test"},
		NotBefore: notBefore, NotAfter: notAfter, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
}

// TestClientCA: a server with a self-signed certificate works with --ca
// (remembered by init, or from MLSDS_CLIENT_CA); without it the error
// says it is a TLS failure and what to do.
func TestClientCA(t *testing.T) {
	certFile, _, tlsCfg := selfSigned(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	srv := startLiveServer(t, ds.Config{}, tlsCfg)
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	t.Setenv("HOME", cfg)
	code, _, errb := cli(t, "init", "--id", "alice", "--server", srv.url)
	if code != 1 || !strings.Contains(errb, "TLS failure") || !strings.Contains(errb, "unknown authority") || !strings.Contains(errb, "--ca") ||
		strings.Contains(errb, "is 'mlsds serve' running") {
		t.Fatalf("init without --ca: exit %d, %q", code, errb)
	}
	mustCLI(t, "init", "--id", "alice", "--server", srv.url, "--ca", certFile)
	// Later commands use the CA init remembered.
	mustCLI(t, "create", "--id", "alice", "chat")
	t.Setenv("MLSDS_CLIENT_CA", certFile)
	mustCLI(t, "init", "--id", "bob", "--server", srv.url)
	t.Setenv("MLSDS_CLIENT_CA", "")
	mustCLI(t, "add", "--id", "alice", "chat", "bob")
	if out := mustCLI(t, "groups", "--id", "bob"); !strings.Contains(out, "epoch 1  members: alice, bob") {
		t.Fatalf("bob's groups: %q", out)
	}
	// An expired certificate says so.
	expCert, _, expCfg := selfSigned(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	expSrv := startLiveServer(t, ds.Config{}, expCfg)
	code, _, errb = cli(t, "init", "--id", "carol", "--server", expSrv.url, "--ca", expCert)
	if code != 1 || !strings.Contains(errb, "TLS failure") || !strings.Contains(errb, "expired") {
		t.Fatalf("init against an expired certificate: exit %d, %q", code, errb)
	}
	// h2c to a TLS port, and the wrong name.
	code, _, errb = cli(t, "init", "--id", "carol", "--server", strings.Replace(srv.url, "127.0.0.1", "localhost", 1), "--ca", certFile)
	if code != 1 || !strings.Contains(errb, "TLS failure") || !strings.Contains(errb, "not valid for this name") {
		t.Fatalf("init with a name the certificate does not hold: exit %d, %q", code, errb)
	}
}

// TestClientToken: the token works for a plain HTTP call, as curl makes
// it.
func TestClientToken(t *testing.T) {
	srv := startLiveServer(t, ds.Config{}, nil)
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	t.Setenv("HOME", cfg)
	t.Setenv("MLSDS_CLIENT_SERVER", srv.url)
	mustCLI(t, "init", "--id", "alice")
	out := mustCLI(t, "token", "--id", "alice", "--json")
	var tok tokenJSON
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.SessionToken == "" || tok.ClientID != "alice" {
		t.Fatalf("token --json: %q (%v)", out, err)
	}
	if exp, err := time.Parse(time.RFC3339, tok.ExpiresAt); err != nil || !exp.After(time.Now()) {
		t.Fatalf("token expiry %q: %v", tok.ExpiresAt, err)
	}
	plain := strings.TrimSpace(mustCLI(t, "token", "--id", "alice"))
	for _, bearer := range []string{tok.SessionToken, plain} {
		req, _ := http.NewRequest("POST", srv.url+"/mlsds.v1.KeyPackageService/CountKeyPackages", strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+bearer)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(string(body), "byCipherSuite") {
			t.Fatalf("CountKeyPackages with the token: %d %s", res.StatusCode, body)
		}
	}
}

// TestEventWording: every kind of event reads as a sentence.
func TestEventWording(t *testing.T) {
	p := &eventPrinter{self: "alice", labels: &groupLabels{byID: map[string]string{}}}
	g := []byte("g1")
	ce := &client.CredentialError{GroupID: g, Identity: "mallory", Rule: "directory", Err: errors.New("key not registered")}
	for _, tc := range []struct {
		ev   client.Event
		want string
	}{
		{client.Event{Kind: client.EventMessage, GroupID: g, Sender: "bob", Data: []byte("hi")}, "bob: hi"},
		{client.Event{Kind: client.EventEpoch, GroupID: g, Seq: 3, Sender: "bob", Epoch: 2}, "bob updated their keys (epoch 2)"},
		{client.Event{Kind: client.EventEpoch, GroupID: g, Seq: 4, Sender: "alice", Epoch: 3}, "you updated your keys (epoch 3)"},
		{client.Event{Kind: client.EventMembersAdded, GroupID: g, Seq: 5, Sender: "alice", Members: []string{"bob", "carol"}}, "you added bob and carol"},
		{client.Event{Kind: client.EventEpoch, GroupID: g, Seq: 5, Sender: "alice", Epoch: 4, Members: []string{"alice", "bob", "carol"}}, "epoch 4 (members: alice, bob, carol)"},
		{client.Event{Kind: client.EventMembersAdded, GroupID: g, Seq: 6, Sender: "carol", Members: []string{"carol"}}, "carol joined"},
		{client.Event{Kind: client.EventMembersRemoved, GroupID: g, Seq: 7, Sender: "alice", Members: []string{"bob"}, Left: []string{"bob"}}, "bob left"},
		{client.Event{Kind: client.EventMembersRemoved, GroupID: g, Seq: 8, Sender: "bob", Members: []string{"carol", "dave"}, Left: []string{"dave"}}, "bob removed carol; dave left"},
		{client.Event{Kind: client.EventRemoved, GroupID: g, Sender: "bob"}, "bob removed you: you are no longer a member"},
		{client.Event{Kind: client.EventLeft, GroupID: g, Sender: "alice"}, "you left"},
		{client.Event{Kind: client.EventJoined, GroupID: g, Epoch: 1, Members: []string{"bob", "alice"}}, "you joined (epoch 1, members: bob, alice)"},
		{client.Event{Kind: client.EventRejoined, GroupID: g, Epoch: 9, Members: []string{"alice", "bob"}, Err: errors.New("client: a Commit could not be processed")},
			"you rejoined (epoch 9, members: alice, bob) after your client could not follow the group: a Commit could not be processed"},
		{client.Event{Kind: client.EventPruned, GroupID: g, Seq: 40, Err: client.ErrPruned}, "the server deleted messages before message 40 before you got them"},
		{client.Event{Kind: client.EventRefused, GroupID: g, Sender: "bob", Err: ce}, `refused a change by bob: it brings in "mallory"`},
		{client.Event{Kind: client.EventUndecryptable, GroupID: g, Seq: 12, Sender: "bob", Err: errors.New("client: does not open")}, "message 12 from bob could not be read: does not open"},
		{client.Event{Kind: client.EventMembersUpdated, GroupID: g, Seq: 13, Sender: "alice", Members: []string{"bob"}}, "bob updated their keys (committed by you)"},
		{client.Event{Kind: client.EventEpoch, GroupID: g, Seq: 13, Sender: "alice", Epoch: 10, Members: []string{"alice", "bob"}}, "epoch 10 (members: alice, bob)"},
		{client.Event{Kind: client.EventMisattributed, GroupID: g, Sender: "bob", Members: []string{"carol"}, Err: errors.New("misattributed")}, "refused a message the server says bob sent: carol signed it"},
		{client.Event{Kind: client.EventReInit, GroupID: g, Sender: "bob", Members: []string{"alice", "bob"}}, "bob closed the group to go on in a new one"},
		{client.Event{Kind: client.EventForked, GroupID: g, Err: errors.New("forked")}, "your client's view of the group is not the one the server serves; it rejoins"},
		{client.Event{Kind: client.EventKeyMismatch, GroupID: g, Sender: "mallory", Epoch: 4, Err: errors.New("wrong key")}, "mallory gave the server a wrong membership key for epoch 4"},
		{client.Event{Kind: client.EventProposalDropped, GroupID: g, Sender: "bob", Err: errors.New("dropped")}, "dropped a proposal by bob"},
	} {
		got := p.text(tc.ev)
		if got == tc.ev.Kind.String() {
			t.Errorf("%v event has no wording", tc.ev.Kind)
		}
		if !strings.HasPrefix(got, tc.want) {
			t.Errorf("%v event: %q, want %q", tc.ev.Kind, got, tc.want)
		}
		if strings.Contains(got, "client: ") {
			t.Errorf("%v event shows an SDK prefix: %q", tc.ev.Kind, got)
		}
	}
}

// TestEveryEventKindHasWording: a kind the SDK adds must get its sentence
// here too, not its bare name.
func TestEveryEventKindHasWording(t *testing.T) {
	p := &eventPrinter{self: "alice", labels: &groupLabels{byID: map[string]string{}}}
	for k := client.EventKind(1); !strings.HasPrefix(k.String(), "EventKind("); k++ {
		if got := p.text(client.Event{Kind: k, GroupID: []byte("g"), Sender: "bob", Members: []string{"bob"}, Err: errors.New("why")}); got == k.String() || got == "" {
			t.Errorf("event kind %v prints as %q", k, got)
		}
	}
}
