package ds

import (
	"bytes"
	"fmt"

	"github.com/mlsds/mlsds/mls"
)

// A group created with a Welcome. Some MLS libraries cannot export the
// GroupInfo of a group's epoch 0, only the one after the creator's first
// Commit, which usually adds the first members. Such a creator calls
// CreateGroup with the GroupInfo and tree of the epoch it holds, the
// KeyPackages of the members it added (key_packages, as always) and the
// Welcome of that Commit. The Service routes the Welcome to them as it
// routes a Commit's Welcome, by the KeyPackageRefs it names, with
// CommitSeq 0: their messages in the group start at GroupSeq 1.
//
// The Welcome must go to exactly the clients whose KeyPackages came with
// the creation, which are the members whose consent the creation shows: in
// transparent mode those of the tree's leaves other than the creator's,
// in opaque mode those of CreateGroup.Members. A Welcome that names
// another KeyPackage, misses one of them or names one twice is refused,
// and so the whole creation.

// creationWelcome checks g.Welcome, if any, for a new group of suite cs
// whose creator is creator (st: the tracked state of a transparent group,
// nil for an opaque one) and returns the routes of the Welcome. The
// KeyPackages in g.KeyPackages passed the consent checks already
// (treeConsent, rosterConsent).
func (s *Service) creationWelcome(g CreateGroup, creator string, cs mls.CipherSuite, st *mls.PublicGroupState) ([]WelcomeRoute, error) {
	if len(g.Welcome) == 0 {
		return nil, nil
	}
	w, err := parseWelcome(g.Welcome)
	if err != nil {
		return nil, err
	}
	if w.CipherSuite != cs {
		return nil, invalidf("12.4.3.1", "the Welcome is for cipher suite %d, the group uses %d", w.CipherSuite, cs)
	}
	// In transparent mode the KeyPackages must be those of the tree's
	// leaves but the creator's (treeConsent checked that every such leaf
	// has one; this checks that nothing else is there).
	var leaves map[string]bool
	if st != nil {
		leaves = make(map[string]bool)
		for _, leaf := range st.Tree().Leaves() {
			if id, _ := credentialClientID(&leaf.Credential); id == creator {
				continue
			}
			ln, err := leaf.MarshalBinary()
			if err != nil {
				return nil, fmt.Errorf("ds: encoding a leaf: %w", err)
			}
			leaves[string(ln)] = true
		}
	}
	type expected struct {
		where  string
		client string
		named  bool
	}
	want := make(map[string]*expected, len(g.KeyPackages))
	var order [][]byte
	for i, data := range g.KeyPackages {
		where := fmt.Sprintf("key_packages[%d]", i)
		kp, ref, id, err := offeredKeyPackage(where, data)
		if err != nil {
			return nil, err
		}
		if leaves != nil {
			ln, err := kp.LeafNode.MarshalBinary()
			if err != nil {
				return nil, invalidMessage(where, err)
			}
			if !leaves[string(ln)] {
				return nil, fmt.Errorf("%w: %s (of %q) is the KeyPackage of no leaf of the group's tree, or of a leaf an earlier one came in through; with a Welcome, key_packages must be exactly the KeyPackages of the members it adds",
					ErrInvalidArgument, where, id)
			}
			// One KeyPackage per leaf: treeConsent checked one of them,
			// so a second with the same leaf would be routed unchecked.
			delete(leaves, string(ln))
		}
		if want[string(ref)] != nil {
			return nil, fmt.Errorf("%w: %s repeats %s", ErrInvalidArgument, where, want[string(ref)].where)
		}
		want[string(ref)] = &expected{where: where, client: id}
		order = append(order, ref)
	}
	if len(want) == 0 {
		return nil, fmt.Errorf("%w: the Welcome has no recipient here: pass the KeyPackages of the members it adds in key_packages", ErrInvalidArgument)
	}
	var routes []WelcomeRoute
	for _, ref := range w.Joiners() {
		e := want[string(ref)]
		switch {
		case e == nil:
			return nil, invalidf("12.4.3.1", "the Welcome names KeyPackage %x, which is none of key_packages; the Welcome of a group's creation may name only the KeyPackages of the members it adds", []byte(ref))
		case e.named:
			return nil, invalidf("12.4.3.1", "the Welcome names KeyPackage %x twice", []byte(ref))
		}
		e.named = true
		routes = append(routes, WelcomeRoute{ClientID: e.client, KeyPackageRef: bytes.Clone(ref)})
	}
	for _, ref := range order {
		if e := want[string(ref)]; !e.named {
			return nil, invalidf("12.4.3.1", "the Welcome has no secrets for %s (KeyPackage %x of %q); it must name every KeyPackage in key_packages", e.where, ref, e.client)
		}
	}
	return routes, nil
}
