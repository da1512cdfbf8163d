package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// TestProtocols: one port answers Connect (binary and JSON), gRPC and
// gRPC-Web, unary and streaming.
func TestProtocols(t *testing.T) {
	e := startEnv(t)
	alice := e.client("alice")
	gid := groupID("protocols")
	protocols := map[string][]connect.ClientOption{
		"connect-proto": nil,
		"connect-json":  {connect.WithProtoJSON()},
		"grpc":          {connect.WithGRPC()},
		"grpc-web":      {connect.WithGRPCWeb()},
	}
	var members []*member
	for name, opts := range protocols {
		m := e.client("client-"+name, opts...)
		members = append(members, m)
		m.uploadKeyPackages(2, false)
		if n := m.count(); n != 2 {
			t.Fatalf("%s: count %d", name, n)
		}
	}
	alice.createOpaqueGroup(gid, members...)
	subs := make([]*subscription, len(members))
	for i, m := range members {
		subs[i] = m.subscribe()
		subs[i].waitCaughtUp(t)
	}
	msg := privateMessage(t, gid, 0, mls.ContentTypeApplication, 64)
	alice.mustSend(msg)
	for i, m := range members {
		if ev := subs[i].nextData(t).GetMessage(); ev == nil || !bytes.Equal(ev.Message, msg) {
			t.Fatalf("%s got %v", m.id, ev)
		}
	}
	// Typed error details survive every protocol.
	for _, m := range members {
		_, err := m.send(privateMessage(t, gid, 7, mls.ContentTypeCommit, 10))
		ce := connectErr(t, err, connect.CodeAborted)
		if d := detail[mlsdsv1.WrongEpoch](t, ce); d.ExpectedEpoch != 0 {
			t.Fatalf("%s: %+v", m.id, d)
		}
	}
}

func get(t *testing.T, e *testEnv, path string) (int, string) {
	t.Helper()
	res, err := e.http.Get(e.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

// healthCheck calls grpc.health.v1.Health/Check over the Connect protocol
// and returns the status number (1 SERVING, 2 NOT_SERVING).
func healthCheck(t *testing.T, e *testEnv, service string) int {
	t.Helper()
	var req []byte
	if service != "" {
		req = protowire.AppendTag(req, 1, protowire.BytesType)
		req = protowire.AppendString(req, service)
	}
	res, err := e.http.Post(e.url+"/grpc.health.v1.Health/Check", "application/proto", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("health check: HTTP %d: %s", res.StatusCode, body)
	}
	if len(body) == 0 {
		return 0 // UNKNOWN is the proto3 default
	}
	num, typ, n := protowire.ConsumeTag(body)
	if n < 0 || num != 1 || typ != protowire.VarintType {
		t.Fatalf("health response %x", body)
	}
	v, _ := protowire.ConsumeVarint(body[n:])
	return int(v)
}

func TestHealthAndDrain(t *testing.T) {
	e := startEnv(t)
	if code, body := get(t, e, "/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if s := healthCheck(t, e, ""); s != 1 {
		t.Fatalf("health of the server: %d, want SERVING", s)
	}
	if s := healthCheck(t, e, mlsdsv1connect.GroupServiceName); s != 1 {
		t.Fatalf("health of GroupService: %d, want SERVING", s)
	}
	alice := e.client("alice")
	sub := alice.subscribe()
	sub.waitCaughtUp(t)

	// Draining: health flips, open streams end with UNAVAILABLE so that
	// clients reconnect elsewhere; unary calls still work.
	e.srv.Drain()
	if code, _ := get(t, e, "/healthz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz while draining: %d", code)
	}
	if s := healthCheck(t, e, ""); s != 2 {
		t.Fatalf("health while draining: %d, want NOT_SERVING", s)
	}
	for range sub.events {
	}
	err := <-sub.done
	connectErr(t, err, connect.CodeUnavailable)
	alice.count()
}

func TestMetrics(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("metrics")
	alice.createOpaqueGroup(gid, bob)
	sub := bob.subscribe()
	sub.waitCaughtUp(t)
	alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 10))
	// An opaque group's Commits go in bundles (harness: send).
	alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeCommit, 10))
	alice.send(privateMessage(t, gid, 0, mls.ContentTypeCommit, 10)) // wrong_epoch
	alice.send([]byte("junk"))                                       // invalid_message
	bob.ack(gid, 1)
	anon := e.newMember("anon")
	anon.count2()
	bob.uploadKeyPackages(3, false)
	bob.uploadKeyPackages(0, true) // last-resort: not stock

	code, body := get(t, e, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`mlsds_requests_total{code="ok",procedure="GroupService/Send"} 1`,
		`mlsds_requests_total{code="ok",procedure="GroupService/SendCommitBundle"} 1`,
		`mlsds_requests_total{code="aborted",procedure="GroupService/SendCommitBundle"} 1`,
		`mlsds_requests_total{code="invalid_argument",procedure="GroupService/Send"} 1`,
		`mlsds_requests_total{code="unauthenticated",procedure="KeyPackageService/CountKeyPackages"} 1`,
		`mlsds_messages_accepted_total{kind="send"} 1`,
		`mlsds_messages_accepted_total{kind="commit_bundle"} 1`,
		`mlsds_messages_rejected_total{reason="wrong_epoch"} 1`,
		`mlsds_messages_rejected_total{reason="invalid_message"} 1`,
		`mlsds_commit_conflicts_total 1`,
		`mlsds_streaming_clients 1`,
		// The metrics wrapper keeps the engine's group commit of messages
		// and of Acks with them (ds.BatchAccepter, ds.AckingAccepter) in
		// use.
		`mlsds_store_latency_seconds_count{operation="accept_messages"}`,
		`mlsds_store_latency_seconds_count{operation="accept_messages_and_acks"}`,
		`mlsds_request_duration_seconds_bucket{procedure="GroupService/Send"`,
		`mlsds_go_goroutines`,
		`mlsds_key_package_stock{cipher_suite="1"} 3`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// Every series is named mlsds_*.
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.HasPrefix(line, "mlsds_") {
			t.Errorf("series outside mlsds_*: %s", line)
		}
	}
	// No token or secret ends up in the metrics.
	if strings.Contains(body, alice.token) {
		t.Fatal("a session token appears in /metrics")
	}
}

// count2 is count without failing the test: for unauthenticated calls.
func (m *member) count2() error {
	_, err := m.kps.CountKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.CountKeyPackagesRequest{}))
	return err
}

// TestTLS: with a certificate the server speaks HTTP/2 over TLS.
func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	e := startEnv(t, func(_ *ds.Config, c *server.Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	e.url = strings.Replace(e.url, "http://", "https://", 1)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	e.http = &http.Client{Transport: tr}
	alice := e.client("alice", connect.WithGRPC())
	alice.count()
	res, err := e.http.Get(e.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.ProtoMajor != 2 || res.TLS == nil {
		t.Fatalf("served %s, TLS %v; want HTTP/2 over TLS", res.Proto, res.TLS != nil)
	}
	// Plain text is refused on the TLS port.
	plain := h2cClient()
	if _, err := plain.Get(strings.Replace(e.url, "https://", "http://", 1) + "/healthz"); err == nil {
		t.Fatal("h2c request answered on the TLS port")
	}
}

func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mlsds test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// TestSlowHeaders: a client that never finishes its request headers is
// disconnected (ReadHeaderTimeout), so it cannot hold a connection.
func TestSlowHeaders(t *testing.T) {
	e := startEnv(t, func(_ *ds.Config, c *server.Config) { c.ReadHeaderTimeout = 100 * time.Millisecond })
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err = io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server kept a connection with unfinished headers open")
	}
}

// TestGracefulShutdown: cancelling Serve lets a call in flight finish,
// ends streams and returns; what got a receipt is in the store.
func TestGracefulShutdown(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "mlsds.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err := server.New(ds.New(st, ds.Config{}), server.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	e := &testEnv{t: t, url: "http://" + ln.Addr().String(), http: h2cClient()}
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("shutdown")
	alice.createOpaqueGroup(gid, bob)
	sub := bob.subscribe()
	sub.waitCaughtUp(t)
	r := alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 10))

	cancel()
	for range sub.events {
	}
	connectErr(t, <-sub.done, connect.CodeUnavailable)
	e.http.CloseIdleConnections()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	envs, err := st.Messages(ctx, ds.MessageQuery{GroupID: gid, ClientID: "bob", FromSeq: 1, Limit: 10})
	if err != nil || len(envs) != 1 || envs[0].GroupSeq != r.GroupSeq {
		t.Fatalf("stored after shutdown: %d messages, %v", len(envs), err)
	}
}

func TestCORS(t *testing.T) {
	e := startEnv(t, func(_ *ds.Config, c *server.Config) { c.CORSOrigins = []string{"https://app.example"} })
	preflight := func(origin string) *http.Response {
		req, _ := http.NewRequest(http.MethodOptions, e.url+"/"+mlsdsv1connect.GroupServiceName+"/Send", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization,content-type,x-grpc-web")
		res, err := e.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	res := preflight("https://app.example")
	if res.StatusCode != http.StatusNoContent || res.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		!strings.Contains(res.Header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("preflight from an allowed origin: %d %v", res.StatusCode, res.Header)
	}
	if res := preflight("https://evil.example"); res.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("preflight from another origin allowed")
	}
	// A real call from the allowed origin exposes the gRPC-Web trailers.
	alice := e.client("alice", connect.WithGRPCWeb(), connect.WithInterceptors(originHeader("https://app.example")))
	alice.count()
}

type originHeader string

func (o originHeader) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Origin", string(o))
		res, err := next(ctx, req)
		if err == nil && res.Header().Get("Access-Control-Allow-Origin") != string(o) {
			return nil, fmt.Errorf("response lacks Access-Control-Allow-Origin")
		}
		return res, err
	}
}

func (o originHeader) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (o originHeader) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
