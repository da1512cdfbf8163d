package server_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/server"
)

// account returns an AccountService client that calls as m.
func (m *member) account() mlsdsv1connect.AccountServiceClient {
	all := append([]connect.ClientOption{connect.WithInterceptors(bearer{&m.token})}, m.e.opts...)
	return mlsdsv1connect.NewAccountServiceClient(m.e.http, m.e.url, all...)
}

// tryRegister registers m under user with a device link ("" for none).
func (m *member) tryRegister(user, link string) error {
	req := m.registerReq(user)
	req.DeviceLink = link
	_, err := m.auth.RegisterClient(context.Background(), connect.NewRequest(req))
	return err
}

// wantRefused checks that err is the one uniform registration refusal.
func wantRefused(t *testing.T, err error) {
	t.Helper()
	ce := connectErr(t, err, connect.CodePermissionDenied)
	if ce.Message() != ds.ErrRegistrationRefused.Error() {
		t.Errorf("refusal says %q, want the uniform %q", ce.Message(), ds.ErrRegistrationRefused)
	}
}

func (m *member) deviceLink(ttlSeconds uint32) *mlsdsv1.CreateDeviceLinkResponse {
	m.t.Helper()
	res, err := m.account().CreateDeviceLink(context.Background(), connect.NewRequest(&mlsdsv1.CreateDeviceLinkRequest{TtlSeconds: ttlSeconds}))
	if err != nil {
		m.t.Fatalf("CreateDeviceLink(%s): %v", m.id, err)
	}
	return res.Msg
}

func TestGetClientKeys(t *testing.T) {
	e := startEnv(t)
	alice := e.client("alice")
	bob := e.newMember("bob")
	bob.register("bob-user")
	ctx := context.Background()
	res, err := alice.account().GetClientKeys(ctx, connect.NewRequest(&mlsdsv1.GetClientKeysRequest{
		ClientIds: []string{"bob", "ghost", "alice", "Bob", ""}}))
	if err != nil {
		t.Fatal(err)
	}
	got := res.Msg.Clients
	if len(got) != 2 || got[0].ClientId != "bob" || got[1].ClientId != "alice" {
		t.Fatalf("GetClientKeys answered %v, want bob and alice in that order", got)
	}
	for i, m := range []*member{bob, alice} {
		k := got[i]
		if k.UserId != m.user || k.CipherSuite != uint32(suite) || len(k.SignatureKeys) != 1 || !bytes.Equal(k.SignatureKeys[0], m.sigPub) {
			t.Errorf("keys of %s: user %q suite %d keys %x; want user %q, the registered key", m.id, k.UserId, k.CipherSuite, k.SignatureKeys, m.user)
		}
	}
	if got[0].UserId != "bob-user" {
		t.Errorf("bob's user id %q, want bob-user", got[0].UserId)
	}
	_, err = alice.account().GetClientKeys(ctx, connect.NewRequest(&mlsdsv1.GetClientKeysRequest{ClientIds: make([]string, 1001)}))
	connectErr(t, err, connect.CodeInvalidArgument)
	anon := e.newMember("anon")
	_, err = anon.account().GetClientKeys(ctx, connect.NewRequest(&mlsdsv1.GetClientKeysRequest{ClientIds: []string{"alice"}}))
	connectErr(t, err, connect.CodeUnauthenticated)
}

// TestDeviceLinks: in open registration a user id belongs to its first
// client; a stranger cannot add a client to it and so cannot receive the
// KeyPackages claimed for the user.
func TestDeviceLinks(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	phone := e.newMember("carol-phone")
	phone.register("carol")
	phone.login()
	phone.uploadKeyPackages(1, false)

	// Mallory's "laptop" of carol, without a link, and with a link of
	// her own user.
	malloryLaptop := e.newMember("carol-laptop")
	wantRefused(t, malloryLaptop.tryRegister("carol", ""))
	mallory := e.newMember("mallory")
	mallory.register("")
	mallory.login()
	wantRefused(t, malloryLaptop.tryRegister("carol", mallory.deviceLink(0).DeviceLink))
	// Nor can she take carol's name as a client id, or carol's client id
	// as a user id.
	wantRefused(t, e.newMember("carol").tryRegister("mallory", ""))
	wantRefused(t, e.newMember("mallory-2").tryRegister("carol-phone", ""))
	// A claim for user carol reaches carol's clients only.
	dave := e.client("dave")
	res, err := dave.kps.ClaimKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
		Target: &mlsdsv1.ClaimKeyPackagesRequest_UserId{UserId: "carol"}, CipherSuite: uint32(suite)}))
	if err != nil {
		t.Fatal(err)
	}
	if kps := res.Msg.KeyPackages; len(kps) != 1 || kps[0].ClientId != "carol-phone" {
		t.Fatalf("claim for user carol returned %v, want carol-phone's KeyPackage only", kps)
	}

	// Carol's phone makes a link; her laptop registers with it, once.
	link := phone.deviceLink(0)
	if link.UserId != "carol" || !link.ExpiresAt.IsValid() || link.DeviceLink == "" {
		t.Fatalf("CreateDeviceLink = %v", link)
	}
	laptop := e.newMember("carol-laptop")
	if err := laptop.tryRegister("carol", link.DeviceLink); err != nil {
		t.Fatalf("registering with carol's device link: %v", err)
	}
	laptop.login()
	// The same registration again is still fine; another device cannot
	// use the spent link.
	if err := laptop.tryRegister("carol", link.DeviceLink); err != nil {
		t.Fatalf("registering the laptop again: %v", err)
	}
	wantRefused(t, e.newMember("carol-tablet").tryRegister("carol", link.DeviceLink))
	// The laptop is a client of carol: it can make links itself.
	if l := laptop.deviceLink(60); l.UserId != "carol" {
		t.Fatalf("laptop's link is for user %q", l.UserId)
	}
	_, err = phone.account().CreateDeviceLink(ctx, connect.NewRequest(&mlsdsv1.CreateDeviceLinkRequest{TtlSeconds: 86400 + 1}))
	connectErr(t, err, connect.CodeInvalidArgument)
}

// TestRegistrationTokenUsers: the enrollment token admits a registration,
// not a takeover: the user rule of open registration holds too.
func TestRegistrationTokenUsers(t *testing.T) {
	const token = "enroll-0123456789abcdef"
	e := startEnv(t, func(_ *ds.Config, c *server.Config) {
		c.Registration = server.RegistrationToken
		c.EnrollmentToken = token
	})
	register := func(m *member, user, link string) error {
		req := m.registerReq(user)
		req.Enrollment = &mlsdsv1.RegisterClientRequest_EnrollmentToken{EnrollmentToken: token}
		req.DeviceLink = link
		_, err := m.auth.RegisterClient(context.Background(), connect.NewRequest(req))
		return err
	}
	phone := e.newMember("carol-phone")
	if err := register(phone, "carol", ""); err != nil {
		t.Fatal(err)
	}
	phone.login()
	wantRefused(t, register(e.newMember("carol-laptop"), "carol", ""))
	if err := register(e.newMember("carol-laptop"), "carol", phone.deviceLink(0).DeviceLink); err != nil {
		t.Fatal(err)
	}
}

func TestRegisterProof(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	m := e.newMember("alice")
	register := func(req *mlsdsv1.RegisterClientRequest) error {
		_, err := m.auth.RegisterClient(ctx, connect.NewRequest(req))
		return err
	}
	req := m.registerReq("")
	req.Proof = nil
	ce := connectErr(t, register(req), connect.CodeInvalidArgument)
	for _, want := range []string{"SignWithLabel", ds.RegisterLabel, "RegisterTBS", "opaque user_id<V>"} {
		if !strings.Contains(ce.Message(), want) {
			t.Errorf("missing proof: %q does not mention %q", ce.Message(), want)
		}
	}
	// Signed by another key: whoever knows alice's public key cannot
	// register it.
	other := e.newMember("alice")
	req = m.registerReq("")
	other.signRegistration(req)
	connectErr(t, register(req), connect.CodePermissionDenied)
	// Signed over another user id.
	req = m.registerReq("alice-user")
	req.UserId = "mallory"
	connectErr(t, register(req), connect.CodePermissionDenied)
	// Signed with the authentication label instead.
	req = m.registerReq("")
	tbs := ds.RegisterTBS(req.Credential, req.SignatureKey, suite, "")
	var err error
	if req.Proof, err = suite.SignWithLabel(m.sigPriv, server.AuthLabel, tbs); err != nil {
		t.Fatal(err)
	}
	connectErr(t, register(req), connect.CodePermissionDenied)
	// Nothing was registered by the refusals.
	if _, err := m.tryLogin(); err == nil {
		t.Fatal("a refused registration registered alice")
	}
	if err := register(m.registerReq("")); err != nil {
		t.Fatal(err)
	}
	m.login()
}

func TestRegisterIdentifierProfile(t *testing.T) {
	e := startEnv(t)
	m := e.newMember("Bob")
	ce := connectErr(t, m.tryRegister("", ""), connect.CodeInvalidArgument)
	if !strings.Contains(ce.Message(), `use "bob" instead`) {
		t.Errorf("client id Bob: %q does not suggest bob", ce.Message())
	}
	m = e.newMember("bob")
	ce = connectErr(t, m.tryRegister("b\u200bob", ""), connect.CodeInvalidArgument)
	if !strings.Contains(ce.Message(), "zero-width") {
		t.Errorf("user id with a zero-width space: %q", ce.Message())
	}
}

// TestChallengeAcrossNodes: nodes that share the secret and the store
// accept each other's challenges, each at most once in all.
func TestChallengeAcrossNodes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mlsds.db")
	secret := bytes.Repeat([]byte{0x42}, 32)
	node := func() *testEnv {
		st, err := sqlite.Open(context.Background(), path, sqlite.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return startEnvOn(t, st, func(_ *ds.Config, s *server.Config) { s.AuthSecret = secret })
	}
	n1, n2, n3 := node(), node(), node()
	alice := n1.client("alice")
	ctx := context.Background()
	ch, err := alice.auth.GetChallenge(ctx, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: "alice"}))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := suite.SignWithLabel(alice.sigPriv, ch.Msg.Label, ch.Msg.Challenge)
	if err != nil {
		t.Fatal(err)
	}
	authenticate := func(n *testEnv) error {
		_, err := n.rebind(alice).auth.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{
			ClientId: "alice", Challenge: ch.Msg.Challenge, Signature: sig}))
		return err
	}
	if err := authenticate(n2); err != nil {
		t.Fatalf("challenge of node 1 on node 2: %v", err)
	}
	connectErr(t, authenticate(n3), connect.CodeUnauthenticated)
	connectErr(t, authenticate(n1), connect.CodeUnauthenticated)
}
