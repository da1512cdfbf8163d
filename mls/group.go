package mls

import (
	"bytes"
	"crypto/hpke"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"

	circlhpke "github.com/cloudflare/circl/hpke"
	"golang.org/x/crypto/cryptobyte"
)

// This file is the member side of a group: creating it, committing with
// an UpdatePath, producing Welcomes, joining from them or by external
// Commit, processing Commits and proposals, and protecting application
// messages. Validation of what others send is PublicGroupState's; Group
// adds the secrets: TreeKEM (treekem.go), the key schedule
// (keyschedule.go) and message protection (protect.go).
//
// Covered: proposals and Commits sent as PublicMessage (the default, which
// a Delivery Service can validate) or as PrivateMessage
// (SetHandshakeWireFormat, CommitMessage, ProposeMessage; received ones
// are decrypted and then checked as PublicMessages are, with the signature
// over the private_message wire format, group_process.go); one entry
// point for everything received (Process); application messages of the
// last few epochs after the next Commit (SetPastEpochs,
// group_epochs.go); committing by reference every proposal type received
// in the epoch (Add, Update, Remove, PreSharedKey, GroupContextExtensions,
// ReInit) and by value Add, Remove, external PSKs, GroupContextExtensions
// and ReInit; a committed ReInit freezing the group (§11.2, Frozen);
// external joins, including "resync" external Commits that remove the
// joiner's old leaf (JoinExternalWith); saving and restoring the whole
// state (MarshalBinary, UnmarshalGroup).
//
// The successor group of a ReInit and subgroup branches (§11.2, §11.3)
// are in reinit.go.
//
// Not covered yet: resumption PSKs of usage application by value in
// CommitOptions, PSK proposals in external Commits, padding of the
// PrivateMessages a member sends (§15.1: always none), and sending
// proposals as an external sender (PublicGroupState validates those).

// Member is a member of the group as the ratchet tree lists it.
type Member struct {
	Leaf         LeafIndex
	Credential   Credential
	Identity     []byte // see CredentialIdentity
	SignatureKey []byte
}

// Members returns the members of the current epoch in leaf order.
func (g *Group) Members() []Member {
	var out []Member
	for i, ln := range g.pub.Tree().Leaves() {
		out = append(out, Member{Leaf: i, Credential: ln.Credential, Identity: CredentialIdentity(&ln.Credential), SignatureKey: ln.SignatureKey})
	}
	return out
}

// ErrNotMember is returned by a Group once a Commit removed its member.
var ErrNotMember = errors.New("mls: this member was removed from the group")

// Group is one member's state of a group in the current epoch.
//
// A Group is not safe for concurrent use.
type Group struct {
	pub     *PublicGroupState
	keys    *TreePrivateKey
	es      *EpochSecrets
	st      *SecretTree
	sigPriv []byte
	sigKey  []byte // sigPriv as signing takes it fastest (sealKey)
	removed bool

	// psks holds the external PSKs the application gave and the
	// resumption PSKs of the epochs this member saw, by pskLookupKey.
	psks map[string][]byte

	// updateKeys holds the leaf private keys of this member's Update
	// proposals of the current epoch, by public key.
	updateKeys map[string][]byte

	pending *pendingCommit

	// past holds, newest first, what opening application messages of the
	// last keepPast epochs needs (group_epochs.go).
	past     []*pastEpoch
	keepPast int

	// handshake is the wire format of this member's proposals and Commits
	// (§6): WireFormatPublicMessage or WireFormatPrivateMessage.
	handshake WireFormat

	// sentPrivate maps the hash of each proposal this member sent as a
	// PrivateMessage in the current epoch to its ProposalRef: when the
	// Delivery Service echoes it, the member cannot decrypt it, because
	// the key of its generation was deleted once used to encrypt (§9.2).
	sentPrivate map[string]ProposalRef
}

// pendingCommit is a Commit this member made and has not merged yet.
type pendingCommit struct {
	msg    *MLSMessage
	wire   []byte // the encoding of msg's PublicMessage or PrivateMessage, to recognize it when it comes back
	effect *CommitEffect
	next   *Group
}

// KeyPackagePrivate holds the private keys that go with a KeyPackage: the
// init key, the leaf's encryption key and the signature key.
type KeyPackagePrivate struct {
	InitPriv       []byte
	EncryptionPriv []byte
	SignaturePriv  []byte
}

// NewKeyPackage creates a signed KeyPackage (§10) for cs with a basic
// credential for identity, fresh HPKE keys, the given signature key
// (a fresh one if sigPriv is nil) and a lifetime of [notBefore, notAfter]
// in seconds since the Unix epoch.
func NewKeyPackage(cs CipherSuite, identity, sigPriv []byte, notBefore, notAfter uint64) (*KeyPackage, *KeyPackagePrivate, error) {
	return NewKeyPackageWith(cs, identity, sigPriv, notBefore, notAfter, KeyPackageOptions{})
}

// NewKeyPackageWith is NewKeyPackage with options.
func NewKeyPackageWith(cs CipherSuite, identity, sigPriv []byte, notBefore, notAfter uint64, opts KeyPackageOptions) (*KeyPackage, *KeyPackagePrivate, error) {
	if err := cs.check(); err != nil {
		return nil, nil, err
	}
	var sigPub []byte
	var err error
	if sigPriv == nil {
		sigPriv, sigPub, err = cs.GenerateSignatureKeyPair()
	} else {
		sigPub, err = cs.SignaturePublicKey(sigPriv)
	}
	if err != nil {
		return nil, nil, err
	}
	initPriv, initPub, err := cs.GenerateKEMKeyPair()
	if err != nil {
		return nil, nil, err
	}
	encPriv, encPub, err := cs.GenerateKEMKeyPair()
	if err != nil {
		return nil, nil, err
	}
	kp := &KeyPackage{
		Version:     ProtocolVersionMLS10,
		CipherSuite: cs,
		InitKey:     initPub,
		LeafNode: LeafNode{
			EncryptionKey: encPub,
			SignatureKey:  sigPub,
			Credential:    Credential{CredentialType: CredentialTypeBasic, Identity: bytes.Clone(identity)},
			Capabilities: Capabilities{
				Versions:     []ProtocolVersion{ProtocolVersionMLS10},
				CipherSuites: []CipherSuite{cs},
				Credentials:  opts.credentials(),
			},
			LeafNodeSource: LeafNodeSourceKeyPackage,
			Lifetime:       &Lifetime{NotBefore: notBefore, NotAfter: notAfter},
		},
	}
	if opts.Grease {
		greaseKeyPackage(kp)
	}
	if err := kp.LeafNode.Sign(cs, sigPriv, nil, 0); err != nil {
		return nil, nil, err
	}
	if err := kp.Sign(sigPriv); err != nil {
		return nil, nil, err
	}
	return kp, &KeyPackagePrivate{InitPriv: initPriv, EncryptionPriv: encPriv, SignaturePriv: sigPriv}, nil
}

// NewGroup creates a group with groupID whose only member is the owner of
// kp (§11): epoch 0, a fresh random init secret, the leaf of kp at index
// 0. priv holds kp's private keys.
func NewGroup(groupID []byte, kp *KeyPackage, priv *KeyPackagePrivate) (*Group, error) {
	if err := kp.CipherSuite.check(); err != nil {
		return nil, err
	}
	return newFirstEpoch(groupID, nil, kp, priv, nil)
}

// newFirstEpoch makes epoch 0 of a group with groupID whose only member is
// the owner of kp, with GroupContext extensions exts and the PSK store
// psks.
func newFirstEpoch(groupID []byte, exts Extensions, kp *KeyPackage, priv *KeyPackagePrivate, psks map[string][]byte) (*Group, error) {
	cs := kp.CipherSuite
	leaf := kp.LeafNode
	tree, err := NewRatchetTree(cs, []*Node{{Leaf: &leaf}})
	if err != nil {
		return nil, err
	}
	gc := GroupContext{Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: bytes.Clone(groupID), Epoch: 0, TreeHash: tree.TreeHash(), Extensions: exts}
	initSecret := make([]byte, cs.HashSize())
	rand.Read(initSecret)
	es, err := DeriveEpochSecrets(initSecret, nil, nil, &gc)
	if err != nil {
		return nil, err
	}
	// §8.2: in epoch 0 the confirmed transcript hash is empty and the
	// interim one follows from the confirmation tag over it.
	gi := &GroupInfo{GroupContext: gc, ConfirmationTag: es.ConfirmationTag(nil), Signer: 0}
	if err := gi.Sign(priv.SignaturePriv); err != nil {
		return nil, err
	}
	pub, err := NewPublicGroupState(gi, tree)
	if err != nil {
		return nil, err
	}
	keys, err := NewTreePrivateKey(cs, 0, priv.EncryptionPriv)
	if err != nil {
		return nil, err
	}
	return newGroup(pub, keys, es, priv.SignaturePriv, psks)
}

// newGroup assembles the state of an epoch. psks is the PSK store of the
// previous epoch, or nil; the new epoch's resumption PSK is added to a
// copy of it.
func newGroup(pub *PublicGroupState, keys *TreePrivateKey, es *EpochSecrets, sigPriv []byte, psks map[string][]byte) (*Group, error) {
	tree := pub.Tree()
	if err := keys.Check(tree); err != nil {
		return nil, err
	}
	st, err := es.SecretTree(tree.LeafCount())
	if err != nil {
		return nil, err
	}
	store := maps.Clone(psks)
	if store == nil {
		store = map[string][]byte{}
	}
	store[ResumptionPSKKey(pub.GroupID(), pub.Epoch())] = es.ResumptionPSK
	return &Group{pub: pub, keys: keys, es: es, st: st, sigPriv: bytes.Clone(sigPriv), psks: store,
		keepPast: DefaultPastEpochs, handshake: WireFormatPublicMessage}, nil
}

// AddExternalPSK makes the external PSK with the given psk_id available
// to the Commits this member processes (§8.4).
func (g *Group) AddExternalPSK(pskID, secret []byte) {
	g.psks[string(pskID)] = bytes.Clone(secret)
}

// pskSecret computes the psk_secret of ids from the member's PSK store
// (§8.4); every PSK must be available.
func (g *Group) pskSecret(ids []PreSharedKeyID) ([]byte, error) {
	cs := g.pub.CipherSuite()
	list := make([]PSK, len(ids))
	for i := range ids {
		v, ok := g.psks[pskLookupKey(&ids[i])]
		if !ok {
			return nil, invalidf("12.4.2", "Commit names PSK %d (%s), which this member does not have", i, pskDescription(&ids[i]))
		}
		list[i] = PSK{ID: ids[i], Secret: v}
	}
	return PSKSecret(cs, list)
}

// JoinGroup joins a group from a Welcome addressed to kp (§12.4.3.1). The
// ratchet tree comes from the GroupInfo's ratchet_tree extension, or from
// tree if that is not nil. psks holds the PSKs the Welcome may name, by
// psk_id for external PSKs and by ResumptionPSKKey for resumption PSKs; it
// may be nil. The external ones stay available for later Commits.
//
// A Welcome that names a resumption PSK of usage reinit or branch must be
// for epoch 1 of the new group (§11.2, §11.3); JoinSuccessor and
// JoinBranch check the rest of the link to the old group.
func JoinGroup(w *Welcome, kp *KeyPackage, priv *KeyPackagePrivate, tree *RatchetTree, psks map[string][]byte) (*Group, error) {
	return joinGroup(w, kp, priv, tree, psks, nil)
}

// joinGroup is JoinGroup with the checks of link, the old group of a
// successor or branch, if not nil (reinit.go).
func joinGroup(w *Welcome, kp *KeyPackage, priv *KeyPackagePrivate, tree *RatchetTree, psks map[string][]byte, link *groupLink) (*Group, error) {
	ref, err := kp.Ref()
	if err != nil {
		return nil, err
	}
	gs, gi, err := decryptWelcome(w, ref, priv.InitPriv, psks, tree, link.checkSecrets)
	if err != nil {
		return nil, err
	}
	if err := link.checkGroupInfo(gs, gi); err != nil {
		return nil, err
	}
	list := make([]PSK, len(gs.PSKs))
	for i := range gs.PSKs {
		list[i] = PSK{ID: gs.PSKs[i], Secret: psks[pskLookupKey(&gs.PSKs[i])]}
	}
	pskSecret, err := PSKSecret(gi.GroupContext.CipherSuite, list)
	if err != nil {
		return nil, err
	}
	pub, err := NewPublicGroupState(gi, tree)
	if err != nil {
		return nil, err
	}
	t := pub.Tree()
	self := LeafIndex(0)
	found := false
	for i, ln := range t.Leaves() {
		if bytes.Equal(ln.EncryptionKey, kp.LeafNode.EncryptionKey) && bytes.Equal(ln.SignatureKey, kp.LeafNode.SignatureKey) {
			self, found = i, true
			break
		}
	}
	if !found {
		return nil, invalid("12.4.3.1", "the ratchet tree must contain the new member's leaf from its KeyPackage")
	}
	if err := checkOwnSupport(&kp.LeafNode, gi.GroupContext.Extensions); err != nil {
		return nil, err
	}
	if err := link.checkMembers(t); err != nil {
		return nil, err
	}
	keys, err := NewTreePrivateKey(gi.GroupContext.CipherSuite, self, priv.EncryptionPriv)
	if err != nil {
		return nil, err
	}
	if gs.PathSecret != nil {
		if _, err := keys.Implant(t, gi.Signer, gs.PathSecret); err != nil {
			return nil, err
		}
	}
	ks, err := NewKeySchedule(gi.GroupContext.CipherSuite, gs.JoinerSecret, pskSecret)
	if err != nil {
		return nil, err
	}
	gc := pub.GroupContext()
	es, err := ks.EpochSecrets(&gc)
	if err != nil {
		return nil, err
	}
	if err := es.VerifyConfirmationTag(gc.ConfirmedTranscriptHash, gi.ConfirmationTag); err != nil {
		return nil, err
	}
	return newGroup(pub, keys, es, priv.SignaturePriv, link.keepPSKs(psks, gs))
}

// GroupID returns the group's ID.
func (g *Group) GroupID() []byte { return g.pub.GroupID() }

// Epoch returns the current epoch.
func (g *Group) Epoch() uint64 { return g.pub.Epoch() }

// Self returns the member's leaf index.
func (g *Group) Self() LeafIndex { return g.keys.Self() }

// GroupContext returns the GroupContext of the current epoch.
func (g *Group) GroupContext() GroupContext { return g.pub.GroupContext() }

// Tree returns a copy of the group's ratchet tree.
func (g *Group) Tree() *RatchetTree { return g.pub.Tree() }

// EpochAuthenticator returns the epoch_authenticator of the current epoch
// (§8.7).
func (g *Group) EpochAuthenticator() []byte { return bytes.Clone(g.es.EpochAuthenticator) }

// Export returns MLS-Exporter(label, context, length) of the current
// epoch (§8.5).
func (g *Group) Export(label string, context []byte, length int) ([]byte, error) {
	return g.es.Export(label, context, length)
}

func (g *Group) checkActive() error {
	if g.removed {
		return ErrNotMember
	}
	return nil
}

// checkCanSend refuses to send in a group that a committed ReInit closed
// (§12.4.2: the members wait for the Welcome of the new group).
func (g *Group) checkCanSend() error {
	if err := g.checkActive(); err != nil {
		return err
	}
	if _, frozen := g.pub.Frozen(); frozen {
		return ErrGroupFrozen
	}
	return nil
}

// Frozen reports whether a committed ReInit closed the group, and returns
// that ReInit (§11.2). The group then sends nothing more; the resumption
// PSK of its last epoch, of usage reinit, links it to the new group.
func (g *Group) Frozen() (*ReInit, bool) { return g.pub.Frozen() }

// Commit creates a Commit, sent as a PublicMessage, that adds the owners
// of adds and removes the members at removes, with an UpdatePath (§12.4).
// It also commits, by reference, the proposals received in this epoch
// (HandleProposal, Propose) that it may commit; see CommitWith. If there
// are new members, it also returns their Welcome, whose GroupInfo carries
// the ratchet_tree extension.
//
// The group stays in the current epoch until MergePendingCommit, so that
// the Commit can be dropped if the Delivery Service refuses it; making
// another Commit replaces the pending one.
func (g *Group) Commit(adds []*KeyPackage, removes []LeafIndex) (*PublicMessage, *Welcome, error) {
	return g.CommitWith(CommitOptions{Adds: adds, Removes: removes})
}

// CommitOptions lists the proposals a Commit carries by value.
type CommitOptions struct {
	Adds    []*KeyPackage
	Removes []LeafIndex
	// ExternalPSKs names external PSKs, by psk_id, to inject into the key
	// schedule (§8.4); each must have been given to every member with
	// AddExternalPSK (and to new members in JoinGroup's psks).
	ExternalPSKs [][]byte
	// Extensions, if not nil, replaces the GroupContext extensions
	// (§12.1.7).
	Extensions *Extensions
	// ReInit, if not nil, makes a Commit that carries this ReInit proposal
	// and nothing else (§12.2), closing the group (§11.2); the other
	// fields must then be empty.
	ReInit *ReInit
	// Include, if not nil, chooses the pending proposals (received in
	// this epoch) that the Commit may carry by reference: those it returns
	// false for are left out. An application's policy on other members'
	// proposals goes here.
	Include func(p *PendingProposal) bool
	// WireFormat is WireFormatPublicMessage or WireFormatPrivateMessage to
	// send this Commit so (§6); zero means the group's
	// HandshakeWireFormat. Commit and CommitWith send PublicMessages only:
	// use CommitMessage for a PrivateMessage.
	WireFormat WireFormat
	// AuthenticatedData is the Commit's authenticated_data (§6): signed
	// with it, and in the clear in a PrivateMessage too.
	AuthenticatedData []byte

	// link is the resumption PSK of usage reinit or branch that the
	// initial Commit of a successor or branch carries (reinit.go).
	link *PreSharedKeyID
}

func (o *CommitOptions) byValue() bool {
	return len(o.Adds) > 0 || len(o.Removes) > 0 || len(o.ExternalPSKs) > 0 || o.Extensions != nil || o.ReInit != nil || o.link != nil
}

// CommitWith is Commit with PSK, GroupContextExtensions and ReInit
// proposals besides Adds and Removes, sent as a PublicMessage.
//
// Besides the proposals of opts, the Commit carries by reference the
// proposals received in this epoch, except those it may not commit (§12.2):
// a Remove of this member, its own Update, a second Update or Remove for
// the same leaf, an Update of a removed member; a PreSharedKey proposal
// whose PSK this member does not have (AddExternalPSK) or that names a PSK
// already listed; a GroupContextExtensions proposal when opts.Extensions
// is set or another one is already listed (the first received wins). A
// ReInit proposal must be alone in its Commit: the first one received is
// committed, alone, when opts carries nothing by value; otherwise received
// ReInits are left out. Pending proposals that would make the list invalid
// (a KeyPackage whose encryption_key is in the tree already, an Add of a
// member that stays, ...) are left out too, and so are those opts.Include
// refuses; the proposals of opts themselves must be valid.
func (g *Group) CommitWith(opts CommitOptions) (*PublicMessage, *Welcome, error) {
	if wf := g.wireFormatOf(opts.WireFormat); wf != WireFormatPublicMessage {
		return nil, nil, errors.New("mls: CommitWith sends PublicMessages; use CommitMessage to send a Commit as a PrivateMessage")
	}
	m, w, err := g.CommitMessage(opts)
	if err != nil {
		return nil, nil, err
	}
	return m.PublicMessage, w, nil
}

// wireFormatOf resolves a per-message wire format choice, zero meaning
// the group's HandshakeWireFormat.
func (g *Group) wireFormatOf(wf WireFormat) WireFormat {
	if wf == 0 {
		return g.handshake
	}
	return wf
}

// CommitMessage is CommitWith returning the Commit as an MLSMessage,
// which carries a PrivateMessage (§6.3) if opts.WireFormat, or else the
// group's HandshakeWireFormat, says so. A Commit sent as a PrivateMessage
// hides its proposals and path from the Delivery Service, which then
// cannot validate it.
func (g *Group) CommitMessage(opts CommitOptions) (*MLSMessage, *Welcome, error) {
	adds, removes := opts.Adds, opts.Removes
	if err := g.checkCanSend(); err != nil {
		return nil, nil, err
	}
	wf := g.wireFormatOf(opts.WireFormat)
	if wf != WireFormatPublicMessage && wf != WireFormatPrivateMessage {
		return nil, nil, fmt.Errorf("mls: a Commit is sent as a PublicMessage or a PrivateMessage, not wire_format %d", wf)
	}
	if opts.ReInit != nil && (len(adds) > 0 || len(removes) > 0 || len(opts.ExternalPSKs) > 0 || opts.Extensions != nil) {
		return nil, nil, errors.New("mls: a Commit with a ReInit proposal carries no other proposal (§12.2); leave the other CommitOptions empty")
	}
	cs := g.pub.CipherSuite()
	self := g.keys.Self()
	oldGC := g.pub.GroupContext()
	commit := &Commit{}
	chosen := g.choosePending(&opts)
	// Then the new ones by value.
	var byValue []*Proposal
	for _, r := range removes {
		if r == self {
			return nil, nil, errors.New("mls: a member cannot commit its own removal; ask another member to remove it")
		}
		if slices.ContainsFunc(byValue, func(p *Proposal) bool { return p.Remove.Removed == r }) {
			continue
		}
		byValue = append(byValue, &Proposal{ProposalType: ProposalTypeRemove, Remove: &Remove{Removed: r}})
	}
	for _, kp := range adds {
		byValue = append(byValue, &Proposal{ProposalType: ProposalTypeAdd, Add: &Add{KeyPackage: *kp}})
	}
	for _, id := range opts.ExternalPSKs {
		nonce := make([]byte, cs.HashSize())
		rand.Read(nonce)
		pid := PreSharedKeyID{PSKType: PSKTypeExternal, PSKID: bytes.Clone(id), PSKNonce: nonce}
		byValue = append(byValue, &Proposal{ProposalType: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: pid}})
	}
	if opts.Extensions != nil {
		byValue = append(byValue, &Proposal{ProposalType: ProposalTypeGroupContextExtensions, GroupContextExtensions: &GroupContextExtensions{Extensions: *opts.Extensions}})
	}
	if opts.link != nil {
		byValue = append(byValue, &Proposal{ProposalType: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: *opts.link}})
	}
	if opts.ReInit != nil {
		byValue = append(byValue, &Proposal{ProposalType: ProposalTypeReInit, ReInit: opts.ReInit})
	}
	chosen, err := g.dropInvalid(chosen, byValue)
	if err != nil {
		return nil, nil, err
	}
	var updates []*PendingProposal
	var removed []LeafIndex
	var added []*KeyPackage
	var pskIDs []PreSharedKeyID
	var newExtensions *Extensions
	take := func(p *Proposal, sender Sender) {
		switch p.ProposalType {
		case ProposalTypeRemove:
			removed = append(removed, p.Remove.Removed)
		case ProposalTypeAdd:
			added = append(added, &p.Add.KeyPackage)
		case ProposalTypePSK:
			pskIDs = append(pskIDs, p.PreSharedKey.PSK)
		case ProposalTypeGroupContextExtensions:
			newExtensions = &p.GroupContextExtensions.Extensions
		}
	}
	for _, pp := range chosen {
		if pp.Proposal.ProposalType == ProposalTypeUpdate {
			updates = append(updates, pp)
		}
		take(pp.Proposal, pp.Sender)
		commit.Proposals = append(commit.Proposals, ProposalOrRef{Type: ProposalOrRefTypeReference, Reference: pp.Ref})
	}
	for _, p := range byValue {
		take(p, Sender{SenderType: SenderTypeMember, LeafIndex: self})
		commit.Proposals = append(commit.Proposals, ProposalOrRef{Type: ProposalOrRefTypeProposal, Proposal: p})
	}
	pskSecret, err := g.pskSecret(pskIDs)
	if err != nil {
		return nil, nil, err
	}
	// §12.3: proposals apply in the order updates, removes, adds.
	tree := g.pub.Tree()
	for _, u := range updates {
		leaf := u.Proposal.Update.LeafNode
		if err := tree.UpdateLeaf(u.Sender.LeafIndex, &leaf); err != nil {
			return nil, nil, err
		}
	}
	for _, r := range removed {
		if err := tree.RemoveLeaf(r); err != nil {
			return nil, nil, err
		}
	}
	var joiners []LeafIndex
	for _, kp := range added {
		leaf := kp.LeafNode
		joiners = append(joiners, tree.AddLeaf(&leaf))
	}
	adds = added

	keys := g.keys.Clone()
	keys.Prune(tree)
	provisional := oldGC
	provisional.Epoch++
	if newExtensions != nil {
		provisional.Extensions = *newExtensions
	}
	template := *tree.Leaf(self)
	if newExtensions != nil {
		if err := checkOwnSupport(&template, *newExtensions); err != nil {
			return nil, nil, err
		}
	}
	path, commitSecret, err := keys.CreateUpdatePath(tree, &template, g.sigPriv, &provisional, joiners)
	if err != nil {
		return nil, nil, err
	}
	commit.Path = path

	ac := &AuthenticatedContent{
		WireFormat: wf,
		Content: FramedContent{GroupID: oldGC.GroupID, Epoch: oldGC.Epoch,
			Sender:      Sender{SenderType: SenderTypeMember, LeafIndex: self},
			ContentType: ContentTypeCommit, Commit: commit, AuthenticatedData: bytes.Clone(opts.AuthenticatedData)},
	}
	if err := ac.Sign(cs, g.sigPriv, &oldGC); err != nil {
		return nil, nil, err
	}
	confirmed, err := ConfirmedTranscriptHash(cs, g.pub.InterimTranscriptHash(), ac)
	if err != nil {
		return nil, nil, err
	}
	newGC := provisional
	newGC.ConfirmedTranscriptHash = confirmed
	es, err := DeriveEpochSecrets(g.es.InitSecret, commitSecret, pskSecret, &newGC)
	if err != nil {
		return nil, nil, err
	}
	ac.Auth.ConfirmationTag = es.ConfirmationTag(confirmed)

	// Run the Commit through the same checks every receiver applies, and
	// take the next epoch's public state from them.
	nextPub, effect, err := g.pub.HandleCommitContent(ac)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: own Commit fails validation: %w", err)
	}
	if got := nextPub.GroupContext(); !bytes.Equal(mustEncode(&got), mustEncode(&newGC)) {
		return nil, nil, errors.New("mls: internal error: own Commit yields another GroupContext")
	}
	next, err := newGroup(nextPub, keys, es, g.sigPriv, g.psks)
	if err != nil {
		return nil, nil, err
	}

	var welcome *Welcome
	if len(adds) > 0 {
		if welcome, err = g.welcome(next, adds, joiners, pskIDs, pskSecret, true); err != nil {
			return nil, nil, err
		}
	}
	msg, err := g.protect(ac)
	if err != nil {
		return nil, nil, err
	}
	g.pending = &pendingCommit{msg: msg, wire: mustEncode(msg.body()), effect: effect, next: next}
	return msg, welcome, nil
}

// choosePending picks the pending proposals a Commit of this member may
// carry by reference (see CommitWith), in the order received: those
// opts.Include accepts, less those §12.2 forbids with this list.
func (g *Group) choosePending(opts *CommitOptions) []*PendingProposal {
	self := g.keys.Self()
	pending := g.pub.PendingProposals()
	include := func(pp *PendingProposal) bool { return opts.Include == nil || opts.Include(pp) }
	if !opts.byValue() {
		for i := range pending {
			if p := pending[i].Proposal; p.ProposalType == ProposalTypeReInit && p.ReInit != nil && include(&pending[i]) {
				return []*PendingProposal{&pending[i]}
			}
		}
	}
	var chosen []*PendingProposal
	var updated, removed []LeafIndex
	pskSeen := make(map[string]bool)
	var extensions bool
	for i := range pending {
		pp := &pending[i]
		p := pp.Proposal
		if !include(pp) {
			continue
		}
		switch {
		case p.ProposalType == ProposalTypeUpdate && p.Update != nil:
			if pp.Sender.SenderType != SenderTypeMember || pp.Sender.LeafIndex == self || slices.Contains(updated, pp.Sender.LeafIndex) {
				continue
			}
			updated = append(updated, pp.Sender.LeafIndex)
		case p.ProposalType == ProposalTypeRemove && p.Remove != nil:
			// A Remove the Commit makes by value takes the place of a
			// pending one for the same leaf.
			if r := p.Remove.Removed; r == self || slices.Contains(removed, r) || slices.Contains(opts.Removes, r) {
				continue
			} else {
				removed = append(removed, r)
			}
		case p.ProposalType == ProposalTypeAdd && p.Add != nil:
		case p.ProposalType == ProposalTypePSK && p.PreSharedKey != nil:
			// §12.2: no two PreSharedKey proposals for the same
			// PreSharedKeyID; and the committer must have the PSK to
			// compute psk_secret (§8.4).
			id := p.PreSharedKey.PSK
			key := string(mustEncode(&id))
			if _, ok := g.psks[pskLookupKey(&id)]; !ok || pskSeen[key] {
				continue
			}
			pskSeen[key] = true
		case p.ProposalType == ProposalTypeGroupContextExtensions && p.GroupContextExtensions != nil:
			// §12.2: at most one GroupContextExtensions proposal.
			if opts.Extensions != nil || extensions {
				continue
			}
			extensions = true
		default:
			continue
		}
		chosen = append(chosen, pp)
	}
	// An Update of a member that is also removed is not allowed (§12.2).
	gone := append(slices.Clone(removed), opts.Removes...)
	return slices.DeleteFunc(chosen, func(pp *PendingProposal) bool {
		return pp.Proposal.ProposalType == ProposalTypeUpdate && slices.Contains(gone, pp.Sender.LeafIndex)
	})
}

// dropInvalid leaves out of chosen the pending proposals that would make
// the Commit invalid together with byValue (§12.2, and each proposal's
// own rules as the list is applied: a KeyPackage whose encryption_key is
// already in the tree, a client added twice, ...), so that one bad
// proposal of another member cannot block every Commit. The proposals by
// value must be valid: if they are not, the error says why. The common
// case, a valid list, costs one trial; otherwise the proposals are tried
// one by one in the order received and kept if the list stays valid.
func (g *Group) dropInvalid(chosen []*PendingProposal, byValue []*Proposal) ([]*PendingProposal, error) {
	self := Sender{SenderType: SenderTypeMember, LeafIndex: g.keys.Self()}
	trial := func(refs []*PendingProposal) error {
		props := make([]listedProposal, 0, len(refs)+len(byValue))
		for _, pp := range refs {
			props = append(props, listedProposal{p: pp.Proposal, sender: pp.Sender, ref: pp.Ref})
		}
		for _, p := range byValue {
			props = append(props, listedProposal{p: p, sender: self})
		}
		if err := g.pub.checkProposalList(props, self.LeafIndex); err != nil {
			return err
		}
		_, err := g.pub.fork().applyProposals(g.pub, props, &CommitEffect{})
		return err
	}
	if len(chosen) == 0 || trial(chosen) == nil {
		return chosen, nil
	}
	if err := trial(nil); err != nil {
		return nil, fmt.Errorf("mls: the proposals of this Commit are invalid: %w", err)
	}
	var kept []*PendingProposal
	for _, pp := range chosen {
		if trial(append(slices.Clone(kept), pp)) == nil {
			kept = append(kept, pp)
		}
	}
	return kept, nil
}

// protect wraps signed content of the current epoch in the wire format
// it was signed for: a PublicMessage with the membership tag (§6.2) or a
// PrivateMessage encrypted with the next generation of this member's
// handshake ratchet (§6.3).
func (g *Group) protect(ac *AuthenticatedContent) (*MLSMessage, error) {
	gc := g.pub.GroupContext()
	m := &MLSMessage{Version: ProtocolVersionMLS10, WireFormat: ac.WireFormat}
	var err error
	if ac.WireFormat == WireFormatPrivateMessage {
		m.PrivateMessage, err = ProtectPrivate(ac, g.es.SenderDataSecret, g.st, 0)
	} else {
		m.PublicMessage, err = ProtectPublic(ac, g.es.MembershipKey, &gc)
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

// welcome builds the Welcome of a Commit for the new members adds, at
// leaves joiners (§12.4.3.1); its GroupInfo carries the ratchet_tree
// extension if withTree.
func (g *Group) welcome(next *Group, adds []*KeyPackage, joiners []LeafIndex, pskIDs []PreSharedKeyID, pskSecret []byte, withTree bool) (*Welcome, error) {
	cs := next.pub.CipherSuite()
	gc := next.pub.GroupContext()
	gi := &GroupInfo{
		GroupContext:    gc,
		ConfirmationTag: next.es.ConfirmationTag(gc.ConfirmedTranscriptHash),
		Signer:          next.Self(),
	}
	if withTree {
		treeData, err := next.pub.Tree().MarshalBinary()
		if err != nil {
			return nil, err
		}
		gi.Extensions = Extensions{{ExtensionType: ExtensionTypeRatchetTree, ExtensionData: treeData}}
	}
	if err := gi.Sign(g.sigPriv); err != nil {
		return nil, err
	}
	giData, err := gi.MarshalBinary()
	if err != nil {
		return nil, err
	}
	ks, err := NewKeySchedule(cs, next.es.JoinerSecret, pskSecret)
	if err != nil {
		return nil, err
	}
	key, nonce, err := ks.WelcomeKey()
	if err != nil {
		return nil, err
	}
	w := &Welcome{CipherSuite: cs}
	if w.EncryptedGroupInfo, err = cs.Seal(key, nonce, nil, giData); err != nil {
		return nil, err
	}
	for i, kp := range adds {
		ref, err := kp.Ref()
		if err != nil {
			return nil, err
		}
		gs := &GroupSecrets{JoinerSecret: next.es.JoinerSecret, PathSecret: next.keys.PathSecretFor(joiners[i]), PSKs: pskIDs}
		kem, ct, err := cs.EncryptWithLabel(kp.InitKey, "Welcome", w.EncryptedGroupInfo, mustEncode(gs))
		if err != nil {
			return nil, err
		}
		w.Secrets = append(w.Secrets, EncryptedGroupSecrets{NewMember: ref, EncryptedGroupSecrets: HPKECiphertext{KEMOutput: kem, Ciphertext: ct}})
	}
	return w, nil
}

// PendingCommitEffect describes what the pending Commit (the last one
// made, not yet merged or discarded) changes, or returns nil if there is
// none.
func (g *Group) PendingCommitEffect() *CommitEffect {
	if g.pending == nil {
		return nil
	}
	return g.pending.effect
}

// PendingProposals returns the proposals received in the current epoch
// and not yet committed, in the order received.
func (g *Group) PendingProposals() []PendingProposal { return g.pub.PendingProposals() }

// MergePendingCommit moves the group to the epoch of the Commit it made
// last, once the Delivery Service has accepted it.
func (g *Group) MergePendingCommit() error {
	if g.pending == nil {
		return errors.New("mls: no pending Commit to merge")
	}
	g.advance(g.pending.next)
	return nil
}

// DiscardPendingCommit forgets the Commit made last, as when the Delivery
// Service has sequenced another one first.
func (g *Group) DiscardPendingCommit() { g.pending = nil }

// HandleCommit processes a Commit sent by another member as a
// PublicMessage (§12.4.2): the membership tag, all public checks of
// PublicGroupState.HandleCommit, the UpdatePath decryption (§7.5), the key
// schedule of the new epoch and the confirmation tag. On success the group
// moves to the new epoch; on error it is unchanged. If the Commit removes
// this member, the group becomes unusable and later calls return
// ErrNotMember. A pending Commit of this member is discarded, unless msg
// is that very Commit coming back from the Delivery Service, which is then
// merged as MergePendingCommit does. Process handles Commits sent as
// PrivateMessages too.
func (g *Group) HandleCommit(msg *PublicMessage) (*CommitEffect, error) {
	if err := g.checkActive(); err != nil {
		return nil, err
	}
	if err := g.pub.checkOpen(); err != nil {
		return nil, err
	}
	if msg.Content.Sender.SenderType == SenderTypeMember && msg.Content.Sender.LeafIndex == g.keys.Self() {
		return g.ownCommit(mustEncode(msg))
	}
	oldGC := g.pub.GroupContext()
	if msg.Content.Sender.SenderType == SenderTypeMember {
		if _, err := UnprotectPublic(msg, g.es.MembershipKey, &oldGC); err != nil {
			return nil, err
		}
	}
	nextPub, effect, err := g.pub.HandleCommit(msg)
	if err != nil {
		return nil, err
	}
	return g.followCommit(msg.AuthenticatedContent(), nextPub, effect)
}

// ownCommit merges the pending Commit if wire is its encoding, as when the
// Delivery Service echoes it.
func (g *Group) ownCommit(wire []byte) (*CommitEffect, error) {
	if g.pending != nil && bytes.Equal(wire, g.pending.wire) {
		effect := g.pending.effect
		g.advance(g.pending.next)
		return effect, nil
	}
	return nil, errors.New("mls: a Commit from this member's leaf that is not its pending Commit")
}

// followCommit finishes processing a Commit whose public checks passed,
// giving nextPub and effect: the member's own removal, the PSKs, the
// init secret of an external Commit (§8.3), the UpdatePath (§7.5), the
// key schedule and the confirmation tag (§12.4.2). ac is the Commit's
// content, with the wire format it came in.
func (g *Group) followCommit(ac *AuthenticatedContent, nextPub *PublicGroupState, effect *CommitEffect) (*CommitEffect, error) {
	self := g.keys.Self()
	oldGC := g.pub.GroupContext()
	commit := ac.Content.Commit
	for _, r := range effect.Removed {
		if r.Leaf == self {
			g.removed, g.pending = true, nil
			return effect, nil
		}
	}
	pskSecret, err := g.pskSecret(effect.PSKs)
	if err != nil {
		return nil, err
	}
	initSecret := g.es.InitSecret
	if effect.External {
		// §8.3: the joiner's init_secret comes from the HPKE context set
		// up with the group's external key pair.
		var kemOutput []byte
		for _, p := range commit.Proposals {
			if p.Proposal != nil && p.Proposal.ProposalType == ProposalTypeExternalInit && p.Proposal.ExternalInit != nil {
				kemOutput = p.Proposal.ExternalInit.KEMOutput
			}
		}
		extPriv, _, err := g.es.ExternalKeyPair()
		if err != nil {
			return nil, err
		}
		if initSecret, err = externalInitReceiver(g.pub.CipherSuite(), extPriv, kemOutput); err != nil {
			return nil, &ValidationError{Rule: "ExternalInit kem_output must decapsulate with the group's external key", Section: "8.3", Err: err}
		}
	}
	newGC := nextPub.GroupContext()
	tree := nextPub.Tree()
	if own := tree.Leaf(self); own != nil && !bytes.Equal(mustEncode(&newGC.Extensions), mustEncode(&oldGC.Extensions)) {
		// §12.1.7: new GroupContext extensions must be supported by
		// every member, this one included.
		if err := checkOwnSupport(own, newGC.Extensions); err != nil {
			return nil, err
		}
	}
	keys := g.keys.Clone()
	if own := tree.Leaf(self); own != nil {
		if priv, ok := g.updateKeys[string(own.EncryptionKey)]; ok {
			// The Commit applied an Update proposal of this member.
			if err := keys.SetLeafPrivateKey(priv); err != nil {
				return nil, err
			}
		}
	}
	var commitSecret []byte
	if effect.PathPresent {
		var joiners []LeafIndex
		for _, a := range effect.Added {
			joiners = append(joiners, a.Leaf)
		}
		provisional := newGC
		provisional.ConfirmedTranscriptHash = oldGC.ConfirmedTranscriptHash
		if commitSecret, err = keys.DecryptUpdatePath(tree, effect.Committer, commit.Path, &provisional, joiners); err != nil {
			return nil, err
		}
	}
	keys.Prune(tree)
	es, err := DeriveEpochSecrets(initSecret, commitSecret, pskSecret, &newGC)
	if err != nil {
		return nil, err
	}
	if err := es.VerifyConfirmationTag(newGC.ConfirmedTranscriptHash, ac.Auth.ConfirmationTag); err != nil {
		return nil, err
	}
	next, err := newGroup(nextPub, keys, es, g.sigPriv, g.psks)
	if err != nil {
		return nil, err
	}
	g.advance(next)
	return effect, nil
}

// Propose sends p as a PublicMessage proposal of this member (§12.1) and
// keeps it for this member's next Commit, as HandleProposal does for the
// proposals of others. To leave a group, propose a Remove of Self. With a
// HandshakeWireFormat of WireFormatPrivateMessage, use ProposeMessage.
func (g *Group) Propose(p *Proposal) (*PublicMessage, error) {
	if g.handshake != WireFormatPublicMessage {
		return nil, errors.New("mls: Propose sends PublicMessages but the group's handshake wire format is PrivateMessage; use ProposeMessage")
	}
	m, _, err := g.propose(p)
	if err != nil {
		return nil, err
	}
	return m.PublicMessage, nil
}

// ProposeMessage sends p as a proposal of this member in the group's
// HandshakeWireFormat (§12.1, §6) and keeps it for this member's next
// Commit. It returns the message and the proposal's reference.
func (g *Group) ProposeMessage(p *Proposal) (*MLSMessage, ProposalRef, error) {
	return g.propose(p)
}

func (g *Group) propose(p *Proposal) (*MLSMessage, ProposalRef, error) {
	if err := g.checkCanSend(); err != nil {
		return nil, nil, err
	}
	gc := g.pub.GroupContext()
	ac := &AuthenticatedContent{
		WireFormat: g.handshake,
		Content: FramedContent{GroupID: gc.GroupID, Epoch: gc.Epoch,
			Sender:      Sender{SenderType: SenderTypeMember, LeafIndex: g.keys.Self()},
			ContentType: ContentTypeProposal, Proposal: p},
	}
	if err := ac.Sign(gc.CipherSuite, g.sigPriv, &gc); err != nil {
		return nil, nil, err
	}
	// Check it as the receivers will before it consumes a generation of
	// the handshake ratchet.
	ref, err := g.pub.HandleProposalContent(ac)
	if err != nil {
		return nil, nil, err
	}
	msg, err := g.protect(ac)
	if err != nil {
		return nil, nil, err
	}
	if msg.PrivateMessage != nil {
		if g.sentPrivate == nil {
			g.sentPrivate = map[string]ProposalRef{}
		}
		g.sentPrivate[string(gc.CipherSuite.Hash(mustEncode(msg.PrivateMessage)))] = ref
	}
	return msg, ref, nil
}

// ProposeUpdate proposes a new leaf for this member with a fresh
// encryption key (§12.1.2), to be committed by another member. It sends
// a PublicMessage; with a HandshakeWireFormat of WireFormatPrivateMessage,
// use ProposeUpdateMessage.
func (g *Group) ProposeUpdate() (*PublicMessage, error) {
	if g.handshake != WireFormatPublicMessage {
		return nil, errors.New("mls: ProposeUpdate sends PublicMessages but the group's handshake wire format is PrivateMessage; use ProposeUpdateMessage")
	}
	m, err := g.ProposeUpdateMessage()
	if err != nil {
		return nil, err
	}
	return m.PublicMessage, nil
}

// ProposeUpdateMessage is ProposeUpdate in the group's
// HandshakeWireFormat.
func (g *Group) ProposeUpdateMessage() (*MLSMessage, error) {
	if err := g.checkCanSend(); err != nil {
		return nil, err
	}
	cs := g.pub.CipherSuite()
	self := g.keys.Self()
	priv, pub, err := cs.GenerateKEMKeyPair()
	if err != nil {
		return nil, err
	}
	leaf := *g.pub.Tree().Leaf(self)
	leaf.EncryptionKey = pub
	leaf.LeafNodeSource = LeafNodeSourceUpdate
	leaf.Lifetime, leaf.ParentHash = nil, nil
	if err := leaf.Sign(cs, g.sigPriv, g.pub.GroupID(), self); err != nil {
		return nil, err
	}
	msg, _, err := g.propose(&Proposal{ProposalType: ProposalTypeUpdate, Update: &Update{LeafNode: leaf}})
	if err != nil {
		return nil, err
	}
	if g.updateKeys == nil {
		g.updateKeys = map[string][]byte{}
	}
	g.updateKeys[string(pub)] = priv
	return msg, nil
}

// HandleProposal checks a proposal sent as a PublicMessage in the current
// epoch (the membership tag of a member's, then all checks of
// PublicGroupState.HandleProposal) and keeps it for a Commit that refers
// to it. Process handles proposals sent as PrivateMessages too.
func (g *Group) HandleProposal(msg *PublicMessage) (ProposalRef, error) {
	if err := g.checkActive(); err != nil {
		return nil, err
	}
	if err := g.pub.checkOpen(); err != nil {
		return nil, err
	}
	gc := g.pub.GroupContext()
	if msg.Content.Sender.SenderType == SenderTypeMember {
		if _, err := UnprotectPublic(msg, g.es.MembershipKey, &gc); err != nil {
			return nil, err
		}
	}
	return g.pub.HandleProposal(msg)
}

// Seal encrypts application data as a PrivateMessage of the current epoch
// (§6.3), signed by the member.
func (g *Group) Seal(data, authenticatedData []byte) (*PrivateMessage, error) {
	if err := g.checkCanSend(); err != nil {
		return nil, err
	}
	gc := g.pub.GroupContext()
	if g.sigKey == nil {
		g.sigKey = gc.CipherSuite.signingKey(g.sigPriv)
	}
	return sealApplication(gc, g.keys.Self(), g.sigKey, g.es.SenderDataSecret, g.st, data, authenticatedData)
}

// sealApplication signs data as an application message of the member at
// self in the epoch of gc and encrypts it with the epoch's secrets (§6.3).
// sigPriv may be expanded (CipherSuite.signingKey).
func sealApplication(gc GroupContext, self LeafIndex, sigPriv, senderDataSecret []byte, st *SecretTree, data, authenticatedData []byte) (*PrivateMessage, error) {
	ac := &AuthenticatedContent{
		WireFormat: WireFormatPrivateMessage,
		Content: FramedContent{GroupID: gc.GroupID, Epoch: gc.Epoch,
			Sender:            Sender{SenderType: SenderTypeMember, LeafIndex: self},
			AuthenticatedData: bytes.Clone(authenticatedData),
			ContentType:       ContentTypeApplication, Application: bytes.Clone(data)},
	}
	if err := ac.sign(gc.CipherSuite, sigPriv, &gc); err != nil {
		return nil, err
	}
	return ProtectPrivate(ac, senderDataSecret, st, 0)
}

// Open decrypts an application PrivateMessage and verifies its signature
// (§6.3), returning the sender's leaf and the data. The message may be of
// the current epoch or of one of the past epochs the member keeps (see
// SetPastEpochs); one of another epoch gives a *ValidationError wrapping
// an *EpochMismatchError. A member removed from the group can still open
// the messages of the epochs it kept.
func (g *Group) Open(m *PrivateMessage) (sender LeafIndex, data []byte, err error) {
	ac, err := g.openApplication(m)
	if err != nil {
		return 0, nil, err
	}
	return ac.Content.Sender.LeafIndex, slices.Clone(ac.Content.Application), nil
}

// groupStateFormat versions the encoding of Group.MarshalBinary. Format 1
// lacked the fields from handshake_wire_format on; UnmarshalGroup still
// reads it.
const groupStateFormat = 2

// MarshalBinary encodes the member's state so that it can be stored and
// restored with UnmarshalGroup: the current epoch, the settings, and what
// opening application messages of the kept past epochs needs. The
// encoding holds private keys and epoch secrets: store it as securely as
// a private key. A pending Commit is not part of it.
//
//	struct {
//	    uint16 format = 2;
//	    opaque public_group_state<V>;    /* PublicGroupState.MarshalBinary */
//	    TreePrivateKey tree_keys;
//	    opaque epoch_secrets<V>;         /* see marshalEpochSecrets */
//	    opaque secret_tree<V>;           /* see marshalSecretTree */
//	    opaque signature_priv<V>;
//	    bool removed;
//	    struct { opaque key<V>; opaque secret<V>; } psks<V>;
//	    struct { opaque pub<V>; opaque priv<V>; } update_keys<V>;
//	    uint16 handshake_wire_format;
//	    uint32 past_epochs_kept;
//	    struct { opaque hash<V>; opaque ref<V>; } sent_private<V>;
//	    PastEpoch past_epochs<V>;        /* newest first; see marshalPastEpoch */
//	}
func (g *Group) MarshalBinary() ([]byte, error) {
	pub, err := g.pub.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return encode(groupMarshaler{g, pub})
}

type groupMarshaler struct {
	g   *Group
	pub []byte
}

func (m groupMarshaler) marshal(b *cryptobyte.Builder) {
	g := m.g
	b.AddUint16(groupStateFormat)
	addOpaque(b, m.pub)
	g.keys.marshal(b)
	addVector(b, func(b *cryptobyte.Builder) { marshalEpochSecrets(b, g.es) })
	addVector(b, func(b *cryptobyte.Builder) { marshalSecretTree(b, g.st) })
	addOpaque(b, g.sigPriv)
	addBool(b, g.removed)
	sent := make(map[string][]byte, len(g.sentPrivate))
	for k, v := range g.sentPrivate {
		sent[k] = v
	}
	addByteMap(b, g.psks)
	addByteMap(b, g.updateKeys)
	b.AddUint16(uint16(g.handshake))
	b.AddUint32(uint32(g.keepPast))
	addByteMap(b, sent)
	addVector(b, func(b *cryptobyte.Builder) {
		for _, p := range g.past {
			marshalPastEpoch(b, p)
		}
	})
}

// addByteMap writes m as a list of {opaque key<V>; opaque value<V>} in key
// order.
func addByteMap(b *cryptobyte.Builder, m map[string][]byte) {
	addVector(b, func(b *cryptobyte.Builder) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			addOpaque(b, []byte(k))
			addOpaque(b, m[k])
		}
	})
}

// readByteMap reads a list of {opaque key<V>; opaque value<V>} into m.
func readByteMap(s *cryptobyte.String, m map[string][]byte) bool {
	return readList(s, func(s *cryptobyte.String) bool {
		var k, v []byte
		if !readOpaque(s, &k) || !readOpaque(s, &v) {
			return false
		}
		m[string(k)] = v
		return true
	})
}

// UnmarshalGroup restores a Group saved with MarshalBinary, by this
// version (format 2) or an earlier one (format 1, which kept no past
// epochs).
func UnmarshalGroup(data []byte) (*Group, error) {
	g := &Group{keys: new(TreePrivateKey), es: new(EpochSecrets), st: new(SecretTree), psks: map[string][]byte{}, updateKeys: map[string][]byte{},
		keepPast: DefaultPastEpochs, handshake: WireFormatPublicMessage}
	if len(data) >= 2 {
		if f := uint16(data[0])<<8 | uint16(data[1]); f != 1 && f != groupStateFormat {
			return nil, fmt.Errorf("%w: Group state has format %d; this version reads formats 1 and %d (was it saved by a newer version?)", ErrDecode, f, groupStateFormat)
		}
	}
	var pub []byte
	sent := map[string][]byte{}
	err := decode(data, "Group state", func(s *cryptobyte.String) bool {
		var format uint16
		var es, st cryptobyte.String
		if !(s.ReadUint16(&format) &&
			readOpaque(s, &pub) &&
			g.keys.unmarshal(s) &&
			readVector(s, &es) && unmarshalEpochSecrets(&es, g.es) && es.Empty() &&
			readVector(s, &st) && unmarshalSecretTree(&st, g.st) && st.Empty() &&
			readOpaque(s, &g.sigPriv) &&
			readBool(s, &g.removed) &&
			readByteMap(s, g.psks) &&
			readByteMap(s, g.updateKeys)) {
			return false
		}
		if format == 1 {
			return true
		}
		var keep uint32
		if !s.ReadUint16((*uint16)(&g.handshake)) || !s.ReadUint32(&keep) ||
			(g.handshake != WireFormatPublicMessage && g.handshake != WireFormatPrivateMessage) {
			return false
		}
		g.keepPast = int(keep)
		return readByteMap(s, sent) &&
			readList(s, func(s *cryptobyte.String) bool {
				p := new(pastEpoch)
				if !unmarshalPastEpoch(s, p) {
					return false
				}
				g.past = append(g.past, p)
				return true
			})
	})
	if err != nil {
		return nil, err
	}
	for k, v := range sent {
		if g.sentPrivate == nil {
			g.sentPrivate = map[string]ProposalRef{}
		}
		g.sentPrivate[k] = v
	}
	if g.pub, err = UnmarshalPublicGroupState(pub); err != nil {
		return nil, err
	}
	cs := g.pub.CipherSuite()
	if g.keys.cs != cs || g.es.Suite != cs || g.st.suite != cs {
		return nil, fmt.Errorf("%w: Group state mixes cipher suites", ErrDecode)
	}
	for _, p := range g.past {
		if p.gc.CipherSuite != cs || p.st.suite != cs || p.gc.Epoch >= g.pub.Epoch() {
			return nil, fmt.Errorf("%w: Group state has an inconsistent past epoch", ErrDecode)
		}
	}
	if err := g.keys.Check(g.pub.Tree()); err != nil {
		return nil, fmt.Errorf("%w: Group state: %v", ErrDecode, err)
	}
	return g, nil
}

// epochSecretFields lists the EpochSecrets kept in a saved Group, in
// encoding order. The joiner, welcome and encryption secrets are not
// needed once the epoch has started (the secret tree holds what is left of
// the encryption secret) and are not saved.
func epochSecretFields(es *EpochSecrets) []*[]byte {
	return []*[]byte{&es.SenderDataSecret, &es.ExporterSecret, &es.ExternalSecret, &es.ConfirmationKey,
		&es.MembershipKey, &es.ResumptionPSK, &es.EpochAuthenticator, &es.InitSecret}
}

func marshalEpochSecrets(b *cryptobyte.Builder, es *EpochSecrets) {
	b.AddUint16(uint16(es.Suite))
	for _, f := range epochSecretFields(es) {
		addOpaque(b, *f)
	}
}

func unmarshalEpochSecrets(s *cryptobyte.String, es *EpochSecrets) bool {
	if !s.ReadUint16((*uint16)(&es.Suite)) {
		return false
	}
	for _, f := range epochSecretFields(es) {
		if !readOpaque(s, f) {
			return false
		}
	}
	return true
}

// marshalSecretTree writes the state of a secret tree: limits, size, the
// unconsumed tree secrets and each started leaf's two ratchets with their
// retained keys, all in index order.
func marshalSecretTree(b *cryptobyte.Builder, t *SecretTree) {
	b.AddUint16(uint16(t.suite))
	b.AddUint32(t.MaxForward)
	b.AddUint32(t.MaxBackward)
	b.AddUint32(t.nLeaves)
	addVector(b, func(b *cryptobyte.Builder) {
		for _, x := range slices.Sorted(maps.Keys(t.nodes)) {
			b.AddUint32(uint32(x))
			addOpaque(b, t.nodes[x])
		}
	})
	ratchet := func(b *cryptobyte.Builder, r *hashRatchet) {
		addOpaque(b, r.secret)
		b.AddUint64(r.next)
		b.AddUint64(r.low)
		addVector(b, func(b *cryptobyte.Builder) {
			for _, g := range slices.Sorted(maps.Keys(r.retained)) {
				b.AddUint32(g)
				addOpaque(b, r.retained[g].key)
				addOpaque(b, r.retained[g].nonce)
			}
		})
	}
	addVector(b, func(b *cryptobyte.Builder) {
		for _, l := range slices.Sorted(maps.Keys(t.ratchets)) {
			b.AddUint32(uint32(l))
			ratchet(b, &t.ratchets[l].handshake)
			ratchet(b, &t.ratchets[l].application)
		}
	})
}

func unmarshalSecretTree(s *cryptobyte.String, t *SecretTree) bool {
	*t = SecretTree{nodes: map[NodeIndex][]byte{}, ratchets: map[LeafIndex]*leafRatchets{}}
	if !s.ReadUint16((*uint16)(&t.suite)) || !s.ReadUint32(&t.MaxForward) || !s.ReadUint32(&t.MaxBackward) || !s.ReadUint32(&t.nLeaves) {
		return false
	}
	if t.nLeaves == 0 || t.nLeaves&(t.nLeaves-1) != 0 || t.nLeaves > 1<<31 {
		return false
	}
	if !readList(s, func(s *cryptobyte.String) bool {
		var x uint32
		var v []byte
		if !s.ReadUint32(&x) || !readOpaque(s, &v) {
			return false
		}
		t.nodes[NodeIndex(x)] = v
		return true
	}) {
		return false
	}
	ratchet := func(s *cryptobyte.String, r *hashRatchet) bool {
		r.retained = map[uint32]messageKey{}
		return readOpaque(s, &r.secret) && s.ReadUint64(&r.next) && s.ReadUint64(&r.low) &&
			readList(s, func(s *cryptobyte.String) bool {
				var g uint32
				var k messageKey
				if !s.ReadUint32(&g) || !readOpaque(s, &k.key) || !readOpaque(s, &k.nonce) {
					return false
				}
				r.retained[g] = k
				return true
			})
	}
	return readList(s, func(s *cryptobyte.String) bool {
		var l uint32
		lr := new(leafRatchets)
		if !s.ReadUint32(&l) || l >= t.nLeaves || !ratchet(s, &lr.handshake) || !ratchet(s, &lr.application) {
			return false
		}
		t.ratchets[LeafIndex(l)] = lr
		return true
	})
}

// externalInitLabel is the HPKE exporter context of the external init
// secret (§8.3).
const externalInitLabel = "MLS 1.0 external init secret"

// externalInitSender sets up an HPKE context to the group's external_pub
// and exports the init_secret of an external joiner (§8.3).
func externalInitSender(cs CipherSuite, externalPub []byte) (kemOutput, initSecret []byte, err error) {
	p := cs.params()
	if p == nil {
		return nil, nil, &UnknownCipherSuiteError{Suite: cs}
	}
	if p.x448 {
		pk, err := circlhpke.KEM_X448_HKDF_SHA512.Scheme().UnmarshalBinaryPublicKey(externalPub)
		if err != nil {
			return nil, nil, p.hpkeKeyError("public", err)
		}
		sender, err := p.circl.NewSender(pk, nil)
		if err != nil {
			return nil, nil, err
		}
		enc, sealer, err := sender.Setup(rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		return enc, sealer.Export([]byte(externalInitLabel), uint(p.nh)), nil
	}
	pk, err := p.kem.NewPublicKey(externalPub)
	if err != nil {
		return nil, nil, p.hpkeKeyError("public", err)
	}
	enc, sender, err := hpke.NewSender(pk, p.hpkeKDF, p.hpkeAEAD, nil)
	if err != nil {
		return nil, nil, err
	}
	secret, err := sender.Export(externalInitLabel, p.nh)
	return enc, secret, err
}

// externalInitReceiver is the group's side of externalInitSender.
func externalInitReceiver(cs CipherSuite, externalPriv, kemOutput []byte) ([]byte, error) {
	p := cs.params()
	if p == nil {
		return nil, &UnknownCipherSuiteError{Suite: cs}
	}
	if p.x448 {
		sk, err := circlhpke.KEM_X448_HKDF_SHA512.Scheme().UnmarshalBinaryPrivateKey(externalPriv)
		if err != nil {
			return nil, p.hpkeKeyError("private", err)
		}
		receiver, err := p.circl.NewReceiver(sk, nil)
		if err != nil {
			return nil, err
		}
		opener, err := receiver.Setup(kemOutput)
		if err != nil {
			return nil, err
		}
		return opener.Export([]byte(externalInitLabel), uint(p.nh)), nil
	}
	sk, err := p.kem.NewPrivateKey(externalPriv)
	if err != nil {
		return nil, p.hpkeKeyError("private", err)
	}
	r, err := hpke.NewRecipient(kemOutput, sk, p.hpkeKDF, p.hpkeAEAD, nil)
	if err != nil {
		return nil, err
	}
	return r.Export(externalInitLabel, p.nh)
}

// GroupInfo returns a GroupInfo of the current epoch signed by this member
// (§12.4.3), with the external_pub extension so that it can be used to
// join by external Commit, and the ratchet_tree extension if withTree.
func (g *Group) GroupInfo(withTree bool) (*GroupInfo, error) {
	return g.GroupInfoWith(GroupInfoOptions{RatchetTree: withTree})
}

// GroupInfoOptions are the choices of GroupInfoWith.
type GroupInfoOptions struct {
	// RatchetTree adds the ratchet_tree extension (§12.4.3.3).
	RatchetTree bool
	// Grease adds an extension of a random GREASE type with a few random
	// bytes (§13.5), which every correct receiver ignores.
	Grease bool
}

// GroupInfoWith is GroupInfo with options.
func (g *Group) GroupInfoWith(opts GroupInfoOptions) (*GroupInfo, error) {
	withTree := opts.RatchetTree
	if err := g.checkActive(); err != nil {
		return nil, err
	}
	gc := g.pub.GroupContext()
	_, extPub, err := g.es.ExternalKeyPair()
	if err != nil {
		return nil, err
	}
	gi := &GroupInfo{
		GroupContext:    gc,
		Extensions:      Extensions{{ExtensionType: ExtensionTypeExternalPub, ExtensionData: mustEncode(&ExternalPub{PublicKey: extPub})}},
		ConfirmationTag: g.es.ConfirmationTag(gc.ConfirmedTranscriptHash),
		Signer:          g.keys.Self(),
	}
	if withTree {
		data, err := g.pub.Tree().MarshalBinary()
		if err != nil {
			return nil, err
		}
		gi.Extensions = append(gi.Extensions, Extension{ExtensionType: ExtensionTypeRatchetTree, ExtensionData: data})
	}
	if opts.Grease {
		gi.Extensions = append(gi.Extensions, greaseExtension())
	}
	if err := gi.Sign(g.sigPriv); err != nil {
		return nil, err
	}
	return gi, nil
}

// JoinExternal joins a group by external Commit (§12.4.3.2) from a
// GroupInfo with the external_pub extension, as the owner of kp (only its
// LeafNode and priv's encryption and signature keys are used). The tree
// comes from gi's ratchet_tree extension, or from tree if not nil. It
// returns the member's Group in the new epoch and the Commit to send; if
// the Delivery Service refuses the Commit, drop the Group and try again
// with a newer GroupInfo.
func JoinExternal(gi *GroupInfo, tree *RatchetTree, kp *KeyPackage, priv *KeyPackagePrivate) (*Group, *PublicMessage, error) {
	return JoinExternalWith(gi, tree, kp, priv, JoinExternalOptions{})
}

// JoinExternalOptions are the choices of JoinExternalWith.
type JoinExternalOptions struct {
	// RemoveLeaf, if not nil, makes the external Commit a "resync"
	// (§12.4.3.2): it also removes, with a Remove proposal by value, the
	// leaf at *RemoveLeaf, the joiner's earlier appearance in the group,
	// as a client does that lost its state. The joiner must present the
	// same credential as that leaf (§12.2: the removed member's
	// identifiers must be acceptable for the joiner; members check this
	// unless GroupPolicy.AllowResyncWithNewIdentity), and may keep its
	// signature key.
	RemoveLeaf *LeafIndex
	// AuthenticatedData is the Commit's authenticated_data (§6).
	AuthenticatedData []byte
}

// JoinExternalWith is JoinExternal with options.
func JoinExternalWith(gi *GroupInfo, tree *RatchetTree, kp *KeyPackage, priv *KeyPackagePrivate, opts JoinExternalOptions) (*Group, *PublicMessage, error) {
	pub, err := NewPublicGroupState(gi, tree)
	if err != nil {
		return nil, nil, err
	}
	cs := pub.CipherSuite()
	if kp.CipherSuite != cs {
		return nil, nil, fmt.Errorf("mls: KeyPackage is for %v, the group uses %v", kp.CipherSuite, cs)
	}
	if err := checkOwnSupport(&kp.LeafNode, gi.GroupContext.Extensions); err != nil {
		return nil, nil, err
	}
	extPub, err := gi.ExternalPub()
	if err != nil {
		return nil, nil, err
	}
	kemOutput, initSecret, err := externalInitSender(cs, extPub)
	if err != nil {
		return nil, nil, err
	}
	oldGC := pub.GroupContext()
	t := pub.Tree()
	proposals := []ProposalOrRef{{Type: ProposalOrRefTypeProposal,
		Proposal: &Proposal{ProposalType: ProposalTypeExternalInit, ExternalInit: &ExternalInit{KEMOutput: kemOutput}}}}
	if opts.RemoveLeaf != nil {
		// §12.3: the Remove applies before the joiner takes the leftmost
		// blank leaf, which may be the one it frees.
		old := *opts.RemoveLeaf
		if t.Leaf(old) == nil {
			return nil, nil, fmt.Errorf("mls: resync external Commit: leaf %d is not a member", old)
		}
		if err := t.RemoveLeaf(old); err != nil {
			return nil, nil, err
		}
		proposals = append(proposals, ProposalOrRef{Type: ProposalOrRefTypeProposal,
			Proposal: &Proposal{ProposalType: ProposalTypeRemove, Remove: &Remove{Removed: old}}})
	}
	leaf := kp.LeafNode
	self := t.AddLeaf(&leaf)
	keys, err := NewTreePrivateKey(cs, self, priv.EncryptionPriv)
	if err != nil {
		return nil, nil, err
	}
	provisional := oldGC
	provisional.Epoch++
	template := kp.LeafNode
	path, commitSecret, err := keys.CreateUpdatePath(t, &template, priv.SignaturePriv, &provisional, nil)
	if err != nil {
		return nil, nil, err
	}
	commit := &Commit{Proposals: proposals, Path: path}
	ac := &AuthenticatedContent{
		WireFormat: WireFormatPublicMessage,
		Content: FramedContent{GroupID: oldGC.GroupID, Epoch: oldGC.Epoch,
			Sender:      Sender{SenderType: SenderTypeNewMemberCommit},
			ContentType: ContentTypeCommit, Commit: commit, AuthenticatedData: bytes.Clone(opts.AuthenticatedData)},
	}
	if err := ac.Sign(cs, priv.SignaturePriv, &oldGC); err != nil {
		return nil, nil, err
	}
	confirmed, err := ConfirmedTranscriptHash(cs, pub.InterimTranscriptHash(), ac)
	if err != nil {
		return nil, nil, err
	}
	newGC := provisional
	newGC.ConfirmedTranscriptHash = confirmed
	es, err := DeriveEpochSecrets(initSecret, commitSecret, nil, &newGC)
	if err != nil {
		return nil, nil, err
	}
	ac.Auth.ConfirmationTag = es.ConfirmationTag(confirmed)
	msg, err := ProtectPublic(ac, nil, &oldGC)
	if err != nil {
		return nil, nil, err
	}
	nextPub, effect, err := pub.HandleCommit(msg)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: own external Commit fails validation: %w", err)
	}
	if got := nextPub.GroupContext(); effect.Committer != self || !bytes.Equal(mustEncode(&got), mustEncode(&newGC)) {
		return nil, nil, errors.New("mls: internal error: own external Commit yields another state")
	}
	g, err := newGroup(nextPub, keys, es, priv.SignaturePriv, nil)
	if err != nil {
		return nil, nil, err
	}
	return g, msg, nil
}
