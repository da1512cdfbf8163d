package mls

import (
	"bytes"
	"fmt"
)

// Parent hashes (§7.9).

// parentHash hashes ParentHashInput{encryptionKey, parentHash,
// originalSiblingTreeHash} (§7.9).
func (t *RatchetTree) parentHash(encryptionKey, parentHash, siblingHash []byte) []byte {
	if len(encryptionKey) > maxVarint || len(parentHash) > maxVarint || len(siblingHash) > maxVarint {
		return nil
	}
	var stack [256]byte
	buf := appendOpaque(stack[:0], encryptionKey)
	buf = appendOpaque(buf, parentHash)
	buf = appendOpaque(buf, siblingHash)
	return t.cs.Hash(buf)
}

// PathParentHash returns the parent_hash that the leaf of an UpdatePath
// sent from leaf sender must carry (§7.9, §7.9.1): the parent hash of the
// first node of the sender's filtered direct path after the path's keys
// are merged, or an empty value if that path is empty. Only the
// EncryptionKey of each of path.Nodes is read, so a committer can call it
// before it fills in and signs path.LeafNode. The tree is not changed; it
// must already reflect the Commit's proposals.
func (t *RatchetTree) PathParentHash(sender LeafIndex, path *UpdatePath) ([]byte, error) {
	if uint32(sender) >= t.LeafCount() {
		return nil, &ValidationError{Rule: ruleLeafIndex, Section: "7.9", Err: fmt.Errorf("sender %d, tree has %d leaves", sender, t.LeafCount())}
	}
	_, _, leaf, err := t.pathParentHashes(sender, path)
	return leaf, err
}

// pathParentHashes computes, for the filtered direct path of sender with
// the keys of path, the parent_hash each of its nodes stores after the
// merge (stored[k] for steps[k]; empty for the topmost) and the one the
// leaf stores. The hash of node P uses the tree hash of P's copath child,
// which the merge does not change and which is the original sibling tree
// hash since the merge empties P's unmerged leaves.
func (t *RatchetTree) pathParentHashes(sender LeafIndex, path *UpdatePath) (steps []pathStep, stored [][]byte, leaf []byte, err error) {
	steps = t.filteredPath(sender)
	if len(path.Nodes) != len(steps) {
		return nil, nil, nil, &ValidationError{Rule: rulePathLength, Section: "7.6",
			Err: fmt.Errorf("path has %d nodes, filtered direct path of leaf %d has %d", len(path.Nodes), sender, len(steps))}
	}
	stored = make([][]byte, len(steps))
	var above []byte
	for k := len(steps) - 1; k >= 0; k-- {
		stored[k] = above
		sib := t.hashOf(steps[k].sibNode, steps[k].sibling)
		above = t.parentHash(path.Nodes[k].EncryptionKey, above, sib)
		if sib == nil || above == nil {
			return nil, nil, nil, invalid("7.9", ruleTreeEncode)
		}
	}
	return steps, stored, above, nil
}

// verifyParentHashes checks that every non-blank parent is parent-hash
// valid (§7.9.2), top down: exactly one node D below each non-blank parent
// P, in the resolution of one of P's children C, carries the parent hash
// of P with the other child S as copath child, and P's unmerged leaves
// under C are exactly the rest of C's resolution. Since D is then either a
// leaf or a non-blank parent checked the same way, every chain ends at a
// leaf.
func (t *RatchetTree) verifyParentHashes() error {
	for x, h := range t.all() {
		if h.parent == nil {
			continue
		}
		if n := t.parentHashLinks(x, h); n != 1 {
			return &ValidationError{Rule: ruleParentHashValid, Section: "7.9.2",
				Err: fmt.Errorf("node %d has %d descendants whose parent_hash links to it, want 1", x, n)}
		}
	}
	return nil
}

// VerifyParentHashes checks only that every non-blank parent node of t is
// parent-hash valid (§7.9.2), the last of Verify's rules, for a tool that
// reports each rule on its own. The error is a *ValidationError.
func (t *RatchetTree) VerifyParentHashes() error { return t.verifyParentHashes() }

// parentHashLinks counts the nodes D for which the parent hash in D is
// valid with respect to the non-blank parent h at x (§7.9.2).
func (t *RatchetTree) parentHashLinks(x NodeIndex, h *tnode) int {
	p := h.parent
	links := 0
	for _, side := range [2]struct {
		c, s     *tnode
		cIdx, sx NodeIndex
	}{
		{h.left, h.right, x.left(), x.right()},
		{h.right, h.left, x.right(), x.left()},
	} {
		res := appendResolution(nil, side.c, side.cIdx)
		if len(res) == 0 {
			continue
		}
		want := t.parentHash(p.EncryptionKey, p.ParentHash, t.originalHash(side.s, side.sx, p.UnmergedLeaves))
		for _, d := range res {
			if !bytes.Equal(t.storedParentHash(d), want) {
				continue
			}
			if unmergedMatches(p.UnmergedLeaves, side.cIdx, res, d) {
				links++
			}
		}
	}
	return links
}

// storedParentHash returns the parent_hash field of the non-blank node x.
func (t *RatchetTree) storedParentHash(x NodeIndex) []byte {
	h := t.at(x)
	switch {
	case h == nil:
		return nil
	case h.leaf != nil:
		return h.leaf.ParentHash
	case h.parent != nil:
		return h.parent.ParentHash
	}
	return nil
}

// unmergedMatches reports whether the unmerged leaves under node c equal,
// as a set, the resolution of c without d (§7.9.2).
func unmergedMatches(unmerged []LeafIndex, c NodeIndex, res []NodeIndex, d NodeIndex) bool {
	rest := make(map[NodeIndex]bool, len(res))
	for _, r := range res {
		if r != d {
			rest[r] = false
		}
	}
	for _, l := range unmerged {
		x := l.node()
		if !c.isAncestorOf(x) {
			continue
		}
		if _, ok := rest[x]; !ok {
			return false
		}
		rest[x] = true
	}
	for _, seen := range rest {
		if !seen {
			return false
		}
	}
	return true
}
