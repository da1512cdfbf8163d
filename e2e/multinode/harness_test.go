// Package multinode proves that several `mlsds serve` processes can share
// one PostgreSQL database: each node is the built binary run as a child
// process (so that one can be killed with SIGKILL), the clients are the
// generated Connect clients over h2c with real MLS objects.
package multinode

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/mls"
)

const suite = mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	closeBenchEnvs()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// buildBinary builds cmd/mlsds once per test binary.
func buildBinary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mlsds-multinode-bin")
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

// writeSecret writes a random session-token secret that all nodes share.
func writeSecret(tb testing.TB, dir string) string {
	tb.Helper()
	path := filepath.Join(dir, "auth.key")
	if err := os.WriteFile(path, []byte(hex.EncodeToString(randBytes(32))+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// node is one `mlsds serve` child process.
type node struct {
	name string
	cmd  *exec.Cmd
	url  string
	http *http.Client
	exit chan error
}

// startNode runs `mlsds serve` on a free loopback port over store and waits
// for the log line that gives its address. Rate limits are off: thirty
// clients on one loopback address would otherwise be throttled.
func startNode(tb testing.TB, bin, name, store, secretFile string) *node {
	tb.Helper()
	dataDir, err := os.MkdirTemp("", "mlsds-node-")
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "info",
		"--store", store, "--auth-secret-file", secretFile, "--data-dir", dataDir,
		"--rate-limit", "-1", "--claim-rate", "-1", "--claimer-rate", "-1", "--auth-rate-limit", "-1",
		"--max-streams-per-client", "8", "--shutdown-timeout", "2s")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	n := &node{name: name, cmd: cmd, exit: make(chan error, 1), http: h2cClient()}
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
				fmt.Fprintf(os.Stderr, "%s: %s\n", name, sc.Bytes())
			}
		}
		io.Copy(io.Discard, stderr)
		n.exit <- cmd.Wait()
		os.RemoveAll(dataDir)
	}()
	select {
	case a := <-addr:
		n.url = "http://" + a
	case err := <-n.exit:
		tb.Fatalf("%s: mlsds serve exited: %v", name, err)
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		tb.Fatalf("%s: mlsds serve did not report its address", name)
	}
	return n
}

// kill ends the node with SIGKILL and waits for it.
func (n *node) kill() {
	n.cmd.Process.Kill()
	<-n.exit
	n.exit <- nil // for a later stop
	n.http.CloseIdleConnections()
}

// stop ends the node with SIGTERM (SIGKILL after 10s) and waits for it.
func (n *node) stop() {
	n.http.CloseIdleConnections()
	n.cmd.Process.Signal(os.Interrupt)
	select {
	case <-n.exit:
	case <-time.After(10 * time.Second):
		n.cmd.Process.Kill()
		<-n.exit
	}
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

// client is a registered, authenticated MLS client bound to one node.
type client struct {
	id      string
	sigPriv []byte
	sigPub  []byte
	cred    mls.Credential
	token   string
	node    *node

	auth     mlsdsv1connect.AuthServiceClient
	kps      mlsdsv1connect.KeyPackageServiceClient
	groups   mlsdsv1connect.GroupServiceClient
	delivery mlsdsv1connect.DeliveryServiceClient
}

// bind points c's API clients at n, keeping keys and session token.
func (c *client) bind(n *node) {
	c.node = n
	opt := connect.WithInterceptors(bearer{&c.token})
	c.auth = mlsdsv1connect.NewAuthServiceClient(n.http, n.url, opt)
	c.kps = mlsdsv1connect.NewKeyPackageServiceClient(n.http, n.url, opt)
	c.groups = mlsdsv1connect.NewGroupServiceClient(n.http, n.url, opt)
	c.delivery = mlsdsv1connect.NewDeliveryServiceClient(n.http, n.url, opt)
}

// newClient registers a client with a fresh Ed25519 key through n and logs
// it in (RFC 9420 §5.3 basic credential).
func newClient(tb testing.TB, n *node, id string) *client {
	tb.Helper()
	priv, pub, err := suite.GenerateSignatureKeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	c := &client{id: id, sigPriv: priv, sigPub: pub,
		cred: mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(id)}}
	c.bind(n)
	cb, err := c.cred.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	reg := &mlsdsv1.RegisterClientRequest{Credential: cb, SignatureKey: pub, CipherSuite: uint32(suite)}
	if reg.Proof, err = suite.SignWithLabel(priv, ds.RegisterLabel, ds.RegisterTBS(reg.Credential, reg.SignatureKey, suite, reg.UserId)); err != nil {
		tb.Fatal(err)
	}
	if _, err := c.auth.RegisterClient(ctx, connect.NewRequest(reg)); err != nil {
		tb.Fatalf("RegisterClient(%s): %v", id, err)
	}
	ch, err := c.auth.GetChallenge(ctx, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: id}))
	if err != nil {
		tb.Fatalf("GetChallenge(%s): %v", id, err)
	}
	sig, err := suite.SignWithLabel(priv, ch.Msg.Label, ch.Msg.Challenge)
	if err != nil {
		tb.Fatal(err)
	}
	res, err := c.auth.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{
		ClientId: id, Challenge: ch.Msg.Challenge, Signature: sig}))
	if err != nil {
		tb.Fatalf("Authenticate(%s): %v", id, err)
	}
	c.token = res.Msg.SessionToken
	return c
}

// keyPackage builds a real, signed KeyPackage of c (§10) as an MLSMessage.
func (c *client) keyPackage(tb testing.TB) []byte {
	tb.Helper()
	_, initPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	_, encPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	now := uint64(time.Now().Unix())
	kp := &mls.KeyPackage{
		Version:     mls.ProtocolVersionMLS10,
		CipherSuite: suite,
		InitKey:     initPub,
		LeafNode: mls.LeafNode{
			EncryptionKey: encPub,
			SignatureKey:  c.sigPub,
			Credential:    c.cred,
			Capabilities: mls.Capabilities{
				Versions:     []mls.ProtocolVersion{mls.ProtocolVersionMLS10},
				CipherSuites: []mls.CipherSuite{suite},
				Credentials:  []mls.CredentialType{mls.CredentialTypeBasic},
			},
			LeafNodeSource: mls.LeafNodeSourceKeyPackage,
			Lifetime:       &mls.Lifetime{NotBefore: now - 3600, NotAfter: now + 7*24*3600},
		},
	}
	if err := kp.LeafNode.Sign(suite, c.sigPriv, nil, 0); err != nil {
		tb.Fatal(err)
	}
	if err := kp.Sign(c.sigPriv); err != nil {
		tb.Fatal(err)
	}
	return mlsMessage(tb, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp})
}

func mlsMessage(tb testing.TB, m *mls.MLSMessage) []byte {
	tb.Helper()
	m.Version = mls.ProtocolVersionMLS10
	b, err := m.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// privateMessage is a PrivateMessage (§6.3) with a real clear header and
// a random body, which an opaque-mode group orders by its header alone.
func privateMessage(tb testing.TB, groupID []byte, epoch uint64, ct mls.ContentType, bodySize int) []byte {
	return mlsMessage(tb, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
		GroupID:             groupID,
		Epoch:               epoch,
		ContentType:         ct,
		EncryptedSenderData: randBytes(32),
		Ciphertext:          randBytes(bodySize),
	}})
}

// createOpaqueGroup creates an opaque group of c and others. Each other
// member consents as a client does: it publishes a KeyPackage, which c
// claims and passes in key_packages.
func (c *client) createOpaqueGroup(tb testing.TB, groupID []byte, others []*client) {
	tb.Helper()
	ctx := context.Background()
	req := &mlsdsv1.CreateGroupRequest{GroupId: groupID, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE}
	for _, o := range others {
		if o == c {
			continue
		}
		req.Members = append(req.Members, o.id)
		if _, err := o.kps.UploadKeyPackages(ctx, connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
			KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: o.keyPackage(tb)}}})); err != nil {
			tb.Fatalf("UploadKeyPackages(%s): %v", o.id, err)
		}
		res, err := c.kps.ClaimKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
			Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: o.id}, CipherSuite: uint32(suite)}))
		if err != nil || len(res.Msg.KeyPackages) != 1 {
			tb.Fatalf("ClaimKeyPackages(%s) by %s: %v", o.id, c.id, err)
		}
		req.KeyPackages = append(req.KeyPackages, res.Msg.KeyPackages[0].KeyPackage)
	}
	if _, err := c.groups.CreateGroup(context.Background(), connect.NewRequest(req)); err != nil {
		tb.Fatalf("CreateGroup: %v", err)
	}
}

func (c *client) send(ctx context.Context, msg []byte) (*mlsdsv1.Receipt, error) {
	if m, err := mls.ParseMLSMessage(msg); err == nil && m.PrivateMessage != nil && m.PrivateMessage.ContentType == mls.ContentTypeCommit {
		// An opaque group's Commit goes in a bundle with the next epoch's
		// (here: dummy) remote tree, as the server requires.
		res, err := c.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: msg,
			RemoteTree: &mlsdsv1.RemoteTree{Epoch: m.PrivateMessage.Epoch + 1, Blob: []byte("the remote tree")}}))
		if err != nil {
			return nil, err
		}
		return res.Msg.Receipt, nil
	}
	res, err := c.groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: msg}))
	if err != nil {
		return nil, err
	}
	return res.Msg.Receipt, nil
}

func (c *client) ack(ctx context.Context, groupID []byte, seq uint64) error {
	_, err := c.groups.Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{
		Cursors: []*mlsdsv1.Cursor{{GroupId: groupID, Seq: seq}}}))
	return err
}

// fetchAll reads the whole history of a group through c's node.
func (c *client) fetchAll(ctx context.Context, groupID []byte) ([]*mlsdsv1.Envelope, error) {
	var out []*mlsdsv1.Envelope
	from := uint64(1)
	for {
		res, err := c.groups.Fetch(ctx, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: groupID, FromSeq: from, Limit: 1000}))
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
