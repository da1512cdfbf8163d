package mls

import (
	"crypto/rand"
	"fmt"
	"testing"
)

// The benchmarks below measure the tree work a Commit costs at 100, 1,000
// and 10,000 members. Each iteration starts from a Clone of the same base
// tree, as a state machine applying a Commit would, so Clone is included.
//
// The base trees are synthetic: every leaf is a signed key_package
// LeafNode with its own random X25519 encryption key, but all leaves share
// one Ed25519 signature key pair (generating and signing with 10,000 key
// pairs would only slow down setup; nothing here verifies signatures or
// key uniqueness). Every parent whose subtree holds a member is non-blank
// with no unmerged leaves, as after everyone has committed, so filtered
// direct paths have full length.

var benchSizes = []int{100, 1000, 10000}

// benchTree builds a tree of n members, with its hash cache filled.
func benchTree(b *testing.B, n int) *RatchetTree {
	b.Helper()
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	sigPriv, sigPub, err := cs.GenerateSignatureKeyPair()
	if err != nil {
		b.Fatal(err)
	}
	leaves := uint32(1)
	for leaves < uint32(n) {
		leaves *= 2
	}
	nodes := make([]*Node, 2*n-1)
	for i := 0; i < n; i++ {
		nodes[2*i] = &Node{Leaf: benchLeaf(b, cs, sigPriv, sigPub, i)}
	}
	for x := 1; x < len(nodes); x += 2 {
		lo, _ := NodeIndex(x).leafRange()
		if int(lo) < n {
			nodes[x] = &Node{Parent: &ParentNode{EncryptionKey: benchRandom(32), ParentHash: benchRandom(32)}}
		}
	}
	tree, err := NewRatchetTree(cs, nodes)
	if err != nil {
		b.Fatal(err)
	}
	if tree.MemberCount() != uint32(n) || tree.LeafCount() != leaves {
		b.Fatalf("bench tree: %d members in %d leaves", tree.MemberCount(), tree.LeafCount())
	}
	tree.TreeHash()
	return tree
}

func benchLeaf(b *testing.B, cs CipherSuite, sigPriv, sigPub []byte, i int) *LeafNode {
	ln := &LeafNode{
		EncryptionKey:  benchRandom(32),
		SignatureKey:   sigPub,
		Credential:     Credential{CredentialType: CredentialTypeBasic, Identity: fmt.Appendf(nil, "member-%06d@example.com", i)},
		Capabilities:   Capabilities{Versions: []ProtocolVersion{ProtocolVersionMLS10}, CipherSuites: []CipherSuite{cs}},
		LeafNodeSource: LeafNodeSourceKeyPackage,
		Lifetime:       &Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1},
	}
	if err := ln.Sign(cs, sigPriv, nil, 0); err != nil {
		b.Fatal(err)
	}
	return ln
}

func benchRandom(n int) []byte {
	out := make([]byte, n)
	rand.Read(out)
	return out
}

// BenchmarkTreeAddLeaf: Clone, add one member, recompute the tree hash.
func BenchmarkTreeAddLeaf(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			base := benchTree(b, n)
			sigPriv, sigPub, _ := base.cs.GenerateSignatureKeyPair()
			ln := benchLeaf(b, base.cs, sigPriv, sigPub, n)
			b.ReportAllocs()
			for b.Loop() {
				t := base.Clone()
				t.AddLeaf(ln)
				if t.TreeHash() == nil {
					b.Fatal("no tree hash")
				}
			}
		})
	}
}

// BenchmarkTreeMergeUpdatePath: Clone, merge a full-length UpdatePath from
// leaf 0 (which computes and checks the parent hashes), recompute the tree
// hash.
func BenchmarkTreeMergeUpdatePath(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			base := benchTree(b, n)
			fdp := base.FilteredDirectPath(0)
			path := &UpdatePath{LeafNode: *base.Leaf(0), Nodes: make([]UpdatePathNode, len(fdp))}
			for k := range path.Nodes {
				path.Nodes[k].EncryptionKey = benchRandom(32)
			}
			path.LeafNode.LeafNodeSource = LeafNodeSourceCommit
			path.LeafNode.Lifetime = nil
			path.LeafNode.EncryptionKey = benchRandom(32)
			ph, err := base.PathParentHash(0, path)
			if err != nil {
				b.Fatal(err)
			}
			path.LeafNode.ParentHash = ph // not re-signed: merging does not verify signatures
			b.ReportMetric(float64(len(fdp)), "path-nodes")
			b.ReportAllocs()
			for b.Loop() {
				t := base.Clone()
				if err := t.MergeUpdatePath(0, path); err != nil {
					b.Fatal(err)
				}
				if t.TreeHash() == nil {
					b.Fatal("no tree hash")
				}
			}
		})
	}
}

// BenchmarkTreeClone: the copy a state machine takes before applying a
// Commit.
func BenchmarkTreeClone(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			base := benchTree(b, n)
			b.ReportAllocs()
			for b.Loop() {
				_ = base.Clone()
			}
		})
	}
}

// BenchmarkTreeHashFromScratch: hashing every node, as after decoding a
// tree on join; for comparison with the incremental cost above.
func BenchmarkTreeHashFromScratch(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			nodes := benchTree(b, n).Nodes()
			b.ReportAllocs()
			for b.Loop() {
				t, err := NewRatchetTree(MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, nodes)
				if err != nil {
					b.Fatal(err)
				}
				t.TreeHash()
			}
		})
	}
}
