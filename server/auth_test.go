package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

func TestAuthenticate(t *testing.T) {
	e := startEnv(t)
	alice := e.client("alice")
	ctx := context.Background()

	// The token works for a call that needs one.
	if _, err := alice.kps.CountKeyPackages(ctx, connect.NewRequest(&mlsdsv1.CountKeyPackagesRequest{})); err != nil {
		t.Fatalf("CountKeyPackages with a fresh token: %v", err)
	}
	// Registering again with the same key is a no-op; with another key it
	// is refused.
	alice.register("")
	other := e.newMember("alice")
	_, err := other.auth.RegisterClient(ctx, connect.NewRequest(other.registerReq("")))
	connectErr(t, err, connect.CodeAlreadyExists)
	// The impostor cannot log in as alice: its key is not the registered one.
	_, err = other.tryLogin()
	connectErr(t, err, connect.CodeUnauthenticated)
}

func TestAuthenticateRefusals(t *testing.T) {
	e := startEnv(t)
	alice := e.client("alice")
	bob := e.client("bob")
	ctx := context.Background()
	challenge := func(id string) []byte {
		t.Helper()
		res, err := alice.auth.GetChallenge(ctx, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: id}))
		if err != nil {
			t.Fatal(err)
		}
		if res.Msg.Label != server.AuthLabel {
			t.Fatalf("label %q, want %q", res.Msg.Label, server.AuthLabel)
		}
		return res.Msg.Challenge
	}
	authenticate := func(id string, ch, sig []byte) error {
		_, err := alice.auth.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{ClientId: id, Challenge: ch, Signature: sig}))
		return err
	}
	sign := func(m *member, ch []byte) []byte {
		sig, err := suite.SignWithLabel(m.sigPriv, server.AuthLabel, ch)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}

	t.Run("single use", func(t *testing.T) {
		ch := challenge("alice")
		if err := authenticate("alice", ch, sign(alice, ch)); err != nil {
			t.Fatal(err)
		}
		connectErr(t, authenticate("alice", ch, sign(alice, ch)), connect.CodeUnauthenticated)
	})
	t.Run("wrong key", func(t *testing.T) {
		ch := challenge("alice")
		connectErr(t, authenticate("alice", ch, sign(bob, ch)), connect.CodeUnauthenticated)
	})
	t.Run("challenge of another client", func(t *testing.T) {
		ch := challenge("bob")
		connectErr(t, authenticate("alice", ch, sign(alice, ch)), connect.CodeUnauthenticated)
	})
	t.Run("wrong label", func(t *testing.T) {
		ch := challenge("alice")
		sig, err := suite.SignWithLabel(alice.sigPriv, "something else", ch)
		if err != nil {
			t.Fatal(err)
		}
		connectErr(t, authenticate("alice", ch, sig), connect.CodeUnauthenticated)
	})
	t.Run("forged challenge", func(t *testing.T) {
		ch := challenge("alice")
		ch[0] ^= 1
		connectErr(t, authenticate("alice", ch, sign(alice, ch)), connect.CodeUnauthenticated)
	})
	t.Run("unknown client", func(t *testing.T) {
		ghost := e.newMember("ghost")
		ch := challenge("ghost")
		connectErr(t, authenticate("ghost", ch, sign(ghost, ch)), connect.CodeUnauthenticated)
	})
}

func TestUnauthenticatedCalls(t *testing.T) {
	e := startEnv(t)
	alice := e.client("alice")
	ctx := context.Background()
	count := func(m *member) error {
		_, err := m.kps.CountKeyPackages(ctx, connect.NewRequest(&mlsdsv1.CountKeyPackagesRequest{}))
		return err
	}
	anon := e.newMember("anon")
	for _, tok := range []string{"", "garbage", "v1.AAAA.BBBB", alice.token + "x"} {
		anon.token = tok
		connectErr(t, count(anon), connect.CodeUnauthenticated)
	}
	// A token whose payload names another client fails its MAC.
	parts := strings.Split(alice.token, ".")
	if len(parts) != 3 {
		t.Fatalf("unexpected token shape")
	}
	anon.token = parts[0] + "." + parts[1][:len(parts[1])-2] + "Zm." + parts[2]
	connectErr(t, count(anon), connect.CodeUnauthenticated)

	// Streams are authenticated too.
	anon.token = ""
	stream, err := anon.delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for stream.Receive() {
		t.Fatal("got an event without a token")
	}
	connectErr(t, stream.Err(), connect.CodeUnauthenticated)
	stream.Close()
}

func TestSessionExpiry(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	e := startEnv(t, func(_ *ds.Config, c *server.Config) { c.Now = clock; c.SessionTTL = time.Hour })
	alice := e.client("alice")
	ctx := context.Background()
	if _, err := alice.kps.CountKeyPackages(ctx, connect.NewRequest(&mlsdsv1.CountKeyPackagesRequest{})); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour + time.Second)
	_, err := alice.kps.CountKeyPackages(ctx, connect.NewRequest(&mlsdsv1.CountKeyPackagesRequest{}))
	connectErr(t, err, connect.CodeUnauthenticated)
	alice.login()
	if _, err := alice.kps.CountKeyPackages(ctx, connect.NewRequest(&mlsdsv1.CountKeyPackagesRequest{})); err != nil {
		t.Fatal(err)
	}
}

func TestRegisterMalformedCredential(t *testing.T) {
	e := startEnv(t)
	m := e.newMember("x")
	ctx := context.Background()
	req := m.registerReq("")
	req.Credential = []byte{0, 1, 0xff}
	_, err := m.auth.RegisterClient(ctx, connect.NewRequest(req))
	ce := connectErr(t, err, connect.CodeInvalidArgument)
	if d := detail[mlsdsv1.InvalidMessage](t, ce); d.RfcSection != "5.3" {
		t.Errorf("rfc_section %q, want 5.3", d.RfcSection)
	}
	x509cred, _ := (&mls.Credential{CredentialType: mls.CredentialTypeX509, Certificates: [][]byte{{1, 2, 3}}}).MarshalBinary()
	req.Credential = x509cred
	_, err = m.auth.RegisterClient(ctx, connect.NewRequest(req))
	connectErr(t, err, connect.CodeInvalidArgument)
	req = m.registerReq("")
	req.CipherSuite = 0x1234
	_, err = m.auth.RegisterClient(ctx, connect.NewRequest(req))
	connectErr(t, err, connect.CodeInvalidArgument)
}

func TestRegistrationToken(t *testing.T) {
	const token = "enroll-0123456789abcdef"
	e := startEnv(t, func(_ *ds.Config, c *server.Config) {
		c.Registration = server.RegistrationToken
		c.EnrollmentToken = token
	})
	m := e.newMember("alice")
	ctx := context.Background()
	for _, tok := range []string{"", "wrong-token-0123456789"} {
		req := m.registerReq("")
		if tok != "" {
			req.Enrollment = &mlsdsv1.RegisterClientRequest_EnrollmentToken{EnrollmentToken: tok}
		}
		_, err := m.auth.RegisterClient(ctx, connect.NewRequest(req))
		connectErr(t, err, connect.CodePermissionDenied)
	}
	req := m.registerReq("")
	req.Enrollment = &mlsdsv1.RegisterClientRequest_EnrollmentToken{EnrollmentToken: token}
	if _, err := m.auth.RegisterClient(ctx, connect.NewRequest(req)); err != nil {
		t.Fatal(err)
	}
	m.login()
}

func TestRegistrationJWT(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	keyFile := filepath.Join(t.TempDir(), "jwt.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := server.LoadJWTKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, func(_ *ds.Config, c *server.Config) {
		c.Registration = server.RegistrationJWT
		c.JWTKey = key
	})
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	sign := func(k ed25519.PrivateKey, claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims).SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	exp := time.Now().Add(time.Hour).Unix()
	register := func(m *member, user, token string) error {
		req := m.registerReq(user)
		req.Enrollment = &mlsdsv1.RegisterClientRequest_Jwt{Jwt: token}
		_, err := m.auth.RegisterClient(context.Background(), connect.NewRequest(req))
		return err
	}
	alice := e.newMember("alice-phone")
	refused := map[string]string{
		"no token":        "",
		"other subject":   sign(priv, jwt.MapClaims{"sub": "mallory", "exp": exp}),
		"expired":         sign(priv, jwt.MapClaims{"sub": "alice-phone", "exp": time.Now().Add(-time.Hour).Unix()}),
		"no expiry":       sign(priv, jwt.MapClaims{"sub": "alice-phone"}),
		"other key":       sign(otherPriv, jwt.MapClaims{"sub": "alice-phone", "exp": exp}),
		"alg none":        unsignedJWT(t, jwt.MapClaims{"sub": "alice-phone", "exp": exp}),
		"hmac with pub":   hmacJWT(t, der, jwt.MapClaims{"sub": "alice-phone", "exp": exp}),
		"not a jwt":       "abc.def.ghi",
		"user id claimed": sign(priv, jwt.MapClaims{"mlsds_user_id": "bob", "exp": exp}),
	}
	for name, tok := range refused {
		t.Run(name, func(t *testing.T) {
			connectErr(t, register(alice, "alice", tok), connect.CodePermissionDenied)
		})
	}
	// Subject = client id.
	if err := register(alice, "alice", sign(priv, jwt.MapClaims{"sub": "alice-phone", "exp": exp})); err != nil {
		t.Fatal(err)
	}
	// Subject = user id, for a second device of the same user.
	laptop := e.newMember("alice-laptop")
	if err := register(laptop, "alice", sign(priv, jwt.MapClaims{"sub": "alice", "exp": exp})); err != nil {
		t.Fatal(err)
	}
	// The user id can come from the token.
	tablet := e.newMember("alice-tablet")
	if err := register(tablet, "", sign(priv, jwt.MapClaims{"mlsds_user_id": "alice", "exp": exp})); err != nil {
		t.Fatal(err)
	}
	tablet.login()
	// All three are devices of user alice: a claim for the user reaches them.
	for _, m := range []*member{alice, laptop} {
		m.login()
		m.uploadKeyPackages(1, false)
	}
	res, err := tablet.kps.ClaimKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
		Target: &mlsdsv1.ClaimKeyPackagesRequest_UserId{UserId: "alice"}, CipherSuite: uint32(suite)}))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(res.Msg.KeyPackages); got != 2 {
		t.Fatalf("claimed %d KeyPackages for user alice, want 2 (her other devices)", got)
	}
}

func unsignedJWT(t *testing.T, claims jwt.MapClaims) string {
	s, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// hmacJWT is the classic key-confusion attack: an HS256 token keyed with
// the server's public key.
func hmacJWT(t *testing.T, key []byte, claims jwt.MapClaims) string {
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAuthRateLimit(t *testing.T) {
	e := startEnv(t, func(_ *ds.Config, c *server.Config) {
		c.AuthRatePerSecond = 0.001
		c.AuthBurst = 3
	})
	m := e.newMember("alice")
	ctx := context.Background()
	var err error
	for i := 0; i < 4 && err == nil; i++ {
		_, err = m.auth.GetChallenge(ctx, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: "alice"}))
	}
	ce := connectErr(t, err, connect.CodeResourceExhausted)
	if d := detail[mlsdsv1.RateLimited](t, ce); d.RetryAfter.AsDuration() <= 0 {
		t.Fatalf("retry_after %v, want > 0", d.RetryAfter.AsDuration())
	}
}
