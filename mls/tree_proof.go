package mls

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"slices"

	"golang.org/x/crypto/cryptobyte"
)

// Partial trees with proofs.
//
// A member of a large group does not need the whole ratchet tree to send a
// Commit: it needs its direct path, its copath and the resolutions of
// those nodes. A TreeProof carries such a part of a tree together with the
// tree hashes (§7.8) of every subtree it leaves out, so that the receiver
// can recompute the root tree hash from what it received and compare it
// with the tree_hash of a GroupContext it already trusts. A server that
// changes, adds or drops a node cannot make the hashes match.
//
// The encoding is ours (RFC 9420 defines none for partial trees):
//
//	enum { pruned(0), blank(1), present(2), blank_subtree(3), (255) } ProofEntryType;
//
//	struct {
//	    ProofEntryType type;
//	    select (ProofEntry.type) {
//	        case pruned:        opaque tree_hash<V>;  // the subtree is left out
//	        case blank:         struct{};             // a blank node, shown
//	        case present:       Node node;            // a non-blank node, shown
//	        case blank_subtree: struct{};             // every node below is blank
//	    };
//	} ProofEntry;
//
//	struct {
//	    uint8 depth;                 // the tree has 2^depth leaves
//	    ProofEntry entries<V>;       // pre-order: node, left subtree, right subtree
//	} TreeProof;
//
// A shown (blank or present) parent entry is followed by the entries of its
// two subtrees; a pruned entry stands for its whole subtree. Every byte of
// the encoding either goes into the recomputed root hash or fixes the
// shape in which the rest is read, so changing any byte makes decoding or
// VerifyTreeProof fail.
//
// A blank_subtree entry shows a whole subtree in which every node is blank
// without listing its nodes and without a hash: the tree hash of such a
// subtree depends only on its position (§7.8 hashes a blank leaf as its
// leaf_index with an absent leaf_node, a blank parent as an absent
// parent_node over its children's hashes), so the verifier recomputes it,
// and a marker over a subtree that holds any non-blank node makes the root
// hash come out wrong. Resolutions of copath nodes over blank regions stop
// there. Recomputing costs the verifier one hash per covered node, which
// the bytes of the proof no longer bound, so VerifyTreeProof accepts at
// most maxBlankProofNodes covered nodes in one proof; a proof builder that
// would exceed that shows the remaining blank nodes one by one instead.
// (blank_subtree was added after the first three types; a decoder that
// does not know it rejects the proof rather than misreading it.)
//
// What the proof is about (which leaf's path) is not part of the
// encoding: the receiver names it when it reads the proof.

// ErrTreeProof is wrapped by every error VerifyTreeProof and the accessors
// of TreeProof return when a proof is malformed, does not match the
// expected tree hash, or does not show a node the caller asked for.
var ErrTreeProof = errors.New("mls: tree proof rejected")

type proofEntryType uint8

const (
	proofPruned  proofEntryType = 0
	proofBlank   proofEntryType = 1
	proofPresent proofEntryType = 2
	// proofBlankSubtree marks a subtree whose nodes are all blank.
	proofBlankSubtree proofEntryType = 3
)

// maxBlankProofNodes bounds the number of tree nodes the blank_subtree
// entries of one proof may cover, and so the hashing VerifyTreeProof does
// beyond what the size of the proof accounts for (about a million small
// hashes, well under a second). Only trees of more than half a million
// leaf positions reach it.
const maxBlankProofNodes = 1 << 20

// pnode is one entry of a TreeProof, linked into the tree shape.
type pnode struct {
	kind        proofEntryType
	hash        []byte // pruned: the subtree's tree hash
	node        *Node  // present: the node
	left, right *pnode // shown (blank or present) parents only
}

// TreeProof is a part of a ratchet tree with the subtree hashes that bind
// it to the tree hash of the whole tree. Build one on the side that has
// the tree with RatchetTree.PathProof or RatchetTree.LeavesProof; on the
// receiving side decode it with UnmarshalBinary, check it with
// VerifyTreeProof, and then read it with Path, Leaf and Leaves.
type TreeProof struct {
	depth    uint32
	root     *pnode
	verified []byte // the tree hash VerifyTreeProof accepted, nil before
}

// LeafCount returns the number of leaf positions of the tree the proof is
// part of.
func (p *TreeProof) LeafCount() uint32 { return 1 << p.depth }

// PathProof returns a proof that shows what leaf i needs to create a
// Commit or a Proposal: its own leaf, every node of its direct path and
// copath, and every node of their resolutions (§4.1.1), including the
// unmerged leaves of each non-blank parent among them. Blank nodes on the
// way to a resolution are shown as blank, a subtree in which every node is
// blank as one blank_subtree entry; every other subtree is pruned to its
// tree hash.
func (t *RatchetTree) PathProof(i LeafIndex) (*TreeProof, error) {
	if uint32(i) >= t.LeafCount() {
		return nil, fmt.Errorf("mls: leaf %d is outside the tree of %d leaves", i, t.LeafCount())
	}
	b := &proofBuilder{t: t, budget: maxBlankProofNodes}
	return &TreeProof{depth: t.depth, root: b.path(t.root, t.rootIndex(), i, nil)}, nil
}

// LeavesProof returns a proof that shows the given leaves (blank or not)
// and the nodes on their direct paths. With no leaves it shows every leaf
// of the tree: the roster.
func (t *RatchetTree) LeavesProof(leaves ...LeafIndex) (*TreeProof, error) {
	var want []LeafIndex
	if len(leaves) == 0 {
		want = make([]LeafIndex, t.LeafCount())
		for k := range want {
			want[k] = LeafIndex(k)
		}
	} else {
		for _, l := range leaves {
			if uint32(l) >= t.LeafCount() {
				return nil, fmt.Errorf("mls: leaf %d is outside the tree of %d leaves", l, t.LeafCount())
			}
		}
		want = slices.Clone(leaves)
		slices.Sort(want)
		want = slices.Compact(want)
	}
	b := &proofBuilder{t: t, budget: maxBlankProofNodes}
	return &TreeProof{depth: t.depth, root: b.leaves(t.root, t.rootIndex(), want)}, nil
}

// proofBuilder builds a proof top down, walking only the shown part of the
// tree and taking pruned hashes from the tree's hash cache. Sets of leaves
// are sorted slices, split between the children of each node.
type proofBuilder struct {
	t      *RatchetTree
	budget int // tree nodes that blank_subtree entries may still cover
}

// entry returns the shown entry of node h, without children.
func (b *proofBuilder) entry(h *tnode) *pnode {
	switch {
	case h.leaf != nil:
		return &pnode{kind: proofPresent, node: &Node{Leaf: h.leaf}}
	case h.parent != nil:
		return &pnode{kind: proofPresent, node: &Node{Parent: h.parent}}
	}
	return &pnode{kind: proofBlank}
}

// blankSubtree returns a blank_subtree entry for the all-blank subtree at
// x, or nil if it would exceed the budget.
func (b *proofBuilder) blankSubtree(x NodeIndex) *pnode {
	nodes := 2<<x.level() - 1
	if nodes > b.budget {
		return nil
	}
	b.budget -= nodes
	return &pnode{kind: proofBlankSubtree}
}

// split divides the sorted leaves under parent x between its children.
func split(want []LeafIndex, x NodeIndex) (l, r []LeafIndex) {
	lo, hi := x.leafRange()
	mid := lo + (hi-lo)/2
	k, _ := slices.BinarySearch(want, mid)
	return want[:k], want[k:]
}

// withUnmerged returns the sorted union of want and the unmerged leaves of
// h, keeping only leaves under x.
func withUnmerged(want []LeafIndex, h *tnode, x NodeIndex) []LeafIndex {
	if h.parent == nil || len(h.parent.UnmergedLeaves) == 0 {
		return want
	}
	out := slices.Clone(want)
	for _, u := range h.parent.UnmergedLeaves {
		if x.isAncestorOf(u.node()) {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// path shows x, an ancestor of leaf i (or i itself), with the resolution
// of the copath child and the leaves in want.
func (b *proofBuilder) path(h *tnode, x NodeIndex, i LeafIndex, want []LeafIndex) *pnode {
	p := b.entry(h)
	if x.isLeaf() {
		return p
	}
	want = withUnmerged(want, h, x)
	wl, wr := split(want, x)
	if i.node() < x {
		p.left, p.right = b.path(h.left, x.left(), i, wl), b.resolution(h.right, x.right(), wr)
	} else {
		p.left, p.right = b.resolution(h.left, x.left(), wl), b.path(h.right, x.right(), i, wr)
	}
	return p
}

// resolution shows the resolution of x (§4.1.1), the blank nodes above it,
// and the leaves in want.
func (b *proofBuilder) resolution(h *tnode, x NodeIndex, want []LeafIndex) *pnode {
	if h.filled == 0 {
		if p := b.blankSubtree(x); p != nil {
			return p
		}
	}
	p := b.entry(h)
	if x.isLeaf() {
		return p
	}
	if h.parent != nil {
		wl, wr := split(withUnmerged(want, h, x), x)
		p.left, p.right = b.leaves(h.left, x.left(), wl), b.leaves(h.right, x.right(), wr)
		return p
	}
	wl, wr := split(want, x)
	p.left, p.right = b.resolution(h.left, x.left(), wl), b.resolution(h.right, x.right(), wr)
	return p
}

// leaves shows the leaves in want and their ancestors under x, and prunes
// the rest. An all-blank subtree whose every leaf is wanted becomes one
// blank_subtree entry.
func (b *proofBuilder) leaves(h *tnode, x NodeIndex, want []LeafIndex) *pnode {
	if len(want) == 0 {
		return &pnode{kind: proofPruned, hash: bytes.Clone(b.t.hashOf(h, x))}
	}
	if h.filled == 0 && len(want) == 1<<x.level() {
		if p := b.blankSubtree(x); p != nil {
			return p
		}
	}
	p := b.entry(h)
	if x.isLeaf() {
		return p
	}
	wl, wr := split(want, x)
	p.left, p.right = b.leaves(h.left, x.left(), wl), b.leaves(h.right, x.right(), wr)
	return p
}

// blankTreeHash computes the tree hash (§7.8) of the subtree at x in which
// every node is blank, one hash per node; h is a hasher for the suite cs.
func blankTreeHash(cs CipherSuite, h *RatchetTree, x NodeIndex) []byte {
	if x.isLeaf() {
		// TreeHashInput{leaf, LeafNodeHashInput{leaf_index, absent}}
		var buf [6]byte
		buf[0] = byte(NodeTypeLeaf)
		binary.BigEndian.PutUint32(buf[1:5], uint32(x.leaf()))
		return cs.Hash(buf[:])
	}
	l := blankTreeHash(cs, h, x.left())
	r := blankTreeHash(cs, h, x.right())
	if l == nil || r == nil {
		return nil
	}
	return h.parentNodeHash(nil, l, r)
}

// VerifyTreeProof recomputes the root tree hash (§7.8) from the nodes and
// subtree hashes in p and checks that it equals treeHash, which the caller
// takes from a GroupContext it trusts. Only after it succeeds do Path,
// Leaf and Leaves return anything. The work is proportional to the size of
// the proof.
func VerifyTreeProof(cs CipherSuite, p *TreeProof, treeHash []byte) error {
	if err := cs.check(); err != nil {
		return err
	}
	if p == nil || p.root == nil {
		return fmt.Errorf("%w: empty proof", ErrTreeProof)
	}
	h := &RatchetTree{cs: cs}
	budget := maxBlankProofNodes
	var hashOf func(q *pnode, x NodeIndex) ([]byte, error)
	hashOf = func(q *pnode, x NodeIndex) ([]byte, error) {
		switch {
		case q.kind == proofBlankSubtree:
			if budget -= 2<<x.level() - 1; budget < 0 {
				return nil, fmt.Errorf("%w: the blank subtrees of the proof cover more than %d nodes", ErrTreeProof, maxBlankProofNodes)
			}
			if out := blankTreeHash(cs, h, x); out != nil {
				return out, nil
			}
		case q.kind == proofPruned:
			if len(q.hash) != cs.HashSize() {
				return nil, fmt.Errorf("%w: subtree hash at node %d has %d bytes, the suite's hash has %d", ErrTreeProof, x, len(q.hash), cs.HashSize())
			}
			return q.hash, nil
		case x.isLeaf() && q.node == nil:
			return blankTreeHash(cs, h, x), nil
		case x.isLeaf():
			if out := h.leafHash(x.leaf(), q.node.Leaf); out != nil {
				return out, nil
			}
		default:
			l, err := hashOf(q.left, x.left())
			if err != nil {
				return nil, err
			}
			r, err := hashOf(q.right, x.right())
			if err != nil {
				return nil, err
			}
			var pn *ParentNode
			if q.node != nil {
				pn = q.node.Parent
			}
			if out := h.parentNodeHash(pn, l, r); out != nil {
				return out, nil
			}
		}
		return nil, fmt.Errorf("%w: node %d cannot be encoded", ErrTreeProof, x)
	}
	got, err := hashOf(p.root, rootOf(p.LeafCount()))
	if err != nil {
		return err
	}
	if !bytes.Equal(got, treeHash) {
		return fmt.Errorf("%w: the nodes and hashes do not add up to the expected tree hash (§7.8)", ErrTreeProof)
	}
	p.verified = bytes.Clone(treeHash)
	return nil
}

// lookup returns the proof entry of node x, or nil if x lies in a pruned
// subtree or outside the tree. For a node inside a blank_subtree entry it
// returns that entry, whose node is nil: the node is shown and blank.
func (p *TreeProof) lookup(x NodeIndex) *pnode {
	if uint32(x) >= nodeWidth(p.LeafCount()) {
		return nil
	}
	q, cur := p.root, rootOf(p.LeafCount())
	for q.kind != proofPruned && q.kind != proofBlankSubtree && cur != x {
		if x < cur {
			q, cur = q.left, cur.left()
		} else {
			q, cur = q.right, cur.right()
		}
	}
	if q.kind == proofPruned {
		return nil
	}
	return q
}

func (p *TreeProof) checkVerified() error {
	if p.verified == nil {
		return fmt.Errorf("%w: call VerifyTreeProof before reading the proof", ErrTreeProof)
	}
	return nil
}

// Node returns node x and whether the proof shows it. A shown blank node
// is (nil, true).
func (p *TreeProof) Node(x NodeIndex) (*Node, bool) {
	if p.verified == nil {
		return nil, false
	}
	q := p.lookup(x)
	if q == nil {
		return nil, false
	}
	return q.node, true
}

// Leaf returns the leaf node at i, nil if the leaf is blank. It fails if
// the proof has not been verified or does not show leaf i.
func (p *TreeProof) Leaf(i LeafIndex) (*LeafNode, error) {
	if err := p.checkVerified(); err != nil {
		return nil, err
	}
	q := p.lookup(i.node())
	if q == nil {
		return nil, fmt.Errorf("%w: leaf %d is not shown", ErrTreeProof, i)
	}
	if q.node == nil {
		return nil, nil
	}
	return q.node.Leaf, nil
}

// Leaves iterates over the non-blank leaves the proof shows, in index
// order. It yields nothing before VerifyTreeProof has succeeded.
func (p *TreeProof) Leaves() iter.Seq2[LeafIndex, *LeafNode] {
	return func(yield func(LeafIndex, *LeafNode) bool) {
		if p.verified == nil {
			return
		}
		var walk func(q *pnode, x NodeIndex) bool
		walk = func(q *pnode, x NodeIndex) bool {
			switch {
			case q.kind == proofPruned, q.kind == proofBlankSubtree:
				return true
			case x.isLeaf():
				return q.node == nil || yield(x.leaf(), q.node.Leaf)
			}
			return walk(q.left, x.left()) && walk(q.right, x.right())
		}
		walk(p.root, rootOf(p.LeafCount()))
	}
}

// ResolvedNode is one node of a resolution: a non-blank node and its index.
type ResolvedNode struct {
	Index NodeIndex
	Node  *Node
}

// PathNode is a node of a direct path or copath with its resolution
// (§4.1.1). Node is nil for a blank node.
type PathNode struct {
	Index      NodeIndex
	Node       *Node
	Resolution []ResolvedNode
}

// TreePath is what a member at Leaf needs from the tree to create a Commit
// or a Proposal. DirectPath runs from the leaf's parent to the root;
// Copath[k] is the sibling of the leaf (k = 0) or of DirectPath[k-1], so
// DirectPath[k] is the parent of Copath[k].
type TreePath struct {
	Leaf       LeafIndex
	LeafNode   *LeafNode
	DirectPath []PathNode
	Copath     []PathNode
}

// FilteredDirectPath returns the nodes of the filtered direct path
// (§4.1.2): the direct path without the nodes whose copath child has an
// empty resolution.
func (tp *TreePath) FilteredDirectPath() []PathNode {
	var out []PathNode
	for k, d := range tp.DirectPath {
		if len(tp.Copath[k].Resolution) > 0 {
			out = append(out, d)
		}
	}
	return out
}

// Path reads the direct path and copath of leaf i, with their resolutions,
// from a verified proof. It fails if the proof leaves out any node these
// need, as a proof built by PathProof for another leaf may.
func (p *TreeProof) Path(i LeafIndex) (*TreePath, error) {
	if err := p.checkVerified(); err != nil {
		return nil, err
	}
	n := p.LeafCount()
	if uint32(i) >= n {
		return nil, fmt.Errorf("%w: leaf %d is outside the tree of %d leaves", ErrTreeProof, i, n)
	}
	ln, err := p.Leaf(i)
	if err != nil {
		return nil, err
	}
	tp := &TreePath{Leaf: i, LeafNode: ln}
	pathNode := func(x NodeIndex) (PathNode, error) {
		res, err := p.resolution(x)
		if err != nil {
			return PathNode{}, err
		}
		return PathNode{Index: x, Node: p.lookup(x).node, Resolution: res}, nil
	}
	for _, x := range i.node().directPath(n) {
		pn, err := pathNode(x)
		if err != nil {
			return nil, err
		}
		tp.DirectPath = append(tp.DirectPath, pn)
	}
	for _, x := range i.node().copath(n) {
		pn, err := pathNode(x)
		if err != nil {
			return nil, err
		}
		tp.Copath = append(tp.Copath, pn)
	}
	return tp, nil
}

// resolution computes the resolution of x (§4.1.1) from the shown nodes.
func (p *TreeProof) resolution(x NodeIndex) ([]ResolvedNode, error) {
	var out []ResolvedNode
	var walk func(x NodeIndex) error
	walk = func(x NodeIndex) error {
		q := p.lookup(x)
		if q == nil {
			return fmt.Errorf("%w: node %d is needed for a resolution but not shown", ErrTreeProof, x)
		}
		switch {
		case q.kind == proofBlankSubtree:
			return nil // all blank below x: an empty resolution
		case q.node != nil:
			out = append(out, ResolvedNode{Index: x, Node: q.node})
			if q.node.Parent != nil {
				for _, u := range q.node.Parent.UnmergedLeaves {
					ln, err := p.Leaf(u)
					if err != nil {
						return err
					}
					if ln == nil || !x.isAncestorOf(u.node()) {
						return fmt.Errorf("%w: unmerged leaf %d of node %d is blank or not below it", ErrTreeProof, u, x)
					}
					out = append(out, ResolvedNode{Index: u.node(), Node: &Node{Leaf: ln}})
				}
			}
			return nil
		case x.isLeaf():
			return nil
		}
		if err := walk(x.left()); err != nil {
			return err
		}
		return walk(x.right())
	}
	if err := walk(x); err != nil {
		return nil, err
	}
	return out, nil
}

// MarshalBinary encodes p as a TreeProof.
func (p *TreeProof) MarshalBinary() ([]byte, error) { return encode(p) }

// UnmarshalBinary decodes a TreeProof. It checks the shape (every shown
// parent is followed by both subtrees, node types match their positions,
// blank_subtree entries cover at most maxBlankProofNodes nodes) but not
// the hashes: call VerifyTreeProof next.
func (p *TreeProof) UnmarshalBinary(data []byte) error {
	return decode(data, "TreeProof", p.unmarshal)
}

func (p *TreeProof) marshal(b *cryptobyte.Builder) {
	if p.root == nil {
		b.SetError(errors.New("mls: cannot encode an empty TreeProof"))
		return
	}
	b.AddUint8(uint8(p.depth))
	addVector(b, func(b *cryptobyte.Builder) {
		var walk func(q *pnode)
		walk = func(q *pnode) {
			b.AddUint8(uint8(q.kind))
			switch q.kind {
			case proofPruned:
				addOpaque(b, q.hash)
				return
			case proofPresent:
				q.node.marshal(b)
			}
			if q.left != nil {
				walk(q.left)
				walk(q.right)
			}
		}
		walk(p.root)
	})
}

func (p *TreeProof) unmarshal(s *cryptobyte.String) bool {
	*p = TreeProof{}
	var depth uint8
	var body cryptobyte.String
	if !s.ReadUint8(&depth) || uint32(depth) > maxTreeDepth || !readVector(s, &body) {
		return false
	}
	// The recursion is at most depth+1 <= 31 deep; every entry consumes
	// at least one byte, so the work is bounded by the input size.
	covered := 0
	var read func(x NodeIndex) *pnode
	read = func(x NodeIndex) *pnode {
		var kind uint8
		if !body.ReadUint8(&kind) {
			return nil
		}
		q := &pnode{kind: proofEntryType(kind)}
		switch q.kind {
		case proofPruned:
			if !readOpaque(&body, &q.hash) {
				return nil
			}
			return q
		case proofBlankSubtree:
			// Bound what the entries cover here already, so that no
			// consumer expands or hashes more than that.
			if covered += 2<<x.level() - 1; covered > maxBlankProofNodes {
				return nil
			}
			return q
		case proofBlank:
		case proofPresent:
			q.node = new(Node)
			if !q.node.unmarshal(&body) || (q.node.Leaf != nil) != x.isLeaf() {
				return nil
			}
		default:
			return nil
		}
		if !x.isLeaf() {
			if q.left = read(x.left()); q.left == nil {
				return nil
			}
			if q.right = read(x.right()); q.right == nil {
				return nil
			}
		}
		return q
	}
	root := read(rootOf(1 << depth))
	if root == nil || !body.Empty() {
		return false
	}
	p.depth, p.root = uint32(depth), root
	return true
}

// shownNodes lists the indices of the nodes p shows, in array order; tests
// use it to compare proofs.
func (p *TreeProof) shownNodes() []NodeIndex {
	var out []NodeIndex
	var walk func(q *pnode, x NodeIndex)
	walk = func(q *pnode, x NodeIndex) {
		switch q.kind {
		case proofPruned:
			return
		case proofBlankSubtree:
			lo, hi := x.leafRange()
			for y := 2 * uint32(lo); y < 2*uint32(hi)-1; y++ {
				out = append(out, NodeIndex(y))
			}
			return
		}
		out = append(out, x)
		if !x.isLeaf() {
			walk(q.left, x.left())
			walk(q.right, x.right())
		}
	}
	walk(p.root, rootOf(p.LeafCount()))
	slices.Sort(out)
	return out
}
