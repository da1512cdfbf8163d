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
// Opaque mode: the roster is the creator and g.Members, which must be
// registered clients; g.Epoch is the group's current epoch and
// g.GroupInfo, if any, is kept as given.
func (s *Service) CreateGroup(ctx context.Context, creator string, g CreateGroup) error {
	if err := s.allow(creator); err != nil {
		return err
	}
	c, err := s.store.Client(ctx, creator)
	if err != nil {
		return err
	}
	for _, part := range [][]byte{g.GroupInfo, g.RatchetTree} {
		if len(part) > s.cfg.MaxMessageSize {
			return &TooLargeError{Limit: s.cfg.MaxMessageSize, What: "message bytes"}
		}
	}
	rec := GroupRecord{Mode: g.Mode, Creator: creator, CreatedAt: s.now()}
	var members []string
	switch g.Mode {
	case ModeTransparent:
		st, gi, err := s.newGroupState(g)
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
		if !contains(members, creator) {
			return fmt.Errorf("%w: the creator %q holds no leaf of the group's tree", ErrPermissionDenied, creator)
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
		if rec.Epoch >= 1<<62 {
			return fmt.Errorf("%w: epoch %d is out of range", ErrInvalidArgument, rec.Epoch)
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
	default:
		return fmt.Errorf("%w: unknown group mode %d", ErrInvalidArgument, g.Mode)
	}
	if len(rec.ID) == 0 || len(rec.ID) > s.cfg.MaxGroupIDSize {
		return fmt.Errorf("%w: group id must have 1 to %d bytes", ErrInvalidArgument, s.cfg.MaxGroupIDSize)
	}
	if err := s.store.CreateGroup(ctx, rec, members); err != nil {
		return err
	}
	var topics []string
	for _, m := range members {
		topics = append(topics, ClientTopic(m))
	}
	s.notify(topics...)
	return nil
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

// loadState decodes the stored state of a transparent group.
func (s *Service) loadState(rec GroupRecord) (*mls.PublicGroupState, error) {
	st, err := mls.UnmarshalPublicGroupState(rec.State)
	if err != nil {
		return nil, fmt.Errorf("ds: stored state of group %x does not decode: %w", rec.ID, err)
	}
	st.SetPolicy(s.policy())
	return st, nil
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

// checkMember returns ErrNotMember unless client is a member of the group
// now; ErrNotFound if there is no such group.
func (s *Service) checkMember(ctx context.Context, client string, groupID []byte) (GroupRecord, error) {
	head, err := s.store.Group(ctx, groupID)
	if err != nil {
		return GroupRecord{}, err
	}
	ws, err := s.store.Memberships(ctx, groupID, client)
	if err != nil {
		return GroupRecord{}, err
	}
	if len(ws) == 0 || !ws[len(ws)-1].Open() {
		return GroupRecord{}, fmt.Errorf("%w: %q in group %x", ErrNotMember, client, groupID)
	}
	return head, nil
}

// GroupInfo returns what a member may learn of a group: its epoch, latest
// GroupInfo and, in transparent mode, the current ratchet tree.
func (s *Service) GroupInfo(ctx context.Context, client string, groupID []byte) (GroupInfoResult, error) {
	if err := s.allow(client); err != nil {
		return GroupInfoResult{}, err
	}
	if _, err := s.checkMember(ctx, client, groupID); err != nil {
		return GroupInfoResult{}, err
	}
	rec, err := s.store.GroupState(ctx, groupID)
	if err != nil {
		return GroupInfoResult{}, err
	}
	out := GroupInfoResult{GroupID: rec.ID, Mode: rec.Mode, Epoch: rec.Epoch, GroupInfo: rec.GroupInfo}
	if rec.Mode == ModeTransparent {
		st, err := s.loadState(rec)
		if err != nil {
			return GroupInfoResult{}, err
		}
		if out.RatchetTree, err = st.Tree().MarshalBinary(); err != nil {
			return GroupInfoResult{}, fmt.Errorf("ds: encoding tree of group %x: %w", rec.ID, err)
		}
	}
	return out, nil
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
