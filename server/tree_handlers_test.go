package server_test

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// TestTreeQueryRPCs creates a transparent group of four over a real server
// on loopback and reads its tree, its roster with leaves and every leaf's
// path through the API. Each answer must name the epoch and tree hash of
// the members' own state, and every proof must verify against that hash
// and give the same resolutions as the whole tree.
func TestTreeQueryRPCs(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	alice, bob, carol, dave := e.client("alice"), e.client("bob"), e.client("carol"), e.client("dave")
	gid := groupID("tree-queries")
	g0, gi, tree := alice.newTransparentGroup(gid)
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi, RatchetTree: tree})); err != nil {
		t.Fatal(err)
	}
	commit, _, gi1, g1 := alice.commitAdd(g0, mustKP(t, alice, bob), mustKP(t, alice, carol), mustKP(t, alice, dave))
	if _, err := alice.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: commit, GroupInfo: gi1})); err != nil {
		t.Fatal(err)
	}
	gc, want := g1.st.GroupContext(), g1.st.Tree()

	rt, err := bob.groups.GetRatchetTree(ctx, connect.NewRequest(&mlsdsv1.GetRatchetTreeRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	if rt.Msg.Epoch != gc.Epoch || !bytes.Equal(rt.Msg.TreeHash, gc.TreeHash) || !bytes.Equal(rt.Msg.GroupId, gid) {
		t.Fatalf("GetRatchetTree: epoch %d hash %x, want %d %x", rt.Msg.Epoch, rt.Msg.TreeHash, gc.Epoch, gc.TreeHash)
	}
	if got, err := mls.UnmarshalRatchetTree(suite, rt.Msg.RatchetTree); err != nil || !bytes.Equal(got.TreeHash(), gc.TreeHash) {
		t.Fatalf("GetRatchetTree: tree does not match the tree hash (err %v)", err)
	}

	// GetRoster without include_leaves answers as before; with it, the
	// leaves come with a proof.
	plain, err := carol.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	if len(plain.Msg.Leaves) != 0 || plain.Msg.Proof != nil || len(plain.Msg.ClientIds) != 4 {
		t.Fatalf("plain GetRoster: %d client ids, %d leaves", len(plain.Msg.ClientIds), len(plain.Msg.Leaves))
	}
	roster, err := carol.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid, IncludeLeaves: true}))
	if err != nil {
		t.Fatal(err)
	}
	if roster.Msg.Epoch != gc.Epoch || !bytes.Equal(roster.Msg.TreeHash, gc.TreeHash) || roster.Msg.LeafCount != want.LeafCount() {
		t.Fatalf("GetRoster: epoch %d, leaf count %d", roster.Msg.Epoch, roster.Msg.LeafCount)
	}
	var proof mls.TreeProof
	if err := proof.UnmarshalBinary(roster.Msg.Proof); err != nil {
		t.Fatal(err)
	}
	// The client checks against its own GroupContext, not the answer's.
	if err := mls.VerifyTreeProof(suite, &proof, gc.TreeHash); err != nil {
		t.Fatalf("roster proof: %v", err)
	}
	var ids []string
	for _, l := range roster.Msg.Leaves {
		ln, err := proof.Leaf(mls.LeafIndex(l.LeafIndex))
		if err != nil || ln == nil {
			t.Fatalf("roster proof does not show leaf %d (err %v)", l.LeafIndex, err)
		}
		if enc, _ := ln.MarshalBinary(); !bytes.Equal(enc, l.LeafNode) {
			t.Fatalf("roster leaf %d differs from its proof", l.LeafIndex)
		}
		ids = append(ids, string(ln.Credential.Identity))
	}
	if !slices.Equal(ids, []string{"alice", "bob", "carol", "dave"}) {
		t.Fatalf("roster leaves %v", ids)
	}

	one, err := carol.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid, IncludeLeaves: true, LeafIndices: []uint32{1}}))
	if err != nil {
		t.Fatal(err)
	}
	var oneProof mls.TreeProof
	if err := oneProof.UnmarshalBinary(one.Msg.Proof); err != nil {
		t.Fatal(err)
	}
	if err := mls.VerifyTreeProof(suite, &oneProof, gc.TreeHash); err != nil {
		t.Fatalf("one-leaf roster proof: %v", err)
	}
	if ln, err := oneProof.Leaf(1); err != nil || len(one.Msg.Leaves) != 1 || string(ln.Credential.Identity) != "bob" {
		t.Fatalf("GetRoster(leaf 1): %d leaves, err %v", len(one.Msg.Leaves), err)
	}
	_, err = carol.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid, IncludeLeaves: true, LeafIndices: []uint32{want.LeafCount()}}))
	connectErr(t, err, connect.CodeInvalidArgument)

	for leaf := range want.LeafCount() {
		p, err := dave.groups.GetPath(ctx, connect.NewRequest(&mlsdsv1.GetPathRequest{GroupId: gid, LeafIndex: leaf}))
		if err != nil {
			t.Fatal(err)
		}
		if p.Msg.Epoch != gc.Epoch || p.Msg.LeafIndex != leaf || p.Msg.LeafCount != want.LeafCount() {
			t.Fatalf("GetPath(%d): epoch %d leaf %d count %d", leaf, p.Msg.Epoch, p.Msg.LeafIndex, p.Msg.LeafCount)
		}
		var tp mls.TreeProof
		if err := tp.UnmarshalBinary(p.Msg.Proof); err != nil {
			t.Fatal(err)
		}
		if err := mls.VerifyTreeProof(suite, &tp, gc.TreeHash); err != nil {
			t.Fatalf("path proof of leaf %d: %v", leaf, err)
		}
		path, err := tp.Path(mls.LeafIndex(leaf))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(indices(path.Copath), want.Copath(mls.LeafIndex(leaf))) || !slices.Equal(indices(path.DirectPath), want.DirectPath(mls.LeafIndex(leaf))) {
			t.Fatalf("leaf %d: path %v copath %v", leaf, indices(path.DirectPath), indices(path.Copath))
		}
		for _, pn := range append(path.DirectPath, path.Copath...) {
			var res []mls.NodeIndex
			for _, r := range pn.Resolution {
				res = append(res, r.Index)
			}
			if w := want.Resolution(pn.Index); !slices.Equal(res, w) {
				t.Fatalf("leaf %d: resolution of node %d = %v, want %v", leaf, pn.Index, res, w)
			}
		}
	}

	_, err = alice.groups.GetPath(ctx, connect.NewRequest(&mlsdsv1.GetPathRequest{GroupId: gid, LeafIndex: want.LeafCount()}))
	connectErr(t, err, connect.CodeInvalidArgument)
	_, err = alice.groups.GetPath(ctx, connect.NewRequest(&mlsdsv1.GetPathRequest{}))
	connectErr(t, err, connect.CodeInvalidArgument)

	// A non-member gets nothing.
	eve := e.client("eve")
	_, err = eve.groups.GetRatchetTree(ctx, connect.NewRequest(&mlsdsv1.GetRatchetTreeRequest{GroupId: gid}))
	connectErr(t, err, connect.CodePermissionDenied)
	_, err = eve.groups.GetPath(ctx, connect.NewRequest(&mlsdsv1.GetPathRequest{GroupId: gid, LeafIndex: 0}))
	connectErr(t, err, connect.CodePermissionDenied)
	_, err = eve.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid, IncludeLeaves: true}))
	connectErr(t, err, connect.CodePermissionDenied)

	// An opaque group has no tree the server knows.
	oid := groupID("tree-queries-opaque")
	alice.createOpaqueGroup(oid, bob)
	_, err = bob.groups.GetRatchetTree(ctx, connect.NewRequest(&mlsdsv1.GetRatchetTreeRequest{GroupId: oid}))
	connectErr(t, err, connect.CodeInvalidArgument)
}

func indices(nodes []mls.PathNode) []mls.NodeIndex {
	var out []mls.NodeIndex
	for _, n := range nodes {
		out = append(out, n.Index)
	}
	return out
}
