package mls

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// roundTripProof encodes p, decodes it into a fresh TreeProof, checks that
// the decoding re-encodes to the same bytes, and verifies it against the
// tree hash of tree.
func roundTripProof(t testing.TB, tree *RatchetTree, p *TreeProof) (*TreeProof, []byte) {
	t.Helper()
	enc, err := p.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary: %v", err)
	}
	var got TreeProof
	if err := got.UnmarshalBinary(enc); err != nil {
		t.Fatalf("UnmarshalBinary: %v", err)
	}
	if again, err := got.MarshalBinary(); err != nil || !bytes.Equal(again, enc) {
		t.Fatalf("decoded proof does not re-encode to the same bytes (err %v)", err)
	}
	if err := VerifyTreeProof(tree.CipherSuite(), &got, tree.TreeHash()); err != nil {
		t.Fatalf("VerifyTreeProof: %v", err)
	}
	return &got, enc
}

// checkPathProof checks that the path proof of leaf i verifies and that
// Path returns the same nodes and resolutions as the full tree.
func checkPathProof(t testing.TB, tree *RatchetTree, i LeafIndex) {
	t.Helper()
	p, err := tree.PathProof(i)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := roundTripProof(t, tree, p)
	tp, err := got.Path(i)
	if err != nil {
		t.Fatalf("leaf %d: Path: %v", i, err)
	}
	if !sameLeaf(tp.LeafNode, tree.Leaf(i)) {
		t.Fatalf("leaf %d: leaf node differs", i)
	}
	check := func(what string, nodes []PathNode, want []NodeIndex) {
		t.Helper()
		if len(nodes) != len(want) {
			t.Fatalf("leaf %d: %s has %d nodes, want %d", i, what, len(nodes), len(want))
		}
		for k, pn := range nodes {
			x := want[k]
			if pn.Index != x {
				t.Fatalf("leaf %d: %s[%d] is node %d, want %d", i, what, k, pn.Index, x)
			}
			if !sameNode(pn.Node, tree, x) {
				t.Fatalf("leaf %d: %s node %d differs from the tree", i, what, x)
			}
			var res []NodeIndex
			for _, r := range pn.Resolution {
				if !sameNode(r.Node, tree, r.Index) {
					t.Fatalf("leaf %d: resolution node %d of node %d differs from the tree", i, r.Index, x)
				}
				res = append(res, r.Index)
			}
			if want := tree.Resolution(x); !slices.Equal(res, want) {
				t.Fatalf("leaf %d: resolution of %s node %d = %v, want %v", i, what, x, res, want)
			}
		}
	}
	check("direct path", tp.DirectPath, tree.DirectPath(i))
	check("copath", tp.Copath, tree.Copath(i))
	var fdp []NodeIndex
	for _, pn := range tp.FilteredDirectPath() {
		fdp = append(fdp, pn.Index)
	}
	if want := tree.FilteredDirectPath(i); !slices.Equal(fdp, want) {
		t.Fatalf("leaf %d: filtered direct path %v, want %v", i, fdp, want)
	}
}

func sameLeaf(a, b *LeafNode) bool {
	if a == nil || b == nil {
		return a == b
	}
	return bytes.Equal(mustEncode(a), mustEncode(b))
}

func sameNode(n *Node, tree *RatchetTree, x NodeIndex) bool {
	var want *Node
	if x.isLeaf() {
		if ln := tree.Leaf(x.leaf()); ln != nil {
			want = &Node{Leaf: ln}
		}
	} else if pn := tree.Parent(x); pn != nil {
		want = &Node{Parent: pn}
	}
	if n == nil || want == nil {
		return n == nil && want == nil
	}
	return bytes.Equal(mustEncode(n), mustEncode(want))
}

// checkLeavesProof checks the roster proof and a proof for a subset of
// leaves.
func checkLeavesProof(t testing.TB, tree *RatchetTree, subset []LeafIndex) {
	t.Helper()
	p, err := tree.LeavesProof()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := roundTripProof(t, tree, p)
	var want, have []LeafIndex
	for i, ln := range tree.Leaves() {
		want = append(want, i)
		if l, err := got.Leaf(i); err != nil || !sameLeaf(l, ln) {
			t.Fatalf("roster: leaf %d differs (err %v)", i, err)
		}
	}
	for i := range got.Leaves() {
		have = append(have, i)
	}
	if !slices.Equal(have, want) {
		t.Fatalf("roster leaves %v, want %v", have, want)
	}
	p, err = tree.LeavesProof(subset...)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = roundTripProof(t, tree, p)
	for _, i := range subset {
		if l, err := got.Leaf(i); err != nil || !sameLeaf(l, tree.Leaf(i)) {
			t.Fatalf("subset: leaf %d differs (err %v)", i, err)
		}
	}
}

// TestTreeProofValidationVectors builds path proofs for every leaf and
// roster proofs of every tree in tree-validation.json and checks them
// against the tree hashes and resolutions the tree computes (and that
// TestTreeValidationVectors checks against the vectors).
func TestTreeProofValidationVectors(t *testing.T) {
	var vectors []struct {
		CipherSuite CipherSuite `json:"cipher_suite"`
		Tree        hexBytes    `json:"tree"`
		TreeHashes  []hexBytes  `json:"tree_hashes"`
	}
	loadVectors(t, "tree-validation.json", &vectors)
	count := newVectorCount("tree-validation.json")
	for n, v := range vectors {
		if !v.CipherSuite.Supported() {
			count.skip("cipher suite not implemented")
			continue
		}
		t.Run(fmt.Sprintf("entry=%d", n), func(t *testing.T) {
			tree := mustTree(t, v.CipherSuite, v.Tree)
			if !bytes.Equal(tree.TreeHash(), v.TreeHashes[tree.rootIndex()]) {
				t.Fatal("tree hash differs from the vector")
			}
			for i := range tree.LeafCount() {
				checkPathProof(t, tree, LeafIndex(i))
			}
			checkLeavesProof(t, tree, []LeafIndex{0, LeafIndex(tree.LeafCount() - 1)})
			count.pass()
		})
	}
	count.report(t)
}

// randomGroup drives a test group through random adds, commits and
// removes, so that trees have blank parents, unmerged leaves and blank
// leaves.
func randomGroup(t testing.TB, r *rand.Rand, steps int) *testGroup {
	g := newTestGroup(t, 1+r.IntN(4))
	for s := range steps {
		members := slices.Collect(func(yield func(LeafIndex) bool) {
			for i := range g.tree.Leaves() {
				if !yield(i) {
					return
				}
			}
		})
		switch op := r.IntN(10); {
		case op < 5:
			g.add(fmt.Sprintf("member %d", s))
		case op < 8:
			g.commit(members[r.IntN(len(members))])
		case len(members) > 1:
			i := members[r.IntN(len(members))]
			if err := g.tree.RemoveLeaf(i); err != nil {
				t.Fatal(err)
			}
			delete(g.sigPriv, i)
		}
	}
	return g
}

// TestTreeProofRandomTrees checks path and leaf proofs for every leaf of
// random trees.
func TestTreeProofRandomTrees(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 1))
	for k := range 12 {
		g := randomGroup(t, r, 10+r.IntN(40))
		if err := g.tree.Verify(g.groupID); err != nil {
			t.Fatalf("tree %d: %v", k, err)
		}
		for i := range g.tree.LeafCount() {
			checkPathProof(t, g.tree, LeafIndex(i))
		}
		checkLeavesProof(t, g.tree, []LeafIndex{LeafIndex(r.UintN(uint(g.tree.LeafCount())))})
	}
}

// TestTreeProofTamperedByte changes each byte of encoded path and roster
// proofs in turn and checks that decoding or verification fails.
func TestTreeProofTamperedByte(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 2))
	g := randomGroup(t, r, 30)
	tree := g.tree
	cs, want := tree.CipherSuite(), tree.TreeHash()
	var proofs []*TreeProof
	for _, i := range []LeafIndex{0, LeafIndex(tree.LeafCount() - 1), LeafIndex(r.UintN(uint(tree.LeafCount())))} {
		p, err := tree.PathProof(i)
		if err != nil {
			t.Fatal(err)
		}
		proofs = append(proofs, p)
	}
	roster, err := tree.LeavesProof()
	if err != nil {
		t.Fatal(err)
	}
	proofs = append(proofs, roster)
	for n, p := range proofs {
		_, enc := roundTripProof(t, tree, p)
		for pos := range enc {
			for _, mask := range []byte{0x01, 0x80, 0xff} {
				bad := bytes.Clone(enc)
				bad[pos] ^= mask
				var q TreeProof
				if err := q.UnmarshalBinary(bad); err != nil {
					if !errors.Is(err, ErrDecode) {
						t.Fatalf("proof %d, byte %d ^ %#x: decode error %v does not wrap ErrDecode", n, pos, mask, err)
					}
					continue
				}
				err := VerifyTreeProof(cs, &q, want)
				if err == nil {
					t.Fatalf("proof %d (%d bytes): byte %d ^ %#x still verifies", n, len(enc), pos, mask)
				}
				if !errors.Is(err, ErrTreeProof) {
					t.Fatalf("proof %d, byte %d: %v does not wrap ErrTreeProof", n, pos, err)
				}
			}
		}
		for cut := range len(enc) {
			var q TreeProof
			if q.UnmarshalBinary(enc[:cut]) == nil {
				t.Fatalf("proof %d truncated to %d bytes decodes", n, cut)
			}
		}
	}
}

// TestTreeProofRejects covers the other ways a proof must not be accepted
// or read.
func TestTreeProofRejects(t *testing.T) {
	g := newTestGroup(t, 12)
	g.commit(0)
	g.commit(8) // fills nodes 17, 19 and 23, so leaf 0's proof prunes below 23
	tree := g.tree
	p, err := tree.PathProof(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Path(0); !errors.Is(err, ErrTreeProof) {
		t.Fatalf("Path before VerifyTreeProof: %v", err)
	}
	if n := len(slices.Collect(func(yield func(LeafIndex) bool) {
		for i := range p.Leaves() {
			yield(i)
		}
	})); n != 0 {
		t.Fatalf("Leaves before VerifyTreeProof yields %d leaves", n)
	}
	wrong := bytes.Clone(tree.TreeHash())
	wrong[0] ^= 1
	if err := VerifyTreeProof(tree.CipherSuite(), p, wrong); !errors.Is(err, ErrTreeProof) {
		t.Fatalf("wrong tree hash: %v", err)
	}
	if err := VerifyTreeProof(tree.CipherSuite(), p, tree.TreeHash()); err != nil {
		t.Fatal(err)
	}
	// A proof for leaf 0 does not show what leaf 8 needs.
	if _, err := p.Path(8); !errors.Is(err, ErrTreeProof) {
		t.Fatalf("Path(8) from a proof for leaf 0: %v", err)
	}
	if _, err := p.Leaf(8); !errors.Is(err, ErrTreeProof) {
		t.Fatalf("Leaf(8) from a proof for leaf 0: %v", err)
	}
	if _, err := p.Path(LeafIndex(tree.LeafCount())); !errors.Is(err, ErrTreeProof) {
		t.Fatalf("Path outside the tree: %v", err)
	}
	if _, err := tree.PathProof(LeafIndex(tree.LeafCount())); err == nil {
		t.Fatal("PathProof outside the tree succeeded")
	}
	// A proof that only carries the root hash verifies but shows nothing.
	bare := &TreeProof{depth: tree.depth, root: &pnode{kind: proofPruned, hash: tree.TreeHash()}}
	if err := VerifyTreeProof(tree.CipherSuite(), bare, tree.TreeHash()); err != nil {
		t.Fatal(err)
	}
	if _, err := bare.Path(0); !errors.Is(err, ErrTreeProof) {
		t.Fatalf("Path from a bare root hash: %v", err)
	}
	// A leaf entry at a parent position does not decode.
	enc, _ := p.MarshalBinary()
	var q TreeProof
	leafProof := &TreeProof{depth: 0, root: &pnode{kind: proofPresent, node: &Node{Leaf: tree.Leaf(0)}}}
	leafEnc, err := leafProof.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	leafEnc[0] = 1 // depth 1: the root is a parent position
	if q.UnmarshalBinary(leafEnc) == nil {
		t.Fatal("leaf node at a parent position decodes")
	}
	if q.UnmarshalBinary(append(bytes.Clone(enc), 0)) == nil {
		t.Fatal("trailing byte decodes")
	}
}

// TestTreeProofSize checks that a path proof of a large tree is much
// smaller than the tree: it shows O(log n) nodes when every parent is
// filled.
func TestTreeProofSize(t *testing.T) {
	g := newTestGroup(t, 64)
	for i := range LeafIndex(64) {
		if i%7 == 0 {
			g.commit(i)
		}
	}
	p, err := g.tree.PathProof(5)
	if err != nil {
		t.Fatal(err)
	}
	proof, _ := p.MarshalBinary()
	whole, _ := g.tree.MarshalBinary()
	if len(proof)*3 > len(whole) {
		t.Fatalf("path proof %d bytes, whole tree %d bytes", len(proof), len(whole))
	}
}

// FuzzTreeProofDecode checks that decoding never panics, that what decodes
// re-encodes to the same bytes, and that verifying and reading a decoded
// proof never panics.
func FuzzTreeProofDecode(f *testing.F) {
	g := newTestGroup(f, 6)
	g.commit(1)
	g.add("late")
	for _, i := range []LeafIndex{0, 3, 6} {
		p, _ := g.tree.PathProof(i)
		enc, _ := p.MarshalBinary()
		f.Add(enc)
	}
	roster, _ := g.tree.LeavesProof()
	enc, _ := roster.MarshalBinary()
	f.Add(enc)
	f.Add([]byte{0, 1, 1})
	f.Add([]byte{2, 1, 3}) // a blank_subtree entry over the whole tree
	sparse, _ := g.tree.PathProof(6)
	enc, _ = sparse.MarshalBinary()
	f.Add(enc)
	cs := g.tree.CipherSuite()
	f.Fuzz(func(t *testing.T, data []byte) {
		var p TreeProof
		if p.UnmarshalBinary(data) != nil {
			return
		}
		again, err := p.MarshalBinary()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("decoded proof re-encodes differently (err %v)", err)
		}
		if VerifyTreeProof(cs, &p, g.tree.TreeHash()) == nil {
			p.Path(0)
			for range p.Leaves() {
			}
		}
		// Reading after a verification against the proof's own root
		// exercises the readers on arbitrary shapes.
		p.verified = []byte{0}
		for i := range min(p.LeafCount(), 64) {
			p.Path(LeafIndex(i))
		}
		for range p.Leaves() {
		}
	})
}

// sparseTestTree builds a tree of the given number of leaf positions in
// which leaf i is a member if member(i) and each parent over at least one
// member is non-blank with probability fill, with some of the members
// below it as unmerged leaves. Nothing here is signed or parent-hash
// valid: proofs only depend on the encoded nodes.
func sparseTestTree(t testing.TB, r *rand.Rand, leaves int, member func(i int) bool, fill float64) *RatchetTree {
	t.Helper()
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	base, _ := newTestLeaf(t, cs, "sparse member")
	random := func() []byte {
		out := make([]byte, 32)
		for k := range out {
			out[k] = byte(r.UintN(256))
		}
		return out
	}
	last := -1
	for i := range leaves {
		if member(i) {
			last = i
		}
	}
	if last < 0 {
		last = 0 // a tree has at least one member
	}
	nodes := make([]*Node, 2*last+1)
	for i := 0; i <= last; i++ {
		if member(i) || i == last {
			ln := *base
			ln.EncryptionKey = random()
			nodes[2*i] = &Node{Leaf: &ln}
		}
	}
	for x := 1; x < len(nodes); x += 2 {
		var below []LeafIndex
		lo, hi := NodeIndex(x).leafRange()
		for l := lo; l < hi && int(l) <= last; l++ {
			if nodes[2*l] != nil {
				below = append(below, l)
			}
		}
		if len(below) == 0 || r.Float64() >= fill {
			continue
		}
		var unmerged []LeafIndex
		for _, l := range below {
			if r.IntN(8) == 0 {
				unmerged = append(unmerged, l)
			}
		}
		nodes[x] = &Node{Parent: &ParentNode{EncryptionKey: random(), ParentHash: random(), UnmergedLeaves: unmerged}}
	}
	tree, err := NewRatchetTree(cs, nodes)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// countEntries counts the entries of each kind in a proof.
func countEntries(p *TreeProof) map[proofEntryType]int {
	out := map[proofEntryType]int{}
	var walk func(q *pnode)
	walk = func(q *pnode) {
		out[q.kind]++
		if q.left != nil {
			walk(q.left)
			walk(q.right)
		}
	}
	walk(p.root)
	return out
}

// TestTreeProofBlankSubtrees checks, over random sparse trees of various
// sizes and densities, that path and roster proofs with blank_subtree
// entries verify against the tree hash, that Path, Leaf, Leaves and the
// resolutions read from them equal what the full tree answers, and that a
// partial tree built from them computes the same tree hash and
// resolutions.
func TestTreeProofBlankSubtrees(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 7))
	type shape struct {
		name   string
		leaves int
		member func(int) bool
		fill   float64
	}
	shapes := []shape{
		{"every-other", 64, func(i int) bool { return i%2 == 0 }, 1},
		{"every-other-blank-parents", 40, func(i int) bool { return i%2 == 0 }, 0},
		{"right-half-blank", 64, func(i int) bool { return i < 31 || i == 63 }, 1},
		{"one-member", 1, func(int) bool { return true }, 1},
	}
	for k := range 24 {
		leaves := 1 + r.IntN(300)
		density := r.Float64()
		set := make([]bool, leaves)
		for i := range set {
			set[i] = r.Float64() < density
		}
		shapes = append(shapes, shape{fmt.Sprintf("random-%d", k), leaves, func(i int) bool { return set[i] }, r.Float64()})
	}
	markers := 0
	for _, s := range shapes {
		t.Run(s.name, func(t *testing.T) {
			tree := sparseTestTree(t, r, s.leaves, s.member, s.fill)
			step := max(1, int(tree.LeafCount())/24)
			for i := 0; i < int(tree.LeafCount()); i += step + r.IntN(step) {
				checkPathProof(t, tree, LeafIndex(i))
				p, _ := tree.PathProof(LeafIndex(i))
				markers += countEntries(p)[proofBlankSubtree]
				got, _ := roundTripProof(t, tree, p)
				// Leaves yields exactly the non-blank shown leaves.
				for l, ln := range got.Leaves() {
					if !sameLeaf(ln, tree.Leaf(l)) || ln == nil {
						t.Fatalf("leaf %d: Leaves yields leaf %d that differs from the tree", i, l)
					}
				}
				pt, err := newPartialTree(tree.CipherSuite(), got)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(pt.treeHash(), tree.TreeHash()) {
					t.Fatalf("leaf %d: partial tree hash differs", i)
				}
				for _, x := range tree.Copath(LeafIndex(i)) {
					res, err := pt.resolution(x)
					if err != nil {
						t.Fatalf("leaf %d: partial resolution of %d: %v", i, x, err)
					}
					if want := tree.Resolution(x); !slices.Equal(res, want) {
						t.Fatalf("leaf %d: partial resolution of %d = %v, want %v", i, x, res, want)
					}
				}
			}
			checkLeavesProof(t, tree, []LeafIndex{LeafIndex(r.UintN(uint(tree.LeafCount())))})
		})
	}
	if markers == 0 {
		t.Fatal("no proof used a blank_subtree entry")
	}
}

// TestTreeProofForgedBlankSubtree replaces, one at a time, every entry of
// path and roster proofs whose subtree holds a non-blank node with a
// blank_subtree entry, and checks that verification fails; replacing an
// entry whose subtree is all blank still verifies.
func TestTreeProofForgedBlankSubtree(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 8))
	tree := sparseTestTree(t, r, 48, func(i int) bool { return i%3 != 1 && (i < 20 || i > 40) }, 0.5)
	cs, want := tree.CipherSuite(), tree.TreeHash()
	var proofs []*TreeProof
	for _, i := range []LeafIndex{0, 21, 47} {
		p, err := tree.PathProof(i)
		if err != nil {
			t.Fatal(err)
		}
		proofs = append(proofs, p)
	}
	roster, _ := tree.LeavesProof()
	proofs = append(proofs, roster)
	// replaced copies p with the entry at target turned into a marker.
	replaced := func(p *TreeProof, target NodeIndex) *TreeProof {
		var copyEntry func(q *pnode, x NodeIndex) *pnode
		copyEntry = func(q *pnode, x NodeIndex) *pnode {
			if x == target {
				return &pnode{kind: proofBlankSubtree}
			}
			c := *q
			if q.left != nil {
				c.left, c.right = copyEntry(q.left, x.left()), copyEntry(q.right, x.right())
			}
			return &c
		}
		return &TreeProof{depth: p.depth, root: copyEntry(p.root, rootOf(p.LeafCount()))}
	}
	forged, honest := 0, 0
	for n, p := range proofs {
		var entries []NodeIndex
		var walk func(q *pnode, x NodeIndex)
		walk = func(q *pnode, x NodeIndex) {
			entries = append(entries, x)
			if q.left != nil {
				walk(q.left, x.left())
				walk(q.right, x.right())
			}
		}
		walk(p.root, rootOf(p.LeafCount()))
		for _, x := range entries {
			blank := true
			for range tree.Resolution(x) {
				blank = false
			}
			q := replaced(p, x)
			enc, err := q.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			var d TreeProof
			if err := d.UnmarshalBinary(enc); err != nil {
				t.Fatalf("proof %d, marker at %d: %v", n, x, err)
			}
			err = VerifyTreeProof(cs, &d, want)
			switch {
			case blank && err != nil:
				t.Fatalf("proof %d: a marker over the blank subtree at %d fails: %v", n, x, err)
			case blank:
				honest++
			case err == nil:
				t.Fatalf("proof %d: a marker over the non-blank subtree at %d verifies", n, x)
			case !errors.Is(err, ErrTreeProof):
				t.Fatalf("proof %d: %v does not wrap ErrTreeProof", n, err)
			default:
				forged++
			}
		}
	}
	if forged == 0 || honest == 0 {
		t.Fatalf("%d forged and %d honest markers tried", forged, honest)
	}
}

// TestTreeProofBlankSubtreeBound checks that a marker covering more nodes
// than a verifier hashes is refused before any hashing, when decoding and
// when verifying.
func TestTreeProofBlankSubtreeBound(t *testing.T) {
	huge := &TreeProof{depth: maxTreeDepth, root: &pnode{kind: proofBlankSubtree}}
	enc, err := huge.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var d TreeProof
	if err := d.UnmarshalBinary(enc); !errors.Is(err, ErrDecode) {
		t.Fatalf("decoding a marker over 2^%d leaves: %v", maxTreeDepth, err)
	}
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	if err := VerifyTreeProof(cs, huge, make([]byte, cs.HashSize())); !errors.Is(err, ErrTreeProof) {
		t.Fatalf("verifying a marker over 2^%d leaves: %v", maxTreeDepth, err)
	}
	// Just within the bound, a blank tree decodes (a real tree always has
	// a member, so no hash it could match is tested here).
	ok := &TreeProof{depth: 19, root: &pnode{kind: proofBlankSubtree}}
	enc, _ = ok.MarshalBinary()
	if err := d.UnmarshalBinary(enc); err != nil {
		t.Fatalf("marker over 2^19 leaves: %v", err)
	}
}
