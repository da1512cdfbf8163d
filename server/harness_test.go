package server_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// The tests run a real server: the Connect handlers over a ds.Service on a
// SQLite file in t.TempDir(), listening on a loopback port, spoken to by
// the generated clients over HTTP/2 (h2c) with real MLS objects built with
// the mls package.

const suite = mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

// testEnv is one running server.
type testEnv struct {
	t       testing.TB
	url     string
	srv     *server.Server
	metrics *server.Metrics
	http    *http.Client
	opts    []connect.ClientOption
	stop    func()
}

// envOption adjusts the configuration of a test server.
type envOption func(*ds.Config, *server.Config)

func startEnv(t testing.TB, opts ...envOption) *testEnv {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "mlsds.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return startEnvOn(t, st, opts...)
}

// startEnvOn starts a server over st, which it closes at the end of the
// test.
func startEnvOn(t testing.TB, st ds.Store, opts ...envOption) *testEnv {
	t.Helper()
	dsCfg := ds.Config{
		// Generous limits, so that only tests that mean to hit them do.
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
	for _, o := range opts {
		o(&dsCfg, &srvCfg)
	}
	if srvCfg.MaxMessageSize == 0 {
		srvCfg.MaxMessageSize = dsCfg.MaxMessageSize
	}
	if srvCfg.Metrics == nil {
		srvCfg.Metrics = server.NewMetrics()
	}
	ctx := context.Background()
	svc := ds.New(srvCfg.Metrics.InstrumentStore(st), dsCfg)
	srv, err := server.New(svc, srvCfg)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	e := &testEnv{
		t: t, url: "http://" + ln.Addr().String(), srv: srv, metrics: srvCfg.Metrics,
		http: h2cClient(),
	}
	var stopped bool
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		e.http.CloseIdleConnections()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		st.Close()
	}
	t.Cleanup(e.stop)
	return e
}

// h2cClient speaks HTTP/2 without TLS (prior knowledge), as gRPC clients do.
func h2cClient() *http.Client {
	tr := &http.Transport{ForceAttemptHTTP2: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

// bearer adds the session token to every call of a client.
type bearer struct{ token *string }

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if *b.token != "" {
			req.Header().Set("Authorization", "Bearer "+*b.token)
		}
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if *b.token != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+*b.token)
		}
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// member is a client of the server: an MLS signature key pair with a basic
// credential, registered and authenticated.
type member struct {
	t       testing.TB
	e       *testEnv
	id      string
	user    string
	sigPriv []byte
	sigPub  []byte
	cred    mls.Credential
	token   string

	auth     mlsdsv1connect.AuthServiceClient
	kps      mlsdsv1connect.KeyPackageServiceClient
	groups   mlsdsv1connect.GroupServiceClient
	delivery mlsdsv1connect.DeliveryServiceClient
}

// newMember makes a client with a fresh key pair but does not register it.
func (e *testEnv) newMember(id string, opts ...connect.ClientOption) *member {
	e.t.Helper()
	priv, pub, err := suite.GenerateSignatureKeyPair()
	if err != nil {
		e.t.Fatal(err)
	}
	m := &member{t: e.t, e: e, id: id, sigPriv: priv, sigPub: pub,
		cred: mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(id)}}
	all := append([]connect.ClientOption{connect.WithInterceptors(bearer{&m.token})}, e.opts...)
	all = append(all, opts...)
	m.auth = mlsdsv1connect.NewAuthServiceClient(e.http, e.url, all...)
	m.kps = mlsdsv1connect.NewKeyPackageServiceClient(e.http, e.url, all...)
	m.groups = mlsdsv1connect.NewGroupServiceClient(e.http, e.url, all...)
	m.delivery = mlsdsv1connect.NewDeliveryServiceClient(e.http, e.url, all...)
	return m
}

// client registers and authenticates a new client.
func (e *testEnv) client(id string, opts ...connect.ClientOption) *member {
	e.t.Helper()
	m := e.newMember(id, opts...)
	m.register("")
	m.login()
	return m
}

func (m *member) credBytes() []byte {
	b, err := m.cred.MarshalBinary()
	if err != nil {
		m.t.Fatal(err)
	}
	return b
}

func (m *member) registerReq(user string) *mlsdsv1.RegisterClientRequest {
	req := &mlsdsv1.RegisterClientRequest{Credential: m.credBytes(), SignatureKey: m.sigPub, CipherSuite: uint32(suite), UserId: user}
	m.signRegistration(req)
	return req
}

// signRegistration sets req.Proof with m's key over req's fields; call it
// again after changing them.
func (m *member) signRegistration(req *mlsdsv1.RegisterClientRequest) {
	m.t.Helper()
	tbs := ds.RegisterTBS(req.Credential, req.SignatureKey, mls.CipherSuite(req.CipherSuite), req.UserId)
	proof, err := suite.SignWithLabel(m.sigPriv, ds.RegisterLabel, tbs)
	if err != nil {
		m.t.Fatal(err)
	}
	req.Proof = proof
}

func (m *member) register(user string) {
	m.t.Helper()
	res, err := m.auth.RegisterClient(context.Background(), connect.NewRequest(m.registerReq(user)))
	if err != nil {
		m.t.Fatalf("RegisterClient(%s): %v", m.id, err)
	}
	if res.Msg.ClientId != m.id {
		m.t.Fatalf("RegisterClient: client id %q, want %q", res.Msg.ClientId, m.id)
	}
	m.user = res.Msg.UserId
}

// login runs the challenge-response and keeps the session token.
func (m *member) login() {
	m.t.Helper()
	tok, err := m.tryLogin()
	if err != nil {
		m.t.Fatalf("login(%s): %v", m.id, err)
	}
	m.token = tok
}

func (m *member) tryLogin() (string, error) {
	ctx := context.Background()
	ch, err := m.auth.GetChallenge(ctx, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: m.id}))
	if err != nil {
		return "", err
	}
	sig, err := suite.SignWithLabel(m.sigPriv, ch.Msg.Label, ch.Msg.Challenge)
	if err != nil {
		return "", err
	}
	res, err := m.auth.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{
		ClientId: m.id, Challenge: ch.Msg.Challenge, Signature: sig}))
	if err != nil {
		return "", err
	}
	return res.Msg.SessionToken, nil
}

// keyPackage builds a real KeyPackage of m (RFC 9420 §10), as an
// MLSMessage, and returns it with its decoded form.
func (m *member) keyPackage() ([]byte, *mls.KeyPackage) {
	m.t.Helper()
	_, initPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		m.t.Fatal(err)
	}
	_, encPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		m.t.Fatal(err)
	}
	now := uint64(time.Now().Unix())
	kp := &mls.KeyPackage{
		Version:     mls.ProtocolVersionMLS10,
		CipherSuite: suite,
		InitKey:     initPub,
		LeafNode: mls.LeafNode{
			EncryptionKey: encPub,
			SignatureKey:  m.sigPub,
			Credential:    m.cred,
			Capabilities: mls.Capabilities{
				Versions:     []mls.ProtocolVersion{mls.ProtocolVersionMLS10},
				CipherSuites: []mls.CipherSuite{suite},
				Credentials:  []mls.CredentialType{mls.CredentialTypeBasic},
			},
			LeafNodeSource: mls.LeafNodeSourceKeyPackage,
			Lifetime:       &mls.Lifetime{NotBefore: now - 3600, NotAfter: now + 7*24*3600},
		},
	}
	if err := kp.LeafNode.Sign(suite, m.sigPriv, nil, 0); err != nil {
		m.t.Fatal(err)
	}
	if err := kp.Sign(m.sigPriv); err != nil {
		m.t.Fatal(err)
	}
	return mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp}), kp
}

// uploadKeyPackages uploads n fresh KeyPackages (and a last-resort one if
// lastResort) and returns their refs in order.
func (m *member) uploadKeyPackages(n int, lastResort bool) [][]byte {
	m.t.Helper()
	req := &mlsdsv1.UploadKeyPackagesRequest{}
	for i := 0; i < n; i++ {
		data, _ := m.keyPackage()
		req.KeyPackages = append(req.KeyPackages, &mlsdsv1.KeyPackageUpload{KeyPackage: data})
	}
	if lastResort {
		data, _ := m.keyPackage()
		req.KeyPackages = append(req.KeyPackages, &mlsdsv1.KeyPackageUpload{KeyPackage: data, LastResort: true})
	}
	res, err := m.kps.UploadKeyPackages(context.Background(), connect.NewRequest(req))
	if err != nil {
		m.t.Fatalf("UploadKeyPackages(%s): %v", m.id, err)
	}
	var refs [][]byte
	for _, i := range res.Msg.KeyPackages {
		refs = append(refs, i.Ref)
	}
	return refs
}

func mlsMessage(t testing.TB, m *mls.MLSMessage) []byte {
	t.Helper()
	m.Version = mls.ProtocolVersionMLS10
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// privateMessage is a PrivateMessage (§6.3) with a real clear header and a
// random (to the server, opaque) body: the server can check the header
// only.
func privateMessage(t testing.TB, groupID []byte, epoch uint64, ct mls.ContentType, bodySize int) []byte {
	return mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
		GroupID:             groupID,
		Epoch:               epoch,
		ContentType:         ct,
		EncryptedSenderData: randBytes(32),
		Ciphertext:          randBytes(bodySize),
	}})
}

// createOpaqueGroup creates an opaque-mode group of creator and others.
// Each other member consents as a client does: m claims a KeyPackage it
// published (each publishes a fresh one first) and passes it in
// key_packages.
func (m *member) createOpaqueGroup(groupID []byte, others ...*member) {
	m.t.Helper()
	req := &mlsdsv1.CreateGroupRequest{GroupId: groupID, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE}
	for _, o := range others {
		req.Members = append(req.Members, o.id)
		if o.id != m.id {
			o.uploadKeyPackages(1, false)
			req.KeyPackages = append(req.KeyPackages, m.claim(o.id))
		}
	}
	if _, err := m.groups.CreateGroup(context.Background(), connect.NewRequest(req)); err != nil {
		m.t.Fatalf("CreateGroup: %v", err)
	}
}

// claim claims a KeyPackage of the client id and returns it as uploaded.
func (m *member) claim(id string) []byte {
	m.t.Helper()
	res, err := m.kps.ClaimKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
		Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: id}, CipherSuite: uint32(suite)}))
	if err != nil {
		m.t.Fatalf("ClaimKeyPackages(%s) by %s: %v", id, m.id, err)
	}
	if len(res.Msg.KeyPackages) != 1 {
		m.t.Fatalf("ClaimKeyPackages(%s): %d KeyPackages, want 1", id, len(res.Msg.KeyPackages))
	}
	return res.Msg.KeyPackages[0].KeyPackage
}

func (m *member) send(msg []byte) (*mlsdsv1.Receipt, error) {
	if pm, err := mls.ParseMLSMessage(msg); err == nil && pm.PrivateMessage != nil && pm.PrivateMessage.ContentType == mls.ContentTypeCommit {
		// An opaque group's Commit goes in a bundle (opaqueBundle).
		res, err := m.groups.SendCommitBundle(context.Background(), connect.NewRequest(opaqueBundle(m.t, &mlsdsv1.SendCommitBundleRequest{Commit: msg})))
		if err != nil {
			return nil, err
		}
		return res.Msg.Receipt, nil
	}
	res, err := m.groups.Send(context.Background(), connect.NewRequest(&mlsdsv1.SendRequest{Message: msg}))
	if err != nil {
		return nil, err
	}
	return res.Msg.Receipt, nil
}

// opaqueBundle completes the bundle of an opaque group's Commit (a
// PrivateMessage) as the server requires: with a remote tree of the next
// epoch if it has none, and, if the Commit declares nothing, the roster
// declaration of req.Added and req.Removed in its authenticated_data
// (ds/roster_ad.go). The same request gives the same bytes.
func opaqueBundle(t testing.TB, req *mlsdsv1.SendCommitBundleRequest) *mlsdsv1.SendCommitBundleRequest {
	m, err := mls.ParseMLSMessage(req.Commit)
	if err != nil || m.PrivateMessage == nil || m.PrivateMessage.ContentType != mls.ContentTypeCommit {
		return req
	}
	if req.RemoteTree == nil {
		req.RemoteTree = &mlsdsv1.RemoteTree{Epoch: m.PrivateMessage.Epoch + 1, Blob: []byte("the remote tree")}
	}
	if len(m.PrivateMessage.AuthenticatedData) == 0 && (len(req.Added) > 0 || len(req.Removed) > 0) {
		m.PrivateMessage.AuthenticatedData = ds.RosterChange{Added: req.Added, Removed: req.Removed}.MarshalDeclaration()
		req.Commit = mlsMessage(t, m)
	}
	return req
}

func (m *member) mustSend(msg []byte) *mlsdsv1.Receipt {
	m.t.Helper()
	r, err := m.send(msg)
	if err != nil {
		m.t.Fatalf("Send(%s): %v", m.id, err)
	}
	return r
}

func (m *member) fetch(groupID []byte, from uint64, limit uint32) (*mlsdsv1.FetchResponse, error) {
	res, err := m.groups.Fetch(context.Background(), connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: groupID, FromSeq: from, Limit: limit}))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

func (m *member) ack(groupID []byte, seq uint64) {
	m.t.Helper()
	_, err := m.groups.Ack(context.Background(), connect.NewRequest(&mlsdsv1.AckRequest{
		Cursors: []*mlsdsv1.Cursor{{GroupId: groupID, Seq: seq}}}))
	if err != nil {
		m.t.Fatalf("Ack(%s): %v", m.id, err)
	}
}

// subscription reads a Subscribe stream in the background.
type subscription struct {
	events chan *mlsdsv1.SubscribeResponse
	cancel context.CancelFunc
	done   chan error
}

func (m *member) subscribe() *subscription {
	m.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := m.delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
	if err != nil {
		cancel()
		m.t.Fatalf("Subscribe(%s): %v", m.id, err)
	}
	s := &subscription{events: make(chan *mlsdsv1.SubscribeResponse, 1024), cancel: cancel, done: make(chan error, 1)}
	readInBackground(ctx, stream, s.events, s.done)
	m.t.Cleanup(s.close)
	return s
}

// readInBackground sends stream's messages to events until the stream
// ends (or ctx does, after which they are dropped), then sends the
// stream's error to done and closes events.
func readInBackground[M any](ctx context.Context, stream *connect.ServerStreamForClient[M], events chan<- *M, done chan<- error) {
	go func() {
		defer close(events)
		for stream.Receive() {
			select {
			case events <- stream.Msg():
			case <-ctx.Done():
			}
		}
		done <- stream.Err()
		stream.Close()
	}()
}

func (s *subscription) close() {
	s.cancel()
	for range s.events {
	}
}

// next returns the next event that is not a keep-alive, failing the test
// after a generous timeout (a hang, not a speed check).
func (s *subscription) next(t testing.TB) *mlsdsv1.SubscribeResponse {
	t.Helper()
	ev, ok := nextEvent(t, s.events)
	if !ok {
		t.Fatalf("stream ended: %v", <-s.done)
	}
	return ev
}

// streamEvent is an event of Subscribe or SubscribeGroup.
type streamEvent interface {
	GetKeepAlive() *mlsdsv1.KeepAliveEvent
}

// nextEvent returns the next event of events that is not a keep-alive, or
// false once events is closed, failing the test after a generous timeout
// (a hang, not a speed check).
func nextEvent[T streamEvent](t testing.TB, events <-chan T) (T, bool) {
	t.Helper()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return ev, false
			}
			if ev.GetKeepAlive() != nil {
				continue
			}
			return ev, true
		case <-timer.C:
			t.Fatal("no event from the stream within 30s")
		}
	}
}

// nextData is next without key_package_low events.
func (s *subscription) nextData(t testing.TB) *mlsdsv1.SubscribeResponse {
	t.Helper()
	for {
		if ev := s.next(t); ev.GetKeyPackageLow() == nil {
			return ev
		}
	}
}

// waitCaughtUp collects the messages replayed before the caught_up marker.
func (s *subscription) waitCaughtUp(t testing.TB) []*mlsdsv1.Envelope {
	t.Helper()
	var out []*mlsdsv1.Envelope
	for {
		ev := s.next(t)
		if ev.GetCaughtUp() != nil {
			return out
		}
		if msg := ev.GetMessage(); msg != nil {
			out = append(out, msg)
		}
	}
}

// connectErr asserts that err is a Connect error with code and returns it.
func connectErr(t testing.TB, err error, code connect.Code) *connect.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got success, want %v", code)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v is not a Connect error", err)
	}
	if ce.Code() != code {
		t.Fatalf("code %v (%v), want %v", ce.Code(), ce.Message(), code)
	}
	return ce
}

// detail returns the one detail of type T that ce carries.
func detail[T any, P interface {
	*T
	proto.Message
}](t testing.TB, ce *connect.Error) P {
	t.Helper()
	var found []P
	for _, d := range ce.Details() {
		v, err := d.Value()
		if err != nil {
			t.Fatalf("detail %s: %v", d.Type(), err)
		}
		if p, ok := v.(P); ok {
			found = append(found, p)
		}
	}
	if len(found) != 1 {
		var zero P
		t.Fatalf("error %q carries %d details of type %T, want 1 (details: %d)", ce.Message(), len(found), zero, len(ce.Details()))
	}
	return found[0]
}

func groupID(name string) []byte { return []byte(fmt.Sprintf("%s-%x", name, randBytes(4))) }
