package server_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/mlsds/mlsds/internal/pgtest"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// serverProcess is `mlsds serve` running as a child process.
type serverProcess struct {
	cmd  *exec.Cmd
	addr string
	exit chan error

	mu   sync.Mutex
	msgs []string // log messages seen
}

func (p *serverProcess) logged(msg string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.msgs {
		if m == msg {
			return true
		}
	}
	return false
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// buildBinary builds cmd/mlsds once for the test binary's run.
func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mlsds-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "mlsds")
		if runtime.GOOS == "windows" {
			binPath += ".exe"
		}
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/mlsds/mlsds/cmd/mlsds").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// startProcess runs `mlsds serve` on a fresh loopback port and waits for
// the log line that gives its address.
func startProcess(t *testing.T, bin, dataDir string, env ...string) *serverProcess {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--log-format", "json")
	// Flags have environment twins; the data directory goes that way.
	cmd.Env = append(cmd.Environ(), "MLSDS_DATA_DIR="+dataDir, "MLSDS_RATE_LIMIT=-1")
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serverProcess{cmd: cmd, exit: make(chan error, 1)}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			p.mu.Lock()
			p.msgs = append(p.msgs, line.Msg)
			p.mu.Unlock()
			if line.Msg == "mlsds serving" {
				addr <- line.Addr
			}
		}
		io.Copy(io.Discard, stderr)
		p.exit <- cmd.Wait()
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	select {
	case p.addr = <-addr:
	case err := <-p.exit:
		t.Fatalf("mlsds serve exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("mlsds serve did not report its address")
	}
	return p
}

// TestCrashRecovery kills `mlsds serve` with SIGKILL while several senders
// are submitting, restarts it on the same data directory, and checks that
// every message that got a receipt is delivered, exactly once, in order.
// Messages in flight at the kill may or may not have been stored; the ones
// that were are delivered once too. Session tokens survive the restart
// (the token secret lives in the data directory).
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	dataDir := t.TempDir()
	p := startProcess(t, bin, dataDir)
	e := &testEnv{t: t, url: "http://" + p.addr, http: h2cClient()}
	const nSenders = 4
	senders := make([]*member, nSenders)
	for i := range senders {
		senders[i] = e.client(fmt.Sprintf("sender%d", i))
	}
	bob := e.client("bob")
	gid := groupID("crash")
	senders[0].createOpaqueGroup(gid, append(senders[1:], bob)...)

	type sent struct {
		data    []byte
		receipt *mlsdsv1.Receipt
	}
	var (
		mu       sync.Mutex
		receipts []sent
		wg       sync.WaitGroup
	)
	killAt := 80
	killed := make(chan struct{})
	var once sync.Once
	for _, s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				data := privateMessage(t, gid, 0, mls.ContentTypeApplication, 100)
				r, err := s.send(data)
				if err != nil {
					select {
					case <-killed:
						return // the server is gone
					default:
						t.Errorf("send before the kill: %v", err)
						return
					}
				}
				mu.Lock()
				receipts = append(receipts, sent{data, r})
				n := len(receipts)
				mu.Unlock()
				if n >= killAt {
					once.Do(func() {
						close(killed)
						p.cmd.Process.Kill() // SIGKILL: no shutdown, no flush
					})
				}
			}
		}()
	}
	wg.Wait()
	<-p.exit
	e.http.CloseIdleConnections()

	// Restart on the same data directory, at a new address.
	p = startProcess(t, bin, dataDir)
	e.url = "http://" + p.addr
	e.http = h2cClient()
	for i := range senders {
		senders[i] = e.rebind(senders[i])
	}
	bob = e.rebind(bob)

	sub := bob.subscribe()
	got := sub.waitCaughtUp(t)
	bySeq := map[uint64]*mlsdsv1.Envelope{}
	for i, env := range got {
		if bySeq[env.GroupSeq] != nil {
			t.Fatalf("seq %d delivered twice", env.GroupSeq)
		}
		bySeq[env.GroupSeq] = env
		if env.GroupSeq != uint64(i+1) {
			t.Fatalf("delivery %d has seq %d: gap or reorder", i, env.GroupSeq)
		}
	}
	for _, s := range receipts {
		env := bySeq[s.receipt.GroupSeq]
		if env == nil {
			t.Fatalf("message with receipt seq %d lost in the crash", s.receipt.GroupSeq)
		}
		if !bytes.Equal(env.Message, s.data) {
			t.Fatalf("seq %d holds other bytes than its receipt promised", s.receipt.GroupSeq)
		}
	}
	if len(got) < len(receipts) {
		t.Fatalf("%d delivered, %d receipts", len(got), len(receipts))
	}
	t.Logf("%d receipts before the kill, %d messages stored", len(receipts), len(got))

	// Resubmitting a receipted message gives its receipt back; the group
	// goes on from where it was.
	r := senders[1].mustSend(receipts[0].data)
	if r.GroupSeq != receipts[0].receipt.GroupSeq {
		t.Fatalf("resubmission got seq %d, want %d", r.GroupSeq, receipts[0].receipt.GroupSeq)
	}
	next := senders[2].mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 10))
	if next.GroupSeq != uint64(len(got)+1) {
		t.Fatalf("first message after restart has seq %d, want %d", next.GroupSeq, len(got)+1)
	}
	if ev := sub.nextData(t).GetMessage(); ev == nil || ev.GroupSeq != next.GroupSeq {
		t.Fatalf("live delivery after restart: %v", ev)
	}
}

// rebind returns a copy of m whose clients talk to e (after a restart),
// keeping its keys and session token.
func (e *testEnv) rebind(m *member) *member {
	n := e.newMember(m.id)
	n.sigPriv, n.sigPub, n.cred, n.token, n.user = m.sigPriv, m.sigPub, m.cred, m.token, m.user
	return n
}

// TestSIGTERM: `mlsds serve` shuts down gracefully on SIGTERM: the stream
// of a subscriber ends with UNAVAILABLE (reconnect), and the process exits
// with status 0 after logging that it stopped.
func TestSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	if runtime.GOOS == "windows" {
		t.Skip("no SIGTERM on Windows")
	}
	bin := buildBinary(t)
	p := startProcess(t, bin, t.TempDir())
	e := &testEnv{t: t, url: "http://" + p.addr, http: h2cClient()}
	alice := e.client("alice")
	sub := alice.subscribe()
	sub.waitCaughtUp(t)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range sub.events {
	}
	connectErr(t, <-sub.done, connect.CodeUnavailable)
	e.http.CloseIdleConnections()
	select {
	case err := <-p.exit:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("mlsds serve did not exit after SIGTERM")
	}
	if !p.logged("mlsds stopped") {
		t.Fatal("no 'mlsds stopped' log line")
	}
}

// TestServePostgres: `mlsds serve --store postgres://...` serves from
// PostgreSQL.
func TestServePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	url := pgtest.NewDatabase(t)
	bin := buildBinary(t)
	p := startProcess(t, bin, t.TempDir(), "MLSDS_STORE="+url)
	e := &testEnv{t: t, url: "http://" + p.addr, http: h2cClient()}
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("pg")
	alice.createOpaqueGroup(gid, bob)
	sub := bob.subscribe()
	sub.waitCaughtUp(t)
	m := privateMessage(t, gid, 0, mls.ContentTypeApplication, 20)
	alice.mustSend(m)
	if ev := sub.nextData(t).GetMessage(); ev == nil || !bytes.Equal(ev.Message, m) {
		t.Fatalf("got %v", ev)
	}
	sub.close()
	e.http.CloseIdleConnections()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-p.exit; err != nil {
		t.Fatalf("exit: %v", err)
	}
}

// TestServeExternalJoinFlag: `mlsds serve --external-join` (here through
// its environment twin) decides who outside a transparent group may read
// its GroupInfo: by default (links) a holder of a join link; with members
// nobody, link or not; with any every registered client.
func TestServeExternalJoinFlag(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	for _, c := range []struct {
		env                   []string
		withoutLink, withLink connect.Code // 0: served
	}{
		{nil, connect.CodePermissionDenied, 0},
		{[]string{"MLSDS_EXTERNAL_JOIN=links"}, connect.CodePermissionDenied, 0},
		{[]string{"MLSDS_EXTERNAL_JOIN=members"}, connect.CodePermissionDenied, connect.CodePermissionDenied},
		{[]string{"MLSDS_EXTERNAL_JOIN=any"}, 0, 0},
	} {
		p := startProcess(t, bin, t.TempDir(), c.env...)
		e := &testEnv{t: t, url: "http://" + p.addr, http: h2cClient()}
		alice, bob := e.client("alice"), e.client("bob")
		ctx := t.Context()
		gid := groupID("external-flag")
		_, gi, tree := alice.newTransparentGroup(gid)
		if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
			GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi, RatchetTree: tree})); err != nil {
			t.Fatalf("CreateGroup: %v", err)
		}
		link, err := alice.groups.CreateJoinLink(ctx, connect.NewRequest(&mlsdsv1.CreateJoinLinkRequest{GroupId: gid}))
		if err != nil {
			t.Fatalf("CreateJoinLink: %v", err)
		}
		for _, try := range []struct {
			token string
			want  connect.Code
		}{{"", c.withoutLink}, {link.Msg.JoinToken, c.withLink}} {
			_, err := bob.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid, JoinToken: try.token}))
			if got := connect.CodeOf(err); (try.want == 0 && err != nil) || (try.want != 0 && got != try.want) {
				t.Errorf("%v: GetGroupInfo by a non-member (join link %v): %v, want code %v", c.env, try.token != "", err, try.want)
			}
		}
		e.http.CloseIdleConnections()
		p.cmd.Process.Kill()
	}
}
