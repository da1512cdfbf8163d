package mls

import (
	"bytes"
	"fmt"
)

// A partial ratchet tree: the part of a group's tree one member holds when
// it has not downloaded the whole tree (see PartialGroup). It is built from
// a TreeProof verified against the tree_hash of a GroupContext the member
// trusts, so every node it shows and every subtree hash it keeps is the
// group's. It shows the member's leaf, its direct path and copath and their
// resolutions; every other subtree is kept as its tree hash (§7.8) only.
//
// That is enough to compute the tree hash of the whole tree, the filtered
// direct path (§4.1.2), the resolutions an UpdatePath encrypts to (§7.6),
// and the parent hashes of a new path (§7.9), since a Commit that carries
// only an UpdatePath changes nothing but the committer's leaf and direct
// path, and the subtrees hanging off that path keep their hashes.

// partialNode is one node of a partialTree. A pruned node stands for a
// whole subtree of which only the tree hash is known.
type partialNode struct {
	pruned      bool
	hash        []byte // tree hash of the subtree; nil until computed
	leaf        *LeafNode
	parent      *ParentNode
	left, right *partialNode
}

// partialTree is the part of a ratchet tree of 1<<depth leaves that a
// TreeProof showed. Nodes are never modified once shared: withPath copies
// the nodes it changes.
type partialTree struct {
	cs    CipherSuite
	depth uint32
	root  *partialNode
}

// newPartialTree copies the shape and nodes of a verified proof.
func newPartialTree(cs CipherSuite, p *TreeProof) (*partialTree, error) {
	if err := p.checkVerified(); err != nil {
		return nil, err
	}
	// blank expands a blank_subtree entry of the given height into blank
	// nodes, so that a later path through it can be edited like any other.
	var blank func(level uint32) *partialNode
	blank = func(level uint32) *partialNode {
		n := &partialNode{}
		if level > 0 {
			n.left, n.right = blank(level-1), blank(level-1)
		}
		return n
	}
	var copyNode func(q *pnode, level uint32) *partialNode
	copyNode = func(q *pnode, level uint32) *partialNode {
		n := &partialNode{}
		switch q.kind {
		case proofPruned:
			n.pruned, n.hash = true, bytes.Clone(q.hash)
			return n
		case proofBlankSubtree:
			return blank(level)
		case proofPresent:
			n.leaf, n.parent = q.node.Leaf, q.node.Parent
		}
		if q.left != nil {
			n.left, n.right = copyNode(q.left, level-1), copyNode(q.right, level-1)
		}
		return n
	}
	return &partialTree{cs: cs, depth: p.depth, root: copyNode(p.root, p.depth)}, nil
}

func (t *partialTree) leafCount() uint32         { return 1 << t.depth }
func (t *partialTree) rootIndex() NodeIndex      { return rootOf(t.leafCount()) }
func (t *partialTree) hasher() *RatchetTree      { return &RatchetTree{cs: t.cs} }
func (t *partialTree) contains(x NodeIndex) bool { return uint32(x) < nodeWidth(t.leafCount()) }

// at returns the node at x, or nil if x lies in a pruned subtree or
// outside the tree.
func (t *partialTree) at(x NodeIndex) *partialNode {
	if !t.contains(x) {
		return nil
	}
	n, cur := t.root, t.rootIndex()
	for !n.pruned && cur != x {
		if x < cur {
			n, cur = n.left, cur.left()
		} else {
			n, cur = n.right, cur.right()
		}
	}
	if n.pruned {
		return nil
	}
	return n
}

// hashOf returns the tree hash of the subtree n at x (§7.8), caching it.
func (t *partialTree) hashOf(n *partialNode, x NodeIndex) []byte {
	if n.hash != nil {
		return n.hash
	}
	h := t.hasher()
	if x.isLeaf() {
		n.hash = h.leafHash(x.leaf(), n.leaf)
		return n.hash
	}
	l, r := t.hashOf(n.left, x.left()), t.hashOf(n.right, x.right())
	if l == nil || r == nil {
		return nil
	}
	n.hash = h.parentNodeHash(n.parent, l, r)
	return n.hash
}

// treeHash returns the tree hash of the whole tree.
func (t *partialTree) treeHash() []byte { return bytes.Clone(t.hashOf(t.root, t.rootIndex())) }

// encryptionKey returns the HPKE public key of the shown non-blank node x.
func (t *partialTree) encryptionKey(x NodeIndex) []byte {
	n := t.at(x)
	switch {
	case n == nil:
		return nil
	case n.leaf != nil:
		return n.leaf.EncryptionKey
	case n.parent != nil:
		return n.parent.EncryptionKey
	}
	return nil
}

// resolution returns the resolution of x (§4.1.1). It fails if a node it
// needs lies in a pruned subtree.
func (t *partialTree) resolution(x NodeIndex) ([]NodeIndex, error) {
	var out []NodeIndex
	var walk func(x NodeIndex) error
	walk = func(x NodeIndex) error {
		n := t.at(x)
		if n == nil {
			return fmt.Errorf("%w: node %d is needed for a resolution but the partial tree does not show it", ErrTreeProof, x)
		}
		switch {
		case n.leaf != nil:
			out = append(out, x)
			return nil
		case n.parent != nil:
			out = append(out, x)
			for _, u := range n.parent.UnmergedLeaves {
				if !x.isAncestorOf(u.node()) {
					return &ValidationError{Rule: ruleUnmergedLeaf, Section: "7.1", Err: fmt.Errorf("parent %d lists leaf %d", x, u)}
				}
				if l := t.at(u.node()); l == nil || l.leaf == nil {
					return &ValidationError{Rule: ruleUnmergedLeaf, Section: "7.1", Err: fmt.Errorf("parent %d lists leaf %d, which is blank or not shown", x, u)}
				}
				out = append(out, u.node())
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

// partialStep is a node of a filtered direct path with its copath child
// and the child's resolution.
type partialStep struct {
	node, sibling NodeIndex
	resolution    []NodeIndex
}

// filteredPath returns the filtered direct path of leaf i (§4.1.2), bottom
// up, with the resolution of each copath child.
func (t *partialTree) filteredPath(i LeafIndex) ([]partialStep, error) {
	n := t.leafCount()
	if uint32(i) >= n {
		return nil, &ValidationError{Rule: ruleLeafIndex, Section: "4.1.2", Err: fmt.Errorf("leaf %d, tree has %d leaves", i, n)}
	}
	var steps []partialStep
	x := i.node()
	for x != t.rootIndex() {
		p, s := x.parent(n), x.sibling(n)
		res, err := t.resolution(s)
		if err != nil {
			return nil, err
		}
		if len(res) > 0 {
			steps = append(steps, partialStep{node: p, sibling: s, resolution: res})
		}
		x = p
	}
	return steps, nil
}

// withPath returns a copy of t in which edit has changed the nodes on the
// path from the root down to leaf i (root first); the rest is shared.
func (t *partialTree) withPath(i LeafIndex, edit func(x NodeIndex, n *partialNode)) (*partialTree, error) {
	target := i.node()
	if !t.contains(target) {
		return nil, fmt.Errorf("mls: leaf %d is outside the tree of %d leaves", i, t.leafCount())
	}
	out := &partialTree{cs: t.cs, depth: t.depth}
	var up *partialNode
	wentLeft := false
	n, cur := t.root, t.rootIndex()
	for {
		if n.pruned {
			return nil, fmt.Errorf("%w: node %d on the path of leaf %d is not shown", ErrTreeProof, cur, i)
		}
		c := new(partialNode)
		*c = *n
		c.hash = nil
		switch {
		case up == nil:
			out.root = c
		case wentLeft:
			up.left = c
		default:
			up.right = c
		}
		edit(cur, c)
		if cur == target {
			return out, nil
		}
		up = c
		if wentLeft = target < cur; wentLeft {
			n, cur = n.left, cur.left()
		} else {
			n, cur = n.right, cur.right()
		}
	}
}

// subtreeHash returns the tree hash of the subtree at x, shown or pruned.
func (t *partialTree) subtreeHash(x NodeIndex) []byte {
	if !t.contains(x) {
		return nil
	}
	n, cur := t.root, t.rootIndex()
	for !n.pruned && cur != x {
		if x < cur {
			n, cur = n.left, cur.left()
		} else {
			n, cur = n.right, cur.right()
		}
	}
	if n.pruned {
		if cur != x {
			return nil
		}
		return n.hash
	}
	return t.hashOf(n, x)
}

// storedParentHash returns the parent_hash field of the shown non-blank
// node x.
func (t *partialTree) storedParentHash(x NodeIndex) []byte {
	n := t.at(x)
	switch {
	case n == nil:
		return nil
	case n.leaf != nil:
		return n.leaf.ParentHash
	case n.parent != nil:
		return n.parent.ParentHash
	}
	return nil
}

// originalHash is RatchetTree.originalHash on the partial tree: the tree
// hash of the subtree n at x with the leaves in removed blanked and taken
// out of every unmerged_leaves list (§7.9). It returns nil if a removed
// leaf lies in a pruned subtree.
func (t *partialTree) originalHash(n *partialNode, x NodeIndex, removed []LeafIndex) []byte {
	inside := leavesUnder(x, removed)
	if len(inside) == 0 {
		return t.hashOf(n, x)
	}
	if n.pruned {
		return nil
	}
	h := t.hasher()
	if x.isLeaf() {
		return h.leafHash(x.leaf(), nil)
	}
	l := t.originalHash(n.left, x.left(), inside)
	r := t.originalHash(n.right, x.right(), inside)
	if l == nil || r == nil {
		return nil
	}
	return h.parentNodeHash(withoutUnmerged(n.parent, inside), l, r)
}

// verifyPathParentHashes checks that every non-blank parent on the direct
// path of leaf i is parent-hash valid (§7.9.2): exactly one node below it,
// in the resolution of one of its children, carries its parent hash with
// the other child as copath child. Both children of a node on the direct
// path are shown down to their resolutions, so the check needs nothing
// the partial tree leaves out.
func (t *partialTree) verifyPathParentHashes(i LeafIndex) error {
	h := t.hasher()
	for _, x := range i.node().directPath(t.leafCount()) {
		n := t.at(x)
		if n == nil {
			return fmt.Errorf("%w: node %d on the direct path of leaf %d is not shown", ErrTreeProof, x, i)
		}
		if n.parent == nil {
			continue
		}
		p := n.parent
		links := 0
		for _, side := range [2]struct {
			c, s     *partialNode
			cIdx, sx NodeIndex
		}{
			{n.left, n.right, x.left(), x.right()},
			{n.right, n.left, x.right(), x.left()},
		} {
			res, err := t.resolution(side.cIdx)
			if err != nil {
				return err
			}
			if len(res) == 0 {
				continue
			}
			orig := t.originalHash(side.s, side.sx, p.UnmergedLeaves)
			if orig == nil {
				return fmt.Errorf("%w: the original tree hash of node %d cannot be computed from the partial tree", ErrTreeProof, side.sx)
			}
			want := h.parentHash(p.EncryptionKey, p.ParentHash, orig)
			for _, d := range res {
				if bytes.Equal(t.storedParentHash(d), want) && unmergedMatches(p.UnmergedLeaves, side.cIdx, res, d) {
					links++
				}
			}
		}
		if links != 1 {
			return &ValidationError{Rule: ruleParentHashValid, Section: "7.9.2",
				Err: fmt.Errorf("node %d has %d descendants whose parent_hash links to it, want 1", x, links)}
		}
	}
	return nil
}

// shownLeaves calls yield for each of the shown non-blank leaves.
func (t *partialTree) shownLeaves(yield func(LeafIndex, *LeafNode)) {
	var walk func(n *partialNode, x NodeIndex)
	walk = func(n *partialNode, x NodeIndex) {
		switch {
		case n.pruned:
		case x.isLeaf():
			if n.leaf != nil {
				yield(x.leaf(), n.leaf)
			}
		default:
			walk(n.left, x.left())
			walk(n.right, x.right())
		}
	}
	walk(t.root, t.rootIndex())
}
