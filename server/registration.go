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
)

// Registration says who may register a client.
type Registration string

const (
	// RegistrationOpen lets anyone register (development, closed networks).
	RegistrationOpen Registration = "open"
	// RegistrationToken requires the shared enrollment token.
	RegistrationToken Registration = "token"
	// RegistrationJWT requires a JWT signed by the configured key whose
	// subject is the client id or the user id (see checkJWT).
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

// enrollmentClaims are the claims an enrollment JWT may carry. It admits a
// registration when "sub" equals the client id or the user id, or when
// "mlsds_client_id" equals the client id, or "mlsds_user_id" the user id.
// "exp" is required.
type enrollmentClaims struct {
	jwt.RegisteredClaims
	ClientID string `json:"mlsds_client_id,omitempty"`
	UserID   string `json:"mlsds_user_id,omitempty"`
}

var errEnrollment = errors.New("registration needs a valid enrollment proof")

// checkEnrollment applies the registration policy. It returns the user id
// to record: the JWT's mlsds_user_id when the request names none.
func (s *Server) checkEnrollment(clientID, userID, token, jwtString string) (string, error) {
	switch s.cfg.Registration {
	case RegistrationToken:
		if token == "" || subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.EnrollmentToken)) != 1 {
			return "", fmt.Errorf("%w: this server requires its enrollment token", errEnrollment)
		}
	case RegistrationJWT:
		if jwtString == "" {
			return "", fmt.Errorf("%w: this server requires a JWT from its identity service", errEnrollment)
		}
		var c enrollmentClaims
		opts := []jwt.ParserOption{jwt.WithValidMethods(s.jwtMethods), jwt.WithExpirationRequired(),
			jwt.WithLeeway(30 * time.Second), jwt.WithTimeFunc(s.cfg.Now)}
		if s.cfg.JWTAudience != "" {
			opts = append(opts, jwt.WithAudience(s.cfg.JWTAudience))
		}
		if _, err := jwt.ParseWithClaims(jwtString, &c, func(*jwt.Token) (any, error) { return s.cfg.JWTKey, nil }, opts...); err != nil {
			return "", fmt.Errorf("%w: JWT rejected: %v", errEnrollment, err)
		}
		if userID == "" {
			userID = c.UserID
		}
		ok := c.Subject != "" && (c.Subject == clientID || c.Subject == userID) ||
			c.ClientID != "" && c.ClientID == clientID ||
			c.UserID != "" && c.UserID == userID
		if !ok {
			return "", fmt.Errorf("%w: the JWT names neither client %q nor user %q", errEnrollment, clientID, userID)
		}
	}
	return userID, nil
}
