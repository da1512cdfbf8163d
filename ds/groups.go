package ds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/mlsds/mlsds/mls"
)

// CreateGroup registers a new group with its creator as a member.
//
// Transparent mode: g.GroupInfo and the ratchet tree (g.RatchetTree, or
// the GroupInfo's ratchet_tree extension) must describe a valid group
// (the checks of mls.NewPublicGroupState: signature, tree hash, tree and
// leaf validity), g.GroupID, if set, must be its group id, and the creator
// must hold a leaf. The roster is the set of credential identities of the
// leaves.
//
// Every leaf must be bound to a registered client and its registered
// signature key (RFC 9750 §5), and every leaf but the creator's must have
// come in through one of g.KeyPackages, which the group's creation marks
// used: no client is put in a group without its consent.
//
// Opaque mode: the roster is the creator and g.Members, which must be
// registered clients; g.Epoch is the group's current epoch and
// g.GroupInfo, if any, is kept as given. Each of g.Members but the
// creator consents the same way: one of g.KeyPackages must be a KeyPackage
// it published, unused unless last-resort, which the group's creation
// marks used.
//
// g.Welcome, if any, is a Welcome for the members the creator added
// before creating the group here; it must name exactly the KeyPackages in
// g.KeyPackages and goes to their clients (creategroup_welcome.go).
//
// A creation counts against the creator's quotas of groups per day
// (Config.MaxGroupsPerDay) and bytes per day (its GroupInfo and tree);
// over either it fails with a *QuotaExceededError, and a creation that
// fails costs nothing.
func (s *Service) CreateGroup(ctx context.Context, creator string, g CreateGroup) error {
	if err := s.allow(creator); err != nil {
		return err
	}
	c, err := s.store.Client(ctx, creator)
	if err != nil {
		return err
	}
	for _, part := range [][]byte{g.GroupInfo, g.RatchetTree, g.Welcome} {
		if len(part) > s.cfg.MaxMessageSize {
			return &TooLargeError{Limit: s.cfg.MaxMessageSize, What: "message bytes"}
		}
	}
	rec := GroupRecord{Mode: g.Mode, Creator: creator, CreatedAt: s.now()}
	var members []string
	var st *mls.PublicGroupState // transparent
	switch g.Mode {
	case ModeTransparent:
		var gi *mls.GroupInfo
		st, gi, err = s.newGroupState(g)
		if err != nil {
			return err
		}
		if len(g.GroupID) > 0 && !bytes.Equal(g.GroupID, st.GroupID()) {
			return invalidf("", "the GroupInfo is for group %x, not %x", st.GroupID(), g.GroupID)
		}
		rec.ID = st.GroupID()
		rec.CipherSuite = st.CipherSuite()
		rec.Epoch = st.Epoch()
		tree := st.Tree()
		if n := int(tree.MemberCount()); n > s.cfg.MaxGroupSize {
			return &TooLargeError{Limit: s.cfg.MaxGroupSize, What: "group members"}
		}
		members, err = rosterOf(tree)
		if err != nil {
			return err
		}
		if rec.ConsumeKeyPackages, err = s.treeConsent(ctx, creator, tree, g.KeyPackages); err != nil {
			return err
		}
		if rec.State, err = st.MarshalBinary(); err != nil {
			return fmt.Errorf("ds: encoding group state: %w", err)
		}
		if rec.GroupInfo, err = groupInfoMessage(gi); err != nil {
			return err
		}
	case ModeOpaque:
		rec.ID = bytes.Clone(g.GroupID)
		rec.CipherSuite = c.CipherSuite
		rec.Epoch = g.Epoch
		if err := checkEpochBound("epoch", rec.Epoch); err != nil {
			return err
		}
		if g.GroupInfo != nil {
			rec.GroupInfo = bytes.Clone(g.GroupInfo)
		}
		members = []string{creator}
		for _, m := range g.Members {
			if m == creator || contains(members, m) {
				continue
			}
			if _, err := s.store.Client(ctx, m); err != nil {
				return fmt.Errorf("initial member %q: %w", m, err)
			}
			members = append(members, m)
		}
		if len(members) > s.cfg.MaxGroupSize {
			return &TooLargeError{Limit: s.cfg.MaxGroupSize, What: "group members"}
		}
		if rec.ConsumeKeyPackages, err = s.rosterConsent(ctx, members[1:], g.KeyPackages); err != nil {
			return err
		}
	case ModeDeniable:
		// No roster: nothing names the creator next to the group.
		if err := s.deniableCreate(g, &rec); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: unknown group mode %d", ErrInvalidArgument, g.Mode)
	}
	if rec.WelcomeTo, err = s.creationWelcome(g, creator, rec.CipherSuite, st); err != nil {
		return err
	}
	if rec.WelcomeTo != nil {
		rec.Welcome = bytes.Clone(g.Welcome)
	}
	if len(rec.ID) == 0 || len(rec.ID) > s.cfg.MaxGroupIDSize {
		return fmt.Errorf("%w: group id must have 1 to %d bytes", ErrInvalidArgument, s.cfg.MaxGroupIDSize)
	}
	if err := s.checkPredecessor(ctx, creator, g.Predecessor, rec, st, members); err != nil {
		return err
	}
	rec.Predecessor = bytes.Clone(g.Predecessor)
	// The daily quotas of the creator: one group, and the bytes it sent.
	keep, undo, err := s.chargeGroup(ctx, creator, len(g.GroupInfo)+len(g.RatchetTree)+len(g.Welcome))
	if err != nil {
		return err
	}
	if err := s.store.CreateGroup(ctx, rec, members); err != nil {
		undo()
		return err
	}
	keep()
	if st != nil {
		s.seedState(rec, st)
	}
	var topics []string
	for _, m := range members {
		topics = append(topics, ClientTopic(m))
	}
	s.notify(topics...)
	return nil
}

// rosterConsent checks the consent of the initial members of an opaque
// group besides its creator: each must be matched by exactly one of kps, a
// KeyPackage it published to this Delivery Service and nobody used yet
// (unless last-resort), and every KeyPackage in kps must be of one of
// them. The Service cannot see what an opaque group's members agreed to,
// but a KeyPackage claimed from a client is the client's consent to be
// added to some group (RFC 9750 §5), so nobody is put in a group without
// one. It returns the refs to mark used with the group's creation.
func (s *Service) rosterConsent(ctx context.Context, others []string, kps [][]byte) ([][]byte, error) {
	const how = "each initial member must consent with a KeyPackage it published; claim one and pass it in key_packages"
	byClient := make(map[string][]consent, len(others))
	for i, data := range kps {
		where := fmt.Sprintf("key_packages[%d]", i)
		_, ref, id, err := offeredKeyPackage(where, data)
		if err != nil {
			return nil, err
		}
		if !contains(others, id) {
			return nil, fmt.Errorf("%w: %s is a KeyPackage of %q, which is not among the initial members; pass only theirs",
				ErrInvalidArgument, where, id)
		}
		byClient[id] = append(byClient[id], consent{where: where, ref: ref, client: id})
	}
	var cs []consent
	for _, m := range others {
		switch n := len(byClient[m]); n {
		case 0:
			return nil, fmt.Errorf("%w: initial member %q: no KeyPackage of it in key_packages; %s", ErrPermissionDenied, m, how)
		case 1:
			cs = append(cs, byClient[m][0])
		default:
			return nil, fmt.Errorf("%w: initial member %q has %d KeyPackages in key_packages; pass one", ErrInvalidArgument, m, n)
		}
	}
	// Each was published by the client it names and is unused.
	return s.checkConsent(ctx, cs)
}

// newGroupState builds the tracked state of a transparent group.
func (s *Service) newGroupState(g CreateGroup) (*mls.PublicGroupState, *mls.GroupInfo, error) {
	if len(g.GroupInfo) == 0 {
		return nil, nil, invalidf("", "a transparent group needs its GroupInfo")
	}
	gi, err := parseGroupInfo(g.GroupInfo)
	if err != nil {
		return nil, nil, err
	}
	var tree *mls.RatchetTree
	if len(g.RatchetTree) > 0 {
		tree, err = mls.UnmarshalRatchetTree(gi.GroupContext.CipherSuite, g.RatchetTree)
		if err != nil {
			return nil, nil, invalidMessage("ratchet tree", err)
		}
	}
	st, err := mls.NewPublicGroupState(gi, tree)
	if err != nil {
		return nil, nil, invalidMessage("group", err)
	}
	st.SetPolicy(s.policy())
	return st, gi, nil
}

// policy is the mls.GroupPolicy the Service applies to transparent groups.
func (s *Service) policy() mls.GroupPolicy {
	return mls.GroupPolicy{Now: s.cfg.Now, MaxLifetime: s.cfg.MaxKeyPackageLifetime}
}

// seedState puts the state of a group just created into the cache, as
// the snapshot of version 0 that the store holds.
func (s *Service) seedState(rec GroupRecord, st *mls.PublicGroupState) {
	ids, err := leafIndex(st)
	if err != nil {
		return
	}
	e := s.states.get(rec.ID, s.cfg.StateCacheBytes)
	e.mu.Lock()
	if e.st == nil {
		e.st, e.version, e.ids = st, 0, ids
		e.snapVersion, e.snapBytes, e.logBytes = 0, len(rec.State), 0
		e.groupInfo, e.groupInfoKnown = rec.GroupInfo, true
	}
	s.releaseState(e)
}

// withState runs f with the state of a transparent group, locked and up
// to date; ErrInvalidArgument for an opaque group.
func (s *Service) withState(ctx context.Context, groupID []byte, f func(head GroupRecord, e *groupState) error) error {
	head, err := s.store.Group(ctx, groupID)
	if err != nil {
		return err
	}
	if head.Mode != ModeTransparent {
		return fmt.Errorf("%w: group %x is opaque; the Delivery Service does not know its tree", ErrInvalidArgument, head.ID)
	}
	e, err := s.lockState(ctx, head)
	if err != nil {
		return err
	}
	defer s.releaseState(e)
	return f(head, e)
}

// rosterOf returns the client ids of the leaves of tree, sorted, without
// repetitions.
func rosterOf(tree *mls.RatchetTree) ([]string, error) {
	seen := make(map[string]bool)
	var out []string
	for i, leaf := range tree.Leaves() {
		id, err := credentialClientID(&leaf.Credential)
		if err != nil {
			return nil, invalidMessage(fmt.Sprintf("leaf %d", i), err)
		}
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out, nil
}

// groupInfoMessage returns gi encoded as an MLSMessage, the form in which
// the Service stores and serves GroupInfos.
func groupInfoMessage(gi *mls.GroupInfo) ([]byte, error) {
	m := &mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}
	b, err := m.MarshalBinary()
	if err != nil {
		return nil, invalidMessage("GroupInfo", err)
	}
	return b, nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// notMember is the one answer a client gets about a group it is not a
// member of, whether the group exists or not, so that outsiders learn
// nothing of it: not its existence, mode or epoch.
func notMember(client string, groupID []byte) error {
	return fmt.Errorf("%w: %q in group %x", ErrNotMember, client, groupID)
}

// isMember reports whether client is a member of the group now.
func (s *Service) isMember(ctx context.Context, groupID []byte, client string) (bool, error) {
	ws, err := s.store.Memberships(ctx, groupID, client)
	if err != nil {
		return false, err
	}
	return len(ws) > 0 && ws[len(ws)-1].Open(), nil
}

// checkMember returns the group's head if client is a member of it now,
// and notMember otherwise, also for a group that does not exist.
func (s *Service) checkMember(ctx context.Context, client string, groupID []byte) (GroupRecord, error) {
	return s.checkAccess(ctx, client, groupID, nil)
}

// checkJoiner is checkMember for what joining needs: it also lets in the
// clients that mayJoin admits to a transparent group.
func (s *Service) checkJoiner(ctx context.Context, client string, groupID []byte, joinToken string) (GroupRecord, error) {
	return s.checkAccess(ctx, client, groupID, func(head GroupRecord) (bool, error) {
		return s.mayJoin(ctx, head, client, joinToken)
	})
}

// checkAccess returns the group's head if client is a member of it now or
// admit (if not nil) lets it in, and notMember otherwise, also for a group
// that does not exist: an outsider learns nothing from the answer.
func (s *Service) checkAccess(ctx context.Context, client string, groupID []byte, admit func(GroupRecord) (bool, error)) (GroupRecord, error) {
	head, err := s.store.Group(ctx, groupID)
	if isNotFound(err) {
		return GroupRecord{}, notMember(client, groupID)
	} else if err != nil {
		return GroupRecord{}, err
	}
	ok, err := s.isMember(ctx, groupID, client)
	if err == nil && !ok && admit != nil {
		ok, err = admit(head)
	}
	if err != nil {
		return GroupRecord{}, err
	}
	if !ok {
		return GroupRecord{}, notMember(client, groupID)
	}
	return head, nil
}

// GroupInfo returns what a member may learn of a group: its epoch, latest
// GroupInfo and, in transparent mode, the current ratchet tree, its tree
// hash and the Proposals of the current epoch. That is what a client needs
// to join a transparent group with an external Commit (§12.4.3.2), so
// besides members the clients that Config.ExternalJoin admits may ask for
// a transparent group (see JoinGroupInfo); anyone else gets ErrNotMember,
// whether the group exists or not.
func (s *Service) GroupInfo(ctx context.Context, client string, groupID []byte) (GroupInfoResult, error) {
	return s.JoinGroupInfo(ctx, client, groupID, "")
}

// JoinGroupInfo is GroupInfo for a client that may hold a join link's
// token (see CreateJoinLink).
func (s *Service) JoinGroupInfo(ctx context.Context, client string, groupID []byte, joinToken string) (GroupInfoResult, error) {
	if err := s.allow(client); err != nil {
		return GroupInfoResult{}, err
	}
	head, err := s.checkJoiner(ctx, client, groupID, joinToken)
	if err != nil {
		return GroupInfoResult{}, err
	}
	if head.Mode != ModeTransparent {
		succ, err := s.store.Successor(ctx, groupID) // successor.go
		if err != nil {
			return GroupInfoResult{}, err
		}
		rec, err := s.store.GroupState(ctx, groupID)
		if err != nil {
			return GroupInfoResult{}, err
		}
		return GroupInfoResult{GroupID: rec.ID, Mode: rec.Mode, Epoch: rec.Epoch, GroupInfo: rec.GroupInfo, SuccessorGroupID: succ}, nil
	}
	var out GroupInfoResult
	var frozen bool
	err = s.withState(ctx, groupID, func(_ GroupRecord, e *groupState) error {
		if !e.groupInfoKnown {
			// Another node's Commit may have brought a GroupInfo. (This
			// reads the snapshot too; it happens once per such Commit.)
			rec, err := s.store.GroupState(ctx, groupID)
			if err != nil {
				return err
			}
			e.groupInfo, e.groupInfoKnown = rec.GroupInfo, true
		}
		gc := e.st.GroupContext()
		out = GroupInfoResult{GroupID: e.id, Mode: ModeTransparent, Epoch: gc.Epoch, GroupInfo: e.groupInfo, TreeHash: gc.TreeHash}
		if out.RatchetTree, err = e.treeBytes(); err != nil {
			return err
		}
		out.Proposals = append([][]byte(nil), e.proposals...)
		_, frozen = e.st.Frozen()
		return nil
	})
	if err != nil || !frozen {
		// Only a group a committed ReInit closed has a successor: the
		// call members make after every Commit reads no more than that.
		return out, err
	}
	out.SuccessorGroupID, err = s.store.Successor(ctx, groupID) // successor.go
	return out, err
}

// Roster returns the client ids of the group's members, sorted. Only
// members may ask.
func (s *Service) Roster(ctx context.Context, client string, groupID []byte) ([]string, error) {
	if err := s.allow(client); err != nil {
		return nil, err
	}
	if _, err := s.checkMember(ctx, client, groupID); err != nil {
		return nil, err
	}
	return s.store.Members(ctx, groupID)
}

// isNotFound reports whether err is ErrNotFound.
func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
