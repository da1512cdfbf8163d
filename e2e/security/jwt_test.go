package security

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/internal/testkit"
)

// TestHostileJWT is the table of registration attacks on a server in JWT
// mode: each token below was signed by the real identity service key,
// and each is still refused, with the store unchanged.
func TestHostileJWT(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "idp.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testkit.StartServe(t, "--registration", "jwt", "--jwt-key", keyFile,
		"--jwt-issuer", "https://idp.example", "--jwt-audience", "mlsds", "--auth-rate-limit", "-1")

	n := 0
	token := func(claims jwt.MapClaims) string {
		n++
		base := jwt.MapClaims{"iss": "https://idp.example", "aud": "mlsds", "exp": time.Now().Add(time.Hour).Unix(), "jti": time.Now().String() + string(rune('a'+n))}
		for k, v := range claims {
			if v == nil {
				delete(base, k)
			} else {
				base[k] = v
			}
		}
		s, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, base).SignedString(priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	register := func(id, user, tok string) error {
		c := testkit.NewClient(t, srv.URL, id)
		r := c.RegisterRequest(user, "")
		r.Enrollment = &mlsdsv1.RegisterClientRequest_Jwt{Jwt: tok}
		_, err := c.Auth.RegisterClient(bg, connect.NewRequest(r))
		return err
	}

	// The legitimate path works: the token names the user, and the client
	// id the token names.
	good := token(jwt.MapClaims{"sub": "mallory", "mlsds_client_id": "mallory-phone"})
	if err := register("mallory-phone", "", good); err != nil {
		t.Fatalf("registering with a good token: %v", err)
	}

	cases := []struct {
		name     string
		id, user string
		tok      string
	}{
		{"the same token registers a second client", "mallory-phone", "", good},
		{"a token for mallory registers client bob", "bob", "", token(jwt.MapClaims{"sub": "mallory"})},
		{"a token for mallory registers bob under user bob", "bob", "bob", token(jwt.MapClaims{"sub": "mallory"})},
		{"a token naming only a client id", "carol", "mallory", token(jwt.MapClaims{"mlsds_client_id": "carol"})},
		{"a token for another audience", "dave", "", token(jwt.MapClaims{"sub": "dave", "aud": "another-app"})},
		{"a token of another issuer", "dave", "", token(jwt.MapClaims{"sub": "dave", "iss": "https://evil.example"})},
		{"a token without jti", "dave", "", token(jwt.MapClaims{"sub": "dave", "jti": nil})},
		{"an expired token", "dave", "", token(jwt.MapClaims{"sub": "dave", "exp": time.Now().Add(-time.Hour).Unix()})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := testkit.DumpSQLite(t, srv.DBPath())
			err := register(c.id, c.user, c.tok)
			if connect.CodeOf(err) != connect.CodePermissionDenied {
				t.Errorf("got %v, want permission_denied", err)
			}
			if d := before.Diff(testkit.DumpSQLite(t, srv.DBPath())); d != "" {
				t.Errorf("the refused registration changed the store:\n%s", d)
			}
		})
	}
}
