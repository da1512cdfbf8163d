package ds

import (
	"context"
	"fmt"
	"slices"

	"github.com/mlsds/mlsds/mls"
)

// Tree queries: members of a transparent group read the current epoch's
// ratchet tree, its leaves, or the part one leaf needs, from the state the
// Service keeps in sync with every Commit. Every answer names the epoch
// and the tree hash it belongs to; a partial answer comes with an
// mls.TreeProof the member checks with mls.VerifyTreeProof against the
// tree_hash of its own GroupContext.

// TreeAnswer is the header of every tree query answer.
type TreeAnswer struct {
	GroupID  []byte
	Epoch    uint64
	TreeHash []byte // GroupContext.tree_hash of Epoch (§7.8)
}

// RatchetTreeResult is the whole tree of the current epoch.
type RatchetTreeResult struct {
	TreeAnswer
	RatchetTree []byte // ratchet_tree extension encoding (§12.4.3.3)
}

// RosterLeaf is one non-blank leaf of the tree.
type RosterLeaf struct {
	Index    mls.LeafIndex
	LeafNode []byte // TLS encoding of the LeafNode
}

// RosterResult lists the non-blank leaves of the current epoch's tree, in
// index order, with a proof (an encoded mls.TreeProof showing every leaf)
// that binds them to TreeHash.
type RosterResult struct {
	TreeAnswer
	LeafCount uint32
	Leaves    []RosterLeaf
	Proof     []byte
}

// PathResult is what the member at Leaf needs to create a Commit or a
// Proposal: an encoded mls.TreeProof built by mls.RatchetTree.PathProof,
// which shows the leaf, its direct path and copath, and their resolutions.
// Read it with mls.TreeProof.Path after verifying it.
type PathResult struct {
	TreeAnswer
	Leaf      mls.LeafIndex
	LeafCount uint32
	Proof     []byte
}

// currentTree returns the current tree of a transparent group for a
// member: a copy that shares its nodes with the cached state (O(1)), to be
// read without the state's lock.
func (s *Service) currentTree(ctx context.Context, client string, groupID []byte) (TreeAnswer, *mls.RatchetTree, error) {
	if err := s.allow(client); err != nil {
		return TreeAnswer{}, nil, err
	}
	if _, err := s.checkMember(ctx, client, groupID); err != nil {
		return TreeAnswer{}, nil, err
	}
	var ans TreeAnswer
	var tree *mls.RatchetTree
	err := s.withState(ctx, groupID, func(head GroupRecord, e *groupState) error {
		gc := e.st.GroupContext()
		ans = TreeAnswer{GroupID: head.ID, Epoch: gc.Epoch, TreeHash: gc.TreeHash}
		tree = e.st.Tree()
		return nil
	})
	return ans, tree, err
}

// RatchetTree returns the current ratchet tree of a transparent group.
// Only members may ask.
func (s *Service) RatchetTree(ctx context.Context, client string, groupID []byte) (RatchetTreeResult, error) {
	if err := s.allow(client); err != nil {
		return RatchetTreeResult{}, err
	}
	if _, err := s.checkMember(ctx, client, groupID); err != nil {
		return RatchetTreeResult{}, err
	}
	var out RatchetTreeResult
	err := s.withState(ctx, groupID, func(head GroupRecord, e *groupState) error {
		gc := e.st.GroupContext()
		out.TreeAnswer = TreeAnswer{GroupID: head.ID, Epoch: gc.Epoch, TreeHash: gc.TreeHash}
		enc, err := e.treeBytes() // cached per epoch; never modified
		out.RatchetTree = enc
		return err
	})
	if err != nil {
		return RatchetTreeResult{}, err
	}
	return out, nil
}

// TreeRoster returns the non-blank leaves of a transparent group's current
// tree with their indices, and a proof that covers them. With leaves, it
// returns only those (a blank one is shown as blank in the proof and left
// out of Leaves), and the proof shows just them and their direct paths.
// Only members may ask.
func (s *Service) TreeRoster(ctx context.Context, client string, groupID []byte, leaves ...mls.LeafIndex) (RosterResult, error) {
	ans, tree, err := s.currentTree(ctx, client, groupID)
	if err != nil {
		return RosterResult{}, err
	}
	for _, l := range leaves {
		if uint32(l) >= tree.LeafCount() {
			return RosterResult{}, fmt.Errorf("%w: leaf %d is outside the tree of %d leaves", ErrInvalidArgument, l, tree.LeafCount())
		}
	}
	out := RosterResult{TreeAnswer: ans, LeafCount: tree.LeafCount()}
	add := func(i mls.LeafIndex, ln *mls.LeafNode) error {
		enc, err := ln.MarshalBinary()
		if err != nil {
			return fmt.Errorf("ds: encoding leaf %d of group %x: %w", i, ans.GroupID, err)
		}
		out.Leaves = append(out.Leaves, RosterLeaf{Index: i, LeafNode: enc})
		return nil
	}
	if len(leaves) == 0 {
		for i, ln := range tree.Leaves() {
			if err := add(i, ln); err != nil {
				return RosterResult{}, err
			}
		}
	} else {
		leaves = slices.Clone(leaves)
		slices.Sort(leaves)
		leaves = slices.Compact(leaves)
		for _, i := range leaves {
			if ln := tree.Leaf(i); ln != nil {
				if err := add(i, ln); err != nil {
					return RosterResult{}, err
				}
			}
		}
	}
	p, err := tree.LeavesProof(leaves...)
	if err == nil {
		out.Proof, err = p.MarshalBinary()
	}
	if err != nil {
		return RosterResult{}, fmt.Errorf("ds: roster proof of group %x: %w", ans.GroupID, err)
	}
	return out, nil
}

// TreePath returns the proof of leaf's direct path, copath and their
// resolutions in a transparent group's current tree. Only members may ask;
// they may ask for any leaf inside the tree.
func (s *Service) TreePath(ctx context.Context, client string, groupID []byte, leaf mls.LeafIndex) (PathResult, error) {
	ans, tree, err := s.currentTree(ctx, client, groupID)
	if err != nil {
		return PathResult{}, err
	}
	if uint32(leaf) >= tree.LeafCount() {
		return PathResult{}, fmt.Errorf("%w: leaf %d is outside the tree of %d leaves", ErrInvalidArgument, leaf, tree.LeafCount())
	}
	p, err := tree.PathProof(leaf)
	if err != nil {
		return PathResult{}, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	enc, err := p.MarshalBinary()
	if err != nil {
		return PathResult{}, fmt.Errorf("ds: path proof of group %x: %w", ans.GroupID, err)
	}
	return PathResult{TreeAnswer: ans, Leaf: leaf, LeafCount: tree.LeafCount(), Proof: enc}, nil
}
