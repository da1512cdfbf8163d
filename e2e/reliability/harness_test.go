// Package reliability runs `mlsds serve` as a child process on a SQLite data
// directory, kills it with SIGKILL at chosen or random points, restarts it on
// the same directory, and checks what clients observed across the crashes:
// Commit ordering (one history, no forks, no gaps) and exactly-once delivery
// of every acknowledged message.
package reliability

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/storetest"
	"github.com/mlsds/mlsds/mls"
)

const suite = mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// buildBinary builds cmd/mlsds once per test binary.
func buildBinary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mlsds-reliability-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "mlsds")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/mlsds/mlsds/cmd/mlsds").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return binPath
}

// server is one `mlsds serve` process at a time over one data directory:
// kill SIGKILLs the current process and restart starts a new one on the
// same directory (at a new loopback port). Clients ask it for the current
// address on every call.
type server struct {
	tb      testing.TB
	bin     string
	dataDir string
	args    []string // more flags of every start

	mu       sync.Mutex
	cmd      *exec.Cmd
	url      string
	http     *http.Client
	exit     chan error
	gen      int // incremented by every start
	restarts int
}

func newServer(tb testing.TB, args ...string) *server {
	s := &server{tb: tb, bin: buildBinary(tb), dataDir: tb.TempDir(), args: args}
	s.start()
	tb.Cleanup(func() {
		s.mu.Lock()
		cmd := s.cmd
		s.mu.Unlock()
		if cmd != nil {
			cmd.Process.Kill()
		}
	})
	return s
}

func (s *server) dbPath() string { return filepath.Join(s.dataDir, "mlsds.db") }

// start runs `mlsds serve` on the data directory and waits for its address.
func (s *server) start() {
	tb := s.tb
	cmd := exec.Command(s.bin, append([]string{"serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "info",
		"--data-dir", s.dataDir,
		"--rate-limit", "-1", "--claim-rate", "-1", "--claimer-rate", "-1", "--auth-rate-limit", "-1",
		"--shutdown-timeout", "2s"}, s.args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exit := make(chan error, 1)
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var line struct {
				Level string `json:"level"`
				Msg   string `json:"msg"`
				Addr  string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			if line.Msg == "mlsds serving" {
				addr <- line.Addr
			}
			if line.Level == "ERROR" {
				fmt.Fprintf(os.Stderr, "mlsds: %s\n", sc.Bytes())
			}
		}
		io.Copy(io.Discard, stderr)
		exit <- cmd.Wait()
	}()
	select {
	case a := <-addr:
		s.mu.Lock()
		s.cmd, s.exit, s.url, s.http = cmd, exit, "http://"+a, h2cClient()
		s.gen++
		s.mu.Unlock()
	case err := <-exit:
		tb.Fatalf("mlsds serve exited on start (after %d restarts): %v", s.restarts, err)
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		tb.Fatal("mlsds serve did not report its address")
	}
}

// kill ends the current process with SIGKILL (no shutdown, no flush) and
// waits for it to be gone.
func (s *server) kill() {
	s.mu.Lock()
	cmd, exit, hc := s.cmd, s.exit, s.http
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exit
	hc.CloseIdleConnections()
}

// crash SIGKILLs the server and starts it again on the same data directory.
func (s *server) crash() {
	s.kill()
	s.mu.Lock()
	s.restarts++
	s.mu.Unlock()
	s.start()
}

// stop ends the process with SIGINT and reports its exit status.
func (s *server) stop() error {
	s.mu.Lock()
	cmd, exit, hc := s.cmd, s.exit, s.http
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	hc.CloseIdleConnections()
	cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-exit:
		return err
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-exit
		return errors.New("did not exit within 15s of SIGINT")
	}
}

func (s *server) current() (string, *http.Client, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url, s.http, s.gen
}

func h2cClient() *http.Client {
	tr := &http.Transport{ForceAttemptHTTP2: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

// bearer adds the session token to every call.
type bearer struct{ token *string }

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+*b.token)
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+*b.token)
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// client is a registered, authenticated MLS client. Its session token
// survives restarts (the token secret lives in the data directory).
type client struct {
	id              string
	token           string
	srv             *server
	sigPriv, sigPub []byte
}

func (c *client) kps() mlsdsv1connect.KeyPackageServiceClient {
	url, hc, _ := c.srv.current()
	return mlsdsv1connect.NewKeyPackageServiceClient(hc, url, connect.WithInterceptors(bearer{&c.token}))
}

// publishKeyPackage uploads a fresh KeyPackage of c (RFC 9420 §10).
func (c *client) publishKeyPackage(tb testing.TB) {
	tb.Helper()
	m := storetest.Member{ID: c.id, SigPriv: c.sigPriv, SigPub: c.sigPub}
	if _, err := c.kps().UploadKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
		KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: m.KeyPackage(tb, time.Now())}}})); err != nil {
		tb.Fatalf("UploadKeyPackages(%s): %v", c.id, err)
	}
}

// claim claims a KeyPackage of the client id and returns it as uploaded.
func (c *client) claim(tb testing.TB, id string) []byte {
	tb.Helper()
	res, err := c.kps().ClaimKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
		Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: id}, CipherSuite: uint32(suite)}))
	if err != nil || len(res.Msg.KeyPackages) != 1 {
		tb.Fatalf("ClaimKeyPackages(%s) by %s: %v", id, c.id, err)
	}
	return res.Msg.KeyPackages[0].KeyPackage
}

func (c *client) groups() mlsdsv1connect.GroupServiceClient {
	url, hc, _ := c.srv.current()
	return mlsdsv1connect.NewGroupServiceClient(hc, url, connect.WithInterceptors(bearer{&c.token}))
}

func (c *client) delivery() (mlsdsv1connect.DeliveryServiceClient, int) {
	url, hc, gen := c.srv.current()
	return mlsdsv1connect.NewDeliveryServiceClient(hc, url, connect.WithInterceptors(bearer{&c.token})), gen
}

// newClient registers a client with a fresh Ed25519 key and logs it in
// (RFC 9420 §5.3 basic credential).
func newClient(tb testing.TB, s *server, id string) *client {
	tb.Helper()
	priv, pub, err := suite.GenerateSignatureKeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	cred := mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(id)}
	cb, err := cred.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	url, hc, _ := s.current()
	auth := mlsdsv1connect.NewAuthServiceClient(hc, url)
	ctx := context.Background()
	reg := &mlsdsv1.RegisterClientRequest{Credential: cb, SignatureKey: pub, CipherSuite: uint32(suite)}
	if reg.Proof, err = suite.SignWithLabel(priv, ds.RegisterLabel, ds.RegisterTBS(reg.Credential, reg.SignatureKey, suite, reg.UserId)); err != nil {
		tb.Fatal(err)
	}
	if _, err := auth.RegisterClient(ctx, connect.NewRequest(reg)); err != nil {
		tb.Fatalf("RegisterClient(%s): %v", id, err)
	}
	ch, err := auth.GetChallenge(ctx, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: id}))
	if err != nil {
		tb.Fatalf("GetChallenge(%s): %v", id, err)
	}
	sig, err := suite.SignWithLabel(priv, ch.Msg.Label, ch.Msg.Challenge)
	if err != nil {
		tb.Fatal(err)
	}
	res, err := auth.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{
		ClientId: id, Challenge: ch.Msg.Challenge, Signature: sig}))
	if err != nil {
		tb.Fatalf("Authenticate(%s): %v", id, err)
	}
	return &client{id: id, token: res.Msg.SessionToken, srv: s, sigPriv: priv, sigPub: pub}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func hashOf(b []byte) [32]byte { return sha256.Sum256(b) }

// privateMessage is a PrivateMessage (§6.3) with a real clear header and
// a random body, which an opaque-mode group orders by its header alone.
func privateMessage(tb testing.TB, groupID []byte, epoch uint64, ct mls.ContentType, bodySize int) []byte {
	m := &mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatPrivateMessage,
		PrivateMessage: &mls.PrivateMessage{
			GroupID:             groupID,
			Epoch:               epoch,
			ContentType:         ct,
			EncryptedSenderData: randBytes(32),
			Ciphertext:          randBytes(bodySize),
		}}
	b, err := m.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// createOpaqueGroup creates an opaque group of c and others. Each other
// member consents as a client does: it publishes a KeyPackage, which c
// claims and passes in key_packages.
func (c *client) createOpaqueGroup(tb testing.TB, groupID []byte, others []*client) {
	tb.Helper()
	req := &mlsdsv1.CreateGroupRequest{GroupId: groupID, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE}
	for _, o := range others {
		if o != c {
			req.Members = append(req.Members, o.id)
			o.publishKeyPackage(tb)
			req.KeyPackages = append(req.KeyPackages, c.claim(tb, o.id))
		}
	}
	if _, err := c.groups().CreateGroup(context.Background(), connect.NewRequest(req)); err != nil {
		tb.Fatalf("CreateGroup: %v", err)
	}
}

func (c *client) send(ctx context.Context, msg []byte) (*mlsdsv1.Receipt, error) {
	if m, err := mls.ParseMLSMessage(msg); err == nil && m.PrivateMessage != nil && m.PrivateMessage.ContentType == mls.ContentTypeCommit {
		// An opaque group's Commit goes in a bundle with the next epoch's
		// (here: dummy) remote tree, as the server requires.
		res, err := c.groups().SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: msg,
			RemoteTree: &mlsdsv1.RemoteTree{Epoch: m.PrivateMessage.Epoch + 1, Blob: []byte("the remote tree")}}))
		if err != nil {
			return nil, err
		}
		return res.Msg.Receipt, nil
	}
	res, err := c.groups().Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: msg}))
	if err != nil {
		return nil, err
	}
	return res.Msg.Receipt, nil
}

// fetchFrom reads a group's history from seq on.
func (c *client) fetchFrom(ctx context.Context, groupID []byte, from uint64) ([]*mlsdsv1.Envelope, error) {
	var out []*mlsdsv1.Envelope
	for {
		res, err := c.groups().Fetch(ctx, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: groupID, FromSeq: from, Limit: 1000}))
		if err != nil {
			return nil, err
		}
		out = append(out, res.Msg.Messages...)
		if len(res.Msg.Messages) == 0 || res.Msg.NextSeq <= from {
			return out, nil
		}
		from = res.Msg.NextSeq
	}
}

// retry calls f until it succeeds or ctx ends, waiting a little after a
// failure that a crashed or restarting server explains.
func retry[T any](ctx context.Context, f func() (T, error)) (T, error) {
	for {
		v, err := f()
		if err == nil || !transient(err) || ctx.Err() != nil {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// transient reports whether err is what a client sees while the server is
// killed or restarting.
func transient(err error) bool {
	switch connectCode(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeCanceled, connect.CodeDeadlineExceeded:
		return true
	}
	return false
}

func connectCode(err error) connect.Code {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code()
	}
	return connect.CodeUnknown
}

// wrongEpoch returns the WrongEpoch detail of err, or nil.
func wrongEpoch(err error) *mlsdsv1.WrongEpoch {
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeAborted {
		return nil
	}
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if we, ok := v.(*mlsdsv1.WrongEpoch); ok {
				return we
			}
		}
	}
	return nil
}
