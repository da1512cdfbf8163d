package mls

import (
	"bytes"
	"encoding/binary"
	"slices"

	"golang.org/x/crypto/cryptobyte"
)

// Tree hashes (§7.8). Every tnode caches the hash of its subtree; a change
// to the tree copies the changed path with the cache cleared, so only
// those nodes are hashed again.

// TreeHash returns the tree hash of the root of t (§7.8), the value of
// GroupContext.tree_hash. It returns nil only if a node cannot be encoded,
// which cannot happen for nodes decoded from the wire.
func (t *RatchetTree) TreeHash() []byte {
	return bytes.Clone(t.hashOf(t.root, t.rootIndex()))
}

// NodeTreeHash returns the tree hash of the subtree under node x, or nil if
// x is outside the tree.
func (t *RatchetTree) NodeTreeHash(x NodeIndex) []byte {
	h := t.at(x)
	if h == nil {
		return nil
	}
	return bytes.Clone(t.hashOf(h, x))
}

// hashOf returns the tree hash of the subtree h at index x, computing and
// caching it and any missing hashes below it.
func (t *RatchetTree) hashOf(h *tnode, x NodeIndex) []byte {
	if h.hash != nil {
		return h.hash
	}
	if x.isLeaf() {
		h.hash = t.leafHash(x.leaf(), h.leaf)
		return h.hash
	}
	l := t.hashOf(h.left, x.left())
	r := t.hashOf(h.right, x.right())
	if l == nil || r == nil {
		return nil
	}
	h.hash = t.parentNodeHash(h.parent, l, r)
	return h.hash
}

// leafHash hashes TreeHashInput{leaf, LeafNodeHashInput{i, ln}}; ln is nil
// for a blank leaf.
func (t *RatchetTree) leafHash(i LeafIndex, ln *LeafNode) []byte {
	b := cryptobyte.NewBuilder(make([]byte, 0, 512))
	b.AddUint8(uint8(NodeTypeLeaf))
	b.AddUint32(uint32(i))
	addOptional(b, ln != nil)
	if ln != nil {
		ln.marshal(b)
	}
	in, err := b.Bytes()
	if err != nil {
		return nil
	}
	return t.cs.Hash(in)
}

// parentNodeHash hashes TreeHashInput{parent, ParentNodeHashInput{p, l, r}};
// p is nil for a blank parent. It runs once per node on every changed
// path, so it encodes by hand into one buffer rather than through a
// cryptobyte.Builder.
func (t *RatchetTree) parentNodeHash(p *ParentNode, l, r []byte) []byte {
	var stack [320]byte
	buf := append(stack[:0], byte(NodeTypeParent))
	if p == nil {
		buf = append(buf, 0)
	} else {
		if len(p.EncryptionKey) > maxVarint || len(p.ParentHash) > maxVarint || len(p.UnmergedLeaves) > maxVarint/4 {
			return nil
		}
		buf = append(buf, 1)
		buf = appendOpaque(buf, p.EncryptionKey)
		buf = appendOpaque(buf, p.ParentHash)
		var v [4]byte
		buf = append(buf, putVarint(&v, 4*len(p.UnmergedLeaves))...)
		for _, u := range p.UnmergedLeaves {
			buf = binary.BigEndian.AppendUint32(buf, uint32(u))
		}
	}
	buf = appendOpaque(buf, l)
	buf = appendOpaque(buf, r)
	return t.cs.Hash(buf)
}

// originalHash returns the tree hash the subtree h at x would have if the
// leaves in removed were blank and absent from every unmerged_leaves list:
// the original_sibling_tree_hash of §7.9. A subtree that contains none of
// them keeps its cached hash, so this costs O(len(removed) * depth) hashes.
func (t *RatchetTree) originalHash(h *tnode, x NodeIndex, removed []LeafIndex) []byte {
	inside := leavesUnder(x, removed)
	if len(inside) == 0 {
		return t.hashOf(h, x)
	}
	if x.isLeaf() {
		return t.leafHash(x.leaf(), nil)
	}
	l := t.originalHash(h.left, x.left(), inside)
	r := t.originalHash(h.right, x.right(), inside)
	if l == nil || r == nil {
		return nil
	}
	return t.parentNodeHash(withoutUnmerged(h.parent, inside), l, r)
}

// leavesUnder returns the leaves of list that lie in the subtree at x.
func leavesUnder(x NodeIndex, list []LeafIndex) []LeafIndex {
	lo, hi := x.leafRange()
	var in []LeafIndex
	for _, l := range list {
		if l >= lo && l < hi {
			in = append(in, l)
		}
	}
	return in
}

// withoutUnmerged returns p, or a copy of it whose unmerged_leaves leave
// out the given leaves; nil stays nil.
func withoutUnmerged(p *ParentNode, leaves []LeafIndex) *ParentNode {
	if p == nil {
		return nil
	}
	q := *p
	q.UnmergedLeaves = slices.DeleteFunc(slices.Clone(p.UnmergedLeaves), func(u LeafIndex) bool {
		return slices.Contains(leaves, u)
	})
	return &q
}
