package ds_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// TestTreeQueries adds three members to a transparent group and reads the
// tree, the roster and a path back, checking each answer against the
// state the members computed themselves: epoch, tree hash, and proofs that
// verify against the members' own tree_hash.
func TestTreeQueries(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	g := e.createGroup(a)
	var props []mls.ProposalOrRef
	var refs [][]byte
	for _, id := range []string{"b", "c", "d"} {
		kp := e.upload(e.register(id, id), 1, false)[0]
		props = append(props, addOf(kp))
		refs = append(refs, ref(t, kp))
	}
	commit, next := g.commit(t, a, 0, props, nil)
	if _, err := sendBundle(e.svc, "a", ds.CommitBundle{Commit: commit, Welcome: welcome(t, refs...)}); err != nil {
		t.Fatal(err)
	}
	g.st = next
	gc := next.GroupContext()
	want := next.Tree()
	checkHeader := func(what string, ans ds.TreeAnswer) {
		t.Helper()
		if ans.Epoch != gc.Epoch || !bytes.Equal(ans.TreeHash, gc.TreeHash) || !bytes.Equal(ans.GroupID, g.id) {
			t.Fatalf("%s: answer for group %x epoch %d tree hash %x, want %x, %d, %x", what, ans.GroupID, ans.Epoch, ans.TreeHash, g.id, gc.Epoch, gc.TreeHash)
		}
	}

	rt, err := e.svc.RatchetTree(bg, "c", g.id)
	if err != nil {
		t.Fatal(err)
	}
	checkHeader("RatchetTree", rt.TreeAnswer)
	if got, err := mls.UnmarshalRatchetTree(suite, rt.RatchetTree); err != nil || !bytes.Equal(got.TreeHash(), gc.TreeHash) {
		t.Fatalf("RatchetTree: tree does not decode to the group's tree hash (err %v)", err)
	}

	roster, err := e.svc.TreeRoster(bg, "b", g.id)
	if err != nil {
		t.Fatal(err)
	}
	checkHeader("TreeRoster", roster.TreeAnswer)
	var proof mls.TreeProof
	if err := proof.UnmarshalBinary(roster.Proof); err != nil {
		t.Fatal(err)
	}
	if err := mls.VerifyTreeProof(suite, &proof, gc.TreeHash); err != nil {
		t.Fatalf("roster proof: %v", err)
	}
	var idx []mls.LeafIndex
	for _, l := range roster.Leaves {
		idx = append(idx, l.Index)
		ln, err := proof.Leaf(l.Index)
		if err != nil || ln == nil {
			t.Fatalf("roster proof does not show leaf %d (err %v)", l.Index, err)
		}
		if enc := must(ln.MarshalBinary()); !bytes.Equal(enc, l.LeafNode) || !bytes.Equal(enc, must(want.Leaf(l.Index).MarshalBinary())) {
			t.Fatalf("roster leaf %d differs from the proof or the tree", l.Index)
		}
	}
	if !slices.Equal(idx, []mls.LeafIndex{0, 1, 2, 3}) || roster.LeafCount != want.LeafCount() {
		t.Fatalf("roster leaves %v of %d, want [0 1 2 3] of %d", idx, roster.LeafCount, want.LeafCount())
	}

	// Only some leaves: the proof shows them and nothing else.
	part, err := e.svc.TreeRoster(bg, "b", g.id, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	checkHeader("TreeRoster(2)", part.TreeAnswer)
	var partProof mls.TreeProof
	if err := partProof.UnmarshalBinary(part.Proof); err != nil {
		t.Fatal(err)
	}
	if err := mls.VerifyTreeProof(suite, &partProof, gc.TreeHash); err != nil {
		t.Fatalf("partial roster proof: %v", err)
	}
	if len(part.Leaves) != 1 || part.Leaves[0].Index != 2 || !bytes.Equal(part.Leaves[0].LeafNode, must(want.Leaf(2).MarshalBinary())) {
		t.Fatalf("TreeRoster(2) returned %d leaves", len(part.Leaves))
	}
	if _, err := partProof.Leaf(0); err == nil {
		t.Fatal("the proof for leaf 2 shows leaf 0")
	}
	if len(part.Proof) >= len(roster.Proof) {
		t.Fatalf("proof for one leaf has %d bytes, for all %d", len(part.Proof), len(roster.Proof))
	}
	_, err = e.svc.TreeRoster(bg, "b", g.id, mls.LeafIndex(want.LeafCount()))
	wantIs(t, err, ds.ErrInvalidArgument)

	for leaf := range mls.LeafIndex(want.LeafCount()) {
		path, err := e.svc.TreePath(bg, "d", g.id, leaf)
		if err != nil {
			t.Fatal(err)
		}
		checkHeader("TreePath", path.TreeAnswer)
		var p mls.TreeProof
		if err := p.UnmarshalBinary(path.Proof); err != nil {
			t.Fatal(err)
		}
		if err := mls.VerifyTreeProof(suite, &p, gc.TreeHash); err != nil {
			t.Fatalf("path proof of leaf %d: %v", leaf, err)
		}
		tp, err := p.Path(leaf)
		if err != nil {
			t.Fatalf("path of leaf %d: %v", leaf, err)
		}
		for k, pn := range tp.Copath {
			var res []mls.NodeIndex
			for _, r := range pn.Resolution {
				res = append(res, r.Index)
			}
			if w := want.Resolution(pn.Index); !slices.Equal(res, w) {
				t.Fatalf("leaf %d copath[%d]: resolution %v, want %v", leaf, k, res, w)
			}
		}
	}
	if _, err := e.svc.TreePath(bg, "a", g.id, mls.LeafIndex(want.LeafCount())); err == nil {
		t.Fatal("path of a leaf outside the tree was served")
	} else {
		wantIs(t, err, ds.ErrInvalidArgument)
	}

	// Non-members learn nothing.
	e.register("z", "z")
	_, err = e.svc.RatchetTree(bg, "z", g.id)
	wantIs(t, err, ds.ErrNotMember)
	_, err = e.svc.TreeRoster(bg, "z", g.id)
	wantIs(t, err, ds.ErrNotMember)
	_, err = e.svc.TreePath(bg, "z", g.id, 0)
	wantIs(t, err, ds.ErrNotMember)
	_, err = e.svc.TreePath(bg, "a", []byte("no such group"), 0)
	wantIs(t, err, ds.ErrNotMember) // one answer for outsiders
}

// TestTreeQueriesOpaque checks that an opaque group, whose tree the
// Delivery Service does not know, refuses tree queries.
func TestTreeQueriesOpaque(t *testing.T) {
	e := newEnv(t, ds.Config{})
	e.register("a", "a")
	e.register("b", "b")
	gid := []byte("opaque group")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}))
	_, err := e.svc.RatchetTree(bg, "a", gid)
	wantIs(t, err, ds.ErrInvalidArgument)
	_, err = e.svc.TreePath(bg, "b", gid, 0)
	wantIs(t, err, ds.ErrInvalidArgument)
}
