package mls

import (
	"bytes"
	"errors"
	"testing"
)

func TestVerifyParentHashes(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	alice, bob, carol := newGroupMember(t, cs, "alice"), newGroupMember(t, cs, "bob"), newGroupMember(t, cs, "carol")
	var err error
	if alice.g, err = NewGroup([]byte("parent hashes"), alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}
	if _, _, err := alice.g.Commit([]*KeyPackage{bob.kp, carol.kp}, nil); err != nil {
		t.Fatal(err)
	}
	if err := alice.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	tree := alice.g.Tree()
	if err := tree.VerifyParentHashes(); err != nil {
		t.Fatalf("the tree of a fresh Commit: %v", err)
	}

	// Change the parent_hash of Alice's leaf: the chain from the root no
	// longer ends at a leaf. Copy the nodes; the tree's are shared.
	nodes := tree.Nodes()
	leaf := *nodes[0].Leaf
	leaf.ParentHash = bytes.Clone(leaf.ParentHash)
	leaf.ParentHash[0] ^= 1
	nodes[0] = &Node{Leaf: &leaf}
	bad, err := NewRatchetTree(cs, nodes)
	if err != nil {
		t.Fatal(err)
	}
	err = bad.VerifyParentHashes()
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Section != "7.9.2" {
		t.Fatalf("tampered parent_hash: %v, want a §7.9.2 ValidationError", err)
	}
}
