package mls

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// GroupContext is the state of a group that every member agrees on in an
// epoch (§8.1).
type GroupContext struct {
	Version                 ProtocolVersion
	CipherSuite             CipherSuite
	GroupID                 []byte
	Epoch                   uint64
	TreeHash                []byte
	ConfirmedTranscriptHash []byte
	Extensions              Extensions
}

func (gc *GroupContext) marshal(b *cryptobyte.Builder) {
	b.AddUint16(uint16(gc.Version))
	b.AddUint16(uint16(gc.CipherSuite))
	addOpaque(b, gc.GroupID)
	b.AddUint64(gc.Epoch)
	addOpaque(b, gc.TreeHash)
	addOpaque(b, gc.ConfirmedTranscriptHash)
	gc.Extensions.marshal(b)
}

func (gc *GroupContext) unmarshal(s *cryptobyte.String) bool {
	*gc = GroupContext{}
	return s.ReadUint16((*uint16)(&gc.Version)) &&
		s.ReadUint16((*uint16)(&gc.CipherSuite)) &&
		readOpaque(s, &gc.GroupID) &&
		s.ReadUint64(&gc.Epoch) &&
		readOpaque(s, &gc.TreeHash) &&
		readOpaque(s, &gc.ConfirmedTranscriptHash) &&
		gc.Extensions.unmarshal(s)
}

// MarshalBinary returns the TLS encoding of gc.
func (gc *GroupContext) MarshalBinary() ([]byte, error) { return encode(gc) }

// UnmarshalBinary decodes a GroupContext, rejecting trailing bytes.
func (gc *GroupContext) UnmarshalBinary(data []byte) error {
	return decode(data, "GroupContext", gc.unmarshal)
}

// GroupInfo describes a group to a joiner: sent encrypted in a Welcome, or
// published for external joins (§12.4.3).
type GroupInfo struct {
	GroupContext    GroupContext
	Extensions      Extensions
	ConfirmationTag []byte // MAC
	Signer          LeafIndex
	Signature       []byte
}

// marshalContent writes the GroupInfoTBS of §12.4.3: every field but the
// signature.
func (gi *GroupInfo) marshalContent(b *cryptobyte.Builder) {
	gi.GroupContext.marshal(b)
	gi.Extensions.marshal(b)
	addOpaque(b, gi.ConfirmationTag)
	b.AddUint32(uint32(gi.Signer))
}

func (gi *GroupInfo) marshal(b *cryptobyte.Builder) {
	gi.marshalContent(b)
	addOpaque(b, gi.Signature)
}

func (gi *GroupInfo) unmarshal(s *cryptobyte.String) bool {
	*gi = GroupInfo{}
	return gi.GroupContext.unmarshal(s) &&
		gi.Extensions.unmarshal(s) &&
		readOpaque(s, &gi.ConfirmationTag) &&
		s.ReadUint32((*uint32)(&gi.Signer)) &&
		readOpaque(s, &gi.Signature)
}

// MarshalBinary returns the TLS encoding of gi.
func (gi *GroupInfo) MarshalBinary() ([]byte, error) { return encode(gi) }

// UnmarshalBinary decodes a GroupInfo, rejecting trailing bytes.
func (gi *GroupInfo) UnmarshalBinary(data []byte) error {
	return decode(data, "GroupInfo", gi.unmarshal)
}

// TBS returns the GroupInfoTBS (§12.4.3) that the signature covers, or nil
// if gi cannot be encoded.
func (gi *GroupInfo) TBS() []byte {
	out, err := gi.tbs()
	if err != nil {
		return nil
	}
	return out
}

func (gi *GroupInfo) tbs() ([]byte, error) {
	b := cryptobyte.NewBuilder(nil)
	gi.marshalContent(b)
	return b.Bytes()
}

// Sign sets gi.Signature to a signature with priv, the signature key of
// the member at leaf gi.Signer, over the GroupInfoTBS (§12.4.3), in the
// cipher suite of gi.GroupContext.
func (gi *GroupInfo) Sign(priv []byte) error {
	tbs, err := gi.tbs()
	if err != nil {
		return err
	}
	sig, err := gi.GroupContext.CipherSuite.SignWithLabel(priv, "GroupInfoTBS", tbs)
	if err != nil {
		return err
	}
	gi.Signature = sig
	return nil
}

// VerifySignature checks gi.Signature against pub, the signature key of
// the leaf gi.Signer in the group's tree, over the GroupInfoTBS (§12.4.3),
// in the cipher suite of gi.GroupContext. It returns an error wrapping
// ErrInvalidSignature if the signature is not valid.
func (gi *GroupInfo) VerifySignature(pub []byte) error {
	tbs, err := gi.tbs()
	if err != nil {
		return err
	}
	return gi.GroupContext.CipherSuite.VerifyWithLabel(pub, "GroupInfoTBS", tbs, gi.Signature)
}

// ExternalPub returns the HPKE public key of the external_pub extension,
// needed to join by external commit (§12.4.3.2). It returns a
// *ValidationError if gi has no such extension, and an error wrapping
// ErrDecode if the extension is malformed.
func (gi *GroupInfo) ExternalPub() ([]byte, error) {
	ext, ok := gi.Extensions.Find(ExtensionTypeExternalPub)
	if !ok {
		return nil, invalid("12.4.3.2", "GroupInfo has no external_pub extension, so the group cannot be joined by external commit")
	}
	var pub ExternalPub
	if err := pub.UnmarshalBinary(ext.ExtensionData); err != nil {
		return nil, fmt.Errorf("external_pub extension of GroupInfo: %w", err)
	}
	return pub.PublicKey, nil
}
