package mls

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// dsGroup is a small real group: members with real signature and HPKE
// keys, signed KeyPackages and LeafNodes, and Commits built and signed as
// PublicMessages the way a client would. The PublicGroupState is the
// group's state: every Commit the test applies goes through HandleCommit.
// Membership and confirmation tags are random, since the DS cannot check
// them.
type dsGroup struct {
	t       testing.TB
	cs      CipherSuite
	groupID []byte
	s       *PublicGroupState
	members map[LeafIndex]*testMember
	pending map[string]*testMember // by KeyPackageRef, until an Add lands
}

// newDSGroup creates a group of n members: member 0 creates it, adds the
// others in one Commit, and then commits with a path so that the tree has
// non-blank parents.
func newDSGroup(t testing.TB, cs CipherSuite, n int) *dsGroup {
	t.Helper()
	creator := newTestMember(t, cs, "member-0")
	tree, err := NewRatchetTree(cs, []*Node{{Leaf: &creator.kp.LeafNode}})
	if err != nil {
		t.Fatal(err)
	}
	g := &dsGroup{t: t, cs: cs, groupID: []byte("test group"), members: map[LeafIndex]*testMember{0: creator}, pending: map[string]*testMember{}}
	gi := &GroupInfo{
		GroupContext: GroupContext{
			Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: g.groupID,
			Epoch: 0, TreeHash: tree.TreeHash(),
		},
		ConfirmationTag: dsRandom(cs.HashSize()),
		Signer:          0,
	}
	if err := gi.Sign(creator.sigPriv); err != nil {
		t.Fatal(err)
	}
	if g.s, err = NewPublicGroupState(gi, tree); err != nil {
		t.Fatal(err)
	}
	if n > 1 {
		var adds []ProposalOrRef
		for i := 1; i < n; i++ {
			adds = append(adds, g.add(newTestMember(t, cs, "member-"+itoa(i))))
		}
		g.apply(g.commit(0, adds...).msg())
		g.apply(g.commit(0).withPath().msg())
	}
	return g
}

// add returns an Add proposal by value for m and remembers m.
func (g *dsGroup) add(m *testMember) ProposalOrRef {
	ref, err := m.kp.Ref()
	if err != nil {
		g.t.Fatal(err)
	}
	g.pending[string(ref)] = m
	return porValue(&Proposal{ProposalType: ProposalTypeAdd, Add: &Add{KeyPackage: *m.kp}})
}

func porValue(p *Proposal) ProposalOrRef {
	return ProposalOrRef{Type: ProposalOrRefTypeProposal, Proposal: p}
}

func porRef(ref ProposalRef) ProposalOrRef {
	return ProposalOrRef{Type: ProposalOrRefTypeReference, Reference: ref}
}

func removeProposal(i LeafIndex) *Proposal {
	return &Proposal{ProposalType: ProposalTypeRemove, Remove: &Remove{Removed: i}}
}

// apply hands msg to HandleCommit and moves the group to the new epoch.
func (g *dsGroup) apply(msg *PublicMessage) *CommitEffect {
	g.t.Helper()
	next, effect, err := g.s.HandleCommit(msg)
	if err != nil {
		g.t.Fatalf("HandleCommit: %v", err)
	}
	g.s = next
	for _, r := range effect.Removed {
		delete(g.members, r.Leaf)
	}
	for _, a := range effect.Added {
		if a.KeyPackageRef != nil {
			g.members[a.Leaf] = g.pending[string(a.KeyPackageRef)]
		}
	}
	return effect
}

// proposal builds a PublicMessage carrying p from member i, signed.
func (g *dsGroup) proposal(i LeafIndex, p *Proposal) *PublicMessage {
	g.t.Helper()
	return g.signedProposal(Sender{SenderType: SenderTypeMember, LeafIndex: i}, p, g.members[i].sigPriv)
}

func (g *dsGroup) signedProposal(sender Sender, p *Proposal, priv []byte) *PublicMessage {
	g.t.Helper()
	ac := &AuthenticatedContent{WireFormat: WireFormatPublicMessage, Content: FramedContent{
		GroupID: g.groupID, Epoch: g.s.Epoch(), Sender: sender, ContentType: ContentTypeProposal, Proposal: p,
	}}
	var ctx *GroupContext
	if sender.SenderType == SenderTypeMember || sender.SenderType == SenderTypeNewMemberCommit {
		gc := g.s.GroupContext()
		ctx = &gc
	}
	if err := ac.Sign(g.cs, priv, ctx); err != nil {
		g.t.Fatal(err)
	}
	msg := &PublicMessage{Content: ac.Content, Auth: ac.Auth}
	if sender.SenderType == SenderTypeMember {
		msg.MembershipTag = dsRandom(g.cs.HashSize())
	}
	return msg
}

// update returns an Update proposal for member i with a fresh leaf.
func (g *dsGroup) update(i LeafIndex, edit ...func(*LeafNode)) *Proposal {
	leaf := g.members[i].groupLeaf(g.t, LeafNodeSourceUpdate, g.groupID, i, edit...)
	return &Proposal{ProposalType: ProposalTypeUpdate, Update: &Update{LeafNode: *leaf}}
}

// commitBuild collects the parts of a Commit; msg assembles and signs it.
type commitBuild struct {
	g       *dsGroup
	sender  Sender
	pors    []ProposalOrRef
	path    bool
	joiner  *testMember // for an external Commit
	signer  []byte      // signature key of the FramedContent
	context *GroupContext

	editNodes   func([]UpdatePathNode) []UpdatePathNode // before the parent hash is computed
	editLeaf    func(*LeafNode)                         // before the path leaf is signed
	editPath    func(*UpdatePath)                       // after the path is complete
	editContent func(*FramedContent)                    // before signing
	editMsg     func(*PublicMessage)                    // after signing
}

// commit starts a Commit from member i covering pors.
func (g *dsGroup) commit(i LeafIndex, pors ...ProposalOrRef) *commitBuild {
	return &commitBuild{g: g, sender: Sender{SenderType: SenderTypeMember, LeafIndex: i}, pors: pors, signer: g.members[i].sigPriv}
}

// externalCommit starts an external Commit by joiner covering pors, with
// the path it must have.
func (g *dsGroup) externalCommit(joiner *testMember, pors ...ProposalOrRef) *commitBuild {
	return &commitBuild{g: g, sender: Sender{SenderType: SenderTypeNewMemberCommit}, pors: pors, path: true, joiner: joiner, signer: joiner.sigPriv}
}

func externalInit() ProposalOrRef {
	return porValue(&Proposal{ProposalType: ProposalTypeExternalInit, ExternalInit: &ExternalInit{KEMOutput: dsRandom(32)}})
}

func (b *commitBuild) withPath() *commitBuild { b.path = true; return b }

// treeAfterProposals returns the tree once the Commit's proposals are
// applied, and the node indices of the leaves they add. If the proposals
// are invalid (the point of some tests), it returns the current tree.
func (b *commitBuild) treeAfterProposals() (*RatchetTree, map[NodeIndex]bool) {
	s := b.g.s
	external := b.sender.SenderType == SenderTypeNewMemberCommit
	props, err := s.resolveProposals(&Commit{Proposals: b.pors}, b.sender, external)
	if err == nil {
		ns := s.fork()
		added, err := ns.applyProposals(s, props, &CommitEffect{})
		if err == nil {
			newLeaves := map[NodeIndex]bool{}
			for _, a := range added {
				newLeaves[a.leaf.node()] = true
			}
			return ns.tree, newLeaves
		}
	}
	return s.tree.Clone(), map[NodeIndex]bool{}
}

// buildPath makes an UpdatePath for the sender: fresh node keys, path
// secrets encrypted to each copath resolution (§7.6), and a leaf with the
// parent hash the tree calls for (§7.9.1), signed.
func (b *commitBuild) buildPath() *UpdatePath {
	g := b.g
	t := g.t
	tree, newLeaves := b.treeAfterProposals()
	var sender LeafIndex
	var m *testMember
	if b.joiner != nil {
		m = b.joiner
		sender = tree.AddLeaf(&m.kp.LeafNode)
		newLeaves[sender.node()] = true
	} else {
		sender = b.sender.LeafIndex
		m = g.members[sender]
	}
	ctx := mustEncode(&GroupContext{GroupID: g.groupID}) // the members' provisional context; irrelevant to the DS
	var nodes []UpdatePathNode
	for _, p := range tree.FilteredDirectPath(sender) {
		_, pub, err := g.cs.GenerateKEMKeyPair()
		if err != nil {
			t.Fatal(err)
		}
		node := UpdatePathNode{EncryptionKey: pub}
		sib := p.left()
		if sib.isAncestorOf(sender.node()) {
			sib = p.right()
		}
		for _, x := range tree.Resolution(sib) {
			if newLeaves[x] {
				continue
			}
			kem, ct, err := g.cs.EncryptWithLabel(tree.EncryptionKey(x), "UpdatePathNode", ctx, dsRandom(g.cs.HashSize()))
			if err != nil {
				t.Fatal(err)
			}
			node.EncryptedPathSecret = append(node.EncryptedPathSecret, HPKECiphertext{KEMOutput: kem, Ciphertext: ct})
		}
		nodes = append(nodes, node)
	}
	if b.editNodes != nil {
		nodes = b.editNodes(nodes)
	}
	path := &UpdatePath{Nodes: nodes}
	ph, _ := tree.PathParentHash(sender, path)
	leaf := m.groupLeaf(t, LeafNodeSourceCommit, g.groupID, sender, func(ln *LeafNode) {
		ln.ParentHash = ph
		if b.editLeaf != nil {
			b.editLeaf(ln)
		}
	})
	path.LeafNode = *leaf
	if b.editPath != nil {
		b.editPath(path)
	}
	return path
}

func (b *commitBuild) msg() *PublicMessage {
	g := b.g
	fc := FramedContent{
		GroupID: g.groupID, Epoch: g.s.Epoch(), Sender: b.sender,
		ContentType: ContentTypeCommit, Commit: &Commit{Proposals: b.pors},
	}
	if b.path {
		fc.Commit.Path = b.buildPath()
	}
	if b.editContent != nil {
		b.editContent(&fc)
	}
	ac := &AuthenticatedContent{WireFormat: WireFormatPublicMessage, Content: fc}
	ctx := g.s.GroupContext()
	if b.context != nil {
		ctx = *b.context
	}
	if err := ac.Sign(g.cs, b.signer, &ctx); err != nil {
		g.t.Fatal(err)
	}
	ac.Auth.ConfirmationTag = dsRandom(g.cs.HashSize())
	msg := &PublicMessage{Content: ac.Content, Auth: ac.Auth}
	if fc.Sender.SenderType == SenderTypeMember {
		msg.MembershipTag = dsRandom(g.cs.HashSize())
	}
	if b.editMsg != nil {
		b.editMsg(msg)
	}
	return msg
}

// stateSnapshot is everything observable about a state, to show that a
// rejected message left it alone.
func stateSnapshot(t testing.TB, s *PublicGroupState) []byte {
	t.Helper()
	data, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// rejectCommit asserts that HandleCommit rejects msg with a
// *ValidationError of section and leaves the state as it was.
func (g *dsGroup) rejectCommit(t *testing.T, msg *PublicMessage, section string) {
	t.Helper()
	before := stateSnapshot(t, g.s)
	treeHash, epoch := g.s.Tree().TreeHash(), g.s.Epoch()
	next, effect, err := g.s.HandleCommit(msg)
	assertSection(t, err, section)
	if next != nil || effect != nil {
		t.Fatal("a rejected Commit returned a state")
	}
	if !bytes.Equal(g.s.Tree().TreeHash(), treeHash) || g.s.Epoch() != epoch || !bytes.Equal(stateSnapshot(t, g.s), before) {
		t.Fatal("a rejected Commit changed the state")
	}
}

const dsSuite = MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

// TestHandleCommitValid walks a group through the kinds of Commit, checking
// the new GroupContext and the CommitEffect.
func TestHandleCommitValid(t *testing.T) {
	g := newDSGroup(t, dsSuite, 4)
	if g.s.Epoch() != 2 || g.s.Tree().MemberCount() != 4 {
		t.Fatalf("epoch %d, %d members after setup", g.s.Epoch(), g.s.Tree().MemberCount())
	}

	// Update by reference, Remove by value, Add by value, PSK by value.
	upd := g.proposal(2, g.update(2))
	ref, err := g.s.HandleProposal(upd)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := g.s.HandleProposal(upd); err != nil || !bytes.Equal(again, ref) {
		t.Fatalf("same proposal twice: %v", err)
	}
	if n := len(g.s.PendingProposals()); n != 1 {
		t.Fatalf("%d pending proposals, want 1", n)
	}
	dave := newTestMember(t, dsSuite, "dave")
	psk := &Proposal{ProposalType: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: PreSharedKeyID{PSKType: PSKTypeExternal, PSKID: []byte("psk"), PSKNonce: dsRandom(32)}}}
	old := g.s
	oldInterim := old.InterimTranscriptHash()
	msg := g.commit(0, porRef(ref), porValue(removeProposal(3)), g.add(dave), porValue(psk)).withPath().msg()
	effect := g.apply(msg)

	if g.s.Epoch() != old.Epoch()+1 {
		t.Fatalf("epoch %d after a Commit in epoch %d", g.s.Epoch(), old.Epoch())
	}
	gc := g.s.GroupContext()
	if !bytes.Equal(gc.TreeHash, g.s.Tree().TreeHash()) {
		t.Fatal("GroupContext.tree_hash is not the hash of the new tree")
	}
	ac := msg.AuthenticatedContent()
	confirmed, interim, err := NextTranscriptHashes(dsSuite, oldInterim, ac)
	if err != nil || !bytes.Equal(gc.ConfirmedTranscriptHash, confirmed) || !bytes.Equal(g.s.InterimTranscriptHash(), interim) {
		t.Fatal("transcript hashes are not those of §8.2")
	}
	if len(g.s.PendingProposals()) != 0 {
		t.Fatal("proposals of the old epoch carried over")
	}
	if old.Epoch() != gc.Epoch-1 || len(old.PendingProposals()) != 1 {
		t.Fatal("HandleCommit changed the old state")
	}
	if !effect.PathPresent || effect.Committer != 0 || effect.External {
		t.Fatalf("effect %+v", effect)
	}
	if len(effect.Removed) != 1 || effect.Removed[0].Leaf != 3 || string(effect.Removed[0].Identity) != "member-3" {
		t.Fatalf("Removed = %+v", effect.Removed)
	}
	daveRef, _ := dave.kp.Ref()
	if len(effect.Added) != 1 || effect.Added[0].Leaf != 3 || !bytes.Equal(effect.Added[0].KeyPackageRef, daveRef) || string(effect.Added[0].Identity) != "dave" {
		t.Fatalf("Added = %+v", effect.Added)
	}
	if len(effect.Updated) != 2 || effect.Updated[0].Leaf != 2 || effect.Updated[1].Leaf != 0 {
		t.Fatalf("Updated = %+v", effect.Updated)
	}
	if len(effect.PSKs) != 1 || string(effect.PSKs[0].PSKID) != "psk" {
		t.Fatalf("PSKs = %+v", effect.PSKs)
	}

	// An Add-only Commit needs no path.
	erin := newTestMember(t, dsSuite, "erin")
	effect = g.apply(g.commit(1, g.add(erin)).msg())
	if effect.PathPresent || len(effect.Added) != 1 || effect.Added[0].Leaf != 4 {
		t.Fatalf("effect %+v", effect)
	}
	// Removing the rightmost members truncates the tree.
	g.apply(g.commit(0, porValue(removeProposal(4))).withPath().msg())
	if g.s.Tree().LeafCount() != 4 {
		t.Fatalf("tree has %d leaves after removing leaf 4", g.s.Tree().LeafCount())
	}
	// Re-adding a removed client together with its Remove is allowed
	// (§12.2).
	g.apply(g.commit(0, porValue(removeProposal(3)), g.add(g.members[3])).withPath().msg())

	// The state survives a round trip through its encoding.
	if _, err := g.s.HandleProposal(g.proposal(1, g.update(1))); err != nil {
		t.Fatal(err)
	}
	r, err := reloadState(g.s)
	if err != nil {
		t.Fatal(err)
	}
	if rgc := r.GroupContext(); !bytes.Equal(mustEncode(&rgc), mustEncode(&gc)) && r.Epoch() != g.s.Epoch() {
		t.Fatal("reloaded state differs")
	}
	if _, _, err := r.HandleCommit(g.commit(0, porRef(r.PendingProposals()[0].Ref)).withPath().msg()); err != nil {
		t.Fatalf("reloaded state rejects a Commit of its cached proposal: %v", err)
	}
}

// TestHandleCommitRules breaks one rule of Commit processing at a time.
// Each case builds a fresh four-member group, in which leaf 0 commits.
func TestHandleCommitRules(t *testing.T) {
	cases := []struct {
		name    string
		section string
		build   func(g *dsGroup) *PublicMessage
	}{
		// Framing, sender, signature (§6, §6.1, §6.2, §12.4.2).
		{"wrong epoch", "12.4.2", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.editContent = func(fc *FramedContent) { fc.Epoch++ }
			return b.msg()
		}},
		{"wrong group", "6", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.editContent = func(fc *FramedContent) { fc.GroupID = []byte("other group") }
			return b.msg()
		}},
		{"sender not a member", "6.1", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.editContent = func(fc *FramedContent) { fc.Sender.LeafIndex = 9 }
			return b.msg()
		}},
		{"sender external", "6.1", func(g *dsGroup) *PublicMessage {
			b := g.commit(0, g.add(newTestMember(g.t, dsSuite, "x")))
			b.sender = Sender{SenderType: SenderTypeExternal}
			return b.msg()
		}},
		{"signature by another member", "6.1", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.signer = g.members[1].sigPriv
			return b.msg()
		}},
		{"signature over another GroupContext", "6.1", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			gc := g.s.GroupContext()
			gc.TreeHash = dsRandom(32)
			b.context = &gc
			return b.msg()
		}},
		{"confirmation_tag length", "6.1", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.editMsg = func(m *PublicMessage) { m.Auth.ConfirmationTag = m.Auth.ConfirmationTag[:16] }
			return b.msg()
		}},
		{"membership_tag length", "6.2", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.editMsg = func(m *PublicMessage) { m.MembershipTag = nil }
			return b.msg()
		}},

		// References (§12.4).
		{"unknown reference", "12.4", func(g *dsGroup) *PublicMessage {
			return g.commit(0, porRef(dsRandom(32))).withPath().msg()
		}},
		{"same reference twice", "12.2", func(g *dsGroup) *PublicMessage {
			ref, err := g.s.HandleProposal(g.proposal(1, removeProposal(2)))
			if err != nil {
				g.t.Fatal(err)
			}
			return g.commit(0, porRef(ref), porRef(ref)).withPath().msg()
		}},

		// Proposal list rules (§12.2), one each.
		{"Update by the committer, by value", "12.2", func(g *dsGroup) *PublicMessage {
			return g.commit(0, porValue(g.update(0))).withPath().msg()
		}},
		{"Update by the committer, by reference", "12.2", func(g *dsGroup) *PublicMessage {
			ref, err := g.s.HandleProposal(g.proposal(0, g.update(0)))
			if err != nil {
				g.t.Fatal(err)
			}
			return g.commit(0, porRef(ref)).withPath().msg()
		}},
		{"Remove of the committer", "12.2", func(g *dsGroup) *PublicMessage {
			return g.commit(0, porValue(removeProposal(0))).withPath().msg()
		}},
		{"Update and Remove of one leaf", "12.2", func(g *dsGroup) *PublicMessage {
			ref, err := g.s.HandleProposal(g.proposal(1, g.update(1)))
			if err != nil {
				g.t.Fatal(err)
			}
			return g.commit(0, porRef(ref), porValue(removeProposal(1))).withPath().msg()
		}},
		{"two Removes of one leaf", "12.2", func(g *dsGroup) *PublicMessage {
			return g.commit(0, porValue(removeProposal(1)), porValue(removeProposal(1))).withPath().msg()
		}},
		{"two Adds of one client", "12.2", func(g *dsGroup) *PublicMessage {
			a := newTestMember(g.t, dsSuite, "x")
			b := &testMember{cs: dsSuite, sigPriv: a.sigPriv, sigPub: a.sigPub}
			b.kp = newTestMember(g.t, dsSuite, "x").kp
			b.kp.LeafNode.SignatureKey = a.sigPub
			b.resign(g.t)
			return g.commit(0, g.add(a), g.add(b)).msg()
		}},
		{"Add of a client already in the group", "12.2", func(g *dsGroup) *PublicMessage {
			m := g.members[2]
			again := newTestMember(g.t, dsSuite, "member-2")
			again.sigPriv, again.sigPub = m.sigPriv, m.sigPub
			again.kp.LeafNode.SignatureKey = m.sigPub
			again.resign(g.t)
			return g.commit(0, g.add(again)).msg()
		}},
		{"two PSKs with one PreSharedKeyID", "12.2", func(g *dsGroup) *PublicMessage {
			p := &Proposal{ProposalType: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: PreSharedKeyID{PSKType: PSKTypeExternal, PSKID: []byte("k"), PSKNonce: dsRandom(32)}}}
			return g.commit(0, porValue(p), porValue(p)).msg()
		}},
		{"two GroupContextExtensions", "12.2", func(g *dsGroup) *PublicMessage {
			p := &Proposal{ProposalType: ProposalTypeGroupContextExtensions, GroupContextExtensions: &GroupContextExtensions{}}
			return g.commit(0, porValue(p), porValue(p)).withPath().msg()
		}},
		{"ReInit with another proposal", "12.2", func(g *dsGroup) *PublicMessage {
			p := &Proposal{ProposalType: ProposalTypeReInit, ReInit: &ReInit{GroupID: []byte("new"), Version: ProtocolVersionMLS10, CipherSuite: dsSuite}}
			return g.commit(0, porValue(p), porValue(removeProposal(1))).withPath().msg()
		}},
		{"ExternalInit in a member's Commit", "12.2", func(g *dsGroup) *PublicMessage {
			return g.commit(0, externalInit()).withPath().msg()
		}},

		// Validity of single proposals (§12.1).
		{"Remove of a leaf outside the tree", "12.1.3", func(g *dsGroup) *PublicMessage {
			return g.commit(0, porValue(removeProposal(6))).withPath().msg()
		}},
		{"Remove of a blank leaf", "12.1.3", func(g *dsGroup) *PublicMessage {
			g.apply(g.commit(0, porValue(removeProposal(2))).withPath().msg())
			return g.commit(0, porValue(removeProposal(2))).withPath().msg()
		}},
		{"Add with a bad KeyPackage signature", "10.1", func(g *dsGroup) *PublicMessage {
			m := newTestMember(g.t, dsSuite, "x")
			m.kp.Signature[0] ^= 1
			return g.commit(0, g.add(m)).msg()
		}},
		{"Add of a KeyPackage for another suite", "10.1", func(g *dsGroup) *PublicMessage {
			return g.commit(0, g.add(newTestMember(g.t, MLS_128_DHKEMP256_AES128GCM_SHA256_P256, "x"))).msg()
		}},
		{"Add of a leaf lacking the group's credential type", "7.3", func(g *dsGroup) *PublicMessage {
			return g.commit(0, g.add(newTestMember(g.t, dsSuite, "x", func(kp *KeyPackage) {
				kp.LeafNode.Credential = Credential{CredentialType: CredentialTypeX509, Certificates: [][]byte{[]byte("cert")}}
				kp.LeafNode.Capabilities.Credentials = []CredentialType{CredentialTypeX509}
			}))).msg()
		}},
		{"Add reusing a member's encryption key", "7.3", func(g *dsGroup) *PublicMessage {
			return g.commit(0, g.add(newTestMember(g.t, dsSuite, "x", func(kp *KeyPackage) {
				kp.LeafNode.EncryptionKey = g.s.Tree().Leaf(1).EncryptionKey
			}))).msg()
		}},
		{"PSK nonce length", "12.1.4", func(g *dsGroup) *PublicMessage {
			p := &Proposal{ProposalType: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: PreSharedKeyID{PSKType: PSKTypeExternal, PSKID: []byte("k"), PSKNonce: dsRandom(16)}}}
			return g.commit(0, porValue(p)).msg()
		}},
		{"resumption PSK of usage reinit", "12.1.4", func(g *dsGroup) *PublicMessage {
			p := &Proposal{ProposalType: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: PreSharedKeyID{PSKType: PSKTypeResumption, Usage: ResumptionPSKUsageReInit, PSKGroupID: g.groupID, PSKEpoch: 1, PSKNonce: dsRandom(32)}}}
			return g.commit(0, porValue(p)).msg()
		}},
		{"ReInit to a lower version", "12.1.5", func(g *dsGroup) *PublicMessage {
			p := &Proposal{ProposalType: ProposalTypeReInit, ReInit: &ReInit{GroupID: []byte("new"), Version: 0, CipherSuite: dsSuite}}
			return g.commit(0, porValue(p)).msg()
		}},
		{"GroupContextExtensions requiring what members lack", "12.1.7", func(g *dsGroup) *PublicMessage {
			rc := RequiredCapabilities{ExtensionTypes: []ExtensionType{0xff00}}
			p := &Proposal{ProposalType: ProposalTypeGroupContextExtensions, GroupContextExtensions: &GroupContextExtensions{
				Extensions: Extensions{{ExtensionType: ExtensionTypeRequiredCapabilities, ExtensionData: mustEncode(&rc)}},
			}}
			return g.commit(0, porValue(p)).withPath().msg()
		}},
		{"GroupContextExtensions with an unsupported extension", "12.1.7", func(g *dsGroup) *PublicMessage {
			p := &Proposal{ProposalType: ProposalTypeGroupContextExtensions, GroupContextExtensions: &GroupContextExtensions{
				Extensions: Extensions{{ExtensionType: 0xff00}},
			}}
			return g.commit(0, porValue(p)).withPath().msg()
		}},
		{"Update keeping the encryption key", "7.3", func(g *dsGroup) *PublicMessage {
			cur := g.s.Tree().Leaf(1).EncryptionKey
			msg := g.proposal(1, g.update(1, func(ln *LeafNode) { ln.EncryptionKey = cur }))
			// HandleProposal rejects it too; commit it by value from a
			// forged cache entry to reach the Commit-time check.
			ac := msg.AuthenticatedContent()
			ref, _ := ac.ProposalRef(dsSuite)
			g.s.proposals = map[string]*PendingProposal{string(ref): {Ref: ref, Sender: msg.Content.Sender, Proposal: msg.Content.Proposal, content: ac}}
			g.s.order = []*PendingProposal{g.s.proposals[string(ref)]}
			return g.commit(0, porRef(ref)).withPath().msg()
		}},

		// Path rules (§12.4, §12.4.2, §7.6, §7.9.2).
		{"empty Commit without path", "12.4", func(g *dsGroup) *PublicMessage {
			return g.commit(0).msg()
		}},
		{"Remove without path", "12.4", func(g *dsGroup) *PublicMessage {
			return g.commit(0, porValue(removeProposal(1))).msg()
		}},
		{"GroupContextExtensions without path", "12.4", func(g *dsGroup) *PublicMessage {
			p := &Proposal{ProposalType: ProposalTypeGroupContextExtensions, GroupContextExtensions: &GroupContextExtensions{}}
			return g.commit(0, porValue(p)).msg()
		}},
		{"path leaf of source update", "7.3", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.editLeaf = func(ln *LeafNode) { ln.LeafNodeSource, ln.ParentHash = LeafNodeSourceUpdate, nil }
			return b.msg()
		}},
		{"path leaf signature", "7.3", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.editPath = func(p *UpdatePath) { p.LeafNode.Signature[1] ^= 1 }
			return b.msg()
		}},
		{"path leaf keeps the committer's encryption key", "12.4.2", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			cur := g.s.Tree().Leaf(0).EncryptionKey
			b.editLeaf = func(ln *LeafNode) { ln.EncryptionKey = cur }
			return b.msg()
		}},
		{"path leaf with another member's signature key", "7.3", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			other := g.members[1]
			b.editPath = func(p *UpdatePath) {
				p.LeafNode.SignatureKey = other.sigPub
				if err := p.LeafNode.Sign(dsSuite, other.sigPriv, g.groupID, 0); err != nil {
					g.t.Fatal(err)
				}
			}
			return b.msg()
		}},
		{"path node key already in the tree", "12.4.2", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			used := g.s.Tree().Leaf(2).EncryptionKey
			b.editNodes = func(n []UpdatePathNode) []UpdatePathNode { n[0].EncryptionKey = used; return n }
			return b.msg()
		}},
		{"path nodes with the same key", "12.4.2", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.editNodes = func(n []UpdatePathNode) []UpdatePathNode { n[1].EncryptionKey = n[0].EncryptionKey; return n }
			return b.msg()
		}},
		{"path one node short", "7.6", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.editNodes = func(n []UpdatePathNode) []UpdatePathNode { return n[:len(n)-1] }
			return b.msg()
		}},
		{"path node missing a ciphertext", "7.6", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.editNodes = func(n []UpdatePathNode) []UpdatePathNode {
				n[1].EncryptedPathSecret = n[1].EncryptedPathSecret[:0]
				return n
			}
			return b.msg()
		}},
		{"path leaf parent_hash", "7.9.2", func(g *dsGroup) *PublicMessage {
			b := g.commit(0).withPath()
			b.editLeaf = func(ln *LeafNode) { ln.ParentHash = dsRandom(32) }
			return b.msg()
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := newDSGroup(t, dsSuite, 4)
			g.t = t
			g.rejectCommit(t, c.build(g), c.section)
		})
	}
}

// TestHandleCommitEpochError checks that a Commit for another epoch says
// which epoch the group is in, for a Delivery Service to tell the client.
func TestHandleCommitEpochError(t *testing.T) {
	g := newDSGroup(t, dsSuite, 2)
	b := g.commit(0).withPath()
	b.editContent = func(fc *FramedContent) { fc.Epoch-- }
	_, _, err := g.s.HandleCommit(b.msg())
	var ee *EpochMismatchError
	if !errors.As(err, &ee) || ee.Current != g.s.Epoch() || ee.Got != g.s.Epoch()-1 {
		t.Fatalf("got %v, want an EpochMismatchError", err)
	}
}

// TestExternalCommit covers §12.4.3.2: a valid join, a valid resync, and
// each rule of the external proposal list broken once.
func TestExternalCommit(t *testing.T) {
	g := newDSGroup(t, dsSuite, 3)
	joiner := newTestMember(t, dsSuite, "joiner")
	effect := g.apply(g.externalCommit(joiner, externalInit()).msg())
	if !effect.External || len(effect.Added) != 1 || effect.Added[0].Leaf != 3 || string(effect.Added[0].Identity) != "joiner" || effect.Committer != 3 {
		t.Fatalf("effect %+v", effect)
	}
	g.members[3] = joiner

	// Resync: the joiner comes back under the same identity and removes
	// its old leaf, which it then takes over (the leftmost blank leaf).
	again := newTestMember(t, dsSuite, "joiner")
	effect = g.apply(g.externalCommit(again, externalInit(), porValue(removeProposal(3))).msg())
	if len(effect.Removed) != 1 || effect.Removed[0].Leaf != 3 || effect.Added[0].Leaf != 3 {
		t.Fatalf("effect %+v", effect)
	}
	g.members[3] = again

	cases := []struct {
		name    string
		section string
		build   func(g *dsGroup) *PublicMessage
	}{
		{"no ExternalInit", "12.2", func(g *dsGroup) *PublicMessage {
			return g.externalCommit(newTestMember(t, dsSuite, "x")).msg()
		}},
		{"two ExternalInits", "12.2", func(g *dsGroup) *PublicMessage {
			return g.externalCommit(newTestMember(t, dsSuite, "x"), externalInit(), externalInit()).msg()
		}},
		{"an Add", "12.2", func(g *dsGroup) *PublicMessage {
			return g.externalCommit(newTestMember(t, dsSuite, "x"), externalInit(), g.add(newTestMember(t, dsSuite, "y"))).msg()
		}},
		{"two Removes", "12.2", func(g *dsGroup) *PublicMessage {
			return g.externalCommit(newTestMember(t, dsSuite, "x"), externalInit(), porValue(removeProposal(1)), porValue(removeProposal(2))).msg()
		}},
		{"resync under another identity", "12.2", func(g *dsGroup) *PublicMessage {
			return g.externalCommit(newTestMember(t, dsSuite, "mallory"), externalInit(), porValue(removeProposal(1))).msg()
		}},
		{"a proposal by reference", "12.4.3.2", func(g *dsGroup) *PublicMessage {
			ref, err := g.s.HandleProposal(g.proposal(1, removeProposal(2)))
			if err != nil {
				t.Fatal(err)
			}
			return g.externalCommit(newTestMember(t, dsSuite, "x"), externalInit(), porRef(ref)).msg()
		}},
		{"no path", "12.4.3.2", func(g *dsGroup) *PublicMessage {
			b := g.externalCommit(newTestMember(t, dsSuite, "x"), externalInit())
			b.path = false
			return b.msg()
		}},
		{"signed by someone else", "6.1", func(g *dsGroup) *PublicMessage {
			b := g.externalCommit(newTestMember(t, dsSuite, "x"), externalInit())
			b.signer = g.members[0].sigPriv
			return b.msg()
		}},
		{"joiner reusing a member's signature key", "7.3", func(g *dsGroup) *PublicMessage {
			m := g.members[1]
			x := newTestMember(t, dsSuite, "member-1")
			x.sigPriv, x.sigPub = m.sigPriv, m.sigPub
			x.kp.LeafNode.SignatureKey = m.sigPub
			return g.externalCommit(x, externalInit()).msg()
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := reloadState(g.s)
			if err != nil {
				t.Fatal(err)
			}
			h := *g
			h.s = r
			h.t = t
			h.rejectCommit(t, c.build(&h), c.section)
		})
	}
}

// TestHandleProposalRules breaks each sender and validity rule of
// HandleProposal once (§6.1, §12.1).
func TestHandleProposalRules(t *testing.T) {
	g := newDSGroup(t, dsSuite, 3)
	es := newTestMember(t, dsSuite, "external sender")
	senders := ExternalSenders{{SignatureKey: es.sigPub, Credential: Credential{CredentialType: CredentialTypeBasic, Identity: []byte("es")}}}
	gce := &Proposal{ProposalType: ProposalTypeGroupContextExtensions, GroupContextExtensions: &GroupContextExtensions{
		Extensions: Extensions{{ExtensionType: ExtensionTypeExternalSenders, ExtensionData: mustEncode(&senders)}},
	}}
	withoutSenders := g.s
	g.apply(g.commit(0, porValue(gce)).withPath().msg())
	if len(g.s.ExternalSenders()) != 1 {
		t.Fatal("external_senders extension not installed")
	}

	// Valid: an external Remove, a new member's own Add.
	ext := Sender{SenderType: SenderTypeExternal, SenderIndex: 0}
	if _, err := g.s.HandleProposal(g.signedProposal(ext, removeProposal(1), es.sigPriv)); err != nil {
		t.Fatalf("external Remove: %v", err)
	}
	nm := newTestMember(t, dsSuite, "newcomer")
	addSelf := &Proposal{ProposalType: ProposalTypeAdd, Add: &Add{KeyPackage: *nm.kp}}
	if _, err := g.s.HandleProposal(g.signedProposal(Sender{SenderType: SenderTypeNewMemberProposal}, addSelf, nm.sigPriv)); err != nil {
		t.Fatalf("new_member_proposal Add: %v", err)
	}

	cases := []struct {
		name    string
		section string
		msg     func() *PublicMessage
		state   *PublicGroupState
	}{
		{"wrong epoch", "12.1", func() *PublicMessage {
			m := g.proposal(1, removeProposal(2))
			m.Content.Epoch++
			return m
		}, nil},
		{"sender not a member", "6.1", func() *PublicMessage {
			return g.signedProposal(Sender{SenderType: SenderTypeMember, LeafIndex: 7}, removeProposal(2), g.members[1].sigPriv)
		}, nil},
		{"bad signature", "6.1", func() *PublicMessage {
			m := g.proposal(1, removeProposal(2))
			m.Auth.Signature[0] ^= 1
			return m
		}, nil},
		{"external sender without external_senders", "12.1.8", func() *PublicMessage {
			h := *g
			h.s = withoutSenders
			return h.signedProposal(ext, removeProposal(1), es.sigPriv)
		}, withoutSenders},
		{"external sender index out of range", "12.1.8.1", func() *PublicMessage {
			return g.signedProposal(Sender{SenderType: SenderTypeExternal, SenderIndex: 1}, removeProposal(1), es.sigPriv)
		}, nil},
		{"external sender sending an Update", "12.1.8", func() *PublicMessage {
			return g.signedProposal(ext, g.update(1), es.sigPriv)
		}, nil},
		{"external sender signature by another key", "6.1", func() *PublicMessage {
			return g.signedProposal(ext, removeProposal(1), nm.sigPriv)
		}, nil},
		{"new_member_proposal sending a Remove", "6.1", func() *PublicMessage {
			return g.signedProposal(Sender{SenderType: SenderTypeNewMemberProposal}, removeProposal(1), nm.sigPriv)
		}, nil},
		{"new_member_proposal signed by another key", "6.1", func() *PublicMessage {
			return g.signedProposal(Sender{SenderType: SenderTypeNewMemberProposal}, addSelf, es.sigPriv)
		}, nil},
		{"new_member_commit sender", "6.1", func() *PublicMessage {
			return g.signedProposal(Sender{SenderType: SenderTypeNewMemberCommit}, addSelf, nm.sigPriv)
		}, nil},
		{"standalone ExternalInit", "12.1.6", func() *PublicMessage {
			return g.proposal(1, &Proposal{ProposalType: ProposalTypeExternalInit, ExternalInit: &ExternalInit{KEMOutput: dsRandom(32)}})
		}, nil},
		{"Remove of a blank leaf", "12.1.3", func() *PublicMessage { return g.proposal(1, removeProposal(5)) }, nil},
		{"Update signed for another leaf", "7.3", func() *PublicMessage {
			u := g.members[1].groupLeaf(t, LeafNodeSourceUpdate, g.groupID, 2)
			return g.proposal(1, &Proposal{ProposalType: ProposalTypeUpdate, Update: &Update{LeafNode: *u}})
		}, nil},
		{"Add with an expired KeyPackage", "7.3", func() *PublicMessage {
			m := newTestMember(t, dsSuite, "old", func(kp *KeyPackage) { kp.LeafNode.Lifetime = &Lifetime{NotBefore: 1, NotAfter: 2} })
			return g.proposal(1, &Proposal{ProposalType: ProposalTypeAdd, Add: &Add{KeyPackage: *m.kp}})
		}, nil},
	}
	g.s.SetPolicy(GroupPolicy{Now: func() time.Time { return testNow }})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := g.s
			if c.state != nil {
				s = c.state
			}
			before := stateSnapshot(t, s)
			ref, err := s.HandleProposal(c.msg())
			assertSection(t, err, c.section)
			if ref != nil || !bytes.Equal(stateSnapshot(t, s), before) {
				t.Fatal("a rejected proposal changed the state")
			}
		})
	}
}

// TestReInitFreezes checks that after a committed ReInit the state accepts
// nothing more (§12.4.2) and that the freeze survives storage.
func TestReInitFreezes(t *testing.T) {
	g := newDSGroup(t, dsSuite, 2)
	reinit := &Proposal{ProposalType: ProposalTypeReInit, ReInit: &ReInit{GroupID: []byte("next"), Version: ProtocolVersionMLS10, CipherSuite: MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519}}
	ref, err := g.s.HandleProposal(g.proposal(1, reinit))
	if err != nil {
		t.Fatal(err)
	}
	effect := g.apply(g.commit(0, porRef(ref)).msg())
	if effect.ReInit == nil || string(effect.ReInit.GroupID) != "next" {
		t.Fatalf("effect %+v", effect)
	}
	r, err := reloadState(g.s)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*PublicGroupState{g.s, r} {
		if ri, frozen := s.Frozen(); !frozen || string(ri.GroupID) != "next" {
			t.Fatal("state not frozen after a ReInit")
		}
		h := *g
		h.s = s
		_, err := s.HandleProposal(h.proposal(1, removeProposal(0)))
		if !errors.Is(err, ErrGroupFrozen) {
			t.Fatalf("HandleProposal after ReInit: %v", err)
		}
		_, _, err = s.HandleCommit(h.commit(0).withPath().msg())
		if !errors.Is(err, ErrGroupFrozen) {
			t.Fatalf("HandleCommit after ReInit: %v", err)
		}
	}
}

// TestNewPublicGroupStateChecks breaks each bootstrap rule of §12.4.3.1.
func TestNewPublicGroupStateChecks(t *testing.T) {
	g := newDSGroup(t, dsSuite, 3)
	gi := &GroupInfo{GroupContext: g.s.GroupContext(), ConfirmationTag: dsRandom(32), Signer: 1}
	if err := gi.Sign(g.members[1].sigPriv); err != nil {
		t.Fatal(err)
	}
	s, err := NewPublicGroupState(gi, g.s.Tree())
	if err != nil {
		t.Fatal(err)
	}
	want, _ := InterimTranscriptHash(dsSuite, gi.GroupContext.ConfirmedTranscriptHash, gi.ConfirmationTag)
	if !bytes.Equal(s.InterimTranscriptHash(), want) {
		t.Fatal("interim transcript hash is not derived from the GroupInfo (§8.2)")
	}
	// With the tree in a ratchet_tree extension instead.
	data, _ := g.s.Tree().MarshalBinary()
	withExt := *gi
	withExt.Extensions = Extensions{{ExtensionType: ExtensionTypeRatchetTree, ExtensionData: data}}
	withExt.Sign(g.members[1].sigPriv)
	if _, err := NewPublicGroupState(&withExt, nil); err != nil {
		t.Fatal(err)
	}

	t.Run("signature", func(t *testing.T) {
		bad := *gi
		bad.Signature = bytes.Clone(gi.Signature)
		bad.Signature[0] ^= 1
		_, err := NewPublicGroupState(&bad, g.s.Tree())
		assertSection(t, err, "12.4.3.1")
	})
	t.Run("signer blank", func(t *testing.T) {
		bad := *gi
		bad.Signer = 5
		_, err := NewPublicGroupState(&bad, g.s.Tree())
		assertSection(t, err, "12.4.3.1")
	})
	t.Run("tree hash", func(t *testing.T) {
		bad := *gi
		bad.GroupContext.TreeHash = dsRandom(32)
		bad.Sign(g.members[1].sigPriv)
		_, err := NewPublicGroupState(&bad, g.s.Tree())
		assertSection(t, err, "12.4.3.1")
	})
	t.Run("no tree", func(t *testing.T) {
		_, err := NewPublicGroupState(gi, nil)
		assertSection(t, err, "12.4.3.3")
	})
	t.Run("leaf lacking a GroupContext extension", func(t *testing.T) {
		bad := *gi
		bad.GroupContext.Extensions = Extensions{{ExtensionType: 0xff00}}
		bad.Sign(g.members[1].sigPriv)
		_, err := NewPublicGroupState(&bad, g.s.Tree())
		assertSection(t, err, "13.4")
	})
	t.Run("tree signed for another group", func(t *testing.T) {
		bad := *gi
		bad.GroupContext.GroupID = []byte("another")
		bad.Sign(g.members[1].sigPriv)
		_, err := NewPublicGroupState(&bad, g.s.Tree())
		assertSection(t, err, "7.3")
	})
}

// checkIndex compares the incremental key index and credential counts of s
// with ones computed from scratch.
func checkIndex(t *testing.T, s *PublicGroupState) {
	t.Helper()
	fresh := &PublicGroupState{tree: s.tree}
	fresh.rebuildIndex()
	walkNonBlank(s.tree.root, s.tree.rootIndex(), func(x NodeIndex, h *tnode) {
		keys := [][2]any{}
		if h.leaf != nil {
			keys = append(keys, [2]any{keyKindEncryption, h.leaf.EncryptionKey}, [2]any{keyKindSignature, h.leaf.SignatureKey})
		} else {
			keys = append(keys, [2]any{keyKindEncryption, h.parent.EncryptionKey})
		}
		for _, k := range keys {
			kind, key := k[0].(byte), k[1].([]byte)
			if got, want := s.keys.count(kind, key), fresh.keys.count(kind, key); got != want || got != 1 {
				t.Fatalf("node %d: key index count %d, from scratch %d", x, got, want)
			}
		}
	})
	if len(s.credUse) != len(fresh.credUse) {
		t.Fatalf("credential counts %v, from scratch %v", s.credUse, fresh.credUse)
	}
	for ct, n := range fresh.credUse {
		if s.credUse[ct] != n {
			t.Fatalf("credential counts %v, from scratch %v", s.credUse, fresh.credUse)
		}
	}
}

// TestKeyIndexFollowsTree runs a long mixed sequence of Commits and checks
// after each that the incremental indexes equal indexes built from
// scratch, and at the end that every earlier state still has its own,
// unchanged indexes (the index is shared between epochs, never mutated).
func TestKeyIndexFollowsTree(t *testing.T) {
	g := newDSGroup(t, dsSuite, 3)
	var states []*PublicGroupState
	n := 0
	fresh := func() *testMember { n++; return newTestMember(t, dsSuite, "m"+itoa(n)) }
	for round := 0; round < 12; round++ {
		leaves := []LeafIndex{}
		for i := range g.s.Tree().Leaves() {
			leaves = append(leaves, i)
		}
		committer := leaves[round%len(leaves)]
		switch round % 4 {
		case 0: // two Adds, no path
			g.apply(g.commit(committer, g.add(fresh()), g.add(fresh())).msg())
		case 1: // Update by reference, Remove, Add, with path
			var other, victim LeafIndex
			for _, i := range leaves {
				if i != committer {
					if other == 0 && i != 0 || other == 0 && committer != 0 {
						other = i
					}
				}
			}
			for _, i := range leaves {
				if i != committer && i != other {
					victim = i
				}
			}
			ref, err := g.s.HandleProposal(g.proposal(other, g.update(other)))
			if err != nil {
				t.Fatal(err)
			}
			g.apply(g.commit(committer, porRef(ref), porValue(removeProposal(victim)), g.add(fresh())).withPath().msg())
		case 2: // external join
			j := fresh()
			e := g.apply(g.externalCommit(j, externalInit()).msg())
			g.members[e.Committer] = j
		case 3: // remove the rightmost member, empty path commit
			last := leaves[len(leaves)-1]
			if last == committer {
				committer = leaves[0]
			}
			g.apply(g.commit(committer, porValue(removeProposal(last))).withPath().msg())
		}
		t.Logf("round %d: epoch %d, %d members, %d leaves", round, g.s.Epoch(), g.s.Tree().MemberCount(), g.s.Tree().LeafCount())
		checkIndex(t, g.s)
		states = append(states, g.s)
	}
	// Shrink the group from the right until the tree truncates (§7.7).
	for width := g.s.Tree().LeafCount(); g.s.Tree().LeafCount() == width; {
		var last LeafIndex
		for i := range g.s.Tree().Leaves() {
			last = i
		}
		g.apply(g.commit(0, porValue(removeProposal(last))).withPath().msg())
		checkIndex(t, g.s)
		states = append(states, g.s)
	}
	// A key a parent node got from an earlier UpdatePath is in use.
	parentKey := g.s.Tree().EncryptionKey(1)
	if parentKey == nil {
		t.Fatal("node 1 is blank")
	}
	b := g.commit(2).withPath()
	b.editNodes = func(n []UpdatePathNode) []UpdatePathNode { n[len(n)-1].EncryptionKey = parentKey; return n }
	g.rejectCommit(t, b.msg(), "12.4.2")

	for _, s := range states {
		checkIndex(t, s)
	}
}
