package mls

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
)

// This file links a new group to an old one by a resumption PSK (§8.6):
// the successor of a group closed by a committed ReInit (§11.2) and, in
// branch.go, a subgroup branched off a group (§11.3).
//
// The creator makes the new group at epoch 0 alone, then its initial
// Commit adds the other members and carries a PreSharedKey proposal by
// value naming the old group's resumption_psk with usage reinit or branch.
// That proposal is valid only in the Commit that leaves epoch 0
// (checkPSKProposal): §12.1.4 allows these usages only "as part of" a
// reinitialization or a branch, and the initial Commit is that part. The
// Welcome of the Commit lists the PSK, so each joiner must hold the old
// group's resumption_psk, and checks what ties the new group to the old:
// one such PSK, of the right usage, group and epoch; epoch 1; the
// parameters; and that the new members are members of the old group.
//
// Members match across the two groups when their credentials present the
// same identity (CredentialIdentity), which is how §11.3 lets the
// application define "match".

// ErrNotFrozen is returned by ReInitGroup and JoinSuccessor for a group
// that no committed ReInit closed.
var ErrNotFrozen = errors.New("mls: no committed ReInit closed this group; commit one (CommitOptions.ReInit) before creating or joining its successor")

// ReInitGroup creates the successor of g, which a committed ReInit closed
// (§11.2): a group with the ReInit's group_id, version, cipher_suite and
// extensions whose creator is the owner of kp (priv holds its private
// keys) and whose initial Commit adds the owners of others. That Commit
// injects the resumption_psk of g's last epoch (the one the ReInit Commit
// started) with usage reinit; the returned Welcome names it, so that only
// members of g can join. The new group is in epoch 1.
//
// The successor has the same membership as g: kp and others must present,
// between them, exactly the identities of g's members, kp the identity of
// this member, and each must be a KeyPackage of the ReInit's version and
// cipher suite. With no others, the Welcome is nil.
func (g *Group) ReInitGroup(kp *KeyPackage, priv *KeyPackagePrivate, others []*KeyPackage) (*Group, *Welcome, error) {
	if err := g.checkActive(); err != nil {
		return nil, nil, err
	}
	ri, frozen := g.Frozen()
	if !frozen {
		return nil, nil, ErrNotFrozen
	}
	if ri.Version != ProtocolVersionMLS10 {
		return nil, nil, fmt.Errorf("mls: the ReInit asks for protocol version %d; only mls10 (1) is supported", ri.Version)
	}
	if err := ri.CipherSuite.check(); err != nil {
		return nil, nil, err
	}
	kps := append([]*KeyPackage{kp}, others...)
	for i, k := range kps {
		if k.Version != ri.Version || k.CipherSuite != ri.CipherSuite {
			return nil, nil, invalidf("11.2", "KeyPackage %d has version %d and cipher suite %d; the ReInit asks for version %d and cipher suite %d",
				i, k.Version, uint16(k.CipherSuite), ri.Version, uint16(ri.CipherSuite))
		}
	}
	if err := g.checkOwnIdentity(kp, "11.2"); err != nil {
		return nil, nil, err
	}
	if err := matchMembers(g.Members(), kpIdentities(kps), true, "11.2"); err != nil {
		return nil, nil, err
	}
	exts, err := cloneExtensions(ri.Extensions)
	if err != nil {
		return nil, nil, err
	}
	return g.newLinked(ri.GroupID, exts, ResumptionPSKUsageReInit, kp, priv, others)
}

// JoinSuccessor joins, from a Welcome addressed to kp, the successor of
// g, which a committed ReInit closed (§11.2). tree is the new group's
// ratchet tree, or nil for the Welcome's ratchet_tree extension.
//
// Besides what JoinGroup checks, the Welcome must name exactly one
// resumption PSK of usage reinit or branch, and it must be of usage
// reinit, for g's group_id and g's last epoch; the new group must be in
// epoch 1 and have the ReInit's group_id, version, cipher_suite and
// extensions; and its members must be g's members (by credential
// identity), no more and no fewer. Every violation is a *ValidationError.
func (g *Group) JoinSuccessor(w *Welcome, kp *KeyPackage, priv *KeyPackagePrivate, tree *RatchetTree) (*Group, error) {
	if err := g.checkActive(); err != nil {
		return nil, err
	}
	ri, frozen := g.Frozen()
	if !frozen {
		return nil, ErrNotFrozen
	}
	link := &groupLink{
		usage:   ResumptionPSKUsageReInit,
		groupID: g.GroupID(),
		epoch:   g.Epoch(),
		reinit:  ri,
		members: g.Members(),
		exact:   true,
	}
	psks := externalPSKs(g.psks)
	psks[ResumptionPSKKey(g.GroupID(), g.Epoch())] = g.es.ResumptionPSK
	return joinGroup(w, kp, priv, tree, psks, link)
}

// newLinked creates a group with groupID and the GroupContext extensions
// exts whose initial Commit adds others and injects the resumption_psk of
// g's current epoch with usage (§11.2, §11.3). The new group keeps g's
// external PSKs, its handshake wire format and its number of past epochs.
func (g *Group) newLinked(groupID []byte, exts Extensions, usage ResumptionPSKUsage, kp *KeyPackage, priv *KeyPackagePrivate, others []*KeyPackage) (*Group, *Welcome, error) {
	cs := kp.CipherSuite
	if err := cs.check(); err != nil {
		return nil, nil, err
	}
	psks := externalPSKs(g.psks)
	psks[ResumptionPSKKey(g.GroupID(), g.Epoch())] = g.es.ResumptionPSK
	ng, err := newInitialGroup(groupID, exts, kp, priv, psks)
	if err != nil {
		return nil, nil, err
	}
	ng.keepPast, ng.handshake = g.keepPast, g.handshake
	// §8.4: a fresh psk_nonce of Nh bytes of the new group's KDF.
	nonce := make([]byte, cs.HashSize())
	rand.Read(nonce)
	id := &PreSharedKeyID{PSKType: PSKTypeResumption, Usage: usage, PSKGroupID: g.GroupID(), PSKEpoch: g.Epoch(), PSKNonce: nonce}
	_, welcome, err := ng.CommitMessage(CommitOptions{Adds: others, link: id, WireFormat: WireFormatPublicMessage})
	if err != nil {
		return nil, nil, err
	}
	if err := ng.MergePendingCommit(); err != nil {
		return nil, nil, err
	}
	return ng, welcome, nil
}

// newInitialGroup is NewGroup with GroupContext extensions exts and the
// PSK store psks.
func newInitialGroup(groupID []byte, exts Extensions, kp *KeyPackage, priv *KeyPackagePrivate, psks map[string][]byte) (*Group, error) {
	if len(groupID) == 0 {
		return nil, errors.New("mls: the new group needs a group_id")
	}
	if err := checkOwnSupport(&kp.LeafNode, exts); err != nil {
		return nil, err
	}
	return newFirstEpoch(groupID, exts, kp, priv, psks)
}

// groupLink is what a joiner knows of the old group a new group claims to
// continue: the usage of the linking PSK, the old group's id, its epoch
// (for usage reinit the exact epoch, for branch the latest allowed), the
// committed ReInit (usage reinit) or the old parameters (branch), and the
// old members.
type groupLink struct {
	usage   ResumptionPSKUsage
	groupID []byte
	epoch   uint64
	reinit  *ReInit
	version ProtocolVersion
	suite   CipherSuite
	members []Member
	exact   bool // the new group must have all of members
}

func (l *groupLink) section() string {
	if l != nil && l.usage == ResumptionPSKUsageBranch {
		return "11.3"
	}
	return "11.2"
}

func usageName(u ResumptionPSKUsage) string {
	switch u {
	case ResumptionPSKUsageApplication:
		return "application"
	case ResumptionPSKUsageReInit:
		return "reinit"
	case ResumptionPSKUsageBranch:
		return "branch"
	}
	return fmt.Sprintf("unknown (%d)", u)
}

// isLinkPSK reports whether id is a resumption PSK of usage reinit or
// branch.
func isLinkPSK(id *PreSharedKeyID) bool {
	return id.PSKType == PSKTypeResumption && (id.Usage == ResumptionPSKUsageReInit || id.Usage == ResumptionPSKUsageBranch)
}

// linkPSK returns the one resumption PSK of usage reinit or branch in
// ids, or nil; more than one is an error (§12.4.3.1).
func linkPSK(ids []PreSharedKeyID) (*PreSharedKeyID, error) {
	var found *PreSharedKeyID
	for i := range ids {
		if !isLinkPSK(&ids[i]) {
			continue
		}
		if found != nil {
			return nil, invalid("12.4.3.1", "more than one resumption PSK of usage reinit or branch")
		}
		found = &ids[i]
	}
	return found, nil
}

// checkOneLink refuses a Commit whose PSKs include more than one
// resumption PSK of usage reinit or branch: a new group continues one
// old group (§11.2, §11.3, §12.4.3.1).
func checkOneLink(ids []PreSharedKeyID) error {
	_, err := linkPSK(ids)
	return err
}

// checkSecrets checks the PSKs of a Welcome's GroupSecrets against l,
// before they are looked up: a nil l checks nothing here.
func (l *groupLink) checkSecrets(gs *GroupSecrets) error {
	if l == nil {
		return nil
	}
	sec := l.section()
	id, err := linkPSK(gs.PSKs)
	if err != nil {
		return err
	}
	if id == nil {
		return invalidf(sec, "the Welcome names no resumption PSK of usage %s, which would link the new group to group %x", usageName(l.usage), l.groupID)
	}
	if id.Usage != l.usage {
		return invalidf(sec, "the Welcome's resumption PSK has usage %s; joining a %s needs usage %s", usageName(id.Usage), l.what(), usageName(l.usage))
	}
	if !bytes.Equal(id.PSKGroupID, l.groupID) {
		return invalidf(sec, "the Welcome's resumption PSK is of group %x, not of group %x", id.PSKGroupID, l.groupID)
	}
	switch {
	case l.usage == ResumptionPSKUsageReInit && id.PSKEpoch != l.epoch:
		return invalidf(sec, "the Welcome's resumption PSK is of epoch %d; the ReInit Commit started epoch %d", id.PSKEpoch, l.epoch)
	case l.usage == ResumptionPSKUsageBranch && id.PSKEpoch > l.epoch:
		return invalidf(sec, "the Welcome's resumption PSK is of epoch %d, after this member's epoch %d of the old group", id.PSKEpoch, l.epoch)
	}
	return nil
}

func (l *groupLink) what() string {
	if l.usage == ResumptionPSKUsageBranch {
		return "branch"
	}
	return "ReInit's successor group"
}

// checkGroupInfo checks the new group's GroupContext: with a resumption
// PSK of usage reinit or branch it must be epoch 1 (§11.2, §11.3), and
// with l, it must have the parameters l asks for.
func (l *groupLink) checkGroupInfo(gs *GroupSecrets, gi *GroupInfo) error {
	id, err := linkPSK(gs.PSKs)
	if err != nil || id == nil {
		return err
	}
	gc := &gi.GroupContext
	sec := "11.2"
	if id.Usage == ResumptionPSKUsageBranch {
		sec = "11.3"
	}
	if gc.Epoch != 1 {
		return invalidf(sec, "a group linked by a resumption PSK of usage %s starts in epoch 1; the Welcome is for epoch %d", usageName(id.Usage), gc.Epoch)
	}
	if l == nil {
		return nil
	}
	switch l.usage {
	case ResumptionPSKUsageReInit:
		ri := l.reinit
		if !bytes.Equal(gc.GroupID, ri.GroupID) {
			return invalidf(sec, "the new group's group_id is %x; the ReInit names %x", gc.GroupID, ri.GroupID)
		}
		if gc.Version != ri.Version || gc.CipherSuite != ri.CipherSuite {
			return invalidf(sec, "the new group has version %d and cipher suite %d; the ReInit names version %d and cipher suite %d",
				gc.Version, uint16(gc.CipherSuite), ri.Version, uint16(ri.CipherSuite))
		}
		if !bytes.Equal(mustEncode(&gc.Extensions), mustEncode(&ri.Extensions)) {
			return invalid(sec, "the new group's GroupContext extensions differ from the ReInit's")
		}
	case ResumptionPSKUsageBranch:
		if gc.Version != l.version || gc.CipherSuite != l.suite {
			return invalidf(sec, "the branch has version %d and cipher suite %d; the old group has version %d and cipher suite %d",
				gc.Version, uint16(gc.CipherSuite), l.version, uint16(l.suite))
		}
	}
	return nil
}

// checkMembers checks that every leaf of the new group's tree matches a
// distinct member of the old group, and with l.exact that none of the
// old members is missing.
func (l *groupLink) checkMembers(tree *RatchetTree) error {
	if l == nil {
		return nil
	}
	var ids [][]byte
	for _, ln := range tree.Leaves() {
		ids = append(ids, CredentialIdentity(&ln.Credential))
	}
	return matchMembers(l.members, ids, l.exact, l.section())
}

// keepPSKs returns the PSK store of the new group: the external PSKs of
// psks and the resumption PSKs gs names, so that the old group's other
// resumption PSKs stay behind.
func (l *groupLink) keepPSKs(psks map[string][]byte, gs *GroupSecrets) map[string][]byte {
	if l == nil {
		return psks
	}
	keep := externalPSKs(psks)
	for i := range gs.PSKs {
		if k := pskLookupKey(&gs.PSKs[i]); gs.PSKs[i].PSKType == PSKTypeResumption {
			keep[k] = psks[k]
		}
	}
	return keep
}

// matchMembers checks that each of ids is the identity of a distinct one
// of members and, if exact, that every member is matched.
func matchMembers(members []Member, ids [][]byte, exact bool, section string) error {
	left := make(map[string]int)
	for _, m := range members {
		left[string(m.Identity)]++
	}
	for _, id := range ids {
		if left[string(id)] == 0 {
			return invalidf(section, "%q is not a member of the old group (or appears more often than there)", id)
		}
		left[string(id)]--
	}
	if exact {
		for _, m := range members {
			if left[string(m.Identity)] > 0 {
				return invalidf(section, "member %q of the old group is missing from the new group", m.Identity)
			}
		}
	}
	return nil
}

func kpIdentities(kps []*KeyPackage) [][]byte {
	ids := make([][]byte, len(kps))
	for i, kp := range kps {
		ids[i] = CredentialIdentity(&kp.LeafNode.Credential)
	}
	return ids
}

// checkOwnIdentity checks that the creator's new KeyPackage presents
// this member's identity.
func (g *Group) checkOwnIdentity(kp *KeyPackage, section string) error {
	own := g.pub.Tree().Leaf(g.Self())
	if own == nil || !bytes.Equal(CredentialIdentity(&own.Credential), CredentialIdentity(&kp.LeafNode.Credential)) {
		return invalidf(section, "the creator's KeyPackage presents %q, not this member's identity", CredentialIdentity(&kp.LeafNode.Credential))
	}
	return nil
}

// externalPSKs returns a copy of the external PSKs of a PSK store.
func externalPSKs(psks map[string][]byte) map[string][]byte {
	out := make(map[string][]byte)
	for k, v := range psks {
		if !strings.HasPrefix(k, resumptionKeyPrefix) {
			out[k] = v
		}
	}
	return out
}

// resumptionKeyPrefix starts every ResumptionPSKKey.
const resumptionKeyPrefix = "resumption\x00"

// cloneExtensions deep-copies an extension list.
func cloneExtensions(es Extensions) (Extensions, error) {
	var out Extensions
	if err := decode(mustEncode(&es), "extensions", out.unmarshal); err != nil {
		return nil, err
	}
	return out, nil
}

// WelcomeLink returns the resumption PSK of usage reinit or branch that a
// Welcome to kp names, or nil if it names none, so that a joiner can
// tell which of its groups the new group continues (PSKGroupID) and
// whether to join with JoinSuccessor or JoinBranch (Usage). It decrypts
// the group secrets only; joining checks everything.
func WelcomeLink(w *Welcome, kp *KeyPackage, priv *KeyPackagePrivate) (*PreSharedKeyID, error) {
	ref, err := kp.Ref()
	if err != nil {
		return nil, err
	}
	var link *PreSharedKeyID
	// The check runs on the decrypted GroupSecrets and stops there.
	_, _, err = openWelcomeChecked(w, ref, priv.InitPriv, nil, func(gs *GroupSecrets) error {
		id, err := linkPSK(gs.PSKs)
		if err != nil {
			return err
		}
		link = id
		return errStopWelcome
	})
	if !errors.Is(err, errStopWelcome) {
		return nil, err
	}
	if link == nil {
		return nil, nil
	}
	out := *link
	return &out, nil
}

// errStopWelcome ends WelcomeLink's walk through openWelcomeChecked once
// the group secrets are read.
var errStopWelcome = errors.New("mls: stop after the group secrets")
