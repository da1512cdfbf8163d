package mls

import (
	"golang.org/x/crypto/cryptobyte"
)

// Welcome brings new members into a group (§12.4.3.1): the group secrets
// encrypted to each new member's KeyPackage, and the GroupInfo encrypted
// under a key derived from the welcome secret.
type Welcome struct {
	CipherSuite        CipherSuite
	Secrets            []EncryptedGroupSecrets
	EncryptedGroupInfo []byte
}

func (w *Welcome) marshal(b *cryptobyte.Builder) {
	b.AddUint16(uint16(w.CipherSuite))
	addStructList(b, w.Secrets)
	addOpaque(b, w.EncryptedGroupInfo)
}

func (w *Welcome) unmarshal(s *cryptobyte.String) bool {
	*w = Welcome{}
	return s.ReadUint16((*uint16)(&w.CipherSuite)) &&
		readStructList(s, &w.Secrets) &&
		readOpaque(s, &w.EncryptedGroupInfo)
}

// MarshalBinary returns the TLS encoding of w.
func (w *Welcome) MarshalBinary() ([]byte, error) { return encode(w) }

// UnmarshalBinary decodes a Welcome, rejecting trailing bytes.
func (w *Welcome) UnmarshalBinary(data []byte) error {
	return decode(data, "Welcome", w.unmarshal)
}

// Joiners returns the KeyPackageRefs of the new members the Welcome is
// addressed to, in order, so that a Delivery Service can route it.
func (w *Welcome) Joiners() []KeyPackageRef {
	refs := make([]KeyPackageRef, len(w.Secrets))
	for i := range w.Secrets {
		refs[i] = w.Secrets[i].NewMember
	}
	return refs
}

// EncryptedGroupSecrets is the GroupSecrets for one new member, encrypted
// to the init key of the KeyPackage that NewMember names (§12.4.3.1).
type EncryptedGroupSecrets struct {
	NewMember             KeyPackageRef
	EncryptedGroupSecrets HPKECiphertext
}

func (e *EncryptedGroupSecrets) marshal(b *cryptobyte.Builder) {
	addOpaque(b, e.NewMember)
	e.EncryptedGroupSecrets.marshal(b)
}

func (e *EncryptedGroupSecrets) unmarshal(s *cryptobyte.String) bool {
	return readOpaque(s, (*[]byte)(&e.NewMember)) && e.EncryptedGroupSecrets.unmarshal(s)
}

// GroupSecrets is what a new member decrypts from a Welcome (§12.4.3.1).
type GroupSecrets struct {
	JoinerSecret []byte
	// PathSecret is the path secret of the lowest common ancestor of the
	// committer and the new member, or nil when absent.
	PathSecret []byte
	PSKs       []PreSharedKeyID
}

func (g *GroupSecrets) marshal(b *cryptobyte.Builder) {
	addOpaque(b, g.JoinerSecret)
	addOptional(b, g.PathSecret != nil)
	if g.PathSecret != nil {
		addOpaque(b, g.PathSecret) // PathSecret.path_secret
	}
	addStructList(b, g.PSKs)
}

func (g *GroupSecrets) unmarshal(s *cryptobyte.String) bool {
	*g = GroupSecrets{}
	var present bool
	if !readOpaque(s, &g.JoinerSecret) || !readOptional(s, &present) {
		return false
	}
	if present {
		if !readOpaque(s, &g.PathSecret) {
			return false
		}
		if g.PathSecret == nil {
			g.PathSecret = []byte{} // present but empty: keep it distinct from absent
		}
	}
	return readStructList(s, &g.PSKs)
}

// MarshalBinary returns the TLS encoding of g.
func (g *GroupSecrets) MarshalBinary() ([]byte, error) { return encode(g) }

// UnmarshalBinary decodes a GroupSecrets, rejecting trailing bytes.
func (g *GroupSecrets) UnmarshalBinary(data []byte) error {
	return decode(data, "GroupSecrets", g.unmarshal)
}
