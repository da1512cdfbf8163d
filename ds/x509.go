package ds

import (
	"bytes"
	"crypto/x509"
	encasn1 "encoding/asn1"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"

	"github.com/mlsds/mlsds/mls"
)

// x509 credentials (RFC 9420 §5.3). An x509 credential carries a chain of
// DER certificates, the end-entity (leaf) certificate first, each one
// signed by the next. The Delivery Service accepts one when
//
//   - the chain verifies to one of Config.X509Roots at the DS's now (every
//     certificate unexpired), with the certificates after the first as
//     intermediates (crypto/x509, no network);
//   - the leaf certificate names exactly one client by a URI in its
//     subjectAltName: X509ClientURIPrefix followed by the client id, the
//     id percent-encoded as a URI path segment where it must be
//     ("mlsds:client/alice", "mlsds:client/b%C3%B6b");
//   - the leaf certificate's public key is the leaf's signature_key (RFC
//     9420 §5.3.1: the credential must cover the signature key), compared
//     as the bytes of the subjectPublicKey BIT STRING, which is the MLS
//     encoding of the key for every suite (§5.1.1: raw Ed25519/Ed448 keys,
//     uncompressed ECDSA points).
//
// From then on it is bound like a basic credential: the client id must be
// registered and the key one of its registered keys (binding.go).
// Certificates do not replace registration; they let an application's PKI
// vouch for the names on leaves, for members and for the DS alike.

// X509ClientURIPrefix is how the SAN URI that names the client of an x509
// credential's leaf certificate begins.
const X509ClientURIPrefix = "mlsds:client/"

// X509ClientURI returns the SAN URI that names clientID, to put in the
// URIs of a leaf certificate.
func X509ClientURI(clientID string) *url.URL {
	return &url.URL{Scheme: "mlsds", Opaque: "client/" + url.PathEscape(clientID)}
}

// X509ClientID returns the client id that cert names by its SAN URI; an
// error if it names none, or more than one.
func X509ClientID(cert *x509.Certificate) (string, error) {
	var id string
	for _, u := range cert.URIs {
		if u.Scheme != "mlsds" {
			continue
		}
		rest, ok := strings.CutPrefix(u.Opaque, "client/")
		if !ok {
			continue
		}
		got, err := url.PathUnescape(rest)
		if err != nil || got == "" {
			return "", fmt.Errorf("the leaf certificate's SAN URI %q does not hold a client id", u.String())
		}
		if id != "" && got != id {
			return "", fmt.Errorf("the leaf certificate names two clients (%q and %q); it must name one", id, got)
		}
		id = got
	}
	if id == "" {
		return "", fmt.Errorf("the leaf certificate names no client: it needs a subjectAltName URI %s<client-id>", X509ClientURIPrefix)
	}
	return id, nil
}

// SubjectPublicKeyBytes returns the bytes of cert's subjectPublicKey BIT
// STRING: the MLS encoding of the key (RFC 9420 §5.1.1) for the
// algorithms of the cipher suites.
func SubjectPublicKeyBytes(cert *x509.Certificate) ([]byte, error) {
	in := cryptobyte.String(cert.RawSubjectPublicKeyInfo)
	var spki, alg cryptobyte.String
	var bits encasn1.BitString
	if !in.ReadASN1(&spki, asn1.SEQUENCE) || !spki.ReadASN1(&alg, asn1.SEQUENCE) || !spki.ReadASN1BitString(&bits) || bits.BitLength%8 != 0 {
		return nil, errors.New("the certificate's subjectPublicKeyInfo is malformed")
	}
	return bits.Bytes, nil
}

// x509Chain parses the certificates of an x509 credential.
func x509Chain(c *mls.Credential) ([]*x509.Certificate, error) {
	if len(c.Certificates) == 0 {
		return nil, invalidf("5.3", "the x509 credential holds no certificate")
	}
	certs := make([]*x509.Certificate, len(c.Certificates))
	for i, der := range c.Certificates {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, invalidf("5.3", "certificate %d of the x509 credential does not parse: %v", i, err)
		}
		certs[i] = cert
	}
	return certs, nil
}

// x509ClientIDOf returns the client id an x509 credential's leaf
// certificate names, without verifying anything: for naming leaves that
// were verified when they came in.
func x509ClientIDOf(c *mls.Credential) (string, error) {
	if len(c.Certificates) == 0 {
		return "", invalidf("5.3", "the x509 credential holds no certificate")
	}
	cert, err := x509.ParseCertificate(c.Certificates[0])
	if err != nil {
		return "", invalidf("5.3", "the x509 credential's leaf certificate does not parse: %v", err)
	}
	id, err := X509ClientID(cert)
	if err != nil {
		return "", invalidf("5.3", "%v", err)
	}
	return id, nil
}

// verifyX509 checks an x509 credential with the leaf's signature key as
// the top of this file says, at now, and returns the client id it names.
// A chain that does not verify, or a key that is not the certificate's,
// wraps ErrPermissionDenied; a malformed one is an *InvalidMessageError.
func verifyX509(c *mls.Credential, signatureKey []byte, roots *x509.CertPool, now time.Time) (string, error) {
	certs, err := x509Chain(c)
	if err != nil {
		return "", err
	}
	leaf := certs[0]
	id, err := X509ClientID(leaf)
	if err != nil {
		return "", invalidf("5.3", "%v", err)
	}
	if roots == nil {
		return "", fmt.Errorf("%w: this Delivery Service accepts no x509 credentials (RFC 9420 §5.3); its operator turns them on with --x509-roots; "+
			"use a basic credential whose identity is the client id", ErrPermissionDenied)
	}
	inter := x509.NewCertPool()
	for _, cert := range certs[1:] {
		inter.AddCert(cert)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return "", fmt.Errorf("%w: the x509 credential of %q is not trusted: %v (RFC 9420 §5.3.1)", ErrPermissionDenied, id, err)
	}
	pub, err := SubjectPublicKeyBytes(leaf)
	if err != nil {
		return "", invalidf("5.3", "%v", err)
	}
	if !bytes.Equal(pub, signatureKey) {
		return "", fmt.Errorf("%w: the x509 credential of %q certifies another key than the leaf's signature_key (RFC 9420 §5.3.1)", ErrPermissionDenied, id)
	}
	return id, nil
}

// verifiedClientID returns the client id that cred names for a leaf with
// signatureKey, verifying an x509 credential (see above). A basic
// credential's identity is taken as it is: binding.go checks it against
// the registered keys.
func (s *Service) verifiedClientID(cred *mls.Credential, signatureKey []byte) (string, error) {
	if cred.CredentialType == mls.CredentialTypeX509 {
		return verifyX509(cred, signatureKey, s.cfg.X509Roots, s.now())
	}
	return credentialClientID(cred)
}

// CredentialClientID returns the client id a TLS-encoded credential names
// for a client with signatureKey, as RegisterClient takes it: a basic
// credential's identity, or the client an x509 credential's leaf
// certificate names once its chain verified and it certifies
// signatureKey. The id must be a valid client id (CheckIdentifier).
func (s *Service) CredentialClientID(credential, signatureKey []byte) (string, error) {
	var c mls.Credential
	if err := c.UnmarshalBinary(credential); err != nil {
		return "", invalidMessage("credential", err)
	}
	id, err := s.verifiedClientID(&c, signatureKey)
	if err != nil {
		return "", err
	}
	if err := s.checkID("client", id); err != nil {
		return "", err
	}
	return id, nil
}
