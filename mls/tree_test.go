package mls

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

// TestTreeValidationVectors runs every entry of tree-validation.json: the
// tree decodes and re-encodes to the same bytes, every node's resolution and
// tree hash match, and the tree passes Verify with the entry's group ID.
func TestTreeValidationVectors(t *testing.T) {
	var vectors []struct {
		CipherSuite CipherSuite   `json:"cipher_suite"`
		Tree        hexBytes      `json:"tree"`
		GroupID     hexBytes      `json:"group_id"`
		Resolutions [][]NodeIndex `json:"resolutions"`
		TreeHashes  []hexBytes    `json:"tree_hashes"`
	}
	loadVectors(t, "tree-validation.json", &vectors)
	count := newVectorCount("tree-validation.json")
	for n, v := range vectors {
		if !v.CipherSuite.Supported() {
			count.skip("cipher suite not implemented")
			continue
		}
		tree, err := UnmarshalRatchetTree(v.CipherSuite, v.Tree)
		if err != nil {
			t.Errorf("entry %d: %v", n, err)
			continue
		}
		ok := true
		fail := func(format string, args ...any) {
			t.Errorf("entry %d (suite %d): %s", n, v.CipherSuite, fmt.Sprintf(format, args...))
			ok = false
		}
		if enc, err := tree.MarshalBinary(); err != nil || !bytes.Equal(enc, v.Tree) {
			fail("tree does not re-encode to the same bytes (err %v)", err)
		}
		if int(tree.width()) != len(v.TreeHashes) || len(v.Resolutions) != len(v.TreeHashes) {
			fail("tree width %d, vector has %d hashes and %d resolutions", tree.width(), len(v.TreeHashes), len(v.Resolutions))
			continue
		}
		for i := range v.TreeHashes {
			x := NodeIndex(i)
			if got := tree.NodeTreeHash(x); !bytes.Equal(got, v.TreeHashes[i]) {
				fail("tree hash of node %d = %x, want %x", i, got, v.TreeHashes[i])
			}
			if got := tree.Resolution(x); !slices.Equal(got, v.Resolutions[i]) && !(len(got) == 0 && len(v.Resolutions[i]) == 0) {
				fail("resolution of node %d = %v, want %v", i, got, v.Resolutions[i])
			}
		}
		if !bytes.Equal(tree.TreeHash(), v.TreeHashes[tree.rootIndex()]) {
			fail("TreeHash is not the root's hash")
		}
		if err := tree.Verify(v.GroupID); err != nil {
			fail("Verify: %v", err)
		}
		if ok {
			count.pass()
		}
	}
	count.report(t)
}

// TestTreeOperationsVectors runs every entry of tree-operations.json: apply
// the proposal to tree_before and compare the tree and its hash with
// tree_after and tree_hash_after.
func TestTreeOperationsVectors(t *testing.T) {
	var vectors []struct {
		CipherSuite    CipherSuite `json:"cipher_suite"`
		TreeBefore     hexBytes    `json:"tree_before"`
		TreeHashBefore hexBytes    `json:"tree_hash_before"`
		Proposal       hexBytes    `json:"proposal"`
		ProposalSender LeafIndex   `json:"proposal_sender"`
		TreeAfter      hexBytes    `json:"tree_after"`
		TreeHashAfter  hexBytes    `json:"tree_hash_after"`
	}
	loadVectors(t, "tree-operations.json", &vectors)
	count := newVectorCount("tree-operations.json")
	for n, v := range vectors {
		if !v.CipherSuite.Supported() {
			count.skip("cipher suite not implemented")
			continue
		}
		tree, err := UnmarshalRatchetTree(v.CipherSuite, v.TreeBefore)
		if err != nil {
			t.Errorf("entry %d: tree_before: %v", n, err)
			continue
		}
		if !bytes.Equal(tree.TreeHash(), v.TreeHashBefore) {
			t.Errorf("entry %d: tree hash before = %x, want %x", n, tree.TreeHash(), v.TreeHashBefore)
			continue
		}
		before := tree.Clone()
		var p Proposal
		if err := p.UnmarshalBinary(v.Proposal); err != nil {
			t.Errorf("entry %d: proposal: %v", n, err)
			continue
		}
		switch p.ProposalType {
		case ProposalTypeAdd:
			tree.AddLeaf(&p.Add.KeyPackage.LeafNode)
		case ProposalTypeUpdate:
			err = tree.UpdateLeaf(v.ProposalSender, &p.Update.LeafNode)
		case ProposalTypeRemove:
			err = tree.RemoveLeaf(p.Remove.Removed)
		default:
			t.Errorf("entry %d: unexpected proposal type %d", n, p.ProposalType)
			continue
		}
		if err != nil {
			t.Errorf("entry %d: applying proposal type %d: %v", n, p.ProposalType, err)
			continue
		}
		after, err := tree.MarshalBinary()
		if err != nil || !bytes.Equal(after, v.TreeAfter) {
			t.Errorf("entry %d (proposal type %d): tree after differs (err %v)", n, p.ProposalType, err)
			continue
		}
		if !bytes.Equal(tree.TreeHash(), v.TreeHashAfter) {
			t.Errorf("entry %d: tree hash after = %x, want %x", n, tree.TreeHash(), v.TreeHashAfter)
			continue
		}
		// The incremental hash must equal a hash computed from scratch,
		// and the clone taken before must still be the old tree.
		if fresh := mustTree(t, v.CipherSuite, v.TreeAfter); !bytes.Equal(fresh.TreeHash(), v.TreeHashAfter) {
			t.Errorf("entry %d: fresh tree hash differs", n)
			continue
		}
		if enc, _ := before.MarshalBinary(); !bytes.Equal(enc, v.TreeBefore) || !bytes.Equal(before.TreeHash(), v.TreeHashBefore) {
			t.Errorf("entry %d: clone taken before the change was modified", n)
			continue
		}
		count.pass()
	}
	count.report(t)
}

func mustTree(t testing.TB, cs CipherSuite, data []byte) *RatchetTree {
	t.Helper()
	tree, err := UnmarshalRatchetTree(cs, data)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// TestTreeKEMVectorsPublic runs the public half of treekem.json: the tree
// decodes and verifies, and each update path, merged into the tree, gives
// a parent-hash-valid tree with tree_hash_after. Decrypting path secrets
// and checking leaves_private is TestTreeKEMVectorsPrivate (treekem_test.go),
// counted as "treekem.json (private)".
func TestTreeKEMVectorsPublic(t *testing.T) {
	var vectors []struct {
		CipherSuite CipherSuite `json:"cipher_suite"`
		GroupID     hexBytes    `json:"group_id"`
		RatchetTree hexBytes    `json:"ratchet_tree"`
		UpdatePaths []struct {
			Sender        LeafIndex `json:"sender"`
			UpdatePath    hexBytes  `json:"update_path"`
			TreeHashAfter hexBytes  `json:"tree_hash_after"`
		} `json:"update_paths"`
	}
	loadVectors(t, "treekem.json", &vectors)
	// Counted per update path: its public part (merge, parent hashes, tree
	// hash) passes or fails.
	count := newVectorCount("treekem.json (public)")
	for n, v := range vectors {
		if !v.CipherSuite.Supported() {
			for range v.UpdatePaths {
				count.skip("cipher suite not implemented")
			}
			continue
		}
		tree, err := UnmarshalRatchetTree(v.CipherSuite, v.RatchetTree)
		if err != nil {
			t.Errorf("entry %d: ratchet_tree: %v", n, err)
			continue
		}
		if err := tree.Verify(v.GroupID); err != nil {
			t.Errorf("entry %d: ratchet_tree does not verify: %v", n, err)
			continue
		}
		for k, up := range v.UpdatePaths {
			var path UpdatePath
			if err := decode(up.UpdatePath, "UpdatePath", path.unmarshal); err != nil {
				t.Errorf("entry %d path %d: %v", n, k, err)
				continue
			}
			after := tree.Clone()
			want, err := after.PathParentHash(up.Sender, &path)
			if err != nil || !bytes.Equal(want, path.LeafNode.ParentHash) {
				t.Errorf("entry %d path %d: computed leaf parent hash %x, leaf has %x (err %v)", n, k, want, path.LeafNode.ParentHash, err)
				continue
			}
			if err := after.MergeUpdatePath(up.Sender, &path); err != nil {
				t.Errorf("entry %d path %d: merge: %v", n, k, err)
				continue
			}
			if got := after.TreeHash(); !bytes.Equal(got, up.TreeHashAfter) {
				t.Errorf("entry %d path %d: tree hash after = %x, want %x", n, k, got, up.TreeHashAfter)
				continue
			}
			if err := after.verifyParentHashes(); err != nil {
				t.Errorf("entry %d path %d: merged tree: %v", n, k, err)
				continue
			}
			if err := after.Verify(v.GroupID); err != nil {
				t.Errorf("entry %d path %d: merged tree does not verify: %v", n, k, err)
				continue
			}
			count.pass()
		}
	}
	count.report(t)
}

// validationRule returns the Rule and Section of err if it is a
// *ValidationError.
func validationRule(err error) (rule, section string) {
	var ve *ValidationError
	if errors.As(err, &ve) {
		return ve.Rule, ve.Section
	}
	return "", ""
}

func expectRule(t *testing.T, err error, rule, section string) {
	t.Helper()
	if r, s := validationRule(err); r != rule || s != section {
		t.Fatalf("got error %v, want rule %q (§%s)", err, rule, section)
	}
}

// firstValidationTree returns a tree-validation.json entry, decoded twice
// into independent node lists, whose tree has a non-blank parent with a
// non-empty parent_hash.
func validationNodes(t *testing.T) (cs CipherSuite, groupID []byte, fresh func() []*Node) {
	var vectors []struct {
		CipherSuite CipherSuite `json:"cipher_suite"`
		Tree        hexBytes    `json:"tree"`
		GroupID     hexBytes    `json:"group_id"`
	}
	loadVectors(t, "tree-validation.json", &vectors)
	for _, v := range vectors {
		if v.CipherSuite != MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 {
			continue
		}
		decodeNodes := func() []*Node {
			var ext RatchetTreeExtension
			if err := ext.UnmarshalBinary(v.Tree); err != nil {
				t.Fatal(err)
			}
			return ext.Nodes
		}
		for _, n := range decodeNodes() {
			if n != nil && n.Parent != nil && len(n.Parent.ParentHash) > 0 {
				return v.CipherSuite, v.GroupID, decodeNodes
			}
		}
	}
	t.Fatal("no tree-validation entry with a chained parent node")
	return
}

func TestTreeVerifyRejectsTamperedParentHash(t *testing.T) {
	cs, groupID, fresh := validationNodes(t)
	nodes := fresh()
	tree, err := NewRatchetTree(cs, nodes)
	if err != nil {
		t.Fatal(err)
	}
	if err := tree.Verify(groupID); err != nil {
		t.Fatalf("untampered tree: %v", err)
	}
	for _, n := range nodes {
		if n != nil && n.Parent != nil && len(n.Parent.ParentHash) > 0 {
			n.Parent.ParentHash[0] ^= 1
			break
		}
	}
	tree, err = NewRatchetTree(cs, nodes)
	if err != nil {
		t.Fatal(err)
	}
	expectRule(t, tree.Verify(groupID), ruleParentHashValid, "7.9.2")
}

func TestTreeVerifyRejectsBadLeafSignature(t *testing.T) {
	cs, groupID, fresh := validationNodes(t)
	nodes := fresh()
	nodes[len(nodes)-1].Leaf.Signature[5] ^= 0x40
	tree, err := NewRatchetTree(cs, nodes)
	if err != nil {
		t.Fatal(err)
	}
	err = tree.Verify(groupID)
	expectRule(t, err, ruleLeafSignature, "7.3")
	if !errors.Is(err, ErrInvalidSignature) {
		t.Errorf("error %v does not wrap ErrInvalidSignature", err)
	}
	// The right signature under the wrong group fails too, for leaves bound
	// to a group (source update or commit).
	tree = mustNodes(t, cs, fresh())
	bound := false
	for _, ln := range tree.Leaves() {
		bound = bound || ln.LeafNodeSource != LeafNodeSourceKeyPackage
	}
	if bound {
		expectRule(t, tree.Verify([]byte("another group")), ruleLeafSignature, "7.3")
	}
}

func mustNodes(t testing.TB, cs CipherSuite, nodes []*Node) *RatchetTree {
	t.Helper()
	tree, err := NewRatchetTree(cs, nodes)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func TestTreeRejectsMalformedNodeLists(t *testing.T) {
	cs, _, fresh := validationNodes(t)
	nodes := fresh()
	_, err := NewRatchetTree(cs, append(nodes, nil))
	expectRule(t, err, ruleTreeTrailingBlank, "12.4.3.3")
	_, err = NewRatchetTree(cs, nil)
	expectRule(t, err, ruleTreeEmpty, "12.4.3.3")
	swapped := slices.Clone(nodes)
	swapped[0] = &Node{Parent: &ParentNode{EncryptionKey: []byte{1}}}
	_, err = NewRatchetTree(cs, swapped)
	expectRule(t, err, ruleTreeNodeType, "12.4.3.3")
	// On the wire, a trailing blank is a decoding error.
	enc := mustEncode(&RatchetTreeExtension{Nodes: nodes})
	enc = appendTrailingBlank(t, enc)
	if _, err := UnmarshalRatchetTree(cs, enc); !errors.Is(err, ErrDecode) {
		t.Errorf("tree ending in a blank: got %v, want ErrDecode", err)
	}
	if _, err := NewRatchetTree(CipherSuite(0x7777), nodes); err == nil {
		t.Error("unknown suite accepted")
	}
}

// appendTrailingBlank adds one absent optional<Node> to an encoded
// ratchet_tree, fixing up its length prefix.
func appendTrailingBlank(t *testing.T, enc []byte) []byte {
	s := cryptobyte.String(enc)
	var body cryptobyte.String
	if !readVector(&s, &body) || !s.Empty() {
		t.Fatal("bad encoding")
	}
	b := cryptobyte.NewBuilder(nil)
	addOpaque(b, append(slices.Clone([]byte(body)), 0))
	out, err := b.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A test-local tree of members with real keys, for the operations the
// vectors do not cover.
type testGroup struct {
	t       testing.TB
	cs      CipherSuite
	groupID []byte
	tree    *RatchetTree
	sigPriv map[LeafIndex][]byte
}

func newTestLeaf(t testing.TB, cs CipherSuite, name string) (*LeafNode, []byte) {
	t.Helper()
	sigPriv, sigPub, err := cs.GenerateSignatureKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	_, encPub, err := cs.GenerateKEMKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	ln := &LeafNode{
		EncryptionKey:  encPub,
		SignatureKey:   sigPub,
		Credential:     Credential{CredentialType: CredentialTypeBasic, Identity: []byte(name)},
		Capabilities:   Capabilities{Versions: []ProtocolVersion{ProtocolVersionMLS10}, CipherSuites: []CipherSuite{cs}},
		LeafNodeSource: LeafNodeSourceKeyPackage,
		Lifetime:       &Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1},
	}
	if err := ln.Sign(cs, sigPriv, nil, 0); err != nil {
		t.Fatal(err)
	}
	return ln, sigPriv
}

func newTestGroup(t testing.TB, members int) *testGroup {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	g := &testGroup{t: t, cs: cs, groupID: []byte("test group"), sigPriv: map[LeafIndex][]byte{}}
	ln, priv := newTestLeaf(t, cs, "member 0")
	g.tree = mustNodes(t, cs, []*Node{{Leaf: ln}})
	g.sigPriv[0] = priv
	for i := 1; i < members; i++ {
		g.add(fmt.Sprintf("member %d", i))
	}
	return g
}

func (g *testGroup) add(name string) LeafIndex {
	ln, priv := newTestLeaf(g.t, g.cs, name)
	i := g.tree.AddLeaf(ln)
	g.sigPriv[i] = priv
	return i
}

// path builds a signed UpdatePath from sender against the current tree.
func (g *testGroup) path(sender LeafIndex) *UpdatePath {
	g.t.Helper()
	fdp := g.tree.FilteredDirectPath(sender)
	path := &UpdatePath{Nodes: make([]UpdatePathNode, len(fdp))}
	for k := range path.Nodes {
		_, pub, err := g.cs.GenerateKEMKeyPair()
		if err != nil {
			g.t.Fatal(err)
		}
		path.Nodes[k].EncryptionKey = pub
	}
	ln := *g.tree.Leaf(sender)
	_, pub, err := g.cs.GenerateKEMKeyPair()
	if err != nil {
		g.t.Fatal(err)
	}
	ln.EncryptionKey = pub
	ln.LeafNodeSource = LeafNodeSourceCommit
	ln.Lifetime = nil
	if ln.ParentHash, err = g.tree.PathParentHash(sender, path); err != nil {
		g.t.Fatal(err)
	}
	if err := ln.Sign(g.cs, g.sigPriv[sender], g.groupID, sender); err != nil {
		g.t.Fatal(err)
	}
	path.LeafNode = ln
	return path
}

func (g *testGroup) commit(sender LeafIndex) {
	g.t.Helper()
	if err := g.tree.MergeUpdatePath(sender, g.path(sender)); err != nil {
		g.t.Fatalf("commit from %d: %v", sender, err)
	}
}

// check verifies the tree and compares its incrementally maintained hash
// with one computed from scratch.
func (g *testGroup) check(what string) {
	g.t.Helper()
	if err := g.tree.Verify(g.groupID); err != nil {
		g.t.Fatalf("%s: %v", what, err)
	}
	enc, err := g.tree.MarshalBinary()
	if err != nil {
		g.t.Fatal(err)
	}
	fresh := mustTree(g.t, g.cs, enc)
	if !bytes.Equal(fresh.TreeHash(), g.tree.TreeHash()) {
		g.t.Fatalf("%s: cached tree hash differs from a fresh computation", what)
	}
	if fresh.LeafCount() != g.tree.LeafCount() || fresh.MemberCount() != g.tree.MemberCount() {
		g.t.Fatalf("%s: re-decoded tree has a different shape", what)
	}
}

// TestTreeCommitsAddsRemoves drives a tree through commits, adds (which
// leave unmerged leaves under parent nodes), updates and removes, checking
// after each step that the tree verifies (parent hashes, unmerged leaves,
// signatures) and that the cached tree hash is right.
func TestTreeCommitsAddsRemoves(t *testing.T) {
	g := newTestGroup(t, 5)
	g.check("after adds")
	if g.tree.LeafCount() != 8 || g.tree.MemberCount() != 5 {
		t.Fatalf("5 members: LeafCount %d, MemberCount %d", g.tree.LeafCount(), g.tree.MemberCount())
	}
	g.commit(0)
	g.check("commit 0")
	g.commit(4)
	g.check("commit 4")
	// Adds now land under non-blank parents and become unmerged there.
	a := g.add("member 5")
	b := g.add("member 6")
	if a != 5 || b != 6 {
		t.Fatalf("adds went to %d, %d, want 5, 6", a, b)
	}
	root := g.tree.rootIndex()
	if got := g.tree.Parent(root).UnmergedLeaves; !slices.Equal(got, []LeafIndex{5, 6}) {
		t.Fatalf("root unmerged leaves = %v, want [5 6]", got)
	}
	if res := g.tree.Resolution(root); !slices.Equal(res, []NodeIndex{root, 10, 12}) {
		t.Fatalf("root resolution = %v", res)
	}
	g.check("adds under committed parents")
	g.commit(1) // sibling subtree of the root holds unmerged leaves: original sibling tree hash
	g.check("commit 1 with unmerged leaves elsewhere")
	g.commit(6)
	g.check("commit 6")
	// Update blanks the direct path.
	ln := *g.tree.Leaf(2)
	_, ln.EncryptionKey, _ = g.cs.GenerateKEMKeyPair()
	ln.LeafNodeSource, ln.Lifetime = LeafNodeSourceUpdate, nil
	if err := ln.Sign(g.cs, g.sigPriv[2], g.groupID, 2); err != nil {
		t.Fatal(err)
	}
	if err := g.tree.UpdateLeaf(2, &ln); err != nil {
		t.Fatal(err)
	}
	for _, x := range g.tree.DirectPath(2) {
		if !g.tree.IsBlank(x) {
			t.Fatalf("node %d on the updated leaf's direct path is not blank", x)
		}
	}
	g.check("update 2")
	// Removes, down to truncation.
	for _, i := range []LeafIndex{6, 5} {
		if err := g.tree.RemoveLeaf(i); err != nil {
			t.Fatal(err)
		}
		delete(g.sigPriv, i)
		g.check(fmt.Sprintf("remove %d", i))
	}
	if g.tree.LeafCount() != 8 {
		t.Fatalf("LeafCount %d after removing 6 and 5, want 8 (leaf 4 remains)", g.tree.LeafCount())
	}
	if err := g.tree.RemoveLeaf(4); err != nil {
		t.Fatal(err)
	}
	g.check("remove 4")
	if g.tree.LeafCount() != 4 {
		t.Fatalf("LeafCount %d after removing leaf 4, want 4", g.tree.LeafCount())
	}
	// Removing a blank leaf, or one outside the tree, is rejected.
	expectRule(t, g.tree.RemoveLeaf(4), ruleLeafIndex, "12.1.3")
	g.commit(0)
	if err := g.tree.RemoveLeaf(1); err != nil {
		t.Fatal(err)
	}
	expectRule(t, g.tree.RemoveLeaf(1), ruleRemoveBlank, "12.1.3")
	expectRule(t, g.tree.UpdateLeaf(1, &ln), ruleUpdateBlank, "12.1.2")
	// The new member goes to the leftmost blank leaf.
	if i := g.add("member 7"); i != 1 {
		t.Fatalf("add went to %d, want 1", i)
	}
	g.check("refill")
}

// TestTreeMergeRejects checks that a wrong parent hash or path length is
// reported and leaves the tree unchanged.
func TestTreeMergeRejects(t *testing.T) {
	g := newTestGroup(t, 6)
	g.commit(3)
	hash := g.tree.TreeHash()
	path := g.path(1)
	bad := *path
	bad.LeafNode.ParentHash = slices.Clone(path.LeafNode.ParentHash)
	bad.LeafNode.ParentHash[0] ^= 1
	expectRule(t, g.tree.MergeUpdatePath(1, &bad), rulePathLeafHash, "7.9.2")
	short := *path
	short.Nodes = path.Nodes[1:]
	expectRule(t, g.tree.MergeUpdatePath(1, &short), rulePathLength, "7.6")
	if !bytes.Equal(g.tree.TreeHash(), hash) {
		t.Fatal("a rejected merge changed the tree")
	}
	if err := g.tree.MergeUpdatePath(1, path); err != nil {
		t.Fatal(err)
	}
	g.check("valid merge after rejected ones")
}

func TestTreeVerifyRejectsDuplicateKeys(t *testing.T) {
	g := newTestGroup(t, 3)
	g.check("fresh")
	// Leaf 2 takes leaf 0's encryption key and re-signs: only the
	// uniqueness rule is broken.
	ln := *g.tree.Leaf(2)
	ln.EncryptionKey = g.tree.Leaf(0).EncryptionKey
	if err := ln.Sign(g.cs, g.sigPriv[2], nil, 0); err != nil {
		t.Fatal(err)
	}
	dup := g.tree.Clone()
	if err := dup.UpdateLeaf(2, &ln); err != nil {
		t.Fatal(err)
	}
	expectRule(t, dup.Verify(g.groupID), ruleEncKeyUnique, "12.4.3.1")
	// The same with a signature key.
	ln = *g.tree.Leaf(2)
	ln.SignatureKey = g.tree.Leaf(1).SignatureKey
	if err := ln.Sign(g.cs, g.sigPriv[1], nil, 0); err != nil {
		t.Fatal(err)
	}
	dup = g.tree.Clone()
	if err := dup.UpdateLeaf(2, &ln); err != nil {
		t.Fatal(err)
	}
	expectRule(t, dup.Verify(g.groupID), ruleSigKeyUnique, "7.3")
	// A parent node reusing a leaf's key.
	g.commit(0)
	nodes := g.tree.Nodes()
	p := *nodes[1].Parent
	p.EncryptionKey = g.tree.Leaf(2).EncryptionKey
	nodes[1] = &Node{Parent: &p}
	expectRule(t, mustNodes(t, g.cs, nodes).Verify(g.groupID), ruleEncKeyUnique, "12.4.3.1")
	// The original is untouched by all of this.
	g.check("original after clones changed")
}

func TestTreeVerifyRejectsBadUnmergedLeaves(t *testing.T) {
	g := newTestGroup(t, 5)
	g.commit(0)
	g.add("member 5") // unmerged at the root only
	g.check("fresh")
	root := g.tree.rootIndex()
	edit := func(f func(p *ParentNode)) *RatchetTree {
		nodes := g.tree.Nodes()
		p := *nodes[root].Parent
		p.UnmergedLeaves = slices.Clone(p.UnmergedLeaves)
		f(&p)
		nodes[root] = &Node{Parent: &p}
		return mustNodes(t, g.cs, nodes)
	}
	// A blank leaf listed as unmerged.
	tree := edit(func(p *ParentNode) { p.UnmergedLeaves = append(p.UnmergedLeaves, 6) })
	expectRule(t, tree.Verify(g.groupID), ruleUnmergedLeaf, "12.4.3.1")
	// A leaf outside the tree.
	tree = edit(func(p *ParentNode) { p.UnmergedLeaves = append(p.UnmergedLeaves, 100) })
	expectRule(t, tree.Verify(g.groupID), ruleUnmergedLeaf, "12.4.3.1")
	// Leaf 1 unmerged at the root but not at the non-blank node 1 between.
	tree = edit(func(p *ParentNode) { p.UnmergedLeaves = append(p.UnmergedLeaves, 1) })
	expectRule(t, tree.Verify(g.groupID), ruleUnmergedChain, "12.4.3.1")
	// Dropping the unmerged entry breaks the parent-hash link instead.
	tree = edit(func(p *ParentNode) { p.UnmergedLeaves = nil })
	expectRule(t, tree.Verify(g.groupID), ruleParentHashValid, "7.9.2")
}

// TestTreeCloneIsolation applies random operations to a tree and to clones
// of it, checking that a clone never sees later changes to its source and
// that cached hashes always equal a fresh computation.
func TestTreeCloneIsolation(t *testing.T) {
	g := newTestGroup(t, 3)
	rng := rand.New(rand.NewPCG(1, 2))
	type snap struct {
		tree *RatchetTree
		enc  []byte
		hash []byte
	}
	var snaps []snap
	for step := range 60 {
		c := g.tree.Clone()
		enc, _ := c.MarshalBinary()
		snaps = append(snaps, snap{c, enc, c.TreeHash()})
		members := slices.Collect(func(yield func(LeafIndex) bool) {
			for i := range g.tree.Leaves() {
				if !yield(i) {
					return
				}
			}
		})
		switch op := rng.IntN(4); {
		case op == 0 || len(members) < 3:
			g.add(fmt.Sprintf("m%d", step))
		case op == 1:
			i := members[rng.IntN(len(members))]
			if err := g.tree.RemoveLeaf(i); err != nil {
				t.Fatal(err)
			}
			delete(g.sigPriv, i)
		default:
			g.commit(members[rng.IntN(len(members))])
		}
		g.check(fmt.Sprintf("step %d", step))
	}
	for k, s := range snaps {
		enc, _ := s.tree.MarshalBinary()
		if !bytes.Equal(enc, s.enc) || !bytes.Equal(s.tree.TreeHash(), s.hash) {
			t.Fatalf("snapshot %d changed after its source was modified", k)
		}
	}
}

// TestTreeExtendTruncate checks the tree width as members come and go
// (§7.7): it doubles when full and halves while the right half is empty.
func TestTreeExtendTruncate(t *testing.T) {
	g := newTestGroup(t, 1)
	for n := 2; n <= 9; n++ {
		g.add("m")
		want := uint32(1)
		for want < uint32(n) {
			want *= 2
		}
		if g.tree.LeafCount() != want {
			t.Fatalf("%d members: LeafCount %d, want %d", n, g.tree.LeafCount(), want)
		}
	}
	g.check("9 members")
	for i := LeafIndex(8); i >= 1; i-- {
		if err := g.tree.RemoveLeaf(i); err != nil {
			t.Fatal(err)
		}
		want := uint32(1)
		for want < uint32(i) {
			want *= 2
		}
		if g.tree.LeafCount() != want {
			t.Fatalf("after removing leaf %d: LeafCount %d, want %d", i, g.tree.LeafCount(), want)
		}
	}
	g.check("1 member")
}

// TestTreeClonesConcurrent uses clones of one tree from two goroutines; run
// with -race it shows that clones share no mutable state.
func TestTreeClonesConcurrent(t *testing.T) {
	g := newTestGroup(t, 20)
	g.commit(3)
	// Leave the hash cache of the source incomplete before cloning.
	extra, _ := newTestLeaf(t, g.cs, "extra")
	g.tree.AddLeaf(extra)
	want := g.tree.Clone()
	leaves := make([]*LeafNode, 2)
	for k := range leaves {
		leaves[k], _ = newTestLeaf(t, g.cs, fmt.Sprint("concurrent ", k))
	}
	done := make(chan []byte, 2)
	for k := range 2 {
		c := g.tree.Clone()
		go func() {
			c.AddLeaf(leaves[k])
			if err := c.RemoveLeaf(LeafIndex(k)); err != nil {
				panic(err)
			}
			c.Verify(g.groupID)
			done <- c.TreeHash()
		}()
	}
	h1, h2 := <-done, <-done
	if bytes.Equal(h1, h2) {
		t.Error("different changes gave the same tree hash")
	}
	if !bytes.Equal(g.tree.TreeHash(), want.TreeHash()) {
		t.Error("source changed by changes to its clones")
	}
}
