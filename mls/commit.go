package mls

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Commit applies a set of proposals and, optionally, refreshes the
// committer's path in the tree (§12.4).
type Commit struct {
	Proposals []ProposalOrRef
	Path      *UpdatePath // nil when absent
}

func (c *Commit) marshal(b *cryptobyte.Builder) {
	for i := range c.Proposals {
		if p := c.Proposals[i].Proposal; p != nil && c.Proposals[i].Type == ProposalOrRefTypeProposal &&
			!knownProposalType(p.ProposalType) && i != len(c.Proposals)-1 {
			// See Proposal: only the last entry can have an unknown type.
			b.SetError(fmt.Errorf("mls: cannot encode Commit: proposal %d has unknown type %d and is not the last one", i, p.ProposalType))
			return
		}
	}
	addStructList(b, c.Proposals)
	addOptional(b, c.Path != nil)
	if c.Path != nil {
		c.Path.marshal(b)
	}
}

func (c *Commit) unmarshal(s *cryptobyte.String) bool {
	*c = Commit{}
	var present bool
	if !readStructList(s, &c.Proposals) || !readOptional(s, &present) {
		return false
	}
	if present {
		c.Path = new(UpdatePath)
		return c.Path.unmarshal(s)
	}
	return true
}

// MarshalBinary returns the TLS encoding of c.
func (c *Commit) MarshalBinary() ([]byte, error) { return encode(c) }

// UnmarshalBinary decodes a Commit, rejecting trailing bytes.
func (c *Commit) UnmarshalBinary(data []byte) error {
	return decode(data, "Commit", c.unmarshal)
}

// UpdatePath carries the committer's new leaf and the new public keys of
// its filtered direct path, with the path secrets encrypted to the
// resolution of each copath node (§7.6).
type UpdatePath struct {
	LeafNode LeafNode
	Nodes    []UpdatePathNode
}

func (u *UpdatePath) marshal(b *cryptobyte.Builder) {
	u.LeafNode.marshal(b)
	addStructList(b, u.Nodes)
}

func (u *UpdatePath) unmarshal(s *cryptobyte.String) bool {
	return u.LeafNode.unmarshal(s) && readStructList(s, &u.Nodes)
}

// UpdatePathNode is one node of an UpdatePath (§7.6).
type UpdatePathNode struct {
	EncryptionKey       []byte // HPKEPublicKey
	EncryptedPathSecret []HPKECiphertext
}

func (u *UpdatePathNode) marshal(b *cryptobyte.Builder) {
	addOpaque(b, u.EncryptionKey)
	addStructList(b, u.EncryptedPathSecret)
}

func (u *UpdatePathNode) unmarshal(s *cryptobyte.String) bool {
	return readOpaque(s, &u.EncryptionKey) && readStructList(s, &u.EncryptedPathSecret)
}

// HPKECiphertext is the output of an HPKE encryption (§7.6).
type HPKECiphertext struct {
	KEMOutput  []byte
	Ciphertext []byte
}

func (c *HPKECiphertext) marshal(b *cryptobyte.Builder) {
	addOpaque(b, c.KEMOutput)
	addOpaque(b, c.Ciphertext)
}

func (c *HPKECiphertext) unmarshal(s *cryptobyte.String) bool {
	return readOpaque(s, &c.KEMOutput) && readOpaque(s, &c.Ciphertext)
}
