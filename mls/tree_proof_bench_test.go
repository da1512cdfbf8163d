package mls

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkTreeProofSize compares, for the synthetic trees of benchTree
// (every parent above a member filled, as after everyone has committed),
// the encoded size of a path proof (leaf, direct path, copath, their
// resolutions and the pruned subtree hashes) with the size of the whole
// tree in ratchet_tree encoding, and the size of a roster proof. The time
// per iteration is building and encoding the path proof of leaf n/3
// (path-bytes); verifying it is reported as verify-ns. path-bytes-first
// and path-bytes-last are the sizes for the first and the last member.
func BenchmarkTreeProofSize(b *testing.B) {
	for _, n := range []int{100, 1000, 10000, 50000} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			tree := benchTree(b, n)
			whole, err := tree.MarshalBinary()
			if err != nil {
				b.Fatal(err)
			}
			roster, err := tree.LeavesProof()
			if err != nil {
				b.Fatal(err)
			}
			rosterEnc, err := roster.MarshalBinary()
			if err != nil {
				b.Fatal(err)
			}
			leaf := LeafIndex(n / 3)
			var enc []byte
			b.ResetTimer()
			for b.Loop() {
				p, err := tree.PathProof(leaf)
				if err != nil {
					b.Fatal(err)
				}
				if enc, err = p.MarshalBinary(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			var p TreeProof
			if err := p.UnmarshalBinary(enc); err != nil {
				b.Fatal(err)
			}
			const rounds = 20
			start := time.Now()
			for range rounds {
				if err := VerifyTreeProof(tree.CipherSuite(), &p, tree.TreeHash()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/rounds, "verify-ns")
			b.ReportMetric(float64(len(enc)), "path-bytes")
			// The size depends on the leaf: a copath node whose subtree
			// reaches into the blank leaves beyond the last member has a
			// resolution that runs through blank nodes, and the proof
			// shows each of them (one byte per blank node).
			for _, l := range []LeafIndex{0, LeafIndex(n - 1)} {
				q, err := tree.PathProof(l)
				if err != nil {
					b.Fatal(err)
				}
				qe, err := q.MarshalBinary()
				if err != nil {
					b.Fatal(err)
				}
				name := "path-bytes-first"
				if l != 0 {
					name = "path-bytes-last"
				}
				b.ReportMetric(float64(len(qe)), name)
			}
			b.ReportMetric(float64(len(whole)), "tree-bytes")
			b.ReportMetric(float64(len(rosterEnc)), "roster-bytes")
			b.ReportMetric(float64(len(whole))/float64(len(enc)), "tree/path")
		})
	}
}

// sparseBenchTree builds a tree whose members sit at the leaves for which
// member(i) holds, i < leaves, with every parent over at least one member
// non-blank (as after everyone has committed) and every other node blank.
// Like benchTree, the leaves share one signature key pair.
func sparseBenchTree(b *testing.B, leaves int, member func(i int) bool) *RatchetTree {
	b.Helper()
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	sigPriv, sigPub, err := cs.GenerateSignatureKeyPair()
	if err != nil {
		b.Fatal(err)
	}
	last := -1
	for i := range leaves {
		if member(i) {
			last = i
		}
	}
	nodes := make([]*Node, 2*last+1)
	for i := 0; i <= last; i++ {
		if member(i) {
			nodes[2*i] = &Node{Leaf: benchLeaf(b, cs, sigPriv, sigPub, i)}
		}
	}
	for x := 1; x < len(nodes); x += 2 {
		lo, hi := NodeIndex(x).leafRange()
		for l := lo; l < hi && int(l) <= last; l++ {
			if nodes[2*l] != nil {
				nodes[x] = &Node{Parent: &ParentNode{EncryptionKey: benchRandom(32), ParentHash: benchRandom(32)}}
				break
			}
		}
	}
	tree, err := NewRatchetTree(cs, nodes)
	if err != nil {
		b.Fatal(err)
	}
	tree.TreeHash()
	return tree
}

// BenchmarkPathProof measures what GetPath costs the server: building the
// path proof of a member and encoding it, for 10,000 members in two
// half-empty trees: every other leaf blank (20,000 leaves in a tree of
// 32,768), and the right half blank (members at leaves 0..9998 and at the
// last leaf 19,999, as after removing a block of members). The iterations
// cycle through 16 members spread over the tree. path-bytes is the mean
// encoded size, verify-ns the time to decode and verify one proof.
func BenchmarkPathProof(b *testing.B) {
	cases := []struct {
		name   string
		leaves int
		member func(int) bool
	}{
		{"10000-half-empty", 20000, func(i int) bool { return i%2 == 0 }},
		{"10000-right-half-blank", 20000, func(i int) bool { return i < 9999 || i == 19999 }},
		{"10000-full", 10000, func(int) bool { return true }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			tree := sparseBenchTree(b, c.leaves, c.member)
			var who []LeafIndex
			for i := range c.leaves {
				if c.member(i) {
					who = append(who, LeafIndex(i))
				}
			}
			if len(who) != 10000 {
				b.Fatalf("%d members", len(who))
			}
			var pick []LeafIndex
			for k := range 16 {
				pick = append(pick, who[k*len(who)/16+k])
			}
			pick[15] = who[len(who)-1]
			encs := make([][]byte, len(pick))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				k := i % len(pick)
				p, err := tree.PathProof(pick[k])
				if err != nil {
					b.Fatal(err)
				}
				if encs[k], err = p.MarshalBinary(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			total, start := 0, time.Now()
			for k, enc := range encs {
				if enc == nil {
					continue
				}
				total += len(enc)
				var p TreeProof
				if err := p.UnmarshalBinary(enc); err != nil {
					b.Fatal(err)
				}
				if err := VerifyTreeProof(tree.CipherSuite(), &p, tree.TreeHash()); err != nil {
					b.Fatal(err)
				}
				if _, err := p.Path(pick[k]); err != nil {
					b.Fatal(err)
				}
			}
			if n := len(encs); encs[n-1] != nil {
				b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(n), "verify-ns")
				b.ReportMetric(float64(total)/float64(n), "path-bytes")
			}
		})
	}
}
