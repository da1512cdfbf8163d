package mls

import (
	"bytes"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// PublicGroupState is what a party without the group's secrets can track
// of a group whose handshake messages are PublicMessages: a Delivery
// Service, or a passive observer. It holds the GroupContext, the ratchet
// tree, the interim transcript hash, the proposals received in the current
// epoch (by ProposalRef), and whether a ReInit has closed the group.
//
// It checks the rules of RFC 9420 that need neither secrets nor an
// Authentication Service (§5.3.1: credentials are the application's to
// judge; lifetimes only with GroupPolicy.Now): epochs, senders,
// signatures (§6.1), LeafNode and KeyPackage validity (§7.3, §10.1), the
// proposal list rules (§12.2), the path rules (§12.4), the UpdatePath
// against the tree including parent hashes (§7.6, §7.9.2), external
// commits (§12.4.3.2), and it computes the GroupContext of the next epoch
// (tree hash and transcript hashes, §8.1, §8.2). What it cannot check,
// because it needs the epoch's secrets: the membership_tag of a
// PublicMessage (§6.2), the confirmation_tag of a Commit (§6.1), that the
// UpdatePath's ciphertexts decrypt, and that the PSKs a Commit names
// exist. Members check those when they process the message. A Commit that
// passes here but fails there is signed by its sender, so it is
// attributable, but the Delivery Service will have sequenced a Commit the
// members reject.
//
// HandleCommit never modifies its receiver: it returns the state of the
// next epoch, sharing all unchanged parts with the receiver, so keeping
// the old state costs nothing and a rejected Commit leaves no trace.
// HandleProposal adds to the receiver's proposal cache. A
// PublicGroupState is not safe for concurrent use; states returned by
// HandleCommit may be used independently of their parent.
//
// A member that receives proposals and Commits as PrivateMessages (§6.3)
// decrypts them and hands the content to HandleProposalContent and
// HandleCommitContent, which apply the same checks with the signature over
// the private_message wire format.
//
// The state keeps references into the messages given to it; do not modify
// a message after handing it over.
type PublicGroupState struct {
	gc      GroupContext
	tree    *RatchetTree
	interim []byte

	externalSenders ExternalSenders
	required        *RequiredCapabilities

	proposals map[string]*PendingProposal // by string(ProposalRef)
	order     []*PendingProposal          // arrival order

	frozen *ReInit // the committed ReInit that closed the group, if any

	// keys counts, for every encryption key of a node and every signature
	// key of a leaf, how many nodes hold it; credUse counts the leaves per
	// credential type. Both follow the tree incrementally (see
	// indexTreeChange) so that the uniqueness and credential rules of §7.3
	// cost O(log n), not O(n), per Commit.
	keys    keyIndex
	credUse map[CredentialType]int

	policy GroupPolicy
}

// GroupPolicy holds the choices RFC 9420 leaves to the application that
// a PublicGroupState applies.
type GroupPolicy struct {
	// Now, if set, gives the time against which the lifetime of
	// key_package leaves in Add proposals is checked (§7.3). If nil,
	// lifetimes are not compared with a clock.
	Now func() time.Time
	// MaxLifetime, if not zero, bounds the total lifetime of key_package
	// leaves in Add proposals (§7.2).
	MaxLifetime time.Duration
	// AllowResyncWithNewIdentity lets an external Commit remove a member
	// whose credential differs from the joiner's. By default the joiner of
	// a "resync" external Commit must present the credential of the member
	// it removes (§12.2: the identifiers must be acceptable for the removed
	// participant).
	AllowResyncWithNewIdentity bool
}

// PendingProposal is a proposal received in the current epoch and not yet
// committed.
type PendingProposal struct {
	Ref      ProposalRef
	Sender   Sender
	Proposal *Proposal
	// content is the AuthenticatedContent the proposal came in, kept to
	// store and reload the cache.
	content *AuthenticatedContent
}

// CommitEffect describes what a Commit changed.
type CommitEffect struct {
	// Committer is the leaf of the member that sent the Commit; for an
	// external Commit, the leaf the joiner got.
	Committer LeafIndex
	// External reports an external Commit (§12.4.3.2); the joiner is then
	// listed in Added, with a nil KeyPackageRef.
	External bool
	// Added lists the new members in the order of the Add proposals.
	Added []AddedMember
	// Removed lists the removed members.
	Removed []RemovedMember
	// Updated lists the members whose LeafNode an Update proposal replaced,
	// and the committer of a (non-external) Commit with a path.
	Updated []UpdatedMember
	// PathPresent reports whether the Commit carried an UpdatePath.
	PathPresent bool
	// PSKs lists the pre-shared keys the Commit injects, in order.
	PSKs []PreSharedKeyID
	// GroupContextExtensions reports whether the Commit replaced the
	// GroupContext extensions.
	GroupContextExtensions bool
	// ReInit is the committed ReInit proposal, if any; the new state is
	// then frozen.
	ReInit *ReInit
}

// AddedMember is a member added by a Commit.
type AddedMember struct {
	Leaf          LeafIndex
	KeyPackageRef KeyPackageRef // nil for the joiner of an external Commit
	Credential    Credential
	Identity      []byte // see CredentialIdentity
}

// RemovedMember is a member removed by a Commit.
type RemovedMember struct {
	Leaf       LeafIndex
	Credential Credential
	Identity   []byte
}

// UpdatedMember is a member whose LeafNode a Commit replaced.
type UpdatedMember struct {
	Leaf       LeafIndex
	Credential Credential
	Identity   []byte
}

// CredentialIdentity returns the identity a credential presents: the
// identity of a basic credential, the DER end-entity certificate of an x509
// credential. Whether it is acceptable is for the application to decide
// (§5.3.1).
func CredentialIdentity(c *Credential) []byte {
	switch c.CredentialType {
	case CredentialTypeBasic:
		return c.Identity
	case CredentialTypeX509:
		if len(c.Certificates) > 0 {
			return c.Certificates[0]
		}
	}
	return nil
}

// ErrGroupFrozen is wrapped by the error every Handle method returns once a
// Commit with a ReInit proposal has closed the group (§11.2, §12.4.2).
var ErrGroupFrozen = errors.New("mls: a committed ReInit closed this group; continue in the new group")

// EpochMismatchError is wrapped by the *ValidationError for a message sent
// in another epoch than the group's (§12.1, §12.4.2).
type EpochMismatchError struct {
	Got, Current uint64
}

func (e *EpochMismatchError) Error() string {
	return fmt.Sprintf("message is for epoch %d, the group is in epoch %d", e.Got, e.Current)
}

// NewPublicGroupState starts tracking a group from a GroupInfo and the
// group's ratchet tree (§12.4.3.1): the GroupInfo signature must verify
// with the signer's leaf, the tree hash must equal the GroupContext's,
// the tree must pass RatchetTree.Verify, and every leaf must be valid for
// the group (§7.3: capabilities cover the required capabilities, the
// GroupContext extensions and every credential type in use; leaf
// extensions are listed in capabilities). The interim transcript hash is
// computed from the GroupInfo's confirmed transcript hash and confirmation
// tag (§8.2).
//
// If tree is nil, the GroupInfo's ratchet_tree extension is used.
func NewPublicGroupState(gi *GroupInfo, tree *RatchetTree) (*PublicGroupState, error) {
	gc := &gi.GroupContext
	cs := gc.CipherSuite
	if gc.Version != ProtocolVersionMLS10 {
		return nil, invalidf("12.4.3.1", "GroupContext has protocol version %d; only mls10 (1) is supported", gc.Version)
	}
	if err := cs.check(); err != nil {
		return nil, err
	}
	if tree == nil {
		ext, ok := gi.Extensions.Find(ExtensionTypeRatchetTree)
		if !ok {
			return nil, invalid("12.4.3.3", "GroupInfo has no ratchet_tree extension and no tree was given")
		}
		t, err := UnmarshalRatchetTree(cs, ext.ExtensionData)
		if err != nil {
			return nil, err
		}
		tree = t
	}
	if tree.CipherSuite() != cs {
		return nil, invalidf("12.4.3.1", "ratchet tree uses cipher suite %d, the group %d", uint16(tree.CipherSuite()), uint16(cs))
	}
	signer := tree.Leaf(gi.Signer)
	if signer == nil {
		return nil, invalidf("12.4.3.1", "GroupInfo signer %d is not a member of the ratchet tree", gi.Signer)
	}
	if err := gi.VerifySignature(signer.SignatureKey); err != nil {
		return nil, &ValidationError{Rule: "GroupInfo signature does not verify with the signer's leaf", Section: "12.4.3.1", Err: err}
	}
	// Unknown GroupInfo extensions, GREASE ones included, are ignored
	// (§13.4, §13.5); only a type listed twice makes the list invalid.
	if t, dup := duplicateExtension(gi.Extensions); dup {
		return nil, invalidf("13.4", "GroupInfo extensions list type %d twice", uint16(t))
	}
	if len(gi.ConfirmationTag) != cs.HashSize() {
		return nil, invalidf("6.1", "GroupInfo confirmation_tag has %d bytes; a MAC of %s has %d", len(gi.ConfirmationTag), cs, cs.HashSize())
	}
	if !bytes.Equal(tree.TreeHash(), gc.TreeHash) {
		return nil, invalid("12.4.3.1", "tree hash of the ratchet tree does not match GroupContext.tree_hash")
	}
	if err := tree.Verify(gc.GroupID); err != nil {
		return nil, err
	}
	interim, err := InterimTranscriptHash(cs, gc.ConfirmedTranscriptHash, gi.ConfirmationTag)
	if err != nil {
		return nil, err
	}
	s := &PublicGroupState{
		gc:      cloneGroupContext(gc),
		tree:    tree.Clone(),
		interim: interim,
	}
	if err := s.setExtensions(s.gc.Extensions); err != nil {
		return nil, err
	}
	s.rebuildIndex()
	if err := s.checkAllLeaves(); err != nil {
		return nil, err
	}
	return s, nil
}

// SetPolicy sets the application choices the state applies from now on,
// and in every state HandleCommit derives from it.
func (s *PublicGroupState) SetPolicy(p GroupPolicy) { s.policy = p }

// GroupContext returns the GroupContext of the current epoch.
func (s *PublicGroupState) GroupContext() GroupContext { return cloneGroupContext(&s.gc) }

// Epoch returns the current epoch.
func (s *PublicGroupState) Epoch() uint64 { return s.gc.Epoch }

// CipherSuite returns the group's cipher suite.
func (s *PublicGroupState) CipherSuite() CipherSuite { return s.gc.CipherSuite }

// GroupID returns the group's ID.
func (s *PublicGroupState) GroupID() []byte { return bytes.Clone(s.gc.GroupID) }

// Tree returns the ratchet tree of the current epoch. It is a clone: changes
// to it do not affect the state.
func (s *PublicGroupState) Tree() *RatchetTree { return s.tree.Clone() }

// InterimTranscriptHash returns the interim transcript hash of the current
// epoch (§8.2), on which the next Commit's confirmed transcript hash
// builds.
func (s *PublicGroupState) InterimTranscriptHash() []byte { return bytes.Clone(s.interim) }

// PendingProposals returns the proposals received in the current epoch, in
// the order they arrived.
func (s *PublicGroupState) PendingProposals() []PendingProposal {
	out := make([]PendingProposal, len(s.order))
	for i, p := range s.order {
		out[i] = *p
		out[i].content = nil
	}
	return out
}

// ExternalSenders returns the external_senders extension of the group, if
// any (§12.1.8.1).
func (s *PublicGroupState) ExternalSenders() ExternalSenders { return slices.Clone(s.externalSenders) }

// Frozen reports whether a committed ReInit closed the group, and returns
// that ReInit (§11.2).
func (s *PublicGroupState) Frozen() (*ReInit, bool) { return s.frozen, s.frozen != nil }

func cloneGroupContext(gc *GroupContext) GroupContext {
	c := *gc
	c.GroupID = bytes.Clone(gc.GroupID)
	c.TreeHash = bytes.Clone(gc.TreeHash)
	c.ConfirmedTranscriptHash = bytes.Clone(gc.ConfirmedTranscriptHash)
	c.Extensions = slices.Clone(gc.Extensions)
	return c
}

// setExtensions installs new GroupContext extensions and decodes the ones
// the state uses.
func (s *PublicGroupState) setExtensions(es Extensions) error {
	if t, dup := duplicateExtension(es); dup {
		return invalidf("13.4", "GroupContext extensions list type %d twice", uint16(t))
	}
	req, err := requiredCapabilitiesOf(es)
	if err != nil {
		return err
	}
	var senders ExternalSenders
	if ext, ok := es.Find(ExtensionTypeExternalSenders); ok {
		if err := senders.UnmarshalBinary(ext.ExtensionData); err != nil {
			return &ValidationError{Rule: "external_senders extension is malformed", Section: "12.1.8.1", Err: err}
		}
	}
	s.gc.Extensions = es
	s.required = req
	s.externalSenders = senders
	return nil
}

// duplicateExtension reports an extension type that es lists twice (§13.4).
func duplicateExtension(es Extensions) (ExtensionType, bool) {
	for i := range es {
		for j := i + 1; j < len(es); j++ {
			if es[i].ExtensionType == es[j].ExtensionType {
				return es[i].ExtensionType, true
			}
		}
	}
	return 0, false
}

// checkAllLeaves applies to every leaf the §7.3 rules that
// RatchetTree.Verify leaves out, as a joiner does (§12.4.3.1). It runs once,
// when the state is built; afterwards every new leaf is checked as it
// enters the tree, which keeps these properties.
func (s *PublicGroupState) checkAllLeaves() error {
	for i, leaf := range s.tree.Leaves() {
		if err := s.checkLeafInGroup(leaf); err != nil {
			return fmt.Errorf("leaf %d: %w", i, err)
		}
		for t, n := range s.credUse {
			if n > 0 && !hasCredential(leaf.Capabilities.Credentials, t) {
				return invalidf("7.3", "leaf %d does not support credential type %d, which a member uses", i, uint16(t))
			}
		}
	}
	return nil
}

// checkLeafInGroup applies the rules that tie a leaf to the group's
// context: its capabilities cover its own credential type and extensions,
// the required capabilities and the GroupContext extensions (§7.2, §7.3,
// §13.4).
func (s *PublicGroupState) checkLeafInGroup(leaf *LeafNode) error {
	if !hasCredential(leaf.Capabilities.Credentials, leaf.Credential.CredentialType) {
		return invalidf("7.2", "LeafNode credential type %d is not listed in its own capabilities", uint16(leaf.Credential.CredentialType))
	}
	if t, ok := unsupportedExtension(leaf.Extensions, &leaf.Capabilities); !ok {
		return invalidf("7.3", "LeafNode carries extension type %d that its capabilities do not list", uint16(t))
	}
	if t, dup := duplicateExtension(leaf.Extensions); dup {
		return invalidf("13.4", "LeafNode extensions list type %d twice", uint16(t))
	}
	if err := checkRequiredCapabilities(s.required, &leaf.Capabilities); err != nil {
		return err
	}
	if t, ok := unsupportedExtension(s.gc.Extensions, &leaf.Capabilities); !ok {
		return invalidf("13.4", "LeafNode capabilities lack extension type %d, which is in the GroupContext", uint16(t))
	}
	return nil
}

// fork returns a copy of s for the next epoch: the tree and key index are
// persistent and shared, the small maps are copied, the proposal cache is
// empty.
func (s *PublicGroupState) fork() *PublicGroupState {
	n := &PublicGroupState{
		gc:              cloneGroupContext(&s.gc),
		tree:            s.tree.Clone(),
		interim:         s.interim,
		externalSenders: s.externalSenders,
		required:        s.required,
		proposals:       nil,
		keys:            s.keys,
		credUse:         make(map[CredentialType]int, len(s.credUse)),
		policy:          s.policy,
	}
	for t, c := range s.credUse {
		n.credUse[t] = c
	}
	return n
}

// rebuildIndex computes the key index and credential counts from the tree.
func (s *PublicGroupState) rebuildIndex() {
	s.keys = keyIndex{seed: maphash.MakeSeed()}
	s.credUse = make(map[CredentialType]int)
	walkNonBlank(s.tree.root, s.tree.rootIndex(), func(x NodeIndex, h *tnode) {
		s.indexNode(h, +1)
	})
}

// indexNode adds (delta +1) or removes (delta -1) the keys and credential
// type of node h.
func (s *PublicGroupState) indexNode(h *tnode, delta int) {
	switch {
	case h.leaf != nil:
		s.keys.add(keyKindEncryption, h.leaf.EncryptionKey, delta)
		s.keys.add(keyKindSignature, h.leaf.SignatureKey, delta)
		s.credUse[h.leaf.Credential.CredentialType] += delta
		if s.credUse[h.leaf.Credential.CredentialType] <= 0 {
			delete(s.credUse, h.leaf.Credential.CredentialType)
		}
	case h.parent != nil:
		s.keys.add(keyKindEncryption, h.parent.EncryptionKey, delta)
	}
}

// indexTreeChange brings the index from the tree old to s.tree, visiting
// only the nodes the two trees do not share.
func (s *PublicGroupState) indexTreeChange(old *RatchetTree) {
	diffTrees(old, s.tree, func(before, after *tnode) {
		if before != nil {
			s.indexNode(before, -1)
		}
		if after != nil {
			s.indexNode(after, +1)
		}
	})
}

// HandleProposal checks a proposal sent as a PublicMessage in the current
// epoch and caches it for the Commit that will reference it (§12.1). It
// checks the group and epoch, the sender (§6.1: a member's leaf, an entry
// of the external_senders extension for an external sender, the Add's own
// KeyPackage for new_member_proposal), the signature over the
// FramedContentTBS, and the validity of the proposal itself (§12.1). It
// returns the ProposalRef by which a Commit can refer to the proposal.
// Handing over the same proposal twice returns the same reference.
//
// The membership_tag of a member's message cannot be checked without the
// epoch's membership key.
func (s *PublicGroupState) HandleProposal(msg *PublicMessage) (ProposalRef, error) {
	return s.handleProposal(msg.AuthenticatedContent(), msg.MembershipTag, true)
}

// HandleProposalContent is HandleProposal for a proposal whose framing a
// member has already authenticated: the content of a PrivateMessage it
// decrypted (§6.3), or of a PublicMessage whose membership_tag it checked
// (§6.2). The signature is verified over the FramedContentTBS with ac's
// wire format (§6.1), so a proposal that came as a PrivateMessage must be
// passed with WireFormatPrivateMessage, as UnprotectPrivate returns it; its
// ProposalRef covers the wire format too (§5.2). A private_message
// proposal must come from a member (§6.3.2).
func (s *PublicGroupState) HandleProposalContent(ac *AuthenticatedContent) (ProposalRef, error) {
	return s.handleProposal(ac, nil, false)
}

// handleProposal implements HandleProposal and HandleProposalContent.
// membershipTag is the tag of a PublicMessage (checkTag), whose length
// alone can be checked here; content given already authenticated has
// none.
func (s *PublicGroupState) handleProposal(ac *AuthenticatedContent, membershipTag []byte, checkTag bool) (ProposalRef, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if err := checkContentWireFormat(ac); err != nil {
		return nil, err
	}
	fc := &ac.Content
	if err := s.checkFrame(fc, "12.1"); err != nil {
		return nil, err
	}
	if fc.ContentType != ContentTypeProposal || fc.Proposal == nil {
		return nil, invalidf("12.1", "HandleProposal needs a proposal, got content_type %d", fc.ContentType)
	}
	cs := s.gc.CipherSuite
	p := fc.Proposal
	var sigKey []byte
	var ctx *GroupContext
	switch fc.Sender.SenderType {
	case SenderTypeMember:
		leaf := s.tree.Leaf(fc.Sender.LeafIndex)
		if leaf == nil {
			return nil, invalidf("6.1", "proposal sender %d is not a member of the group", fc.Sender.LeafIndex)
		}
		if checkTag && len(membershipTag) != cs.HashSize() {
			return nil, invalidf("6.2", "membership_tag has %d bytes; a MAC of %s has %d", len(membershipTag), cs, cs.HashSize())
		}
		sigKey, ctx = leaf.SignatureKey, &s.gc
	case SenderTypeExternal:
		if fc.Sender.SenderIndex >= uint32(len(s.externalSenders)) {
			if len(s.externalSenders) == 0 {
				return nil, invalid("12.1.8", "external sender, but the group has no external_senders extension")
			}
			return nil, invalidf("12.1.8.1", "external sender index %d is outside the external_senders extension (%d entries)", fc.Sender.SenderIndex, len(s.externalSenders))
		}
		if !externalProposalAllowed(p.ProposalType) {
			return nil, invalidf("12.1.8", "an external sender may not send a proposal of type %s", p.ProposalType)
		}
		sigKey = s.externalSenders[fc.Sender.SenderIndex].SignatureKey
	case SenderTypeNewMemberProposal:
		if p.ProposalType != ProposalTypeAdd || p.Add == nil {
			return nil, invalidf("6.1", "a new_member_proposal sender may only send an Add, not %s", p.ProposalType)
		}
		sigKey = p.Add.KeyPackage.LeafNode.SignatureKey
	default:
		return nil, invalidf("6.1", "a proposal cannot come from a sender of type %d", fc.Sender.SenderType)
	}
	if err := ac.VerifySignature(cs, sigKey, ctx); err != nil {
		return nil, &ValidationError{Rule: "proposal signature does not verify with the sender's key", Section: "6.1", Err: err}
	}
	if err := s.validateStandaloneProposal(p, fc.Sender); err != nil {
		return nil, err
	}
	ref, err := ac.ProposalRef(cs)
	if err != nil {
		return nil, err
	}
	if _, dup := s.proposals[string(ref)]; dup {
		return ref, nil
	}
	pp := &PendingProposal{Ref: ref, Sender: fc.Sender, Proposal: p, content: ac}
	if s.proposals == nil {
		s.proposals = make(map[string]*PendingProposal)
	}
	s.proposals[string(ref)] = pp
	s.order = append(s.order, pp)
	return ref, nil
}

// checkContentWireFormat checks the wire format of content handed over
// already unwrapped: a handshake message is a PublicMessage or a
// PrivateMessage (§6), and only a member can send the latter (§6.3.2).
func checkContentWireFormat(ac *AuthenticatedContent) error {
	switch ac.WireFormat {
	case WireFormatPublicMessage:
	case WireFormatPrivateMessage:
		if ac.Content.Sender.SenderType != SenderTypeMember {
			return invalidf("6.3.2", "only members can send a PrivateMessage; sender_type is %d", ac.Content.Sender.SenderType)
		}
	default:
		return invalidf("6", "a proposal or commit must come as a PublicMessage or a PrivateMessage, not wire_format %d", ac.WireFormat)
	}
	return nil
}

// checkOpen refuses messages once a ReInit has been committed.
func (s *PublicGroupState) checkOpen() error {
	if s.frozen != nil {
		return &ValidationError{Rule: "the group was closed by a committed ReInit and accepts no more messages", Section: "12.4.2", Err: ErrGroupFrozen}
	}
	return nil
}

// checkFrame checks that fc belongs to this group and epoch.
func (s *PublicGroupState) checkFrame(fc *FramedContent, section string) error {
	if !bytes.Equal(fc.GroupID, s.gc.GroupID) {
		return invalid("6", "message is for another group (group_id differs)")
	}
	if fc.Epoch != s.gc.Epoch {
		return &ValidationError{Rule: "message epoch must equal the group's epoch", Section: section,
			Err: &EpochMismatchError{Got: fc.Epoch, Current: s.gc.Epoch}}
	}
	return nil
}

// externalProposalAllowed lists the proposal types an external sender may
// send (§12.1.8).
func externalProposalAllowed(t ProposalType) bool {
	switch t {
	case ProposalTypeAdd, ProposalTypeRemove, ProposalTypePSK, ProposalTypeReInit, ProposalTypeGroupContextExtensions:
		return true
	}
	return false
}

// HandleCommit checks a Commit sent as a PublicMessage in the current
// epoch and returns the state of the epoch it starts, with a summary of
// what it changed. On any error the receiver is unchanged and no new state
// is returned; on success the receiver is unchanged too and stays usable.
//
// The checks follow §12.4.2: group and epoch; the sender (a member, or
// new_member_commit for an external Commit) and the signature over the
// FramedContentTBS with the current GroupContext (§6.1); proposals by
// reference must be in the cache; the proposal list rules of §12.2 (for a
// member's Commit or an external one, §12.4.3.2), each reported as its own
// rule; the validity of each proposal (§12.1), with KeyPackages checked
// per §10.1 and new leaves per §7.3 against the tree that results from
// applying the list in the order of §12.3; the path requirement of §12.4;
// and for an UpdatePath: its leaf (source commit, §7.3), keys that differ
// from the committer's and appear nowhere in the tree (§12.4.2), one node
// per filtered direct path node with one ciphertext per resolution node
// (§7.6), and the leaf's parent_hash (§7.9.2). The new GroupContext has
// the next epoch, the new tree hash and extensions, and the confirmed
// transcript hash of §8.2; the interim transcript hash follows from the
// Commit's confirmation tag. A committed ReInit freezes the new state.
//
// The membership_tag and the confirmation_tag cannot be checked without
// the epoch's secrets; their presence and length are.
func (s *PublicGroupState) HandleCommit(msg *PublicMessage) (*PublicGroupState, *CommitEffect, error) {
	if err := s.checkOpen(); err != nil {
		return nil, nil, err
	}
	return s.applyCommit(msg.AuthenticatedContent(), msg.MembershipTag, true)
}

// HandleCommitContent is HandleCommit for a Commit whose framing a member
// has already authenticated: the content of a PrivateMessage it decrypted
// (§6.3), or of a PublicMessage whose membership_tag it checked (§6.2).
// The signature is verified, and the confirmed transcript hash computed,
// with ac's wire format (§6.1, §8.2): a Commit that came as a
// PrivateMessage must be passed with WireFormatPrivateMessage, as
// UnprotectPrivate returns it. A private_message Commit must come from a
// member (§6.3.2), so it cannot be an external Commit.
func (s *PublicGroupState) HandleCommitContent(ac *AuthenticatedContent) (*PublicGroupState, *CommitEffect, error) {
	if err := s.checkOpen(); err != nil {
		return nil, nil, err
	}
	return s.applyCommit(ac, nil, false)
}

// MarshalBinary encodes the state so that it can be stored and reloaded
// with UnmarshalPublicGroupState:
//
//	struct {
//	    uint16 format = 1;
//	    GroupContext group_context;
//	    optional<Node> ratchet_tree<V>;
//	    opaque interim_transcript_hash<V>;
//	    opaque proposals<V>;      /* AuthenticatedContent, each as opaque<V> */
//	    optional<ReInit> frozen;
//	} PublicGroupStateData;
//
// The policy is not part of it.
func (s *PublicGroupState) MarshalBinary() ([]byte, error) {
	tree, err := s.tree.MarshalBinary()
	if err != nil {
		return nil, err
	}
	b := cryptobyte.NewBuilder(nil)
	b.AddUint16(publicGroupStateFormat)
	s.gc.marshal(b)
	b.AddBytes(tree) // already a ratchet_tree vector
	addOpaque(b, s.interim)
	addVector(b, func(b *cryptobyte.Builder) {
		for _, p := range s.order {
			addVector(b, func(b *cryptobyte.Builder) { p.content.marshal(b) })
		}
	})
	addOptional(b, s.frozen != nil)
	if s.frozen != nil {
		s.frozen.marshal(b)
	}
	return b.Bytes()
}

const publicGroupStateFormat = 1

// UnmarshalPublicGroupState reloads a state stored with MarshalBinary. The
// data is trusted to come from MarshalBinary (the caller's own storage):
// the tree's hash is checked against the GroupContext, but signatures are
// not verified again.
func UnmarshalPublicGroupState(data []byte) (*PublicGroupState, error) {
	var (
		format  uint16
		gc      GroupContext
		rt      RatchetTreeExtension
		interim []byte
		props   []*AuthenticatedContent
		frozen  *ReInit
	)
	err := decode(data, "PublicGroupState", func(s *cryptobyte.String) bool {
		if !s.ReadUint16(&format) || format != publicGroupStateFormat {
			return false
		}
		if !gc.unmarshal(s) || !rt.unmarshal(s) || !readOpaque(s, &interim) {
			return false
		}
		if !readList(s, func(s *cryptobyte.String) bool {
			var v cryptobyte.String
			if !readVector(s, &v) {
				return false
			}
			ac := new(AuthenticatedContent)
			if !ac.unmarshal(&v) || !v.Empty() {
				return false
			}
			props = append(props, ac)
			return true
		}) {
			return false
		}
		var present bool
		if !readOptional(s, &present) {
			return false
		}
		if present {
			frozen = new(ReInit)
			return frozen.unmarshal(s)
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	tree, err := NewRatchetTree(gc.CipherSuite, rt.Nodes)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tree.TreeHash(), gc.TreeHash) {
		return nil, fmt.Errorf("%w: stored PublicGroupState tree does not match its tree_hash", ErrDecode)
	}
	s := &PublicGroupState{gc: gc, tree: tree, interim: interim, frozen: frozen}
	if err := s.setExtensions(gc.Extensions); err != nil {
		return nil, err
	}
	s.rebuildIndex()
	for _, ac := range props {
		if ac.Content.ContentType != ContentTypeProposal {
			return nil, fmt.Errorf("%w: stored PublicGroupState caches a non-proposal", ErrDecode)
		}
		ref, err := ac.ProposalRef(gc.CipherSuite)
		if err != nil {
			return nil, err
		}
		pp := &PendingProposal{Ref: ref, Sender: ac.Content.Sender, Proposal: ac.Content.Proposal, content: ac}
		if s.proposals == nil {
			s.proposals = make(map[string]*PendingProposal)
		}
		s.proposals[string(ref)] = pp
		s.order = append(s.order, pp)
	}
	return s, nil
}

// --- incremental indexes ---

// walkNonBlank calls f for every non-blank node under h (at index x).
func walkNonBlank(h *tnode, x NodeIndex, f func(NodeIndex, *tnode)) {
	if h == nil || h.filled == 0 {
		return
	}
	if !h.blank() {
		f(x, h)
	}
	if !x.isLeaf() {
		walkNonBlank(h.left, x.left(), f)
		walkNonBlank(h.right, x.right(), f)
	}
}

// diffTrees calls f(before, after) for every node position whose content
// differs between the trees a and b: before is a's node there (nil if
// blank or absent), after is b's. Subtrees the trees share (the same
// tnode, as RatchetTree's copy-on-write leaves them) are skipped, so the
// cost is proportional to the changed paths.
func diffTrees(a, b *RatchetTree, f func(before, after *tnode)) {
	ha, hb := a.root, b.root
	xa, xb := a.rootIndex(), b.rootIndex()
	da, db := a.depth, b.depth
	// Positions that exist in only one tree count as blank in the other.
	for db > da {
		diffNodes(nil, hb, f)
		walkNonBlank(hb.right, xb.right(), func(_ NodeIndex, h *tnode) { f(nil, h) })
		hb, xb, db = hb.left, xb.left(), db-1
	}
	for da > db {
		diffNodes(ha, nil, f)
		walkNonBlank(ha.right, xa.right(), func(_ NodeIndex, h *tnode) { f(h, nil) })
		ha, xa, da = ha.left, xa.left(), da-1
	}
	diffSubtrees(ha, hb, xa, f)
}

func diffSubtrees(a, b *tnode, x NodeIndex, f func(before, after *tnode)) {
	if a == b {
		return
	}
	diffNodes(a, b, f)
	if !x.isLeaf() {
		diffSubtrees(a.left, b.left, x.left(), f)
		diffSubtrees(a.right, b.right, x.right(), f)
	}
}

// diffNodes reports the content change of one node position.
func diffNodes(a, b *tnode, f func(before, after *tnode)) {
	var before, after *tnode
	if a != nil && !a.blank() {
		before = a
	}
	if b != nil && !b.blank() {
		after = b
	}
	if before == nil && after == nil {
		return
	}
	if before != nil && after != nil && sameIndexedContent(before, after) {
		return
	}
	f(before, after)
}

// sameIndexedContent reports whether two nodes hold the same keys and
// credential type, as a parent node whose unmerged_leaves an Add changed
// does.
func sameIndexedContent(a, b *tnode) bool {
	switch {
	case a.leaf != nil && b.leaf != nil:
		return a.leaf == b.leaf || bytes.Equal(a.leaf.EncryptionKey, b.leaf.EncryptionKey) &&
			bytes.Equal(a.leaf.SignatureKey, b.leaf.SignatureKey) &&
			a.leaf.Credential.CredentialType == b.leaf.Credential.CredentialType
	case a.parent != nil && b.parent != nil:
		return a.parent == b.parent || bytes.Equal(a.parent.EncryptionKey, b.parent.EncryptionKey)
	}
	return false
}

// Key kinds of the keyIndex: the same bytes may be an encryption key and a
// signature key without conflict.
const (
	keyKindEncryption byte = 'e'
	keyKindSignature  byte = 's'
)

// keyIndex is a persistent hash trie from keys to counts: add copies the
// O(log n) nodes on one path, and a copy of the keyIndex value keeps the
// old contents. It lets every epoch's state share the index of its parent.
type keyIndex struct {
	root *kiNode
	seed maphash.Seed
}

type kiNode struct {
	kids    []*kiNode // 16 children, for an inner node
	entries []kiEntry // for a bucket node
}

type kiEntry struct {
	hash uint64
	key  string // kind byte followed by the key
	n    int
}

const (
	kiBits   = 4
	kiFanout = 1 << kiBits
	kiBucket = 8
)

func (ix *keyIndex) hash(kind byte, key []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(ix.seed)
	h.WriteByte(kind)
	h.Write(key)
	return h.Sum64()
}

func kiMatch(e *kiEntry, h uint64, kind byte, key []byte) bool {
	return e.hash == h && len(e.key) == len(key)+1 && e.key[0] == kind && e.key[1:] == string(key)
}

// count returns how many nodes hold key.
func (ix *keyIndex) count(kind byte, key []byte) int {
	h := ix.hash(kind, key)
	n := ix.root
	for shift := uint(0); n != nil; shift += kiBits {
		if n.kids == nil {
			for i := range n.entries {
				if kiMatch(&n.entries[i], h, kind, key) {
					return n.entries[i].n
				}
			}
			return 0
		}
		n = n.kids[(h>>shift)&(kiFanout-1)]
	}
	return 0
}

// add changes the count of key by delta.
func (ix *keyIndex) add(kind byte, key []byte, delta int) {
	h := ix.hash(kind, key)
	ix.root = kiAdd(ix.root, h, kind, key, delta, 0)
}

func kiAdd(n *kiNode, h uint64, kind byte, key []byte, delta int, shift uint) *kiNode {
	if n == nil {
		if delta <= 0 {
			return nil
		}
		return &kiNode{entries: []kiEntry{{hash: h, key: string(kind) + string(key), n: delta}}}
	}
	if n.kids != nil {
		c := &kiNode{kids: slices.Clone(n.kids)}
		i := (h >> shift) & (kiFanout - 1)
		c.kids[i] = kiAdd(n.kids[i], h, kind, key, delta, shift+kiBits)
		return c
	}
	entries := make([]kiEntry, 0, len(n.entries)+1)
	found := false
	for _, e := range n.entries {
		if !found && kiMatch(&e, h, kind, key) {
			found = true
			e.n += delta
			if e.n <= 0 {
				continue
			}
		}
		entries = append(entries, e)
	}
	if !found && delta > 0 {
		entries = append(entries, kiEntry{hash: h, key: string(kind) + string(key), n: delta})
	}
	if len(entries) == 0 {
		return nil
	}
	if len(entries) <= kiBucket || shift+kiBits > 64 {
		return &kiNode{entries: entries}
	}
	// Split the bucket into an inner node.
	c := &kiNode{kids: make([]*kiNode, kiFanout)}
	for _, e := range entries {
		i := (e.hash >> shift) & (kiFanout - 1)
		c.kids[i] = kiInsertEntry(c.kids[i], e, shift+kiBits)
	}
	return c
}

// kiInsertEntry adds an entry known to be absent, splitting as needed.
// Nodes it is given were created by the caller and may be modified.
func kiInsertEntry(n *kiNode, e kiEntry, shift uint) *kiNode {
	if n == nil {
		return &kiNode{entries: []kiEntry{e}}
	}
	if n.kids != nil {
		i := (e.hash >> shift) & (kiFanout - 1)
		n.kids[i] = kiInsertEntry(n.kids[i], e, shift+kiBits)
		return n
	}
	n.entries = append(n.entries, e)
	if len(n.entries) <= kiBucket || shift+kiBits > 64 {
		return n
	}
	c := &kiNode{kids: make([]*kiNode, kiFanout)}
	for _, x := range n.entries {
		i := (x.hash >> shift) & (kiFanout - 1)
		c.kids[i] = kiInsertEntry(c.kids[i], x, shift+kiBits)
	}
	return c
}

// --- member views for the §7.3 rules ---

// stateMembers answers the memberSet questions from a state's tree and
// indexes. credUseBefore are the credential counts of the epoch before the
// change being validated: every member of that epoch supports each of
// those types (the invariant the §7.3 rules keep), so a leaf using one of
// them needs no scan.
type stateMembers struct {
	s             *PublicGroupState
	credUseBefore map[CredentialType]int
}

func (m *stateMembers) selfLeaf(self LeafIndex, hasSelf bool) *LeafNode {
	if !hasSelf {
		return nil
	}
	return m.s.tree.Leaf(self)
}

func (m *stateMembers) encryptionKeyUsedElsewhere(key []byte, self LeafIndex, hasSelf bool) bool {
	n := m.s.keys.count(keyKindEncryption, key)
	if l := m.selfLeaf(self, hasSelf); l != nil && bytes.Equal(l.EncryptionKey, key) {
		n--
	}
	return n > 0
}

func (m *stateMembers) signatureKeyUsedElsewhere(key []byte, self LeafIndex, hasSelf bool) bool {
	n := m.s.keys.count(keyKindSignature, key)
	if l := m.selfLeaf(self, hasSelf); l != nil && bytes.Equal(l.SignatureKey, key) {
		n--
	}
	return n > 0
}

func (m *stateMembers) credentialSupportedByOthers(ct CredentialType, self LeafIndex, hasSelf bool) bool {
	if m.credUseBefore[ct] > 0 {
		// Every earlier member supports ct; members new in this epoch are
		// checked to support every type in use, ct included.
		return true
	}
	return othersSupportCredential(m.s.tree, ct, self, hasSelf)
}

func (m *stateMembers) credentialTypesOfOthers(self LeafIndex, hasSelf bool) []CredentialType {
	var own CredentialType
	if l := m.selfLeaf(self, hasSelf); l != nil {
		own = l.Credential.CredentialType
	}
	var out []CredentialType
	for t, n := range m.s.credUse {
		if t == own {
			n--
		}
		if n > 0 {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out
}

// treeMembers answers the memberSet questions by scanning a tree; it is
// what ValidateLeafNode uses for a tree given by the caller.
type treeMembers struct {
	tree *RatchetTree
	enc  map[string]int
	sig  map[string]int
	cred map[CredentialType]int
}

func newTreeMembers(t *RatchetTree) *treeMembers {
	m := &treeMembers{tree: t, enc: map[string]int{}, sig: map[string]int{}, cred: map[CredentialType]int{}}
	walkNonBlank(t.root, t.rootIndex(), func(_ NodeIndex, h *tnode) {
		switch {
		case h.leaf != nil:
			m.enc[string(h.leaf.EncryptionKey)]++
			m.sig[string(h.leaf.SignatureKey)]++
			m.cred[h.leaf.Credential.CredentialType]++
		case h.parent != nil:
			m.enc[string(h.parent.EncryptionKey)]++
		}
	})
	return m
}

func (m *treeMembers) selfLeaf(self LeafIndex, hasSelf bool) *LeafNode {
	if !hasSelf {
		return nil
	}
	return m.tree.Leaf(self)
}

func (m *treeMembers) encryptionKeyUsedElsewhere(key []byte, self LeafIndex, hasSelf bool) bool {
	n := m.enc[string(key)]
	if l := m.selfLeaf(self, hasSelf); l != nil && bytes.Equal(l.EncryptionKey, key) {
		n--
	}
	return n > 0
}

func (m *treeMembers) signatureKeyUsedElsewhere(key []byte, self LeafIndex, hasSelf bool) bool {
	n := m.sig[string(key)]
	if l := m.selfLeaf(self, hasSelf); l != nil && bytes.Equal(l.SignatureKey, key) {
		n--
	}
	return n > 0
}

func (m *treeMembers) credentialSupportedByOthers(ct CredentialType, self LeafIndex, hasSelf bool) bool {
	return othersSupportCredential(m.tree, ct, self, hasSelf)
}

// othersSupportCredential reports whether every member of tree other than
// self (when hasSelf) lists credential type ct in its capabilities (§7.3).
func othersSupportCredential(tree *RatchetTree, ct CredentialType, self LeafIndex, hasSelf bool) bool {
	for i, leaf := range tree.Leaves() {
		if hasSelf && i == self {
			continue
		}
		if !hasCredential(leaf.Capabilities.Credentials, ct) {
			return false
		}
	}
	return true
}

func (m *treeMembers) credentialTypesOfOthers(self LeafIndex, hasSelf bool) []CredentialType {
	var own CredentialType
	if l := m.selfLeaf(self, hasSelf); l != nil {
		own = l.Credential.CredentialType
	}
	var out []CredentialType
	for t, n := range m.cred {
		if t == own {
			n--
		}
		if n > 0 {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out
}
