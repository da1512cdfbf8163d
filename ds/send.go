package ds

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/mlsds/mlsds/mls"
)

// maxStateRetries bounds how often a submission is validated again when
// the group's state changed between validation and commit (concurrent
// Proposals in a transparent group).
const maxStateRetries = 16

// Send submits one MLSMessage (a PublicMessage or PrivateMessage holding
// an application message, a Proposal or a Commit) to its group.
//
// A Commit is accepted if and only if its epoch is the group's current
// epoch; then the group moves to the next epoch. Otherwise it fails with
// *WrongEpochError, which says where to fetch from. Proposals must be for
// the current epoch too; application messages may be up to
// Config.AppMessageEpochWindow epochs old (else *StaleEpochError).
//
// Transparent groups: Proposals and Commits must be PublicMessages; they
// are verified against the tracked group state, and the sender's leaf must
// carry the sender's client id. Application messages must be
// PrivateMessages, from a member. Opaque groups: any message from a
// member, ordered by its clear header.
//
// Only members may send, except that a transparent group takes external
// Commits and new_member Proposals from the clients Config.ExternalJoin
// admits (see SendWithJoinToken). Anyone else gets ErrNotMember, checked
// before anything else about the group, whether it exists or not.
//
// Submitting the same bytes again returns the first receipt and changes
// nothing. Commits must come with SendCommitBundle: a transparent group's
// with the GroupInfo of the new epoch, an opaque group's with the remote
// tree of the new epoch.
func (s *Service) Send(ctx context.Context, sender string, msg []byte) (Receipt, error) {
	return s.submit(ctx, sender, msg, nil, "")
}

// SendWithJoinToken is Send for a new_member_proposal Add by a client that
// holds a join link's token (see CreateJoinLink).
func (s *Service) SendWithJoinToken(ctx context.Context, sender string, msg []byte, joinToken string) (Receipt, error) {
	return s.submit(ctx, sender, msg, nil, joinToken)
}

// SendCommitBundle submits a Commit together with an optional Welcome for
// the members it adds and a GroupInfo of the new epoch; all are accepted
// or refused as one.
//
// The Welcome is routed by the KeyPackageRefs it names to the clients
// whose KeyPackages they are, once the Commit is accepted, and those
// KeyPackages are marked used. In a transparent group every KeyPackage it
// names must be added by the Commit, and the GroupInfo is required: it
// must be signed by a member, carry the GroupContext of the new epoch and
// the Commit's confirmation_tag, and have an external_pub, so that the
// GroupInfo the Service serves always lets members resync. In an opaque
// group the roster change is the one the Commit declares in its
// authenticated_data (RosterChange, roster_ad.go; b.Added and b.Removed,
// if given, must be the same lists), every joiner of the Welcome must be
// declared added, every other client declared added must be a former
// member (restored), and b.RemoteTree, the new epoch's encrypted GroupInfo
// and tree, is required. b.JoinToken admits an external Commit of a client
// that holds a join link's token.
func (s *Service) SendCommitBundle(ctx context.Context, sender string, b CommitBundle) (Receipt, error) {
	return s.submit(ctx, sender, b.Commit, &b, b.JoinToken)
}

// submission is a message being accepted, with what was learnt of it.
type submission struct {
	sender string
	data   []byte
	msg    *mls.MLSMessage
	bundle *CommitBundle // nil for Send

	joinToken string // a join link's token, for an external join

	groupID []byte
	epoch   uint64
	ct      mls.ContentType
	wf      mls.WireFormat
	hash    []byte

	// state is the group's state, for a transparent group's handshake
	// message: locked by prepare until settleState.
	state *groupState
}

// keyPackagesByRef returns the stored KeyPackages of refs, by ref.
func (s *Service) keyPackagesByRef(ctx context.Context, refs [][]byte) (map[string]KeyPackageRecord, error) {
	recs, err := s.store.KeyPackagesByRef(ctx, refs)
	if err != nil {
		return nil, err
	}
	byRef := make(map[string]KeyPackageRecord, len(recs))
	for _, r := range recs {
		byRef[string(r.Ref)] = r
	}
	return byRef, nil
}

// checkSizes refuses a message, or a Commit's Welcome or GroupInfo, of
// more than Config.MaxMessageSize bytes.
func (s *Service) checkSizes(data []byte, b *CommitBundle) error {
	sizes := []int{len(data)}
	if b != nil {
		sizes = append(sizes, len(b.Welcome), len(b.GroupInfo))
	}
	for _, n := range sizes {
		if n > s.cfg.MaxMessageSize {
			return &TooLargeError{Limit: s.cfg.MaxMessageSize, What: "message bytes"}
		}
	}
	return nil
}

func (s *Service) submit(ctx context.Context, sender string, data []byte, b *CommitBundle, joinToken string) (Receipt, error) {
	sub, err := s.admit(sender, data, b)
	if err != nil {
		return Receipt{}, err
	}
	sub.joinToken = joinToken
	return s.submitParsed(ctx, sub)
}

// admit applies the checks every submission passes before anything is
// read: the sender's rate, the sizes, and that data parses.
func (s *Service) admit(sender string, data []byte, b *CommitBundle) (*submission, error) {
	if err := s.allow(sender); err != nil {
		return nil, err
	}
	if err := s.checkSizes(data, b); err != nil {
		return nil, err
	}
	return parseSubmission(sender, data, b)
}

// SendQueued is Send for a stream of messages from one sender: it returns
// as soon as the message is queued for the store, and wait then returns
// what Send would have. Messages queued one after the other are stored in
// that order. An application PrivateMessage is checked and queued without
// waiting for the messages before it; any other message is handled in full
// (it must see the group as the messages before it left it) before
// SendQueued returns.
func (s *Service) SendQueued(ctx context.Context, sender string, msg []byte) (wait func() (Receipt, error)) {
	done := func(r Receipt, err error) func() (Receipt, error) {
		return func() (Receipt, error) { return r, err }
	}
	sub, err := s.admit(sender, msg, nil)
	if err != nil {
		return done(Receipt{}, err)
	}
	if !sub.isPrivateApplication() || s.batcher == nil {
		return done(s.submitParsed(ctx, sub))
	}
	charge, err := s.meter.reserve(ctx, sender, submittedBytes(msg, nil))
	if err != nil {
		return done(Receipt{}, err)
	}
	p, notify := s.prepareApplication(sub)
	r, err := s.batcher.enqueue(ctx, p, notify, s.fan)
	if err != nil {
		charge.release()
		return done(Receipt{}, err)
	}
	return func() (Receipt, error) {
		defer charge.release()
		res, err := s.batcher.wait(ctx, r)
		if errors.Is(err, ErrStateConflict) {
			// Not expected of an application message; take the whole
			// path, which retries.
			return s.submitParsed(ctx, sub)
		}
		rc, err := s.accepted(ctx, sub, res, err)
		if err == nil && !res.Duplicate {
			charge.keep()
		}
		return rc, err
	}
}

// submitParsed is the rest of submit, once admit passed.
func (s *Service) submitParsed(ctx context.Context, sub *submission) (Receipt, error) {
	// An application message goes straight to the store, which answers a
	// resubmission with the first receipt before any other check; other
	// messages are looked up first, since prepare would refuse one whose
	// epoch has passed.
	if !sub.isPrivateApplication() {
		if r, err := s.store.MessageByHash(ctx, sub.groupID, sub.hash); err == nil {
			return s.resubmitted(ctx, sub, r)
		} else if !isNotFound(err) {
			return Receipt{}, err
		}
	}
	// The daily byte quota: reserved now, kept once accepted (quota.go).
	charge, err := s.meter.reserve(ctx, sub.sender, submittedBytes(sub.data, sub.bundle))
	if err != nil {
		return Receipt{}, err
	}
	defer charge.release()
	for range maxStateRetries {
		p, notify, err := s.prepare(ctx, sub)
		if err != nil {
			return Receipt{}, err
		}
		res, err := s.acceptMessage(ctx, p, notify)
		s.settleState(sub, res, err)
		if errors.Is(err, ErrStateConflict) {
			continue
		}
		r, err := s.accepted(ctx, sub, res, err)
		if err == nil && !res.Duplicate {
			charge.keep()
		}
		return r, err
	}
	return Receipt{}, &RateLimitedError{RetryAfter: 100 * time.Millisecond, What: "group state changing too fast"}
}

// accepted turns the store's outcome for sub into Send's answer.
func (s *Service) accepted(ctx context.Context, sub *submission, res AcceptResult, err error) (Receipt, error) {
	if errors.Is(err, ErrNotMember) || isNotFound(err) {
		// The store found no such group, or the sender is not a
		// member: one answer for both.
		return Receipt{}, notMember(sub.sender, sub.groupID)
	}
	if err != nil {
		return Receipt{}, err
	}
	if res.Duplicate {
		return s.resubmitted(ctx, sub, res.Receipt)
	}
	return res.Receipt, nil
}

// resubmitted answers a message the group already holds with its first
// receipt, but only to a client that may know of it: one whose membership
// covers the message, or who joined by it. Anyone else replaying bytes it
// picked up somewhere learns nothing about the group's sequence.
func (s *Service) resubmitted(ctx context.Context, sub *submission, r Receipt) (Receipt, error) {
	ws, err := s.store.Memberships(ctx, sub.groupID, sub.sender)
	if err != nil {
		return Receipt{}, err
	}
	for _, w := range ws {
		if w.FromSeq <= r.GroupSeq+1 && (w.Open() || r.GroupSeq <= w.UntilSeq) {
			return r, nil
		}
	}
	return Receipt{}, notMember(sub.sender, sub.groupID)
}

// acceptParams is what every submission stores: the message and its
// clear header, accepted now.
func (s *Service) acceptParams(sub *submission) AcceptParams {
	return AcceptParams{
		GroupID:     bytes.Clone(sub.groupID),
		Hash:        sub.hash,
		Epoch:       sub.epoch,
		ContentType: sub.ct,
		WireFormat:  sub.wf,
		Sender:      sub.sender,
		Data:        sub.data,
		AcceptedAt:  s.now(),
	}
}

// parseSubmission decodes the message and reads its clear header.
func parseSubmission(sender string, data []byte, b *CommitBundle) (*submission, error) {
	m, err := mls.ParseMLSMessage(data)
	if err != nil {
		return nil, invalidMessage("", err)
	}
	sub := &submission{sender: sender, data: data, msg: m, bundle: b, wf: m.WireFormat}
	switch m.WireFormat {
	case mls.WireFormatPublicMessage:
		fc := &m.PublicMessage.Content
		sub.groupID, sub.epoch, sub.ct = fc.GroupID, fc.Epoch, fc.ContentType
	case mls.WireFormatPrivateMessage:
		pm := m.PrivateMessage
		sub.groupID, sub.epoch, sub.ct = pm.GroupID, pm.Epoch, pm.ContentType
	default:
		return nil, invalidf("6", "a group message must be a PublicMessage or PrivateMessage, not wire format %d; Welcomes travel in a commit bundle, KeyPackages go to the directory", m.WireFormat)
	}
	if len(sub.groupID) == 0 {
		return nil, invalidf("6", "the message has an empty group_id")
	}
	if b != nil && sub.ct != mls.ContentTypeCommit {
		return nil, invalidf("12.4", "a commit bundle must carry a Commit, not content type %d", sub.ct)
	}
	h := sha256.Sum256(data)
	sub.hash = h[:]
	return sub, nil
}

// prepare validates a submission against the group as it is now and
// returns what to store, and the topics to notify once it is stored.
func (s *Service) prepare(ctx context.Context, sub *submission) (AcceptParams, []string, error) {
	if sub.isPrivateApplication() {
		p, notify := s.prepareApplication(sub)
		return p, notify, nil
	}
	// Membership first: an outsider learns nothing of the group, not even
	// whether it exists or its epoch.
	head, err := s.store.Group(ctx, sub.groupID)
	if isNotFound(err) {
		return AcceptParams{}, nil, notMember(sub.sender, sub.groupID)
	} else if err != nil {
		return AcceptParams{}, nil, err
	}
	member, err := s.isMember(ctx, head.ID, sub.sender)
	if err != nil {
		return AcceptParams{}, nil, err
	}
	if !member {
		ok := false
		if sub.isExternalJoin() {
			if ok, err = s.mayJoin(ctx, head, sub.sender, sub.joinToken); err != nil {
				return AcceptParams{}, nil, err
			}
		}
		if !ok {
			return AcceptParams{}, nil, notMember(sub.sender, sub.groupID)
		}
	}
	p := s.acceptParams(sub)
	if sub.ct == mls.ContentTypeApplication {
		p.MaxEpochLag = s.cfg.AppMessageEpochWindow
	}
	// The store checks the epoch again under its transaction; checking now
	// spares the validation of a message that cannot be accepted.
	if err := CheckEpoch(p, head.Epoch, head.EpochStartSeq); err != nil {
		return AcceptParams{}, nil, err
	}
	switch head.Mode {
	case ModeTransparent:
		err = s.prepareTransparent(ctx, head, sub, &p)
	case ModeOpaque:
		err = s.prepareOpaque(ctx, head, sub, &p)
	default:
		err = fmt.Errorf("ds: group %x has unknown mode %d", head.ID, head.Mode)
	}
	if err != nil {
		return AcceptParams{}, nil, err
	}
	notify := []string{GroupTopic(sub.groupID)}
	for _, c := range p.Added {
		notify = append(notify, ClientTopic(c))
	}
	for _, c := range p.Removed {
		notify = append(notify, ClientTopic(c))
	}
	for _, w := range p.WelcomeTo {
		notify = append(notify, ClientTopic(w.ClientID))
	}
	return p, notify, nil
}

func (s *Service) prepareTransparent(ctx context.Context, head GroupRecord, sub *submission, p *AcceptParams) error {
	if sub.wf == mls.WireFormatPrivateMessage {
		if sub.ct != mls.ContentTypeApplication {
			return invalidf("", "this group is transparent: Proposals and Commits must be PublicMessages so that the Delivery Service can verify them (create an opaque group to encrypt them)")
		}
		p.RequireMember = true
		return nil
	}
	if sub.ct == mls.ContentTypeApplication {
		return invalidf("6", "application messages must be PrivateMessages")
	}
	e, head, err := s.lockStateHead(ctx, head)
	if err != nil {
		return err
	}
	// The state stays locked until the store has answered (settleState),
	// unless validation fails here. The head may be newer than the one
	// prepare checked the epoch with.
	err = CheckEpoch(*p, head.Epoch, head.EpochStartSeq)
	if err == nil {
		err = s.validateHandshake(ctx, e, head, sub, p)
	}
	if err != nil {
		e.pending = nil
		s.releaseState(e)
		return err
	}
	sub.state = e
	return nil
}

// validateHandshake checks a transparent group's Proposal or Commit against
// the group's state e (locked) and fills in p, leaving in e.pending the
// change the message makes once stored. It changes e.st only when it
// succeeds for a Proposal (HandleProposal caches the Proposal in it).
func (s *Service) validateHandshake(ctx context.Context, e *groupState, head GroupRecord, sub *submission, p *AcceptParams) error {
	pm := sub.msg.PublicMessage
	fc := &pm.Content
	st := e.st
	tree := st.Tree()
	switch fc.Sender.SenderType {
	case mls.SenderTypeMember:
		leaf := tree.Leaf(fc.Sender.LeafIndex)
		if leaf == nil {
			return invalidf("6.1", "the sender's leaf %d is not a member of the group", fc.Sender.LeafIndex)
		}
		if id, err := credentialClientID(&leaf.Credential); err != nil || id != sub.sender {
			return fmt.Errorf("%w: leaf %d does not belong to %q; a member may only send as its own leaf",
				ErrPermissionDenied, fc.Sender.LeafIndex, sub.sender)
		}
		p.RequireMember = true
	case mls.SenderTypeNewMemberProposal:
		if fc.Proposal == nil || fc.Proposal.Add == nil {
			return invalidf("6.1", "a new_member_proposal sender may only send an Add")
		}
		if id, err := credentialClientID(&fc.Proposal.Add.KeyPackage.LeafNode.Credential); err != nil || id != sub.sender {
			return fmt.Errorf("%w: a client may only propose to add itself", ErrPermissionDenied)
		}
	case mls.SenderTypeNewMemberCommit:
		// Checked below: the joiner must be the sender.
	default:
		return fmt.Errorf("%w: messages from external senders (§12.1.8) are not accepted from clients", ErrPermissionDenied)
	}
	p.StateVersion = e.version
	p.AdvanceState = true

	switch sub.ct {
	case mls.ContentTypeProposal:
		// The leaf of an Update and the KeyPackage of an Add must be
		// bound, and the KeyPackage consented to (RFC 9750 §5); the Commit
		// that includes the Add marks it used.
		if err := s.proposalConsent(ctx, fc.Proposal); err != nil {
			return err
		}
		e.beforeProposal()
		if _, err := st.HandleProposal(pm); err != nil {
			return invalidMessage("Proposal", err)
		}
		e.pending = &pendingChange{hash: sub.hash, data: sub.data}
		return nil
	case mls.ContentTypeCommit:
	default:
		return invalidf("6", "unknown content type %d", sub.ct)
	}

	// The GroupInfo of the new epoch comes with every Commit, so that the
	// one the Service serves always matches the group (§12.4.3).
	if sub.bundle == nil || len(sub.bundle.GroupInfo) == 0 {
		return invalidf("12.4.3", "send Commits with SendCommitBundle and the new epoch's GroupInfo, so that members and joiners can always (re)join from the GroupInfo the Delivery Service serves")
	}
	next, eff, err := st.HandleCommit(pm)
	if err != nil {
		return invalidMessage("Commit", err)
	}
	e.pending = &pendingChange{hash: sub.hash, data: sub.data, next: next, eff: eff}
	newTree := next.Tree()
	if int(newTree.MemberCount()) > s.cfg.MaxGroupSize {
		return &TooLargeError{Limit: s.cfg.MaxGroupSize, What: "group members"}
	}
	// Every leaf the Commit brings in is bound to its client, and every
	// Add uses a KeyPackage its client published and nobody used yet
	// (RFC 9750 §5); accepting the Commit marks them used.
	if err := s.checkCommitLeaves(ctx, newTree, eff); err != nil {
		return err
	}
	cs, err := addedConsent(eff)
	if err != nil {
		return err
	}
	if p.ConsumeKeyPackages, err = s.checkConsent(ctx, cs); err != nil {
		return err
	}

	// Roster changes, by client id.
	addedByRef := make(map[string]string)
	var added, removed []string
	for _, a := range eff.Added {
		id, err := credentialClientID(&a.Credential)
		if err != nil {
			return invalidMessage(fmt.Sprintf("added leaf %d", a.Leaf), err)
		}
		added = append(added, id)
		if a.KeyPackageRef != nil {
			addedByRef[string(a.KeyPackageRef)] = id
		}
	}
	for _, r := range eff.Removed {
		id, err := credentialClientID(&r.Credential)
		if err != nil {
			return invalidMessage(fmt.Sprintf("removed leaf %d", r.Leaf), err)
		}
		if !contains(added, id) {
			removed = append(removed, id)
		}
	}
	for _, u := range eff.Updated {
		old := tree.Leaf(u.Leaf)
		if old == nil {
			continue
		}
		oldID, _ := credentialClientID(&old.Credential)
		newID, err := credentialClientID(&u.Credential)
		if err != nil || newID != oldID {
			return fmt.Errorf("%w: leaf %d may not change its identity from %q", ErrPermissionDenied, u.Leaf, oldID)
		}
	}
	if eff.External {
		if !contains(added, sub.sender) {
			return fmt.Errorf("%w: an external Commit must add the sender %q itself", ErrPermissionDenied, sub.sender)
		}
	}
	// One leaf per client: an added client that is already a member must
	// give up its old leaf in the same Commit (a resync, §12.4.3.2), and
	// then stays a member rather than being added again.
	if len(added) > 0 {
		if d := dedupeSorted(added); len(d) != len(added) {
			return fmt.Errorf("%w: the Commit adds a client twice; a client may hold only one leaf", ErrPermissionDenied)
		}
		removedLeaf := make(map[mls.LeafIndex]bool, len(eff.Removed))
		for _, r := range eff.Removed {
			removedLeaf[r.Leaf] = true
		}
		// e.ids holds the leaves of the tree before the Commit.
		var stays []string
		for _, id := range added {
			leaves := e.ids[id]
			for _, i := range leaves {
				if !removedLeaf[i] {
					return fmt.Errorf("%w: client %q already holds leaf %d; a client may hold only one leaf", ErrPermissionDenied, id, i)
				}
			}
			if len(leaves) == 0 {
				continue
			}
			// A client that left (LeaveGroup) still holds its leaf until
			// someone commits its removal, but has no open membership
			// window: its resync or re-add opens a new one.
			ws, err := s.store.Memberships(ctx, head.ID, id)
			if err != nil {
				return err
			}
			if len(ws) > 0 && ws[len(ws)-1].Open() {
				stays = append(stays, id)
			}
		}
		added = slices.DeleteFunc(added, func(id string) bool { return contains(stays, id) })
	}
	added = dedupeSorted(added)
	removed = dedupeSorted(removed)
	p.Added, p.Removed = added, removed

	b := sub.bundle
	if b == nil {
		return nil
	}
	if b.RemoteTree != nil {
		return errTransparentRemoteTree(head.ID)
	}
	if len(b.Added) > 0 || len(b.Removed) > 0 {
		if !sameSet(b.Added, added) || !sameSet(b.Removed, removed) {
			return invalidf("", "the bundle's Added %v / Removed %v disagree with the Commit, which adds %v and removes %v",
				b.Added, b.Removed, added, removed)
		}
	}
	gi, err := parseGroupInfo(b.GroupInfo)
	if err != nil {
		return err
	}
	if err := checkGroupInfo(gi, pm, next, newTree); err != nil {
		return err
	}
	if p.GroupInfo, err = groupInfoMessage(gi); err != nil {
		return err
	}
	e.pending.groupInfo = p.GroupInfo
	if len(b.Welcome) > 0 {
		if err := s.routeWelcome(ctx, head, b.Welcome, addedByRef, p); err != nil {
			return err
		}
	}
	return nil
}

// checkGroupInfo checks a GroupInfo published with the Commit pm: it must
// carry the GroupContext of the new epoch and pm's confirmation_tag (which
// the GroupInfo of an epoch repeats, §12.4.3), be signed by a member, and
// hold a usable external_pub (§12.4.3.2), so that whoever may rejoin can.
// A Commit whose confirmation_tag is garbage then comes with a GroupInfo
// that members reject, and they resync with an external Commit.
func checkGroupInfo(gi *mls.GroupInfo, pm *mls.PublicMessage, next *mls.PublicGroupState, tree *mls.RatchetTree) error {
	want := next.GroupContext()
	wantBytes, err := want.MarshalBinary()
	if err != nil {
		return fmt.Errorf("ds: encoding GroupContext: %w", err)
	}
	got, err := gi.GroupContext.MarshalBinary()
	if err != nil || !bytes.Equal(got, wantBytes) {
		return invalidf("12.4.3", "the GroupInfo's GroupContext is not the one of the epoch the Commit starts (epoch %d)", want.Epoch)
	}
	signer := tree.Leaf(gi.Signer)
	if signer == nil {
		return invalidf("12.4.3", "the GroupInfo signer %d is not a member", gi.Signer)
	}
	if err := gi.VerifySignature(signer.SignatureKey); err != nil {
		return invalidMessage("GroupInfo", wrapSection("12.4.3", err))
	}
	// The DS serves this GroupInfo for external joins and resyncs: refuse
	// one without an external_pub, or with one no joiner could use.
	if _, ok := gi.Extensions.Find(mls.ExtensionTypeExternalPub); !ok {
		return invalidf("12.4.3.2", "the GroupInfo has no external_pub extension; include it so that members can resync by external Commit")
	}
	if err := mls.ValidateGroupInfoExternalPub(gi); err != nil {
		return invalidMessage("GroupInfo", err)
	}
	if !bytes.Equal(gi.ConfirmationTag, pm.Auth.ConfirmationTag) {
		return invalidf("12.4.3", "the GroupInfo's confirmation_tag is not the Commit's; send the GroupInfo of the epoch this Commit starts")
	}
	return nil
}

func (s *Service) prepareOpaque(ctx context.Context, head GroupRecord, sub *submission, p *AcceptParams) error {
	p.RequireMember = true
	b := sub.bundle
	if sub.ct != mls.ContentTypeCommit {
		return nil
	}
	// Every Commit comes with the new epoch's encrypted GroupInfo and
	// tree, from which members who cannot process the Commit rejoin.
	if b == nil || b.RemoteTree == nil {
		return fmt.Errorf("%w: send an opaque group's Commit with SendCommitBundle and remote_tree: the GroupInfo and ratchet tree of the epoch it starts (%d), encrypted for its members, from which a member that cannot process the Commit rejoins",
			ErrInvalidArgument, sub.epoch+1)
	}
	// The roster change is the one the Commit declares (roster_ad.go).
	decl, declared, err := ParseRosterDeclaration(CommitAuthenticatedData(sub.msg))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	if len(b.Added) > 0 || len(b.Removed) > 0 {
		if !declared {
			return fmt.Errorf("%w: declare the roster change (added %v, removed %v) in the Commit's authenticated_data (%q), where the members can check it",
				ErrInvalidArgument, b.Added, b.Removed, RosterLabel)
		}
		if !sameSet(b.Added, decl.Added) || !sameSet(b.Removed, decl.Removed) {
			return fmt.Errorf("%w: the bundle's added %v / removed %v disagree with the Commit's roster declaration (added %v, removed %v); send the same lists, or none",
				ErrInvalidArgument, b.Added, b.Removed, decl.Added, decl.Removed)
		}
	}
	members, err := s.store.Members(ctx, head.ID)
	if err != nil {
		return err
	}
	if !contains(members, sub.sender) {
		return fmt.Errorf("%w: %q in group %x", ErrNotMember, sub.sender, head.ID)
	}
	removed, err := s.removedMembers(ctx, head.ID, members, decl.Removed) // leave.go
	if err != nil {
		return err
	}
	if len(b.Welcome) > 0 {
		if err := s.routeWelcome(ctx, head, b.Welcome, nil, p); err != nil {
			return err
		}
	}
	// Every added client joins through the Welcome, by a KeyPackage it
	// published: nobody enters the roster without consent. The only
	// others a declaration may add are former members the tree still
	// holds (restored after a Commit declared them removed): members
	// refuse a declaration that does not match their tree.
	var added []string
	for _, w := range p.WelcomeTo {
		if !contains(decl.Added, w.ClientID) {
			return fmt.Errorf("%w: the Welcome adds %q, which the Commit's roster declaration does not list as added", ErrInvalidArgument, w.ClientID)
		}
		added = append(added, w.ClientID)
	}
	added = dedupeSorted(added)
	for _, a := range added {
		if contains(members, a) && !contains(removed, a) {
			return fmt.Errorf("%w: cannot add %q: already a member of the group", ErrInvalidArgument, a)
		}
		if err := s.checkID("client", a); err != nil {
			return err
		}
		if _, err := s.store.Client(ctx, a); err != nil {
			return fmt.Errorf("cannot add %q: %w", a, err)
		}
	}
	for _, a := range decl.Added {
		if contains(added, a) || contains(members, a) {
			continue
		}
		ws, err := s.store.Memberships(ctx, head.ID, a)
		if err != nil {
			return err
		}
		if len(ws) == 0 {
			return fmt.Errorf("%w: cannot add %q: it is no joiner of the bundle's Welcome; add a client with a Welcome to a KeyPackage it published", ErrInvalidArgument, a)
		}
		if _, err := s.store.Client(ctx, a); err != nil {
			return fmt.Errorf("cannot restore %q: %w", a, err)
		}
		added = append(added, a) // restored
	}
	added = dedupeSorted(added)
	if len(members)-len(removed)+len(added) > s.cfg.MaxGroupSize {
		return &TooLargeError{Limit: s.cfg.MaxGroupSize, What: "group members"}
	}
	p.Added, p.Removed = added, removed
	if b.GroupInfo != nil {
		p.GroupInfo = bytes.Clone(b.GroupInfo)
	}
	if p.RemoteTree, err = s.bundleRemoteTree(sub, b.RemoteTree); err != nil {
		return err
	}
	return nil
}

// routeWelcome finds the recipients of a Welcome by the KeyPackageRefs it
// names and records them in p. In a transparent group, expect maps each
// KeyPackageRef the Commit adds to the added client; the Welcome may name
// only those.
func (s *Service) routeWelcome(ctx context.Context, head GroupRecord, data []byte, expect map[string]string, p *AcceptParams) error {
	w, err := parseWelcome(data)
	if err != nil {
		return err
	}
	if head.CipherSuite != 0 && w.CipherSuite != head.CipherSuite {
		return invalidf("12.4.3.1", "the Welcome is for cipher suite %d, the group uses %d", w.CipherSuite, head.CipherSuite)
	}
	joiners := w.Joiners()
	if len(joiners) == 0 {
		return invalidf("12.4.3.1", "the Welcome names no new member")
	}
	refs := make([][]byte, len(joiners))
	for i, r := range joiners {
		refs[i] = r
	}
	byRef, err := s.keyPackagesByRef(ctx, refs)
	if err != nil {
		return err
	}
	seen := make(map[string]bool)
	for _, ref := range refs {
		if seen[string(ref)] {
			return invalidf("12.4.3.1", "the Welcome names KeyPackage %x twice", ref)
		}
		seen[string(ref)] = true
		rec, known := byRef[string(ref)]
		client := rec.ClientID
		if known {
			if rec.Consumed() && !rec.LastResort {
				return invalidf("10", "KeyPackage %x was already used by an earlier Welcome; a KeyPackage is used only once", ref)
			}
			// In a transparent group the Commit's Adds mark them used.
			if !rec.LastResort && expect == nil {
				p.ConsumeKeyPackages = append(p.ConsumeKeyPackages, ref)
			}
		}
		if expect != nil {
			want, ok := expect[string(ref)]
			if !ok {
				return invalidf("12.4.3.1", "the Welcome names KeyPackage %x, which the Commit does not add", ref)
			}
			if known && client != want {
				return invalidf("12.4.3.1", "KeyPackage %x belongs to %q but the Commit adds %q with it", ref, client, want)
			}
			client = want
		} else if !known {
			return invalidf("", "the Welcome names KeyPackage %x, which this Delivery Service does not know; publish and claim KeyPackages through it", ref)
		}
		p.WelcomeTo = append(p.WelcomeTo, WelcomeRoute{ClientID: client, KeyPackageRef: ref})
	}
	p.Welcome = bytes.Clone(data)
	return nil
}

func dedupeSorted(ss []string) []string {
	if len(ss) == 0 {
		return nil
	}
	out := append([]string(nil), ss...)
	sort.Strings(out)
	j := 0
	for i := range out {
		if i == 0 || out[i] != out[j-1] {
			out[j] = out[i]
			j++
		}
	}
	return out[:j]
}

func sameSet(a, b []string) bool {
	a, b = dedupeSorted(a), dedupeSorted(b)
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// isExternalJoin reports whether sub is a transparent group's external
// Commit or new_member Proposal: a message of a client joining.
func (sub *submission) isExternalJoin() bool {
	if sub.wf != mls.WireFormatPublicMessage {
		return false
	}
	switch sub.msg.PublicMessage.Content.Sender.SenderType {
	case mls.SenderTypeNewMemberCommit, mls.SenderTypeNewMemberProposal:
		return true
	}
	return false
}
