package mls

import "math/bits"

// Array-based tree arithmetic (RFC 9420 Appendix C).
//
// A ratchet tree with n leaves (n a power of two, §4.1) has 2n-1 nodes laid
// out in in-order sequence: leaf i sits at node 2i, and a parent at level k
// has index x with the k low bits set and bit k clear. All functions here
// are O(log n) or better and allocate only for the paths they return.
//
// The functions panic when asked for something that does not exist (the
// children of a leaf, the parent of the root); the callers in this package
// check the index range first, so a panic means a bug here, not bad input.

// log2 returns the exponent of the largest power of two not above x, and 0
// for x == 0.
func log2(x uint32) uint32 {
	if x == 0 {
		return 0
	}
	return uint32(bits.Len32(x)) - 1
}

// level is the height of node x above the leaves: 0 for a leaf, 1 for the
// parent of two leaves, and so on. It is the number of trailing one bits.
func (x NodeIndex) level() uint32 {
	return uint32(bits.TrailingZeros32(^uint32(x)))
}

// isLeaf reports whether x is a leaf position.
func (x NodeIndex) isLeaf() bool { return x&1 == 0 }

// leaf returns the leaf index of the leaf node x.
func (x NodeIndex) leaf() LeafIndex { return LeafIndex(x >> 1) }

// node returns the node index of leaf i.
func (i LeafIndex) node() NodeIndex { return NodeIndex(i) << 1 }

// nodeWidth is the number of nodes in a tree with n leaves.
func nodeWidth(n uint32) uint32 {
	if n == 0 {
		return 0
	}
	return 2*(n-1) + 1
}

// rootOf is the index of the root of a tree with n leaves.
func rootOf(n uint32) NodeIndex {
	return NodeIndex(1<<log2(nodeWidth(n)) - 1)
}

// left is the left child of the parent node x.
func (x NodeIndex) left() NodeIndex {
	k := x.level()
	if k == 0 {
		panic("mls: leaf node has no children")
	}
	return x ^ 1<<(k-1)
}

// right is the right child of the parent node x.
func (x NodeIndex) right() NodeIndex {
	k := x.level()
	if k == 0 {
		panic("mls: leaf node has no children")
	}
	return x ^ 3<<(k-1)
}

// parent is the parent of x in a tree with n leaves.
func (x NodeIndex) parent(n uint32) NodeIndex {
	if x == rootOf(n) {
		panic("mls: root node has no parent")
	}
	k := x.level()
	b := (x >> (k + 1)) & 1
	return (x | 1<<k) ^ b<<(k+1)
}

// sibling is the other child of x's parent in a tree with n leaves.
func (x NodeIndex) sibling(n uint32) NodeIndex {
	p := x.parent(n)
	if x < p {
		return p.right()
	}
	return p.left()
}

// directPath lists the ancestors of x from its parent up to the root (§4.1.2).
func (x NodeIndex) directPath(n uint32) []NodeIndex {
	r := rootOf(n)
	if x == r {
		return nil
	}
	path := make([]NodeIndex, 0, r.level()-x.level())
	for x != r {
		x = x.parent(n)
		path = append(path, x)
	}
	return path
}

// copath lists the siblings of x and of each node of its direct path below
// the root, from the bottom up (§4.1.2).
func (x NodeIndex) copath(n uint32) []NodeIndex {
	r := rootOf(n)
	if x == r {
		return nil
	}
	path := make([]NodeIndex, 0, r.level()-x.level())
	for x != r {
		path = append(path, x.sibling(n))
		x = x.parent(n)
	}
	return path
}

// commonAncestor is the lowest node that has both x and y in its subtree
// (counting a node as part of its own subtree).
func commonAncestor(x, y NodeIndex) NodeIndex {
	lx, ly := x.level()+1, y.level()+1
	if lx <= ly && x>>ly == y>>ly {
		return y
	}
	if ly <= lx && x>>lx == y>>lx {
		return x
	}
	k := uint32(0)
	for x != y {
		x, y = x>>1, y>>1
		k++
	}
	return x<<k + 1<<(k-1) - 1
}

// leafRange returns the leaves [lo, hi) that lie under node x.
func (x NodeIndex) leafRange() (lo, hi LeafIndex) {
	k := x.level()
	first := uint32(x) &^ (1<<(k+1) - 1) // clear the low k+1 bits
	return LeafIndex(first >> 1), LeafIndex(first>>1 + 1<<k)
}

// isAncestorOf reports whether y lies in the subtree headed by x (x itself
// included).
func (x NodeIndex) isAncestorOf(y NodeIndex) bool {
	k := x.level() + 1
	return x>>k == y>>k && y.level() <= x.level()
}
