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
