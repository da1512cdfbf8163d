package mls

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// Benchmarks of HandleCommit as a Delivery Service runs it, on synthetic
// groups of 100, 1,000 and 10,000 members. The cost must not grow with the
// group: the tree is persistent (Clone is O(1), a change copies one path),
// tree hashes are cached per node, and the key uniqueness index is a
// persistent hash trie updated by diffing the changed paths, so a Commit
// costs its signatures plus O(log n) hashing.
//
// The synthetic groups are "full": every member has its own signature key
// pair and HPKE key, every parent node above two non-empty subtrees holds
// a key, and the parent hashes chain as if each parent had last been set
// by a Commit from its leftmost descendant, so the tree passes
// RatchetTree.Verify and the bootstrap checks of NewPublicGroupState.
// Every leaf is signed with its own key.

var dsBenchGroups struct {
	sync.Mutex
	m map[int]*dsGroup
}

// dsBenchGroup returns a cached synthetic group of n members.
func dsBenchGroup(b *testing.B, n int) *dsGroup {
	dsBenchGroups.Lock()
	defer dsBenchGroups.Unlock()
	if g, ok := dsBenchGroups.m[n]; ok {
		return g
	}
	if dsBenchGroups.m == nil {
		dsBenchGroups.m = map[int]*dsGroup{}
	}
	g := newSyntheticGroup(b, dsSuite, n)
	dsBenchGroups.m[n] = g
	return g
}

// newSyntheticGroup builds a full tree of n members directly (see above)
// and bootstraps a PublicGroupState from it.
func newSyntheticGroup(t testing.TB, cs CipherSuite, n int) *dsGroup {
	t.Helper()
	g := &dsGroup{t: t, cs: cs, groupID: []byte("synthetic group"), members: map[LeafIndex]*testMember{}, pending: map[string]*testMember{}}
	depth := uint32(0)
	for 1<<depth < n {
		depth++
	}
	width := uint32(1) << depth
	nodes := make([]*Node, nodeWidth(width))
	hashes := make([][]byte, len(nodes))
	h := &RatchetTree{cs: cs}

	var treeHash func(x NodeIndex) []byte
	treeHash = func(x NodeIndex) []byte {
		if hashes[x] != nil {
			return hashes[x]
		}
		if x.isLeaf() {
			var ln *LeafNode
			if nodes[x] != nil {
				ln = nodes[x].Leaf
			}
			hashes[x] = h.leafHash(x.leaf(), ln)
		} else {
			var p *ParentNode
			if nodes[x] != nil {
				p = nodes[x].Parent
			}
			hashes[x] = h.parentNodeHash(p, treeHash(x.left()), treeHash(x.right()))
		}
		return hashes[x]
	}
	hasMembers := func(x NodeIndex) bool {
		lo, _ := x.leafRange()
		return int(lo) < n
	}
	// fill sets the subtree under x; link is the parent hash that the
	// topmost non-blank node of x's leftmost chain carries, or nil.
	var fill func(x NodeIndex, link []byte)
	fill = func(x NodeIndex, link []byte) {
		if !hasMembers(x) {
			return
		}
		if x.isLeaf() {
			i := x.leaf()
			m := newTestMember(t, cs, "member-"+itoa(int(i)))
			g.members[i] = m
			leaf := &m.kp.LeafNode
			if link != nil {
				leaf = m.groupLeaf(t, LeafNodeSourceCommit, g.groupID, i, func(ln *LeafNode) { ln.ParentHash = link })
			}
			nodes[x] = &Node{Leaf: leaf}
			return
		}
		if !hasMembers(x.right()) {
			fill(x.left(), link)
			return
		}
		_, pub, err := cs.GenerateKEMKeyPair()
		if err != nil {
			t.Fatal(err)
		}
		p := &ParentNode{EncryptionKey: pub, ParentHash: link}
		nodes[x] = &Node{Parent: p}
		fill(x.right(), nil)
		fill(x.left(), h.parentHash(p.EncryptionKey, p.ParentHash, treeHash(x.right())))
	}
	fill(rootOf(width), nil)
	end := len(nodes)
	for nodes[end-1] == nil {
		end--
	}
	tree, err := NewRatchetTree(cs, nodes[:end])
	if err != nil {
		t.Fatal(err)
	}
	gi := &GroupInfo{
		GroupContext: GroupContext{
			Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: g.groupID, Epoch: 7,
			TreeHash: tree.TreeHash(), ConfirmedTranscriptHash: dsRandom(cs.HashSize()),
		},
		ConfirmationTag: dsRandom(cs.HashSize()),
	}
	if err := gi.Sign(g.members[0].sigPriv); err != nil {
		t.Fatal(err)
	}
	if g.s, err = NewPublicGroupState(gi, tree); err != nil {
		t.Fatal(err)
	}
	return g
}

// TestSyntheticGroup checks the benchmark groups: valid at bootstrap, and
// Add and UpdatePath Commits go through.
func TestSyntheticGroup(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5, 37} {
		g := newSyntheticGroup(t, dsSuite, n)
		if int(g.s.Tree().MemberCount()) != n {
			t.Fatalf("%d members, want %d", g.s.Tree().MemberCount(), n)
		}
		g.apply(g.commit(0, g.add(newTestMember(t, dsSuite, "new"))).msg())
		g.apply(g.commit(LeafIndex(n / 2)).withPath().msg())
	}
}

var dsBenchSizes = []int{100, 1000, 10000}

// BenchmarkHandleCommitAdd measures an Add-only Commit (no path): three
// signature verifications (Commit, KeyPackage, its leaf), the new leaf's
// path copied and rehashed.
func BenchmarkHandleCommitAdd(b *testing.B) {
	for _, n := range dsBenchSizes {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			g := dsBenchGroup(b, n)
			g.t = b
			msg := g.commit(0, g.add(newTestMember(b, dsSuite, "joiner"))).msg()
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := g.s.HandleCommit(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHandleCommitPath measures an empty Commit with an UpdatePath
// from leaf 0, whose filtered direct path is the whole direct path: two
// signature verifications, the UpdatePath checks (§7.6, §12.4.2), the
// parent-hash chain (§7.9.2) and the merge.
func BenchmarkHandleCommitPath(b *testing.B) {
	for _, n := range dsBenchSizes {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			g := dsBenchGroup(b, n)
			g.t = b
			msg := g.commit(0).withPath().msg()
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := g.s.HandleCommit(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkValidateKeyPackage measures the §10.1 checks a Delivery Service
// runs on every uploaded KeyPackage, per cipher suite: two signature
// verifications and two HPKE public key parses.
func BenchmarkValidateKeyPackage(b *testing.B) {
	for cs := CipherSuite(1); cs <= 7; cs++ {
		b.Run(cs.String(), func(b *testing.B) {
			m := newTestMember(b, cs, "bench")
			b.ReportAllocs()
			for b.Loop() {
				if err := ValidateKeyPackage(m.kp, testNow, 90*24*time.Hour); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
