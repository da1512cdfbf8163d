package mls

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
)

// This file is the single entry point for what a member receives, and the
// processing of proposals and Commits sent as PrivateMessages (§6.3):
// decrypted with the handshake ratchet of the sender, then validated as
// PublicMessages are, with the signature over the private_message wire
// format (§6.1) and no membership tag.

// Processed describes a message that Group.Process handled.
type Processed struct {
	// WireFormat is WireFormatPublicMessage or WireFormatPrivateMessage.
	WireFormat WireFormat
	// ContentType says which of ApplicationData, Proposal and Commit is
	// set.
	ContentType ContentType
	// Epoch is the epoch the message was sent in: for an application
	// message, possibly a past epoch (see SetPastEpochs); for a Commit,
	// the epoch it ended.
	Epoch uint64
	// Sender is the sender of the message. For a member (SenderTypeMember)
	// Sender.LeafIndex is its leaf in the epoch of the message; for an
	// external Commit (SenderTypeNewMemberCommit) the joiner's leaf is
	// Commit.Committer.
	Sender Sender
	// AuthenticatedData is the message's authenticated_data (§6).
	AuthenticatedData []byte

	// ApplicationData is the plaintext of an application message.
	ApplicationData []byte
	// ProposalRef and Proposal are set for a proposal, now kept for a
	// Commit that refers to it.
	ProposalRef ProposalRef
	Proposal    *Proposal
	// Commit is what a Commit changed; the group is now in the epoch it
	// started (or, if it removed this member, unusable: ErrNotMember).
	Commit *CommitEffect
}

// Process handles a message received for the group, whatever its wire
// format and content:
//
//   - an application message (a PrivateMessage, §6.3) of the current
//     epoch or of a past epoch the member keeps, as Open does;
//   - a proposal, as a PublicMessage (as HandleProposal does) or as a
//     PrivateMessage (decrypted, then the same checks, §12.1);
//   - a Commit, as a PublicMessage (as HandleCommit does) or as a
//     PrivateMessage (decrypted, then the same processing, §12.4.2),
//     including this member's own pending Commit coming back from the
//     Delivery Service, which is merged.
//
// The member's own proposals sent as PrivateMessages are recognized when
// they come back (the member cannot decrypt them: their key was deleted
// once used, §9.2). Other wire formats (Welcome, GroupInfo, KeyPackage)
// are not messages of the group and give an error. On error, the group is
// unchanged, except that a PrivateMessage that decrypted but failed later
// checks has used up its key.
func (g *Group) Process(m *MLSMessage) (*Processed, error) {
	if m == nil {
		return nil, errors.New("mls: Process of a nil message")
	}
	switch {
	case m.WireFormat == WireFormatPublicMessage && m.PublicMessage != nil:
		return g.processPublic(m.PublicMessage)
	case m.WireFormat == WireFormatPrivateMessage && m.PrivateMessage != nil:
		return g.processPrivate(m.PrivateMessage)
	case knownWireFormat(m.WireFormat) && m.body() != nil:
		return nil, fmt.Errorf("mls: Process handles PublicMessage and PrivateMessage; a %s is not a message of the group (use JoinGroup, JoinExternal or NewPublicGroupState)", wireFormatNames[m.WireFormat])
	}
	return nil, fmt.Errorf("mls: Process of an MLSMessage whose wire_format %d does not match its content", m.WireFormat)
}

func (g *Group) processPublic(pm *PublicMessage) (*Processed, error) {
	fc := &pm.Content
	out := &Processed{WireFormat: WireFormatPublicMessage, ContentType: fc.ContentType, Epoch: fc.Epoch,
		Sender: fc.Sender, AuthenticatedData: slices.Clone(fc.AuthenticatedData)}
	switch fc.ContentType {
	case ContentTypeProposal:
		ref, err := g.HandleProposal(pm)
		if err != nil {
			return nil, err
		}
		out.ProposalRef, out.Proposal = ref, fc.Proposal
	case ContentTypeCommit:
		effect, err := g.HandleCommit(pm)
		if err != nil {
			return nil, err
		}
		out.Commit = effect
	default:
		return nil, invalid("6", "application messages must be sent as PrivateMessage, not PublicMessage")
	}
	return out, nil
}

func (g *Group) processPrivate(m *PrivateMessage) (*Processed, error) {
	if m.ContentType == ContentTypeApplication {
		ac, err := g.openApplication(m)
		if err != nil {
			return nil, err
		}
		fc := &ac.Content
		return &Processed{WireFormat: WireFormatPrivateMessage, ContentType: ContentTypeApplication, Epoch: fc.Epoch,
			Sender: fc.Sender, AuthenticatedData: slices.Clone(fc.AuthenticatedData), ApplicationData: slices.Clone(fc.Application)}, nil
	}
	return g.handlePrivateHandshake(m)
}

// handlePrivateHandshake processes a proposal or Commit sent as a
// PrivateMessage in the current epoch (§6.3, §12.1, §12.4.2).
func (g *Group) handlePrivateHandshake(m *PrivateMessage) (*Processed, error) {
	if err := g.checkActive(); err != nil {
		return nil, err
	}
	gc := &g.pub.gc
	if !bytes.Equal(m.GroupID, gc.GroupID) {
		return nil, invalid("6", "message is for another group (group_id differs)")
	}
	section := "12.1"
	if m.ContentType == ContentTypeCommit {
		section = "12.4.2"
	}
	if m.Epoch != gc.Epoch {
		return nil, &ValidationError{Rule: "message epoch must equal the group's epoch", Section: section,
			Err: &EpochMismatchError{Got: m.Epoch, Current: gc.Epoch}}
	}
	if err := g.pub.checkOpen(); err != nil {
		return nil, err
	}
	self := Sender{SenderType: SenderTypeMember, LeafIndex: g.keys.Self()}
	wire := mustEncode(m)
	// This member's own messages, echoed by the Delivery Service.
	if m.ContentType == ContentTypeCommit && g.pending != nil && bytes.Equal(wire, g.pending.wire) {
		effect, err := g.ownCommit(wire)
		if err != nil {
			return nil, err
		}
		return &Processed{WireFormat: WireFormatPrivateMessage, ContentType: ContentTypeCommit, Epoch: m.Epoch,
			Sender: self, AuthenticatedData: slices.Clone(m.AuthenticatedData), Commit: effect}, nil
	}
	if m.ContentType == ContentTypeProposal {
		if ref, ok := g.sentPrivate[string(gc.CipherSuite.Hash(wire))]; ok {
			out := &Processed{WireFormat: WireFormatPrivateMessage, ContentType: ContentTypeProposal, Epoch: m.Epoch,
				Sender: self, AuthenticatedData: slices.Clone(m.AuthenticatedData), ProposalRef: ref}
			for _, pp := range g.pub.PendingProposals() {
				if bytes.Equal(pp.Ref, ref) {
					out.Proposal = pp.Proposal
				}
			}
			return out, nil
		}
	}

	tree := g.pub.tree
	// The handshake ratchet moves only once the content was accepted, its
	// signature first (§15.3): see unprotectPrivate.
	ac, lease, err := unprotectPrivate(m, g.es.SenderDataSecret, g.st, func(i LeafIndex) bool { return tree.Leaf(i) != nil })
	if err != nil {
		return nil, err
	}
	accepted := false
	defer func() {
		if accepted {
			lease.commit()
		} else {
			lease.discard()
		}
	}()
	fc := &ac.Content
	if fc.Sender == self {
		return nil, errors.New("mls: a PrivateMessage from this member's leaf that it did not send")
	}
	out := &Processed{WireFormat: WireFormatPrivateMessage, ContentType: fc.ContentType, Epoch: fc.Epoch,
		Sender: fc.Sender, AuthenticatedData: slices.Clone(fc.AuthenticatedData)}
	switch fc.ContentType {
	case ContentTypeProposal:
		ref, err := g.pub.HandleProposalContent(ac)
		if err != nil {
			return nil, err
		}
		out.ProposalRef, out.Proposal = ref, fc.Proposal
	case ContentTypeCommit:
		nextPub, effect, err := g.pub.HandleCommitContent(ac)
		if err != nil {
			return nil, err
		}
		if out.Commit, err = g.followCommit(ac, nextPub, effect); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("mls: PrivateMessage of unexpected content_type %d", fc.ContentType)
	}
	accepted = true
	return out, nil
}

// SetHandshakeWireFormat chooses how this member sends its proposals and
// Commits (§6): WireFormatPublicMessage, the default, which a Delivery
// Service can validate, or WireFormatPrivateMessage, which hides them
// from it (§6.3). The choice is kept by MarshalBinary and across epochs.
// Receiving works in both formats whatever the choice.
func (g *Group) SetHandshakeWireFormat(wf WireFormat) error {
	if wf != WireFormatPublicMessage && wf != WireFormatPrivateMessage {
		return fmt.Errorf("mls: proposals and Commits are sent as PublicMessage (%d) or PrivateMessage (%d), not wire_format %d",
			WireFormatPublicMessage, WireFormatPrivateMessage, wf)
	}
	g.handshake = wf
	return nil
}

// HandshakeWireFormat returns the wire format in which the member sends
// its proposals and Commits.
func (g *Group) HandshakeWireFormat() WireFormat { return g.handshake }
