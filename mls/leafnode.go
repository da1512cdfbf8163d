package mls

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Capabilities lists what a client supports (§7.2). Values defined by
// RFC 9420 as always supported need not be listed (§7.2).
type Capabilities struct {
	Versions     []ProtocolVersion
	CipherSuites []CipherSuite
	Extensions   []ExtensionType
	Proposals    []ProposalType
	Credentials  []CredentialType
}

func (c *Capabilities) marshal(b *cryptobyte.Builder) {
	addUint16List(b, c.Versions)
	addUint16List(b, c.CipherSuites)
	addUint16List(b, c.Extensions)
	addUint16List(b, c.Proposals)
	addUint16List(b, c.Credentials)
}

func (c *Capabilities) unmarshal(s *cryptobyte.String) bool {
	return readUint16List(s, &c.Versions) &&
		readUint16List(s, &c.CipherSuites) &&
		readUint16List(s, &c.Extensions) &&
		readUint16List(s, &c.Proposals) &&
		readUint16List(s, &c.Credentials)
}

// Lifetime bounds the validity of a KeyPackage's leaf, in seconds since
// the Unix epoch, both ends inclusive (§7.2).
type Lifetime struct {
	NotBefore, NotAfter uint64
}

func (l *Lifetime) marshal(b *cryptobyte.Builder) {
	b.AddUint64(l.NotBefore)
	b.AddUint64(l.NotAfter)
}

func (l *Lifetime) unmarshal(s *cryptobyte.String) bool {
	return s.ReadUint64(&l.NotBefore) && s.ReadUint64(&l.NotAfter)
}

// LeafNode is the content of a leaf of the ratchet tree (§7.2).
type LeafNode struct {
	EncryptionKey []byte // HPKEPublicKey
	SignatureKey  []byte // SignaturePublicKey
	Credential    Credential
	Capabilities  Capabilities

	LeafNodeSource LeafNodeSource
	// Lifetime is set if and only if LeafNodeSource is key_package.
	Lifetime *Lifetime
	// ParentHash is carried only when LeafNodeSource is commit.
	ParentHash []byte

	Extensions Extensions
	Signature  []byte
}

// marshalContent writes every field of the LeafNode but the signature:
// the common prefix of LeafNode and LeafNodeTBS (§7.2).
func (ln *LeafNode) marshalContent(b *cryptobyte.Builder) {
	addOpaque(b, ln.EncryptionKey)
	addOpaque(b, ln.SignatureKey)
	ln.Credential.marshal(b)
	ln.Capabilities.marshal(b)
	b.AddUint8(uint8(ln.LeafNodeSource))
	if ln.LeafNodeSource != LeafNodeSourceKeyPackage && ln.Lifetime != nil {
		b.SetError(fmt.Errorf("mls: LeafNode with source %d has a Lifetime; only key_package leaves carry one (§7.2)", ln.LeafNodeSource))
		return
	}
	if ln.LeafNodeSource != LeafNodeSourceCommit && len(ln.ParentHash) > 0 {
		b.SetError(fmt.Errorf("mls: LeafNode with source %d has a ParentHash; only commit leaves carry one (§7.2)", ln.LeafNodeSource))
		return
	}
	switch ln.LeafNodeSource {
	case LeafNodeSourceKeyPackage:
		if ln.Lifetime == nil {
			b.SetError(fmt.Errorf("mls: key_package LeafNode has no Lifetime (§7.2)"))
			return
		}
		ln.Lifetime.marshal(b)
	case LeafNodeSourceUpdate:
	case LeafNodeSourceCommit:
		addOpaque(b, ln.ParentHash)
	default:
		b.SetError(fmt.Errorf("mls: cannot encode LeafNode with unknown leaf_node_source %d", ln.LeafNodeSource))
		return
	}
	ln.Extensions.marshal(b)
}

func (ln *LeafNode) marshal(b *cryptobyte.Builder) {
	ln.marshalContent(b)
	addOpaque(b, ln.Signature)
}

func (ln *LeafNode) unmarshal(s *cryptobyte.String) bool {
	*ln = LeafNode{}
	var src uint8
	if !readOpaque(s, &ln.EncryptionKey) ||
		!readOpaque(s, &ln.SignatureKey) ||
		!ln.Credential.unmarshal(s) ||
		!ln.Capabilities.unmarshal(s) ||
		!s.ReadUint8(&src) {
		return false
	}
	ln.LeafNodeSource = LeafNodeSource(src)
	switch ln.LeafNodeSource {
	case LeafNodeSourceKeyPackage:
		ln.Lifetime = new(Lifetime)
		if !ln.Lifetime.unmarshal(s) {
			return false
		}
	case LeafNodeSourceUpdate:
	case LeafNodeSourceCommit:
		if !readOpaque(s, &ln.ParentHash) {
			return false
		}
	default:
		return false
	}
	return ln.Extensions.unmarshal(s) && readOpaque(s, &ln.Signature)
}

// MarshalBinary returns the TLS encoding of ln.
func (ln *LeafNode) MarshalBinary() ([]byte, error) { return encode(ln) }

// UnmarshalBinary decodes a LeafNode, rejecting trailing bytes.
func (ln *LeafNode) UnmarshalBinary(data []byte) error {
	return decode(data, "LeafNode", ln.unmarshal)
}

// tbs returns the LeafNodeTBS of §7.2. The group ID and leaf index are part
// of it only for leaves of source update and commit, which are bound to a
// position in a group; a key_package leaf is not.
func (ln *LeafNode) tbs(groupID []byte, leafIndex LeafIndex) ([]byte, error) {
	b := cryptobyte.NewBuilder(nil)
	ln.marshalContent(b)
	switch ln.LeafNodeSource {
	case LeafNodeSourceUpdate, LeafNodeSourceCommit:
		addOpaque(b, groupID)
		b.AddUint32(uint32(leafIndex))
	}
	return b.Bytes()
}

// TBS returns the LeafNodeTBS (§7.2) that the leaf's signature covers.
// groupID and leafIndex are ignored for a key_package leaf. It returns nil
// if the leaf cannot be encoded.
func (ln *LeafNode) TBS(groupID []byte, leafIndex LeafIndex) []byte {
	out, err := ln.tbs(groupID, leafIndex)
	if err != nil {
		return nil
	}
	return out
}

// ParentNode is the content of an interior node of the ratchet tree (§7.1).
type ParentNode struct {
	EncryptionKey  []byte // HPKEPublicKey
	ParentHash     []byte
	UnmergedLeaves []LeafIndex
}

func (p *ParentNode) marshal(b *cryptobyte.Builder) {
	addOpaque(b, p.EncryptionKey)
	addOpaque(b, p.ParentHash)
	addUint32List(b, p.UnmergedLeaves)
}

func (p *ParentNode) unmarshal(s *cryptobyte.String) bool {
	return readOpaque(s, &p.EncryptionKey) &&
		readOpaque(s, &p.ParentHash) &&
		readUint32List(s, &p.UnmergedLeaves)
}

// Node is a non-blank node of the ratchet tree: exactly one of Leaf and
// Parent is set (§7.8).
type Node struct {
	Leaf   *LeafNode
	Parent *ParentNode
}

// kind names the node type for error messages.
func (n *Node) kind() string {
	switch {
	case n.Leaf != nil && n.Parent == nil:
		return "leaf"
	case n.Parent != nil && n.Leaf == nil:
		return "parent"
	}
	return "malformed"
}

func (n *Node) marshal(b *cryptobyte.Builder) {
	switch n.kind() {
	case "leaf":
		b.AddUint8(uint8(NodeTypeLeaf))
		n.Leaf.marshal(b)
	case "parent":
		b.AddUint8(uint8(NodeTypeParent))
		n.Parent.marshal(b)
	default:
		b.SetError(fmt.Errorf("mls: cannot encode Node: exactly one of Leaf and Parent must be set"))
	}
}

func (n *Node) unmarshal(s *cryptobyte.String) bool {
	*n = Node{}
	var t uint8
	if !s.ReadUint8(&t) {
		return false
	}
	switch NodeType(t) {
	case NodeTypeLeaf:
		n.Leaf = new(LeafNode)
		return n.Leaf.unmarshal(s)
	case NodeTypeParent:
		n.Parent = new(ParentNode)
		return n.Parent.unmarshal(s)
	}
	return false
}

// Sign sets ln.Signature to a signature with priv over the LeafNodeTBS for
// the given group and leaf (§7.2). groupID and leafIndex are ignored for a
// key_package leaf.
func (ln *LeafNode) Sign(cs CipherSuite, priv, groupID []byte, leafIndex LeafIndex) error {
	tbs, err := ln.tbs(groupID, leafIndex)
	if err != nil {
		return err
	}
	sig, err := cs.SignWithLabel(priv, "LeafNodeTBS", tbs)
	if err != nil {
		return err
	}
	ln.Signature = sig
	return nil
}

// VerifySignature checks ln.Signature against ln.SignatureKey over the
// LeafNodeTBS for the given group and leaf (§7.2). It returns an error
// wrapping ErrInvalidSignature if the signature is not valid.
func (ln *LeafNode) VerifySignature(cs CipherSuite, groupID []byte, leafIndex LeafIndex) error {
	tbs, err := ln.tbs(groupID, leafIndex)
	if err != nil {
		return err
	}
	return cs.VerifyWithLabel(ln.SignatureKey, "LeafNodeTBS", tbs, ln.Signature)
}
