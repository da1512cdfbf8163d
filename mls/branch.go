package mls

import (
	"bytes"
	"errors"
)

// Branch creates a subgroup of g with newGroupID (§11.3): a group with
// g's version, cipher suite and GroupContext extensions whose creator is
// the owner of kp (priv holds its private keys) and whose initial Commit
// adds the owners of others and injects the resumption_psk of g's current
// epoch with usage branch and a fresh psk_nonce. The returned Welcome
// names that PSK, so that only members of g can join; the new group is in
// epoch 1.
//
// kp must present this member's identity and others identities of other
// members of g, each at most as often as it appears in g; every KeyPackage
// must be of g's version and cipher suite. With no others, the Welcome is
// nil.
func (g *Group) Branch(newGroupID []byte, kp *KeyPackage, priv *KeyPackagePrivate, others []*KeyPackage) (*Group, *Welcome, error) {
	if err := g.checkActive(); err != nil {
		return nil, nil, err
	}
	if len(newGroupID) == 0 || bytes.Equal(newGroupID, g.GroupID()) {
		return nil, nil, errors.New("mls: a branch needs a group_id of its own")
	}
	gc := g.pub.GroupContext()
	kps := append([]*KeyPackage{kp}, others...)
	for i, k := range kps {
		if k.Version != gc.Version || k.CipherSuite != gc.CipherSuite {
			return nil, nil, invalidf("11.3", "KeyPackage %d has version %d and cipher suite %d; the group has version %d and cipher suite %d",
				i, k.Version, uint16(k.CipherSuite), gc.Version, uint16(gc.CipherSuite))
		}
	}
	if err := g.checkOwnIdentity(kp, "11.3"); err != nil {
		return nil, nil, err
	}
	if err := matchMembers(g.Members(), kpIdentities(kps), false, "11.3"); err != nil {
		return nil, nil, err
	}
	return g.newLinked(newGroupID, gc.Extensions, ResumptionPSKUsageBranch, kp, priv, others)
}

// JoinBranch joins, from a Welcome addressed to kp, a subgroup branched
// off g (§11.3). tree is the new group's ratchet tree, or nil for the
// Welcome's ratchet_tree extension.
//
// Besides what JoinGroup checks, the Welcome must name exactly one
// resumption PSK of usage reinit or branch, and it must be of usage
// branch, for g's group_id and an epoch whose resumption_psk this member
// kept (the current one or an earlier one); the new group must be in
// epoch 1 with g's version and cipher suite; and each of its members must
// match a distinct current member of g (by credential identity). Every
// violation is a *ValidationError.
func (g *Group) JoinBranch(w *Welcome, kp *KeyPackage, priv *KeyPackagePrivate, tree *RatchetTree) (*Group, error) {
	if err := g.checkActive(); err != nil {
		return nil, err
	}
	gc := g.pub.GroupContext()
	link := &groupLink{
		usage:   ResumptionPSKUsageBranch,
		groupID: g.GroupID(),
		epoch:   g.Epoch(),
		version: gc.Version,
		suite:   gc.CipherSuite,
		members: g.Members(),
	}
	return joinGroup(w, kp, priv, tree, g.psks, link)
}
