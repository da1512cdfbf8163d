package mls

import (
	"golang.org/x/crypto/cryptobyte"
)

// KeyPackage is a client's signed offer to be added to a group (§10).
type KeyPackage struct {
	Version     ProtocolVersion
	CipherSuite CipherSuite
	InitKey     []byte // HPKEPublicKey
	LeafNode    LeafNode
	Extensions  Extensions
	Signature   []byte
}

// KeyPackageRef identifies a KeyPackage (§5.2).
type KeyPackageRef []byte

// marshalContent writes the KeyPackageTBS of §10: every field but the
// signature.
func (kp *KeyPackage) marshalContent(b *cryptobyte.Builder) {
	b.AddUint16(uint16(kp.Version))
	b.AddUint16(uint16(kp.CipherSuite))
	addOpaque(b, kp.InitKey)
	kp.LeafNode.marshal(b)
	kp.Extensions.marshal(b)
}

func (kp *KeyPackage) marshal(b *cryptobyte.Builder) {
	kp.marshalContent(b)
	addOpaque(b, kp.Signature)
}

func (kp *KeyPackage) unmarshal(s *cryptobyte.String) bool {
	*kp = KeyPackage{}
	var version, suite uint16
	if !s.ReadUint16(&version) || !s.ReadUint16(&suite) {
		return false
	}
	kp.Version = ProtocolVersion(version)
	kp.CipherSuite = CipherSuite(suite)
	return readOpaque(s, &kp.InitKey) &&
		kp.LeafNode.unmarshal(s) &&
		kp.Extensions.unmarshal(s) &&
		readOpaque(s, &kp.Signature)
}

// MarshalBinary returns the TLS encoding of kp.
func (kp *KeyPackage) MarshalBinary() ([]byte, error) { return encode(kp) }

// UnmarshalBinary decodes a KeyPackage, rejecting trailing bytes.
func (kp *KeyPackage) UnmarshalBinary(data []byte) error {
	return decode(data, "KeyPackage", kp.unmarshal)
}

// TBS returns the KeyPackageTBS (§10) that the KeyPackage signature covers,
// or nil if kp cannot be encoded.
func (kp *KeyPackage) TBS() []byte {
	b := cryptobyte.NewBuilder(nil)
	kp.marshalContent(b)
	out, err := b.Bytes()
	if err != nil {
		return nil
	}
	return out
}

// Ref returns the KeyPackageRef of kp (§5.2): the RefHash, in kp's cipher
// suite, of the encoded KeyPackage.
func (kp *KeyPackage) Ref() (KeyPackageRef, error) {
	if err := kp.CipherSuite.check(); err != nil {
		return nil, err
	}
	data, err := encode(kp)
	if err != nil {
		return nil, err
	}
	return KeyPackageRef(kp.CipherSuite.RefHash("MLS 1.0 KeyPackage Reference", data)), nil
}

// Sign sets kp.Signature to a signature with priv, the private key of
// kp.LeafNode.SignatureKey, over the KeyPackageTBS (§10), in kp's cipher
// suite. Sign the LeafNode first: its signature is part of the TBS.
func (kp *KeyPackage) Sign(priv []byte) error {
	b := cryptobyte.NewBuilder(nil)
	kp.marshalContent(b)
	tbs, err := b.Bytes()
	if err != nil {
		return err
	}
	sig, err := kp.CipherSuite.SignWithLabel(priv, "KeyPackageTBS", tbs)
	if err != nil {
		return err
	}
	kp.Signature = sig
	return nil
}

// VerifySignature checks kp.Signature against kp.LeafNode.SignatureKey over
// the KeyPackageTBS (§10), in kp's cipher suite. It checks neither the
// LeafNode's own signature nor any other rule of §10.1.
func (kp *KeyPackage) VerifySignature() error {
	b := cryptobyte.NewBuilder(nil)
	kp.marshalContent(b)
	tbs, err := b.Bytes()
	if err != nil {
		return err
	}
	return kp.CipherSuite.VerifyWithLabel(kp.LeafNode.SignatureKey, "KeyPackageTBS", tbs, kp.Signature)
}
