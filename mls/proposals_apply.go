package mls

import (
	"bytes"
	"fmt"
)

// This file processes a Commit for a PublicGroupState (§12.4.2): it
// resolves the proposal list, checks it (§12.2), applies it in the order
// of §12.3, checks and merges the UpdatePath (§7.5, §7.6, §7.9.2, §12.4),
// and computes the GroupContext of the new epoch (§8.1, §8.2).

// listedProposal is an entry of a Commit's proposal list, resolved.
type listedProposal struct {
	p      *Proposal
	sender Sender      // who proposed it: the committer for proposals by value
	ref    ProposalRef // nil for a proposal by value
}

// applyCommit implements HandleCommit and HandleCommitContent.
// membershipTag is the tag of a PublicMessage (checkTag), whose length
// alone can be checked here; content given already authenticated has
// none.
func (s *PublicGroupState) applyCommit(ac *AuthenticatedContent, membershipTag []byte, checkTag bool) (*PublicGroupState, *CommitEffect, error) {
	if err := checkContentWireFormat(ac); err != nil {
		return nil, nil, err
	}
	fc := &ac.Content
	cs := s.gc.CipherSuite
	if err := s.checkFrame(fc, "12.4.2"); err != nil {
		return nil, nil, err
	}
	if fc.ContentType != ContentTypeCommit || fc.Commit == nil {
		return nil, nil, invalidf("12.4", "HandleCommit needs a commit, got content_type %d", fc.ContentType)
	}
	commit := fc.Commit
	if len(ac.Auth.ConfirmationTag) != cs.HashSize() {
		return nil, nil, invalidf("6.1", "confirmation_tag has %d bytes; a MAC of %s has %d", len(ac.Auth.ConfirmationTag), cs, cs.HashSize())
	}

	// Sender and signature (§6.1).
	var (
		external  bool
		committer LeafIndex
		sigKey    []byte
	)
	switch fc.Sender.SenderType {
	case SenderTypeMember:
		committer = fc.Sender.LeafIndex
		leaf := s.tree.Leaf(committer)
		if leaf == nil {
			return nil, nil, invalidf("6.1", "Commit sender %d is not a member of the group", committer)
		}
		if checkTag && len(membershipTag) != cs.HashSize() {
			return nil, nil, invalidf("6.2", "membership_tag has %d bytes; a MAC of %s has %d", len(membershipTag), cs, cs.HashSize())
		}
		sigKey = leaf.SignatureKey
	case SenderTypeNewMemberCommit:
		external = true
		if commit.Path == nil {
			return nil, nil, invalid("12.4.3.2", "an external Commit must carry a path")
		}
		sigKey = commit.Path.LeafNode.SignatureKey
	default:
		return nil, nil, invalidf("6.1", "a Commit must come from a member or a new_member_commit sender, not sender type %d", fc.Sender.SenderType)
	}
	if err := ac.VerifySignature(cs, sigKey, &s.gc); err != nil {
		return nil, nil, &ValidationError{Rule: "Commit signature does not verify with the committer's key", Section: "6.1", Err: err}
	}

	// The proposal list (§12.4, §12.2).
	props, err := s.resolveProposals(commit, fc.Sender, external)
	if err != nil {
		return nil, nil, err
	}
	if external {
		err = checkExternalProposalList(props)
	} else {
		err = s.checkProposalList(props, committer)
	}
	if err != nil {
		return nil, nil, err
	}

	ns := s.fork()
	effect := &CommitEffect{Committer: committer, External: external, PathPresent: commit.Path != nil}
	added, err := ns.applyProposals(s, props, effect)
	if err != nil {
		return nil, nil, err
	}

	// §12.4: a path is required by an empty list and by the proposal types
	// that change membership or keys other than by adding.
	if commit.Path == nil && pathRequired(props) {
		return nil, nil, invalid("12.4", "Commit must carry a path: its proposal list is empty or contains a proposal type that requires one (update, remove, external_init, group_context_extensions)")
	}
	if commit.Path != nil {
		sender, err := ns.applyPath(s, commit.Path, committer, external, props, added)
		if err != nil {
			return nil, nil, err
		}
		effect.Committer = sender
		leaf := ns.tree.Leaf(sender)
		if external {
			effect.Added = append(effect.Added, AddedMember{Leaf: sender, Credential: leaf.Credential, Identity: CredentialIdentity(&leaf.Credential)})
		} else {
			effect.Updated = append(effect.Updated, UpdatedMember{Leaf: sender, Credential: leaf.Credential, Identity: CredentialIdentity(&leaf.Credential)})
		}
	}

	// The GroupContext of the new epoch (§8.1) and the transcript (§8.2).
	ns.gc.Epoch++
	ns.gc.TreeHash = ns.tree.TreeHash()
	if ns.gc.TreeHash == nil {
		return nil, nil, invalid("7.8", "the new ratchet tree cannot be hashed")
	}
	confirmed, interim, err := NextTranscriptHashes(cs, s.interim, ac)
	if err != nil {
		return nil, nil, err
	}
	ns.gc.ConfirmedTranscriptHash = confirmed
	ns.interim = interim
	if effect.ReInit != nil {
		ns.frozen = effect.ReInit
	}
	return ns, effect, nil
}

// resolveProposals replaces references by the cached proposals they name.
func (s *PublicGroupState) resolveProposals(commit *Commit, sender Sender, external bool) ([]listedProposal, error) {
	props := make([]listedProposal, 0, len(commit.Proposals))
	seen := make(map[string]bool)
	for i := range commit.Proposals {
		por := &commit.Proposals[i]
		switch por.Type {
		case ProposalOrRefTypeProposal:
			if por.Proposal == nil {
				return nil, invalidf("12.4", "proposal %d of the Commit is empty", i)
			}
			props = append(props, listedProposal{p: por.Proposal, sender: sender})
		case ProposalOrRefTypeReference:
			if external {
				return nil, invalid("12.4.3.2", "an external Commit must not include proposals by reference")
			}
			pp, ok := s.proposals[string(por.Reference)]
			if !ok {
				return nil, invalidf("12.4", "Commit refers to proposal %x, which was not received in this epoch", []byte(por.Reference))
			}
			if seen[string(por.Reference)] {
				return nil, invalidf("12.2", "Commit lists proposal %x twice", []byte(por.Reference))
			}
			seen[string(por.Reference)] = true
			props = append(props, listedProposal{p: pp.Proposal, sender: pp.Sender, ref: pp.Ref})
		default:
			return nil, invalidf("12.4", "proposal %d of the Commit has unknown ProposalOrRef type %d", i, por.Type)
		}
	}
	return props, nil
}

// checkProposalList applies the §12.2 rules for a Commit from member
// committer that concern the list as a whole. The validity of each
// proposal and the rules that need the new tree are checked as the list is
// applied.
func (s *PublicGroupState) checkProposalList(props []listedProposal, committer LeafIndex) error {
	touched := make(map[LeafIndex]int)
	psks := make(map[string]bool)
	var gce, reinit int
	for _, lp := range props {
		switch lp.p.ProposalType {
		case ProposalTypeUpdate:
			if lp.sender.SenderType != SenderTypeMember {
				return invalid("12.1.2", "an Update must come from a member")
			}
			if lp.ref == nil || lp.sender.LeafIndex == committer {
				return invalid("12.2", "Commit contains an Update proposal generated by the committer")
			}
			touched[lp.sender.LeafIndex]++
		case ProposalTypeRemove:
			if lp.p.Remove.Removed == committer {
				return invalid("12.2", "Commit contains a Remove proposal that removes the committer")
			}
			touched[lp.p.Remove.Removed]++
		case ProposalTypePSK:
			id := mustEncode(&lp.p.PreSharedKey.PSK)
			if psks[string(id)] {
				return invalid("12.2", "Commit contains two PreSharedKey proposals for the same PreSharedKeyID")
			}
			psks[string(id)] = true
		case ProposalTypeReInit:
			reinit++
		case ProposalTypeExternalInit:
			return invalid("12.2", "a Commit from a member must not contain an ExternalInit proposal")
		case ProposalTypeGroupContextExtensions:
			gce++
		case ProposalTypeAdd:
		default:
			if err := s.checkUnknownProposal(lp.p.ProposalType, props); err != nil {
				return err
			}
		}
	}
	for leaf, n := range touched {
		if n > 1 {
			return invalidf("12.2", "Commit contains more than one Update or Remove proposal for leaf %d", leaf)
		}
	}
	if gce > 1 {
		return invalid("12.2", "Commit contains more than one GroupContextExtensions proposal")
	}
	if reinit > 0 && len(props) > 1 {
		return invalid("12.2", "Commit contains a ReInit proposal together with other proposals")
	}
	return nil
}

// checkUnknownProposal rejects a proposal type RFC 9420 does not define:
// with §12.2 if some member that stays in the group does not support it,
// and otherwise because its effect on the public state is unknown here.
func (s *PublicGroupState) checkUnknownProposal(t ProposalType, props []listedProposal) error {
	removed := make(map[LeafIndex]bool)
	for _, lp := range props {
		if lp.p.ProposalType == ProposalTypeRemove {
			removed[lp.p.Remove.Removed] = true
		}
	}
	for i, leaf := range s.tree.Leaves() {
		if !removed[i] && !supportsProposal(&leaf.Capabilities, t) {
			return invalidf("12.2", "Commit contains proposal type 0x%04x, which member %d does not support", uint16(t), i)
		}
	}
	return invalidf("13.2", "Commit contains proposal type 0x%04x, whose effect on the group state this implementation does not know", uint16(t))
}

// checkExternalProposalList applies the §12.2 rules for an external
// Commit: exactly one ExternalInit, at most one Remove, any PreSharedKey
// proposals, nothing else.
func checkExternalProposalList(props []listedProposal) error {
	var inits, removes int
	psks := make(map[string]bool)
	for _, lp := range props {
		switch lp.p.ProposalType {
		case ProposalTypeExternalInit:
			inits++
		case ProposalTypeRemove:
			removes++
		case ProposalTypePSK:
			id := mustEncode(&lp.p.PreSharedKey.PSK)
			if psks[string(id)] {
				return invalid("12.2", "Commit contains two PreSharedKey proposals for the same PreSharedKeyID")
			}
			psks[string(id)] = true
		default:
			return invalidf("12.2", "an external Commit may contain only ExternalInit, Remove and PreSharedKey proposals, not %s", lp.p.ProposalType)
		}
	}
	if inits == 0 {
		return invalid("12.2", "an external Commit must contain an ExternalInit proposal")
	}
	if inits > 1 {
		return invalid("12.2", "an external Commit must contain exactly one ExternalInit proposal")
	}
	if removes > 1 {
		return invalid("12.2", "an external Commit may contain at most one Remove proposal")
	}
	return nil
}

// pathRequired reports whether the list needs an UpdatePath (§12.4).
func pathRequired(props []listedProposal) bool {
	if len(props) == 0 {
		return true
	}
	for _, lp := range props {
		switch lp.p.ProposalType {
		case ProposalTypeAdd, ProposalTypePSK, ProposalTypeReInit:
		default:
			return true
		}
	}
	return false
}

// addedLeaf is a leaf added by an Add proposal of the Commit.
type addedLeaf struct {
	leaf LeafIndex
	kp   *KeyPackage
}

// applyProposals applies the list to ns (a fork of old) in the order of
// §12.3 and checks each proposal's validity against the resulting state.
func (ns *PublicGroupState) applyProposals(old *PublicGroupState, props []listedProposal, effect *CommitEffect) ([]addedLeaf, error) {
	// GroupContextExtensions first: the other proposals are checked
	// against the new extensions (§12.3).
	for _, lp := range props {
		if lp.p.ProposalType == ProposalTypeGroupContextExtensions {
			if err := ns.setExtensions(lp.p.GroupContextExtensions.Extensions); err != nil {
				return nil, err
			}
			effect.GroupContextExtensions = true
		}
	}
	// Updates, then Removes, then Adds in list order.
	for _, lp := range props {
		if lp.p.ProposalType != ProposalTypeUpdate {
			continue
		}
		leaf := &lp.p.Update.LeafNode
		if err := ns.tree.UpdateLeaf(lp.sender.LeafIndex, leaf); err != nil {
			return nil, err
		}
		effect.Updated = append(effect.Updated, UpdatedMember{Leaf: lp.sender.LeafIndex, Credential: leaf.Credential, Identity: CredentialIdentity(&leaf.Credential)})
	}
	for _, lp := range props {
		if lp.p.ProposalType != ProposalTypeRemove {
			continue
		}
		i := lp.p.Remove.Removed
		gone := old.tree.Leaf(i)
		if err := ns.tree.RemoveLeaf(i); err != nil {
			return nil, err
		}
		effect.Removed = append(effect.Removed, RemovedMember{Leaf: i, Credential: gone.Credential, Identity: CredentialIdentity(&gone.Credential)})
	}
	var added []addedLeaf
	for _, lp := range props {
		if lp.p.ProposalType != ProposalTypeAdd {
			continue
		}
		kp := &lp.p.Add.KeyPackage
		i := ns.tree.AddLeaf(&kp.LeafNode)
		added = append(added, addedLeaf{leaf: i, kp: kp})
	}
	for _, lp := range props {
		switch lp.p.ProposalType {
		case ProposalTypePSK:
			if err := checkPSKProposal(old.gc.CipherSuite, lp.p.PreSharedKey, old.gc.Epoch == 0); err != nil {
				return nil, err
			}
			effect.PSKs = append(effect.PSKs, lp.p.PreSharedKey.PSK)
			if err := checkOneLink(effect.PSKs); err != nil {
				return nil, err
			}
		case ProposalTypeReInit:
			if lp.p.ReInit.Version < old.gc.Version {
				return nil, invalidf("12.1.5", "ReInit to protocol version %d, below the group's %d", lp.p.ReInit.Version, old.gc.Version)
			}
			effect.ReInit = lp.p.ReInit
		}
	}
	ns.indexTreeChange(old.tree)

	// Now the new leaves, against the tree after the whole list (§12.2:
	// the resulting tree must be valid).
	members := &stateMembers{s: ns, credUseBefore: old.credUse}
	for _, lp := range props {
		if lp.p.ProposalType != ProposalTypeUpdate {
			continue
		}
		i := lp.sender.LeafIndex
		leaf := &lp.p.Update.LeafNode
		if bytes.Equal(leaf.EncryptionKey, old.tree.Leaf(i).EncryptionKey) {
			return nil, invalidf("7.3", "Update from leaf %d keeps the encryption_key of the leaf it replaces", i)
		}
		v := ns.newLeafCheck(LeafNodeSourceUpdate, i, members)
		if err := ns.validateGroupLeaf(&v, leaf); err != nil {
			return nil, fmt.Errorf("Update from leaf %d: %w", i, err)
		}
	}
	for _, a := range added {
		if err := ns.validateAddedKeyPackage(a, members); err != nil {
			return nil, fmt.Errorf("Add of leaf %d: %w", a.leaf, err)
		}
		if members.signatureKeyUsedElsewhere(a.kp.LeafNode.SignatureKey, a.leaf, true) {
			for _, b := range added {
				if b.leaf != a.leaf && bytes.Equal(b.kp.LeafNode.SignatureKey, a.kp.LeafNode.SignatureKey) {
					return nil, invalid("12.2", "Commit contains two Add proposals for the same client (same signature key)")
				}
			}
			return nil, invalid("12.2", "Commit adds a client that is already in the group (same signature key) without removing it")
		}
		ref, err := a.kp.Ref()
		if err != nil {
			return nil, err
		}
		leaf := &a.kp.LeafNode
		effect.Added = append(effect.Added, AddedMember{Leaf: a.leaf, KeyPackageRef: ref, Credential: leaf.Credential, Identity: CredentialIdentity(&leaf.Credential)})
	}
	if effect.GroupContextExtensions {
		// The members the Commit does not change must support the new
		// extensions too (§12.1.7, §13.4).
		for i, leaf := range ns.tree.Leaves() {
			if err := checkRequiredCapabilities(ns.required, &leaf.Capabilities); err != nil {
				return nil, &ValidationError{Rule: fmt.Sprintf("GroupContextExtensions requires capabilities that member %d lacks", i), Section: "12.1.7", Err: err}
			}
			if t, ok := unsupportedExtension(ns.gc.Extensions, &leaf.Capabilities); !ok {
				return nil, invalidf("12.1.7", "GroupContextExtensions adds extension type %d, which member %d does not support", uint16(t), i)
			}
		}
	}
	return added, nil
}

// leafCheck sets up the §7.3 rules for a leaf of this state.
func (ns *PublicGroupState) newLeafCheck(source LeafNodeSource, i LeafIndex, members memberSet) leafCheck {
	v := leafCheck{
		cs:          ns.gc.CipherSuite,
		groupID:     ns.gc.GroupID,
		leafIndex:   i,
		source:      source,
		required:    ns.required,
		maxLifetime: ns.policy.MaxLifetime,
		members:     members,
		replacing:   true,
	}
	if ns.policy.Now != nil && source == LeafNodeSourceKeyPackage {
		v.now = ns.policy.Now()
	}
	return v
}

// validateGroupLeaf runs the §7.3 rules and the GroupContext rules on a
// leaf.
func (ns *PublicGroupState) validateGroupLeaf(v *leafCheck, leaf *LeafNode) error {
	if err := v.validate(leaf); err != nil {
		return err
	}
	return ns.checkLeafInGroup(leaf)
}

// validateAddedKeyPackage checks the KeyPackage of an Add (§12.1.1, §10.1)
// whose leaf now sits at a.leaf. The signature key's uniqueness is left to
// the caller, which reports it under §12.2.
func (ns *PublicGroupState) validateAddedKeyPackage(a addedLeaf, members memberSet) error {
	kp := a.kp
	if kp.Version != ns.gc.Version {
		return invalidf("10.1", "KeyPackage protocol version %d differs from the group's %d", kp.Version, ns.gc.Version)
	}
	if kp.CipherSuite != ns.gc.CipherSuite {
		return invalidf("10.1", "KeyPackage cipher suite %d differs from the group's %d", uint16(kp.CipherSuite), uint16(ns.gc.CipherSuite))
	}
	v := ns.newLeafCheck(LeafNodeSourceKeyPackage, a.leaf, members)
	v.skipUniqueness = true
	if err := validateKeyPackage(kp, v); err != nil {
		return err
	}
	if err := ns.checkLeafInGroup(&kp.LeafNode); err != nil {
		return err
	}
	if members.encryptionKeyUsedElsewhere(kp.LeafNode.EncryptionKey, a.leaf, true) {
		return invalid("7.3", "LeafNode encryption_key already appears in the ratchet tree")
	}
	return nil
}

// checkPSKProposal applies the rules of §12.1.4 that need no PSK value.
// initial says the proposal is in the Commit that leaves epoch 0, the one
// that sets up a successor or a branch, where usages reinit and branch
// are allowed (§11.2, §11.3, reinit.go).
func checkPSKProposal(cs CipherSuite, p *PreSharedKey, initial bool) error {
	id := &p.PSK
	if len(id.PSKNonce) != cs.HashSize() {
		return invalidf("12.1.4", "psk_nonce has %d bytes; it must have Nh = %d", len(id.PSKNonce), cs.HashSize())
	}
	if id.PSKType == PSKTypeResumption {
		switch id.Usage {
		case ResumptionPSKUsageApplication:
		case ResumptionPSKUsageReInit:
			if !initial {
				return invalid("12.1.4", "a PreSharedKey proposal of usage reinit is only valid while reinitializing a group")
			}
		case ResumptionPSKUsageBranch:
			if !initial {
				return invalid("12.1.4", "a PreSharedKey proposal of usage branch is only valid while branching a group")
			}
		default:
			return invalidf("12.1.4", "resumption PSK has unknown usage %d", id.Usage)
		}
	}
	return nil
}

// applyPath checks the Commit's UpdatePath against ns (the tree after the
// proposals) and merges it (§12.4.2, §7.5, §7.6, §7.9.2). It returns the
// committer's leaf: for an external Commit, the leaf the joiner gets.
func (ns *PublicGroupState) applyPath(old *PublicGroupState, path *UpdatePath, committer LeafIndex, external bool, props []listedProposal, added []addedLeaf) (LeafIndex, error) {
	cs := ns.gc.CipherSuite
	leaf := &path.LeafNode
	members := &stateMembers{s: ns, credUseBefore: old.credUse}

	// Work on a copy (O(1)): the checks below see the tree after the
	// proposals, and the index is brought up to date by comparing the two.
	// The joiner of an external Commit goes to the leftmost blank leaf
	// (§12.4.3.2).
	before := ns.tree
	tree := ns.tree.Clone()
	sender := committer
	if external {
		sender = tree.AddLeaf(leaf)
	} else if bytes.Equal(leaf.EncryptionKey, ns.tree.Leaf(committer).EncryptionKey) {
		return 0, invalid("12.4.2", "UpdatePath leaf_node keeps the committer's encryption_key")
	}

	v := ns.newLeafCheck(LeafNodeSourceCommit, sender, members)
	v.replacing = !external
	if err := ns.validateGroupLeaf(&v, leaf); err != nil {
		return 0, fmt.Errorf("UpdatePath leaf_node: %w", err)
	}
	if external {
		if err := ns.checkResync(old, leaf, props); err != nil {
			return 0, err
		}
	}

	// §12.4.2: no public key of the UpdatePath may appear in the tree.
	seen := map[string]bool{string(leaf.EncryptionKey): true}
	for k := range path.Nodes {
		key := path.Nodes[k].EncryptionKey
		if !validHPKEPublicKey(cs, key) {
			return 0, invalidf("7.6", "UpdatePath node %d encryption_key is not a valid HPKE public key for %s", k, cs)
		}
		if seen[string(key)] || ns.keys.count(keyKindEncryption, key) > 0 {
			return 0, invalidf("12.4.2", "UpdatePath node %d encryption_key already appears in the ratchet tree or the path", k)
		}
		seen[string(key)] = true
	}

	// §7.6: one node per node of the filtered direct path, each with one
	// ciphertext per node of its copath child's resolution, new leaves left
	// out.
	fdp := tree.FilteredDirectPath(sender)
	if len(path.Nodes) != len(fdp) {
		return 0, &ValidationError{Rule: rulePathLength, Section: "7.6",
			Err: fmt.Errorf("path has %d nodes, filtered direct path of leaf %d has %d", len(path.Nodes), sender, len(fdp))}
	}
	newLeaves := make(map[NodeIndex]bool, len(added)+1)
	for _, a := range added {
		newLeaves[a.leaf.node()] = true
	}
	if external {
		newLeaves[sender.node()] = true
	}
	for k, p := range fdp {
		sib := p.left()
		if sib.isAncestorOf(sender.node()) {
			sib = p.right()
		}
		want := 0
		for _, x := range tree.Resolution(sib) {
			if !newLeaves[x] {
				want++
			}
		}
		if got := len(path.Nodes[k].EncryptedPathSecret); got != want {
			return 0, invalidf("7.6", "UpdatePath node %d has %d encrypted path secrets; the resolution of its copath child has %d nodes", k, got, want)
		}
	}

	if err := tree.MergeUpdatePath(sender, path); err != nil {
		return 0, err
	}
	ns.tree = tree
	ns.indexTreeChange(before)
	return sender, nil
}

// checkResync applies the rule for an external Commit that removes a member
// (§12.2): the joiner's LeafNode must be acceptable as an Update of the
// removed leaf.
func (ns *PublicGroupState) checkResync(old *PublicGroupState, leaf *LeafNode, props []listedProposal) error {
	for _, lp := range props {
		if lp.p.ProposalType != ProposalTypeRemove {
			continue
		}
		gone := old.tree.Leaf(lp.p.Remove.Removed)
		if gone == nil {
			return nil // RemoveLeaf has already rejected it
		}
		if bytes.Equal(gone.EncryptionKey, leaf.EncryptionKey) {
			return invalid("12.2", "external Commit that removes a member must not reuse the removed leaf's encryption_key")
		}
		if !ns.policy.AllowResyncWithNewIdentity && !sameCredential(&gone.Credential, &leaf.Credential) {
			return invalid("12.2", "external Commit removes a member whose credential differs from the joiner's")
		}
	}
	return nil
}

func sameCredential(a, b *Credential) bool {
	x, err1 := encode(a)
	y, err2 := encode(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// validateStandaloneProposal checks a proposal received on its own
// (§12.1): the rules that depend on the proposal and the current state
// only. Rules about the list a proposal ends up in, and the uniqueness of
// keys, are checked when a Commit covers it.
func (s *PublicGroupState) validateStandaloneProposal(p *Proposal, sender Sender) error {
	members := &stateMembers{s: s, credUseBefore: s.credUse}
	switch p.ProposalType {
	case ProposalTypeAdd:
		kp := &p.Add.KeyPackage
		if kp.Version != s.gc.Version {
			return invalidf("10.1", "KeyPackage protocol version %d differs from the group's %d", kp.Version, s.gc.Version)
		}
		if kp.CipherSuite != s.gc.CipherSuite {
			return invalidf("10.1", "KeyPackage cipher suite %d differs from the group's %d", uint16(kp.CipherSuite), uint16(s.gc.CipherSuite))
		}
		v := s.newLeafCheck(LeafNodeSourceKeyPackage, 0, members)
		v.replacing = false
		v.skipUniqueness = true
		if err := validateKeyPackage(kp, v); err != nil {
			return err
		}
		return s.checkLeafInGroup(&kp.LeafNode)
	case ProposalTypeUpdate:
		if sender.SenderType != SenderTypeMember {
			return invalid("12.1.2", "an Update must come from a member")
		}
		cur := s.tree.Leaf(sender.LeafIndex)
		leaf := &p.Update.LeafNode
		if bytes.Equal(leaf.EncryptionKey, cur.EncryptionKey) {
			return invalidf("7.3", "Update from leaf %d keeps the encryption_key of the leaf it replaces", sender.LeafIndex)
		}
		v := s.newLeafCheck(LeafNodeSourceUpdate, sender.LeafIndex, members)
		v.skipUniqueness = true
		return s.validateGroupLeaf(&v, leaf)
	case ProposalTypeRemove:
		if s.tree.Leaf(p.Remove.Removed) == nil {
			return &ValidationError{Rule: ruleRemoveBlank, Section: "12.1.3", Err: fmt.Errorf("leaf %d is blank", p.Remove.Removed)}
		}
	case ProposalTypePSK:
		return checkPSKProposal(s.gc.CipherSuite, p.PreSharedKey, false)
	case ProposalTypeReInit:
		if p.ReInit.Version < s.gc.Version {
			return invalidf("12.1.5", "ReInit to protocol version %d, below the group's %d", p.ReInit.Version, s.gc.Version)
		}
	case ProposalTypeExternalInit:
		return invalid("12.1.6", "an ExternalInit proposal is only valid inside an external Commit")
	case ProposalTypeGroupContextExtensions:
		probe := &PublicGroupState{gc: s.gc}
		if err := probe.setExtensions(p.GroupContextExtensions.Extensions); err != nil {
			return err
		}
		for i, leaf := range s.tree.Leaves() {
			if err := checkRequiredCapabilities(probe.required, &leaf.Capabilities); err != nil {
				return &ValidationError{Rule: fmt.Sprintf("GroupContextExtensions requires capabilities that member %d lacks", i), Section: "12.1.7", Err: err}
			}
			if t, ok := unsupportedExtension(probe.gc.Extensions, &leaf.Capabilities); !ok {
				return invalidf("12.1.7", "GroupContextExtensions adds extension type %d, which member %d does not support", uint16(t), i)
			}
		}
	}
	return nil
}
