package mls

import (
	"errors"
	"fmt"
)

// WelcomeWithoutTree returns a Welcome (§12.4.3.1) for the new members
// adds of the Commit g made last and has not merged yet, whose GroupInfo
// carries no ratchet_tree extension: the joiners get the tree, or the
// parts of it they need (JoinGroupPartial), from elsewhere, such as the
// Delivery Service. In a large group this keeps the Welcome small. It
// replaces the Welcome Commit returned; send one or the other.
//
// The Commit must not carry PSK proposals: the PSK secret is not kept
// after the Commit is made.
func (g *Group) WelcomeWithoutTree(adds []*KeyPackage) (*Welcome, error) {
	if g.pending == nil || g.pending.next == nil {
		return nil, errors.New("mls: no pending Commit to build a Welcome for")
	}
	if len(adds) == 0 {
		return nil, errors.New("mls: a Welcome needs at least one new member")
	}
	next := g.pending.next
	want := make(map[string]int, len(adds))
	for k, kp := range adds {
		want[string(mustEncode(&kp.LeafNode))] = k
	}
	leaves := make([]LeafIndex, len(adds))
	found := 0
	for i, ln := range next.pub.Tree().Leaves() {
		if k, ok := want[string(mustEncode(ln))]; ok {
			leaves[k] = i
			delete(want, string(mustEncode(ln)))
			found++
		}
	}
	if found != len(adds) {
		return nil, fmt.Errorf("mls: %d of the KeyPackages are not added by the pending Commit", len(adds)-found)
	}
	return g.welcome(next, adds, leaves, nil, nil, false)
}
