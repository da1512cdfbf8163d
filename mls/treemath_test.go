package mls

import (
	"slices"
	"testing"
)

// TestTreeMathVectors checks the Appendix C arithmetic against every entry of
// tree-math.json: root, and for every node its left and right children,
// parent and sibling (null where the relation does not exist).
func TestTreeMathVectors(t *testing.T) {
	var vectors []struct {
		NLeaves uint32    `json:"n_leaves"`
		NNodes  uint32    `json:"n_nodes"`
		Root    NodeIndex `json:"root"`
		Left    []*NodeIndex
		Right   []*NodeIndex
		Parent  []*NodeIndex
		Sibling []*NodeIndex
	}
	loadVectors(t, "tree-math.json", &vectors)
	count := newVectorCount("tree-math.json")
	for _, v := range vectors {
		ok := true
		check := func(what string, x NodeIndex, got *NodeIndex, want *NodeIndex) {
			if (got == nil) != (want == nil) || got != nil && *got != *want {
				t.Errorf("n_leaves=%d %s(%d) = %v, want %v", v.NLeaves, what, x, deref(got), deref(want))
				ok = false
			}
		}
		if w := nodeWidth(v.NLeaves); w != v.NNodes {
			t.Errorf("nodeWidth(%d) = %d, want %d", v.NLeaves, w, v.NNodes)
			ok = false
		}
		if r := rootOf(v.NLeaves); r != v.Root {
			t.Errorf("rootOf(%d) = %d, want %d", v.NLeaves, r, v.Root)
			ok = false
		}
		if len(v.Left) != int(v.NNodes) || len(v.Right) != int(v.NNodes) ||
			len(v.Parent) != int(v.NNodes) || len(v.Sibling) != int(v.NNodes) {
			t.Fatalf("n_leaves=%d: vector arrays do not have n_nodes entries", v.NLeaves)
		}
		for i := range v.NNodes {
			x := NodeIndex(i)
			var l, r, p, s *NodeIndex
			if !x.isLeaf() {
				l, r = ptr(x.left()), ptr(x.right())
			}
			if x != v.Root {
				p, s = ptr(x.parent(v.NLeaves)), ptr(x.sibling(v.NLeaves))
			}
			check("left", x, l, v.Left[i])
			check("right", x, r, v.Right[i])
			check("parent", x, p, v.Parent[i])
			check("sibling", x, s, v.Sibling[i])
		}
		if ok {
			count.pass()
		}
	}
	count.report(t)
}

func ptr[T any](v T) *T { return &v }

func deref(p *NodeIndex) any {
	if p == nil {
		return nil
	}
	return *p
}

// TestTreeMathPaths compares the index arithmetic for paths, common
// ancestors and leaf ranges with a naive walk up the parent relation.
func TestTreeMathPaths(t *testing.T) {
	for _, n := range []uint32{1, 2, 4, 8, 16, 64} {
		root := rootOf(n)
		for x := NodeIndex(0); x < NodeIndex(nodeWidth(n)); x++ {
			// Naive direct path.
			var want []NodeIndex
			for y := x; y != root; {
				y = y.parent(n)
				want = append(want, y)
			}
			if got := x.directPath(n); !slices.Equal(got, want) {
				t.Errorf("n=%d directPath(%d) = %v, want %v", n, x, got, want)
			}
			var wantCo []NodeIndex
			for y := x; y != root; y = y.parent(n) {
				wantCo = append(wantCo, y.sibling(n))
			}
			if got := x.copath(n); !slices.Equal(got, wantCo) {
				t.Errorf("n=%d copath(%d) = %v, want %v", n, x, got, wantCo)
			}
			// Leaf range: exactly the leaves whose direct path (or self) contains x.
			lo, hi := x.leafRange()
			for l := LeafIndex(0); l < LeafIndex(n); l++ {
				under := l.node() == x || slices.Contains(l.node().directPath(n), x)
				if under != (l >= lo && l < hi) {
					t.Errorf("n=%d leafRange(%d) = [%d,%d), leaf %d under=%v", n, x, lo, hi, l, under)
				}
			}
			for y := NodeIndex(0); y < NodeIndex(nodeWidth(n)); y++ {
				under := y == x || slices.Contains(y.directPath(n), x)
				if got := x.isAncestorOf(y); got != under {
					t.Errorf("n=%d isAncestorOf(%d, %d) = %v, want %v", n, x, y, got, under)
				}
				// Semantic common ancestor: lowest node on both paths.
				px := append([]NodeIndex{x}, x.directPath(n)...)
				py := append([]NodeIndex{y}, y.directPath(n)...)
				var ca NodeIndex
				found := false
				for _, a := range px {
					if slices.Contains(py, a) {
						ca, found = a, true
						break
					}
				}
				if !found {
					t.Fatalf("no common ancestor for %d, %d", x, y)
				}
				if got := commonAncestor(x, y); got != ca {
					t.Errorf("n=%d commonAncestor(%d, %d) = %d, want %d", n, x, y, got, ca)
				}
			}
		}
	}
	if log2(0) != 0 || log2(1) != 0 || log2(2) != 1 || log2(3) != 1 || log2(1<<31) != 31 {
		t.Error("log2 wrong at small values")
	}
}
