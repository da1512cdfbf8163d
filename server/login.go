package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
)

// Logins with a token of the app's identity provider
// (AuthenticateRequest.id_token): a JWT signed by one of the keys of a
// JWKS file (RFC 7517) the operator gives the server (--login-jwks), with
// the configured issuer and audience and an expiry. Its "mlsds_client_id"
// claim, or else "sub", names the client, which must be registered; its
// "mlsds_user_id" claim, if present, must be the client's registered user.
// The token stands in for the signed challenge: the app's login vouches
// for the client, as RFC 9750 §5 lets an application's identity service
// do.

// LoginKeys are the keys that sign id_token logins, by key id ("kid").
type LoginKeys map[string]crypto.PublicKey

// maxJWKSSize bounds the JWKS file.
const maxJWKSSize = 1 << 20

// ParseJWKS parses a JSON Web Key Set (RFC 7517 §5) of RSA (RS256), EC
// P-256 (ES256) and Ed25519 (EdDSA, RFC 8037) public keys. Keys of other
// types, and those whose "use" is not "sig", are skipped; every key needs
// a distinct "kid" unless the set holds one key only.
func ParseJWKS(data []byte) (LoginKeys, error) {
	var set struct {
		Keys []struct {
			Kty string `json:"kty"`
			Kid string `json:"kid"`
			Use string `json:"use"`
			Alg string `json:"alg"`
			Crv string `json:"crv"`
			N   string `json:"n"`
			E   string `json:"e"`
			X   string `json:"x"`
			Y   string `json:"y"`
			D   string `json:"d"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JWKS (RFC 7517 JSON with a \"keys\" array): %w", err)
	}
	b64 := base64.RawURLEncoding.DecodeString
	keys := make(LoginKeys)
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if k.D != "" {
			return nil, fmt.Errorf("key %d (%q) holds a private key (\"d\"); give the server public keys only", i, k.Kid)
		}
		var pub crypto.PublicKey
		switch k.Kty {
		case "RSA":
			n, err1 := b64(k.N)
			e, err2 := b64(k.E)
			if err1 != nil || err2 != nil || len(n) == 0 || len(e) == 0 || len(e) > 4 {
				return nil, fmt.Errorf("key %d (%q): malformed RSA \"n\" or \"e\"", i, k.Kid)
			}
			rk := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
			if rk.N.BitLen() < 2048 {
				return nil, fmt.Errorf("key %d (%q): RSA key of %d bits; use at least 2048", i, k.Kid, rk.N.BitLen())
			}
			pub = rk
		case "EC":
			if k.Crv != "P-256" {
				continue
			}
			x, err1 := b64(k.X)
			y, err2 := b64(k.Y)
			if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
				return nil, fmt.Errorf("key %d (%q): malformed P-256 \"x\" or \"y\"", i, k.Kid)
			}
			ek, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
			if err != nil {
				return nil, fmt.Errorf("key %d (%q): %w", i, k.Kid, err)
			}
			pub = ek
		case "OKP":
			if k.Crv != "Ed25519" {
				continue
			}
			x, err := b64(k.X)
			if err != nil || len(x) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("key %d (%q): malformed Ed25519 \"x\"", i, k.Kid)
			}
			pub = ed25519.PublicKey(x)
		default:
			continue
		}
		if _, dup := keys[k.Kid]; dup {
			return nil, fmt.Errorf("two keys have the \"kid\" %q; every key needs its own", k.Kid)
		}
		keys[k.Kid] = pub
	}
	if len(keys) == 0 {
		return nil, errors.New("the JWKS holds no RSA, P-256 or Ed25519 signing key")
	}
	if _, ok := keys[""]; ok && len(keys) > 1 {
		return nil, errors.New("a key without \"kid\" in a JWKS of several keys; give every key a kid")
	}
	return keys, nil
}

// LoadJWKS reads a JWKS file (ParseJWKS).
func LoadJWKS(path string) (LoginKeys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxJWKSSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxJWKSSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxJWKSSize)
	}
	keys, err := ParseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// loginClaims are the claims of an id_token login.
type loginClaims struct {
	jwt.RegisteredClaims
	ClientID string `json:"mlsds_client_id,omitempty"`
	UserID   string `json:"mlsds_user_id,omitempty"`
}

var errLoginOff = errors.New("this server takes no id_token logins: its operator turns them on with --login-jwks FILE, --login-issuer and --login-audience; " +
	"log in with a challenge signed by a registered key instead (GetChallenge, then Authenticate with challenge and signature)")

var errIDToken = errors.New("id_token rejected")

// loginIDToken is Authenticate with an id_token.
func (a *authService) loginIDToken(ctx context.Context, token string) (*connect.Response[mlsdsv1.AuthenticateResponse], error) {
	s := a.s
	if len(s.cfg.LoginKeys) == 0 {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errLoginOff)
	}
	fail := func(format string, args ...any) error {
		s.metrics.authFailures.WithLabelValues("id_token").Inc()
		return connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("%w: "+format, append([]any{errIDToken}, args...)...))
	}
	var c loginClaims
	opts := []jwt.ParserOption{jwt.WithValidMethods([]string{"RS256", "ES256", "EdDSA"}), jwt.WithExpirationRequired(),
		jwt.WithLeeway(jwtLeeway), jwt.WithTimeFunc(s.cfg.Now),
		jwt.WithAudience(s.cfg.LoginAudience), jwt.WithIssuer(s.cfg.LoginIssuer)}
	keyFunc := func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		k, ok := s.cfg.LoginKeys[kid]
		if !ok {
			if kid == "" && len(s.cfg.LoginKeys) > 1 {
				return nil, errors.New("the token has no \"kid\" and the server holds several keys")
			}
			return nil, fmt.Errorf("no key with kid %q in the server's JWKS", kid)
		}
		if !loginAlgFits(t.Method.Alg(), k) {
			return nil, fmt.Errorf("algorithm %s does not fit key %q", t.Method.Alg(), kid)
		}
		return k, nil
	}
	if _, err := jwt.ParseWithClaims(token, &c, keyFunc, opts...); err != nil {
		return nil, fail("%v", err)
	}
	id := c.ClientID
	if id == "" {
		id = c.Subject
	}
	if id == "" {
		return nil, fail("it names no client: it needs \"mlsds_client_id\" or \"sub\"")
	}
	cl, err := s.ds.Client(ctx, id)
	if errors.Is(err, ds.ErrNotFound) {
		return nil, fail("client %q is not registered; register it first (RegisterClient)", id)
	}
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	if c.UserID != "" && c.UserID != cl.UserID {
		return nil, fail("it is for user %q, but client %q belongs to another user", c.UserID, id)
	}
	session, exp := s.tokens.session(cl.ID)
	s.log.LogAttrs(ctx, slog.LevelDebug, "client authenticated by id_token", slog.String("client", cl.ID))
	return connect.NewResponse(&mlsdsv1.AuthenticateResponse{SessionToken: session, ExpiresAt: timestamppb.New(exp)}), nil
}

// loginAlgFits reports whether a token's algorithm is the one of key.
func loginAlgFits(alg string, key crypto.PublicKey) bool {
	switch key.(type) {
	case *rsa.PublicKey:
		return alg == "RS256"
	case *ecdsa.PublicKey:
		return alg == "ES256"
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}
