package mls

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Credential binds an identity to a member's signature key (§5.3).
//
// Only the two credential types defined by RFC 9420 can be carried: the
// body of any other type has no length prefix on the wire, so a decoder
// that does not know the type cannot find where it ends, and decoding
// fails with ErrDecode.
type Credential struct {
	CredentialType CredentialType

	// Identity is the identity of a basic credential.
	Identity []byte

	// Certificates holds the DER certificates of an x509 credential, the
	// end-entity certificate first.
	Certificates [][]byte
}

// marshal writes the Credential of §5.3.
func (c *Credential) marshal(b *cryptobyte.Builder) {
	b.AddUint16(uint16(c.CredentialType))
	switch c.CredentialType {
	case CredentialTypeBasic:
		if len(c.Certificates) > 0 {
			b.SetError(fmt.Errorf("mls: basic Credential has Certificates set; use CredentialTypeX509"))
			return
		}
		addOpaque(b, c.Identity)
	case CredentialTypeX509:
		if len(c.Identity) > 0 {
			b.SetError(fmt.Errorf("mls: x509 Credential has Identity set; the identity lives in the certificate"))
			return
		}
		addVector(b, func(b *cryptobyte.Builder) {
			for _, cert := range c.Certificates {
				addOpaque(b, cert) // Certificate.cert_data
			}
		})
	default:
		b.SetError(fmt.Errorf("mls: cannot encode Credential of unknown type %d", c.CredentialType))
	}
}

// unmarshal reads the Credential of §5.3.
func (c *Credential) unmarshal(s *cryptobyte.String) bool {
	*c = Credential{}
	var t uint16
	if !s.ReadUint16(&t) {
		return false
	}
	c.CredentialType = CredentialType(t)
	switch c.CredentialType {
	case CredentialTypeBasic:
		return readOpaque(s, &c.Identity)
	case CredentialTypeX509:
		return readList(s, func(s *cryptobyte.String) bool {
			var cert []byte
			if !readOpaque(s, &cert) {
				return false
			}
			c.Certificates = append(c.Certificates, cert)
			return true
		})
	default:
		return false // the body of an unknown type has no length (§5.3)
	}
}

// MarshalBinary returns the TLS encoding of c.
func (c *Credential) MarshalBinary() ([]byte, error) { return encode(c) }

// UnmarshalBinary decodes a Credential, rejecting trailing bytes.
func (c *Credential) UnmarshalBinary(data []byte) error {
	return decode(data, "Credential", c.unmarshal)
}
