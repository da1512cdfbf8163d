package mls

import (
	"bytes"
	"fmt"
	"iter"
	"slices"
)

// RatchetTree is the public state of a group's ratchet tree (§4, §7): the
// leaf and parent nodes every member agrees on, without private keys.
//
// The tree is a persistent (immutable-node) binary tree. Every change
// copies only the nodes on one leaf's direct path, so Clone is O(1) and
// the clone and the original never affect each other: a state machine can
// apply a Commit to a clone and drop it if the Commit turns out invalid.
// Each node caches its tree hash (§7.8); a change clears the cache on
// exactly the copied path, so TreeHash after a change costs O(log n)
// hashes, not O(n).
//
// The tree keeps the *LeafNode and *ParentNode values it is given or
// decodes, and returns them from its accessors; they must not be modified
// afterwards. To change a node, use the methods of RatchetTree.
//
// Create a tree with NewRatchetTree or UnmarshalRatchetTree; the zero
// value is not usable. A RatchetTree is not safe for concurrent use, but
// separate clones may be used from separate goroutines.
type RatchetTree struct {
	cs    CipherSuite
	root  *tnode
	depth uint32 // the tree has 1<<depth leaves (§4.1: always a full tree)
}

// tnode is one node of the tree. A tnode reachable from a tree that has
// been cloned is shared and never modified again, except that its hash is
// filled in; Clone fills in all hashes first, so shared tnodes are
// effectively read-only.
type tnode struct {
	leaf        *LeafNode   // non-nil only for a non-blank leaf
	parent      *ParentNode // non-nil only for a non-blank parent
	left, right *tnode      // children; nil at leaf positions
	hash        []byte      // tree hash of this subtree, nil until computed
	members     uint32      // non-blank leaves in this subtree
	filled      uint32      // non-blank nodes (leaves and parents) in this subtree
}

func (h *tnode) blank() bool { return h.leaf == nil && h.parent == nil }

// encryptionKey returns the HPKE public key of h, or nil if h is blank.
func (h *tnode) encryptionKey() []byte {
	switch {
	case h.leaf != nil:
		return h.leaf.EncryptionKey
	case h.parent != nil:
		return h.parent.EncryptionKey
	}
	return nil
}

// fix recomputes h's counters from its content and its children, and
// clears its cached hash.
func (h *tnode) fix() {
	h.hash = nil
	h.members, h.filled = 0, 0
	if h.leaf != nil {
		h.members, h.filled = 1, 1
	}
	if h.parent != nil {
		h.filled = 1
	}
	if h.left != nil {
		h.members += h.left.members + h.right.members
		h.filled += h.left.filled + h.right.filled
	}
}

// Rules reported in *ValidationError values by this file and by
// parent_hash.go. Tests and callers can compare Rule against them.
const (
	ruleTreeEmpty         = "ratchet_tree has no nodes"
	ruleTreeTrailingBlank = "ratchet_tree must not end in a blank node"
	ruleTreeNodeType      = "ratchet_tree node type does not match its position (leaves at even indices, parents at odd)"
	ruleTreeTooLarge      = "ratchet_tree has more nodes than a tree can hold"
	ruleLeafIndex         = "leaf index is outside the tree"
	ruleRemoveBlank       = "Remove must name a non-blank leaf"
	ruleUpdateBlank       = "Update sender's leaf must be non-blank"
	ruleUnmergedLeaf      = "unmerged_leaves entry must be a non-blank leaf below the parent node"
	ruleUnmergedChain     = "every non-blank node between an unmerged leaf and its parent node must list the leaf as unmerged"
	ruleEncKeyUnique      = "encryption keys must be unique across the tree"
	ruleSigKeyUnique      = "signature keys must be unique among the members"
	ruleLeafSignature     = "leaf node signature must verify"
	ruleParentHashValid   = "non-blank parent node must be parent-hash valid"
	rulePathLength        = "UpdatePath must have one node per node of the sender's filtered direct path"
	rulePathLeafHash      = "UpdatePath leaf node parent_hash must match the parent hash computed from the tree"
	ruleTreeEncode        = "tree node cannot be encoded"
)

// maxTreeDepth bounds the depth so that node indices fit in a uint32.
const maxTreeDepth = 30

// NewRatchetTree builds a tree from the node list of a ratchet_tree
// extension (§12.4.3.3): nodes in array order (Appendix C), nil for a
// blank node. The list must not be empty or end in a blank node, and each
// node must have the type its position calls for; the tree is then padded
// with blank nodes to the next full width (2^(d+1)-1 nodes).
//
// NewRatchetTree checks only the shape. Call Verify before trusting a tree
// received from someone else, and compare TreeHash with the GroupContext.
// The tree keeps the LeafNode and ParentNode values of nodes.
func NewRatchetTree(cs CipherSuite, nodes []*Node) (*RatchetTree, error) {
	if err := cs.check(); err != nil {
		return nil, err
	}
	if len(nodes) == 0 {
		return nil, invalid("12.4.3.3", ruleTreeEmpty)
	}
	if nodes[len(nodes)-1] == nil {
		return nil, invalid("12.4.3.3", ruleTreeTrailingBlank)
	}
	if len(nodes) > int(nodeWidth(1<<maxTreeDepth)) {
		return nil, invalid("12.4.3.3", ruleTreeTooLarge)
	}
	for i, n := range nodes {
		if n == nil {
			continue
		}
		leafPos := i%2 == 0
		if leafPos && (n.Leaf == nil || n.Parent != nil) || !leafPos && (n.Parent == nil || n.Leaf != nil) {
			return nil, &ValidationError{Rule: ruleTreeNodeType, Section: "12.4.3.3",
				Err: fmt.Errorf("node %d is a %s node", i, n.kind())}
		}
	}
	depth := uint32(0)
	for int(nodeWidth(1<<depth)) < len(nodes) {
		depth++
	}
	var build func(x NodeIndex) *tnode
	build = func(x NodeIndex) *tnode {
		h := new(tnode)
		if int(x) < len(nodes) && nodes[x] != nil {
			h.leaf, h.parent = nodes[x].Leaf, nodes[x].Parent
		}
		if !x.isLeaf() {
			h.left, h.right = build(x.left()), build(x.right())
		}
		h.fix()
		return h
	}
	return &RatchetTree{cs: cs, root: build(rootOf(1 << depth)), depth: depth}, nil
}

// UnmarshalRatchetTree decodes the extension_data of a ratchet_tree
// extension (§12.4.3.3) and builds the tree as NewRatchetTree does.
func UnmarshalRatchetTree(cs CipherSuite, data []byte) (*RatchetTree, error) {
	var ext RatchetTreeExtension
	if err := ext.UnmarshalBinary(data); err != nil {
		return nil, err
	}
	return NewRatchetTree(cs, ext.Nodes)
}

// MarshalBinary returns the extension_data of a ratchet_tree extension
// carrying t, without trailing blank nodes (§12.4.3.3). It fails if every
// node of t is blank.
func (t *RatchetTree) MarshalBinary() ([]byte, error) {
	return encode(&RatchetTreeExtension{Nodes: t.Nodes()})
}

// Nodes returns the nodes of t in array order (Appendix C), nil for a blank
// node, without trailing blank nodes: the list a ratchet_tree extension
// carries. The LeafNode and ParentNode values are shared with t.
func (t *RatchetTree) Nodes() []*Node {
	out := make([]*Node, t.width())
	for x, h := range t.all() {
		switch {
		case h.leaf != nil:
			out[x] = &Node{Leaf: h.leaf}
		case h.parent != nil:
			out[x] = &Node{Parent: h.parent}
		}
	}
	end := len(out)
	for end > 0 && out[end-1] == nil {
		end--
	}
	return out[:end]
}

// all iterates over the non-blank nodes of t in array order, skipping
// all-blank subtrees.
func (t *RatchetTree) all() iter.Seq2[NodeIndex, *tnode] {
	return t.subtree(t.root, t.rootIndex())
}

// subtree iterates over the non-blank nodes of the subtree h at index top,
// in array order.
func (t *RatchetTree) subtree(top *tnode, topIndex NodeIndex) iter.Seq2[NodeIndex, *tnode] {
	return func(yield func(NodeIndex, *tnode) bool) {
		var walk func(h *tnode, x NodeIndex) bool
		walk = func(h *tnode, x NodeIndex) bool {
			if h.filled == 0 {
				return true
			}
			if x.isLeaf() {
				return yield(x, h)
			}
			if !walk(h.left, x.left()) {
				return false
			}
			if h.parent != nil && !yield(x, h) {
				return false
			}
			return walk(h.right, x.right())
		}
		walk(top, topIndex)
	}
}

// Leaves iterates over the non-blank leaves of t in index order.
func (t *RatchetTree) Leaves() iter.Seq2[LeafIndex, *LeafNode] {
	return func(yield func(LeafIndex, *LeafNode) bool) {
		for x, h := range t.all() {
			if h.leaf != nil && !yield(x.leaf(), h.leaf) {
				return
			}
		}
	}
}

// CipherSuite returns the suite whose hash the tree uses.
func (t *RatchetTree) CipherSuite() CipherSuite { return t.cs }

// LeafCount returns the number of leaf positions of t, blank or not: a
// power of two.
func (t *RatchetTree) LeafCount() uint32 { return 1 << t.depth }

// MemberCount returns the number of non-blank leaves of t.
func (t *RatchetTree) MemberCount() uint32 { return t.root.members }

func (t *RatchetTree) width() uint32        { return nodeWidth(1 << t.depth) }
func (t *RatchetTree) rootIndex() NodeIndex { return rootOf(1 << t.depth) }

// at returns the tnode at index x, or nil if x is outside the tree.
func (t *RatchetTree) at(x NodeIndex) *tnode {
	if uint32(x) >= t.width() {
		return nil
	}
	h, cur := t.root, t.rootIndex()
	for cur != x {
		if x < cur {
			h, cur = h.left, cur.left()
		} else {
			h, cur = h.right, cur.right()
		}
	}
	return h
}

// Leaf returns the leaf node at i, or nil if it is blank or outside the tree.
func (t *RatchetTree) Leaf(i LeafIndex) *LeafNode {
	if uint32(i) >= t.LeafCount() {
		return nil
	}
	return t.at(i.node()).leaf
}

// Parent returns the parent node at x, or nil if it is blank, not a parent
// position, or outside the tree.
func (t *RatchetTree) Parent(x NodeIndex) *ParentNode {
	if x.isLeaf() {
		return nil
	}
	if h := t.at(x); h != nil {
		return h.parent
	}
	return nil
}

// IsBlank reports whether node x is blank. Nodes outside the tree count as
// blank.
func (t *RatchetTree) IsBlank(x NodeIndex) bool {
	h := t.at(x)
	return h == nil || h.blank()
}

// EncryptionKey returns the HPKE public key of node x, or nil if x is blank.
func (t *RatchetTree) EncryptionKey(x NodeIndex) []byte {
	if h := t.at(x); h != nil {
		return h.encryptionKey()
	}
	return nil
}

// Resolution returns the resolution of node x (§4.1.1): the non-blank nodes
// that together cover the subtree under x, each non-blank node followed by
// its unmerged leaves (as node indices), left to right. It returns nil for
// a node outside the tree.
func (t *RatchetTree) Resolution(x NodeIndex) []NodeIndex {
	h := t.at(x)
	if h == nil {
		return nil
	}
	return appendResolution(nil, h, x)
}

func appendResolution(out []NodeIndex, h *tnode, x NodeIndex) []NodeIndex {
	switch {
	case h.filled == 0:
		return out
	case h.leaf != nil:
		return append(out, x)
	case h.parent != nil:
		out = append(out, x)
		for _, l := range h.parent.UnmergedLeaves {
			out = append(out, l.node())
		}
		return out
	case x.isLeaf():
		return out
	}
	out = appendResolution(out, h.left, x.left())
	return appendResolution(out, h.right, x.right())
}

// DirectPath returns the direct path of leaf i, from its parent to the
// root (§4.1.2), or nil if i is outside the tree.
func (t *RatchetTree) DirectPath(i LeafIndex) []NodeIndex {
	if uint32(i) >= t.LeafCount() {
		return nil
	}
	return i.node().directPath(t.LeafCount())
}

// Copath returns the copath of leaf i, bottom up (§4.1.2), or nil if i is
// outside the tree.
func (t *RatchetTree) Copath(i LeafIndex) []NodeIndex {
	if uint32(i) >= t.LeafCount() {
		return nil
	}
	return i.node().copath(t.LeafCount())
}

// pathStep is a node of a filtered direct path with its copath child.
type pathStep struct {
	node     NodeIndex
	sibling  NodeIndex // the child of node that is not on the path
	sibNode  *tnode
	pathNode *tnode
}

// filteredPath returns the filtered direct path of leaf i (§4.1.2), bottom
// up: the direct path without the nodes whose copath child has an empty
// resolution. i must be inside the tree.
func (t *RatchetTree) filteredPath(i LeafIndex) []pathStep {
	target := i.node()
	steps := make([]pathStep, 0, t.depth)
	h, cur := t.root, t.rootIndex()
	for cur != target {
		next, nextIdx, sib, sibIdx := h.left, cur.left(), h.right, cur.right()
		if target > cur {
			next, nextIdx, sib, sibIdx = sib, sibIdx, next, nextIdx
		}
		if sib.filled > 0 {
			steps = append(steps, pathStep{node: cur, sibling: sibIdx, sibNode: sib, pathNode: h})
		}
		h, cur = next, nextIdx
	}
	slices.Reverse(steps)
	return steps
}

// FilteredDirectPath returns the filtered direct path of leaf i (§4.1.2),
// from the leaf's side up, or nil if i is outside the tree.
func (t *RatchetTree) FilteredDirectPath(i LeafIndex) []NodeIndex {
	if uint32(i) >= t.LeafCount() {
		return nil
	}
	steps := t.filteredPath(i)
	out := make([]NodeIndex, len(steps))
	for k, s := range steps {
		out[k] = s.node
	}
	return out
}

// editPath replaces every node on the path from the root down to leaf i by
// a copy, lets edit change each copy (root first, leaf last), and then
// recomputes the counters and clears the cached hashes along the path. The
// old nodes are left untouched, so clones sharing them are not affected.
func (t *RatchetTree) editPath(i LeafIndex, edit func(x NodeIndex, h *tnode)) {
	target := i.node()
	path := make([]*tnode, 0, t.depth+1)
	h, cur := t.root, t.rootIndex()
	var up *tnode
	for {
		c := new(tnode)
		*c = *h
		switch {
		case up == nil:
			t.root = c
		case up.left == h:
			up.left = c
		default:
			up.right = c
		}
		edit(cur, c)
		path = append(path, c)
		if cur == target {
			break
		}
		up = c
		if target < cur {
			h, cur = h.left, cur.left()
		} else {
			h, cur = h.right, cur.right()
		}
	}
	for k := len(path) - 1; k >= 0; k-- {
		path[k].fix()
	}
}

// extend doubles the tree: the old tree becomes the left subtree of a new
// blank root, with an all-blank right subtree (§7.7).
func (t *RatchetTree) extend() {
	var blankTree func(level uint32) *tnode
	blankTree = func(level uint32) *tnode {
		h := new(tnode)
		if level > 0 {
			h.left, h.right = blankTree(level-1), blankTree(level-1)
		}
		return h
	}
	root := &tnode{left: t.root, right: blankTree(t.depth)}
	root.fix()
	t.root = root
	t.depth++
}

// truncate halves the tree while the right subtree holds no member (§7.7,
// §12.1.3). The new root is the old root's left child, whose cached hash
// stays valid.
func (t *RatchetTree) truncate() {
	for t.depth > 0 && t.root.right.members == 0 {
		t.root = t.root.left
		t.depth--
	}
}

// AddLeaf places ln at the leftmost blank leaf, extending the tree if there
// is none, and adds its index to the unmerged_leaves of every non-blank
// parent on its direct path (§7.7, §12.1.1). It returns the new leaf's
// index. The tree keeps ln. AddLeaf costs O(log n), except that doubling
// the tree creates, and the next TreeHash hashes, n blank nodes: O(1) per
// added member over time.
func (t *RatchetTree) AddLeaf(ln *LeafNode) LeafIndex {
	if t.root.members == t.LeafCount() {
		t.extend()
	}
	// Descend towards the leftmost subtree that still has a blank leaf.
	h, cur := t.root, t.rootIndex()
	for !cur.isLeaf() {
		half := uint32(1) << (cur.level() - 1)
		if h.left.members < half {
			h, cur = h.left, cur.left()
		} else {
			h, cur = h.right, cur.right()
		}
	}
	i := cur.leaf()
	t.editPath(i, func(x NodeIndex, c *tnode) {
		if x.isLeaf() {
			c.leaf = ln
			return
		}
		if c.parent != nil {
			p := *c.parent
			p.UnmergedLeaves = append(slices.Clip(p.UnmergedLeaves), i)
			c.parent = &p
		}
	})
	return i
}

// UpdateLeaf replaces the leaf at i, which must be non-blank, with ln and
// blanks the parents on its direct path, as an Update proposal does
// (§12.1.2). The tree keeps ln.
func (t *RatchetTree) UpdateLeaf(i LeafIndex, ln *LeafNode) error {
	if uint32(i) >= t.LeafCount() {
		return &ValidationError{Rule: ruleLeafIndex, Section: "12.1.2", Err: fmt.Errorf("leaf %d, tree has %d leaves", i, t.LeafCount())}
	}
	if t.Leaf(i) == nil {
		return &ValidationError{Rule: ruleUpdateBlank, Section: "12.1.2", Err: fmt.Errorf("leaf %d is blank", i)}
	}
	t.editPath(i, func(x NodeIndex, c *tnode) {
		if x.isLeaf() {
			c.leaf = ln
		} else {
			c.parent = nil
		}
	})
	return nil
}

// RemoveLeaf blanks the leaf at i, which must be non-blank, and its direct
// path, then truncates the tree while its right half is empty (§12.1.3).
func (t *RatchetTree) RemoveLeaf(i LeafIndex) error {
	if uint32(i) >= t.LeafCount() {
		return &ValidationError{Rule: ruleLeafIndex, Section: "12.1.3", Err: fmt.Errorf("leaf %d, tree has %d leaves", i, t.LeafCount())}
	}
	if t.Leaf(i) == nil {
		return &ValidationError{Rule: ruleRemoveBlank, Section: "12.1.3", Err: fmt.Errorf("leaf %d is blank", i)}
	}
	t.editPath(i, func(_ NodeIndex, c *tnode) {
		c.leaf, c.parent = nil, nil
	})
	t.truncate()
	return nil
}

// MergeUpdatePath merges the UpdatePath of a Commit sent from leaf sender
// into the tree (§7.5): the parents on the sender's direct path are
// blanked, those on its filtered direct path get the path's encryption
// keys, no unmerged leaves, and parent hashes computed per §7.9, and the
// sender's leaf becomes path.LeafNode.
//
// path must have one node per node of the filtered direct path, computed
// after the Commit's proposals have been applied. The leaf's parent_hash
// must equal the value PathParentHash computes (§7.9.2); otherwise nothing
// changes and the *ValidationError says which rule failed. MergeUpdatePath
// does not check the leaf's signature or other leaf rules (§7.3); the
// caller does. The tree keeps a copy of path.LeafNode that shares its
// fields' backing arrays.
func (t *RatchetTree) MergeUpdatePath(sender LeafIndex, path *UpdatePath) error {
	if uint32(sender) >= t.LeafCount() {
		return &ValidationError{Rule: ruleLeafIndex, Section: "7.5", Err: fmt.Errorf("sender %d, tree has %d leaves", sender, t.LeafCount())}
	}
	steps, stored, leafHash, err := t.pathParentHashes(sender, path)
	if err != nil {
		return err
	}
	if !bytes.Equal(path.LeafNode.ParentHash, leafHash) {
		return &ValidationError{Rule: rulePathLeafHash, Section: "7.9.2", Err: fmt.Errorf("leaf %d", sender)}
	}
	ln := new(LeafNode)
	*ln = path.LeafNode
	k := len(steps) - 1 // steps are bottom up; editPath goes top down
	t.editPath(sender, func(x NodeIndex, c *tnode) {
		if x.isLeaf() {
			c.leaf = ln
			return
		}
		c.parent = nil
		if k >= 0 && steps[k].node == x {
			c.parent = &ParentNode{EncryptionKey: path.Nodes[k].EncryptionKey, ParentHash: stored[k]}
			k--
		}
	})
	return nil
}

// Clone returns a tree that starts equal to t and then changes
// independently of it. It costs O(1) plus hashing any nodes whose tree hash
// is not yet cached, which TreeHash would compute anyway: the clone shares
// every node with t, and both copy a node's path before changing it. Like
// the other methods, Clone must not run concurrently with other use of t.
func (t *RatchetTree) Clone() *RatchetTree {
	// Fill the hash cache so that no shared node is written to later, and
	// the two trees can be used from different goroutines.
	t.hashOf(t.root, t.rootIndex())
	c := *t
	return &c
}

// Verify checks the rules a joiner applies to a tree received from others
// that need no GroupContext (§12.4.3.1, §7.9.2): for every non-blank parent,
// its unmerged leaves are non-blank leaves below it and are listed by every
// non-blank node in between; encryption keys are unique across the tree
// and signature keys across the leaves; every leaf's signature verifies
// (§7.3; leaves of source update and commit are bound to groupID and their
// index); and every non-blank parent is parent-hash valid (§7.9.2).
//
// Verify does not check the tree hash against a GroupContext, credentials,
// capabilities, lifetimes or leaf_node_source, which need the group's
// context or policy. The error is a *ValidationError naming the first rule
// that fails.
func (t *RatchetTree) Verify(groupID []byte) error {
	if t.TreeHash() == nil {
		return invalid("7.8", ruleTreeEncode)
	}
	if err := t.verifyUnmerged(); err != nil {
		return err
	}
	if err := t.verifyUniqueKeys(); err != nil {
		return err
	}
	for i, ln := range t.Leaves() {
		if err := ln.VerifySignature(t.cs, groupID, i); err != nil {
			return &ValidationError{Rule: ruleLeafSignature, Section: "7.3", Err: fmt.Errorf("leaf %d: %w", i, err)}
		}
	}
	return t.verifyParentHashes()
}

// verifyUnmerged applies the unmerged_leaves rules of §12.4.3.1.
func (t *RatchetTree) verifyUnmerged() error {
	type entry struct {
		parent NodeIndex
		leaf   LeafIndex
	}
	listed := make(map[entry]bool)
	for x, h := range t.all() {
		if h.parent == nil {
			continue
		}
		for _, l := range h.parent.UnmergedLeaves {
			listed[entry{x, l}] = true
		}
	}
	n := t.LeafCount()
	for x, h := range t.all() {
		if h.parent == nil {
			continue
		}
		for _, l := range h.parent.UnmergedLeaves {
			if uint32(l) >= n || !x.isAncestorOf(l.node()) || t.Leaf(l) == nil {
				return &ValidationError{Rule: ruleUnmergedLeaf, Section: "12.4.3.1", Err: fmt.Errorf("parent %d lists leaf %d", x, l)}
			}
			for y := l.node().parent(n); y != x; y = y.parent(n) {
				if !t.IsBlank(y) && !listed[entry{y, l}] {
					return &ValidationError{Rule: ruleUnmergedChain, Section: "12.4.3.1",
						Err: fmt.Errorf("parent %d lists leaf %d but node %d does not", x, l, y)}
				}
			}
		}
	}
	return nil
}

// verifyUniqueKeys checks that no encryption key appears at two nodes
// (§12.4.3.1, §7.3) and no signature key at two leaves (§7.3).
func (t *RatchetTree) verifyUniqueKeys() error {
	enc := make(map[string]NodeIndex)
	sig := make(map[string]LeafIndex)
	for x, h := range t.all() {
		var key []byte
		if h.leaf != nil {
			key = h.leaf.EncryptionKey
			if prev, dup := sig[string(h.leaf.SignatureKey)]; dup {
				return &ValidationError{Rule: ruleSigKeyUnique, Section: "7.3", Err: fmt.Errorf("leaves %d and %d", prev, x.leaf())}
			}
			sig[string(h.leaf.SignatureKey)] = x.leaf()
		} else {
			key = h.parent.EncryptionKey
		}
		if prev, dup := enc[string(key)]; dup {
			return &ValidationError{Rule: ruleEncKeyUnique, Section: "12.4.3.1", Err: fmt.Errorf("nodes %d and %d", prev, x)}
		}
		enc[string(key)] = x
	}
	return nil
}
