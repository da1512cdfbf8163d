package server

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/mlsds/mlsds/ds"
)

// Registration says who may register a client.
type Registration string

const (
	// RegistrationOpen lets anyone register (development, closed networks).
	RegistrationOpen Registration = "open"
	// RegistrationToken requires the shared enrollment token.
	RegistrationToken Registration = "token"
	// RegistrationJWT requires a JWT of the identity service, signed by
	// the configured key, that names the user and the client (checkJWT).
	RegistrationJWT Registration = "jwt"
)

// ParseRegistration parses the value of --registration.
func ParseRegistration(s string) (Registration, error) {
	switch r := Registration(s); r {
	case RegistrationOpen, RegistrationToken, RegistrationJWT:
		return r, nil
	case "":
		return RegistrationOpen, nil
	}
	return "", fmt.Errorf("unknown registration mode %q; use open, token or jwt", s)
}

// LoadJWTKey reads the public key that signs enrollment JWTs from a PEM
// file: a PKIX "PUBLIC KEY" (RSA, ECDSA or Ed25519) or a "CERTIFICATE".
func LoadJWTKey(path string) (crypto.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block; the JWT key must be a PEM public key or certificate", path)
	}
	var pub crypto.PublicKey
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
			pub = cert.PublicKey
		}
	default:
		return nil, fmt.Errorf("%s: PEM block is %q; want PUBLIC KEY or CERTIFICATE", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := jwtMethods(pub); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pub, nil
}

// LoadX509Roots reads the trust anchors of x509 credentials (RFC 9420
// §5.3) from a PEM file of one or more CERTIFICATE blocks.
func LoadX509Roots(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: PEM block is %q; the x509 roots file holds CERTIFICATE blocks only", path, block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %w", path, n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate; give the CA certificates that x509 credentials chain to", path)
	}
	return pool, nil
}

// jwtMethods lists the JWT algorithms that fit a key, so that a token can
// never pick an algorithm the operator did not mean (no "none", no HMAC
// with the public key as secret).
func jwtMethods(pub crypto.PublicKey) ([]string, error) {
	switch pub.(type) {
	case *rsa.PublicKey:
		return []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, nil
	case *ecdsa.PublicKey:
		return []string{"ES256", "ES384", "ES512"}, nil
	case ed25519.PublicKey:
		return []string{"EdDSA"}, nil
	}
	return nil, fmt.Errorf("unsupported JWT key type %T; use RSA, ECDSA or Ed25519", pub)
}

// enrollmentClaims are the claims of an enrollment JWT. The user is
// "mlsds_user_id", or "sub" when that is absent. The client id is
// "mlsds_client_id", or the user id when that is absent. "exp", "aud",
// "iss" and "jti" are required; one token registers one client.
type enrollmentClaims struct {
	jwt.RegisteredClaims
	ClientID string `json:"mlsds_client_id,omitempty"`
	UserID   string `json:"mlsds_user_id,omitempty"`
}

var errEnrollment = errors.New("registration needs a valid enrollment proof")

// jwtLeeway is the clock skew allowed on a JWT's times.
const jwtLeeway = 30 * time.Second

// enrollment is what the registration policy decided for a request.
type enrollment struct {
	userID string // the user to record ("" leaves it to the request)
	// vouched: the identity service vouched for the user, so no device
	// link is needed (RFC 9750 §5: the AS binds clients to users).
	vouched bool
	once    ds.Once // the JWT's id, spent with the registration
}

// checkEnrollment applies the registration policy to a client id and the
// user id of the request.
func (s *Server) checkEnrollment(clientID, userID, token, jwtString string) (enrollment, error) {
	switch s.cfg.Registration {
	case RegistrationToken:
		if token == "" || subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.EnrollmentToken)) != 1 {
			return enrollment{}, fmt.Errorf("%w: this server requires its enrollment token", errEnrollment)
		}
	case RegistrationJWT:
		return s.checkJWT(clientID, userID, jwtString)
	}
	return enrollment{userID: userID}, nil
}

// checkJWT checks an enrollment JWT (RFC 7519) and the ids it admits.
func (s *Server) checkJWT(clientID, userID, jwtString string) (enrollment, error) {
	if jwtString == "" {
		return enrollment{}, fmt.Errorf("%w: this server requires a JWT from its identity service", errEnrollment)
	}
	var c enrollmentClaims
	opts := []jwt.ParserOption{jwt.WithValidMethods(s.jwtMethods), jwt.WithExpirationRequired(),
		jwt.WithLeeway(jwtLeeway), jwt.WithTimeFunc(s.cfg.Now),
		jwt.WithAudience(s.cfg.JWTAudience), jwt.WithIssuer(s.cfg.JWTIssuer)}
	if _, err := jwt.ParseWithClaims(jwtString, &c, func(*jwt.Token) (any, error) { return s.cfg.JWTKey, nil }, opts...); err != nil {
		return enrollment{}, fmt.Errorf("%w: JWT rejected: %v", errEnrollment, err)
	}
	if c.ID == "" {
		return enrollment{}, fmt.Errorf("%w: the JWT has no \"jti\" claim; the identity service must give every enrollment token a unique id, since one token registers one client", errEnrollment)
	}
	user := c.UserID
	if user == "" {
		user = c.Subject
	}
	if user == "" {
		return enrollment{}, fmt.Errorf("%w: the JWT names no user: it needs \"sub\" or \"mlsds_user_id\"", errEnrollment)
	}
	if userID != "" && userID != user {
		return enrollment{}, fmt.Errorf("%w: the JWT is for user %q, not %q; leave user_id empty or set it to %q", errEnrollment, user, userID, user)
	}
	want := c.ClientID
	if want == "" {
		want = user
	}
	if clientID != want {
		if c.ClientID == "" {
			return enrollment{}, fmt.Errorf("%w: the JWT has no \"mlsds_client_id\" claim, so it registers only the client id %q (the user id), not %q", errEnrollment, want, clientID)
		}
		return enrollment{}, fmt.Errorf("%w: the JWT is for client %q, not %q", errEnrollment, want, clientID)
	}
	// The token is spent with the registration and remembered until it
	// could no longer be accepted.
	return enrollment{userID: user, vouched: true, once: ds.Once{
		Scope:   "jwt",
		Value:   []byte(c.Issuer + "\x00" + c.ID),
		Expires: c.ExpiresAt.Add(jwtLeeway),
	}}, nil
}
