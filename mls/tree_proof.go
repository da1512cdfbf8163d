package mls

import (
	"bytes"
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
//	enum { pruned(0), blank(1), present(2), (255) } ProofEntryType;
//
//	struct {
//	    ProofEntryType type;
//	    select (ProofEntry.type) {
//	        case pruned:  opaque tree_hash<V>;  // the subtree is left out
//	        case blank:   struct{};             // a blank node, shown
//	        case present: Node node;            // a non-blank node, shown
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
// VerifyTreeProof fail. What the proof is about (which leaf's path) is not
// part of the encoding: the receiver names it when it reads the proof.

// ErrTreeProof is wrapped by every error VerifyTreeProof and the accessors
// of TreeProof return when a proof is malformed, does not match the
// expected tree hash, or does not show a node the caller asked for.
var ErrTreeProof = errors.New("mls: tree proof rejected")

type proofEntryType uint8

const (
	proofPruned  proofEntryType = 0
	proofBlank   proofEntryType = 1
	proofPresent proofEntryType = 2
)

// pnode is one entry of a TreeProof, linked into the tree shape.
type pnode struct {
	kind        proofEntryType
	hash        []byte // pruned: the subtree's tree hash
	node        *Node  // present: the node
	left, right *pnode // shown parents only
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
// way to a resolution are shown as blank; every other subtree is pruned
// to its tree hash.
func (t *RatchetTree) PathProof(i LeafIndex) (*TreeProof, error) {
	if uint32(i) >= t.LeafCount() {
		return nil, fmt.Errorf("mls: leaf %d is outside the tree of %d leaves", i, t.LeafCount())
	}
	n := t.LeafCount()
	need := map[NodeIndex]bool{i.node(): true}
	var frontier func(x NodeIndex)
	frontier = func(x NodeIndex) {
		need[x] = true
		h := t.at(x)
		switch {
		case h.parent != nil:
			for _, u := range h.parent.UnmergedLeaves {
				need[u.node()] = true
			}
		case h.leaf == nil && !x.isLeaf():
			frontier(x.left())
			frontier(x.right())
		}
	}
	for _, x := range i.node().directPath(n) {
		need[x] = true
		if p := t.at(x).parent; p != nil {
			for _, u := range p.UnmergedLeaves {
				need[u.node()] = true
			}
		}
	}
	for _, x := range i.node().copath(n) {
		frontier(x)
	}
	return t.proofFor(need), nil
}

// LeavesProof returns a proof that shows the given leaves (blank or not)
// and the nodes on their direct paths. With no leaves it shows every leaf
// of the tree: the roster.
func (t *RatchetTree) LeavesProof(leaves ...LeafIndex) (*TreeProof, error) {
	need := make(map[NodeIndex]bool, len(leaves))
	if len(leaves) == 0 {
		for x := NodeIndex(0); uint32(x) < t.width(); x += 2 {
			need[x] = true
		}
	}
	for _, l := range leaves {
		if uint32(l) >= t.LeafCount() {
			return nil, fmt.Errorf("mls: leaf %d is outside the tree of %d leaves", l, t.LeafCount())
		}
		need[l.node()] = true
	}
	return t.proofFor(need), nil
}

// proofFor builds the proof that shows the nodes in need and all their
// ancestors, and prunes every other subtree to its hash.
func (t *RatchetTree) proofFor(need map[NodeIndex]bool) *TreeProof {
	n := t.LeafCount()
	show := make(map[NodeIndex]bool, len(need)*2)
	for x := range need {
		show[x] = true
		for _, a := range x.directPath(n) {
			if show[a] {
				break
			}
			show[a] = true
		}
	}
	var build func(h *tnode, x NodeIndex) *pnode
	build = func(h *tnode, x NodeIndex) *pnode {
		if !show[x] {
			return &pnode{kind: proofPruned, hash: bytes.Clone(t.hashOf(h, x))}
		}
		p := &pnode{kind: proofBlank}
		switch {
		case h.leaf != nil:
			p.kind, p.node = proofPresent, &Node{Leaf: h.leaf}
		case h.parent != nil:
			p.kind, p.node = proofPresent, &Node{Parent: h.parent}
		}
		if !x.isLeaf() {
			p.left, p.right = build(h.left, x.left()), build(h.right, x.right())
		}
		return p
	}
	return &TreeProof{depth: t.depth, root: build(t.root, t.rootIndex())}
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
	var hashOf func(q *pnode, x NodeIndex) ([]byte, error)
	hashOf = func(q *pnode, x NodeIndex) ([]byte, error) {
		switch {
		case q.kind == proofPruned:
			if len(q.hash) != cs.HashSize() {
				return nil, fmt.Errorf("%w: subtree hash at node %d has %d bytes, the suite's hash has %d", ErrTreeProof, x, len(q.hash), cs.HashSize())
			}
			return q.hash, nil
		case x.isLeaf():
			var ln *LeafNode
			if q.node != nil {
				ln = q.node.Leaf
			}
			if out := h.leafHash(x.leaf(), ln); out != nil {
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
// subtree or outside the tree.
func (p *TreeProof) lookup(x NodeIndex) *pnode {
	if uint32(x) >= nodeWidth(p.LeafCount()) {
		return nil
	}
	q, cur := p.root, rootOf(p.LeafCount())
	for q.kind != proofPruned && cur != x {
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
			case q.kind == proofPruned:
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
// parent is followed by both subtrees, node types match their positions)
// but not the hashes: call VerifyTreeProof next.
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
		if q.kind == proofPruned {
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
