package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
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
	if ce := connectErr(t, err, connect.CodePermissionDenied); ce.Message() != ds.ErrRegistrationRefused.Error() {
		t.Errorf("refusal says %q, want the uniform %q", ce.Message(), ds.ErrRegistrationRefused)
	}
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
	// One clock for the Service and the server: a registration stamped by
	// the real clock after a slow start would look newer than the session
	// (issued at the fixed time), as if the client had been registered
	// again (checkLive).
	e := startEnv(t, func(d *ds.Config, c *server.Config) { d.Now, c.Now = clock, clock; c.SessionTTL = time.Hour })
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
	const aud, iss = "mlsds-test", "https://id.example"
	e := startEnv(t, func(_ *ds.Config, c *server.Config) {
		c.Registration = server.RegistrationJWT
		c.JWTKey = key
		c.JWTAudience = aud
		c.JWTIssuer = iss
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
	jti := 0
	// claims are valid enrollment claims with a fresh jti, changed by kv
	// (a nil value removes the claim).
	claims := func(kv ...any) jwt.MapClaims {
		jti++
		c := jwt.MapClaims{"aud": aud, "iss": iss, "exp": exp, "jti": fmt.Sprint("jti-", jti)}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(c, kv[i].(string))
			} else {
				c[kv[i].(string)] = kv[i+1]
			}
		}
		return c
	}
	register := func(m *member, user, token string) error {
		req := m.registerReq(user)
		req.Enrollment = &mlsdsv1.RegisterClientRequest_Jwt{Jwt: token}
		_, err := m.auth.RegisterClient(context.Background(), connect.NewRequest(req))
		return err
	}
	alice := e.newMember("alice-phone")
	bob := e.newMember("bob")
	refused := map[string]struct {
		m     *member
		user  string
		token string
	}{
		"no token":           {alice, "alice", ""},
		"other subject":      {alice, "alice", sign(priv, claims("sub", "mallory"))},
		"mallory as bob":     {bob, "", sign(priv, claims("sub", "mallory"))},
		"mallory names bob":  {bob, "bob", sign(priv, claims("sub", "mallory"))},
		"user differs":       {alice, "bob", sign(priv, claims("sub", "alice", "mlsds_client_id", "alice-phone"))},
		"other client":       {alice, "alice", sign(priv, claims("sub", "alice", "mlsds_client_id", "alice-laptop"))},
		"user is not client": {alice, "alice", sign(priv, claims("sub", "alice"))},
		"expired":            {alice, "", sign(priv, claims("sub", "alice-phone", "exp", time.Now().Add(-time.Hour).Unix()))},
		"no expiry":          {alice, "", sign(priv, claims("sub", "alice-phone", "exp", nil))},
		"no jti":             {alice, "", sign(priv, claims("sub", "alice-phone", "jti", nil))},
		"no audience":        {alice, "", sign(priv, claims("sub", "alice-phone", "aud", nil))},
		"wrong audience":     {alice, "", sign(priv, claims("sub", "alice-phone", "aud", "another-service"))},
		"no issuer":          {alice, "", sign(priv, claims("sub", "alice-phone", "iss", nil))},
		"wrong issuer":       {alice, "", sign(priv, claims("sub", "alice-phone", "iss", "https://evil.example"))},
		"other key":          {alice, "", sign(otherPriv, claims("sub", "alice-phone"))},
		"alg none":           {alice, "", unsignedJWT(t, claims("sub", "alice-phone"))},
		"hmac with pub":      {alice, "", hmacJWT(t, der, claims("sub", "alice-phone"))},
		"not a jwt":          {alice, "", "abc.def.ghi"},
		"no user":            {alice, "", sign(priv, claims("mlsds_client_id", "alice-phone"))},
	}
	for name, c := range refused {
		t.Run(name, func(t *testing.T) {
			connectErr(t, register(c.m, c.user, c.token), connect.CodePermissionDenied)
		})
	}
	for _, m := range []*member{alice, bob} {
		if _, err := m.tryLogin(); err == nil {
			t.Fatalf("client %q was registered by a refused JWT", m.id)
		}
	}
	// The token names the user and the client.
	phoneToken := sign(priv, claims("sub", "alice", "mlsds_client_id", "alice-phone"))
	if err := register(alice, "alice", phoneToken); err != nil {
		t.Fatal(err)
	}
	// A retry with the same token and key succeeds and changes nothing;
	// another key cannot reuse the token.
	if err := register(alice, "alice", phoneToken); err != nil {
		t.Fatalf("retrying a registration: %v", err)
	}
	connectErr(t, register(e.newMember("alice-phone"), "alice", phoneToken), connect.CodePermissionDenied)
	// The user id can come from the token, and a token without
	// mlsds_client_id registers the client named as the user.
	self := e.newMember("alice")
	if err := register(self, "", sign(priv, claims("sub", "alice"))); err != nil {
		t.Fatal(err)
	}
	// One token registers one client: a second token with the same jti
	// is refused, even for another client id.
	dup := claims("mlsds_user_id", "alice", "mlsds_client_id", "alice-laptop")
	laptop := e.newMember("alice-laptop")
	if err := register(laptop, "", sign(priv, dup)); err != nil {
		t.Fatal(err)
	}
	dup["mlsds_client_id"] = "alice-tablet"
	tablet := e.newMember("alice-tablet")
	ce := connectErr(t, register(tablet, "", sign(priv, dup)), connect.CodePermissionDenied)
	if !strings.Contains(ce.Message(), "new one") {
		t.Errorf("reused jti: %q does not say to get a new token", ce.Message())
	}
	if err := register(tablet, "", sign(priv, claims("mlsds_user_id", "alice", "mlsds_client_id", "alice-tablet"))); err != nil {
		t.Fatal(err)
	}
	tablet.login()
	// All four are devices of user alice: a claim for the user reaches
	// the other three, and no one else registered under alice.
	for _, m := range []*member{alice, self, laptop} {
		m.login()
		m.uploadKeyPackages(1, false)
	}
	res, err := tablet.kps.ClaimKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
		Target: &mlsdsv1.ClaimKeyPackagesRequest_UserId{UserId: "alice"}, CipherSuite: uint32(suite)}))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(res.Msg.KeyPackages); got != 3 {
		t.Fatalf("claimed %d KeyPackages for user alice, want 3 (her other devices)", got)
	}
}

func TestJWTConfigRequired(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	for _, c := range []server.Config{
		{Registration: server.RegistrationJWT, JWTKey: pub, JWTIssuer: "iss"},
		{Registration: server.RegistrationJWT, JWTKey: pub, JWTAudience: "aud"},
	} {
		st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "mlsds.db"), sqlite.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := server.New(ds.New(st, ds.Config{}), c); err == nil {
			t.Errorf("server.New(%+v) accepted a jwt configuration without audience or issuer", c)
		}
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
