package ds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/mlsds/mlsds/mls"
)

// Leaving. MLS has no way for a member to leave a group on its own: a
// remaining member must commit its removal (RFC 9750 §6.1), and a
// committer may not remove itself (RFC 9420 §12.2). What a member can do
// is propose its own removal, and stop listening. LeaveGroup does both on
// the Delivery Service's side: it accepts the member's Remove Proposal, if
// any, and then ends the member's membership window at once, so that the
// Delivery Service delivers the group to it no more, whenever the others
// get around to committing the removal.

// LeaveGroup ends client's membership of the group: it receives no message
// of the group after the GroupSeq that LeaveGroup returns (the group's
// last when it left), on Subscribe at once and on Fetch, which still
// returns its messages up to there. The client's Welcomes of the group
// that it did not acknowledge are dropped; its cursor stays, so it may
// acknowledge what it received.
//
// removeProposal is optional and only for transparent groups
// (ErrInvalidArgument in an opaque one): the client's own Remove Proposal,
// a PublicMessage of the current epoch sent by the client's leaf and
// removing that leaf. It is submitted as Send submits any Proposal, and
// refused as Send refuses it (then the client stays a member); once
// accepted it is in the group's stream, where the other members find it
// and commit it. The window closes right after it.
//
// The caller must be a member (ErrNotMember otherwise, as everywhere).
// Leaving again is therefore refused with ErrNotMember and changes
// nothing, which a client that retries after losing the answer may take
// as done (Fetch tells it where its window ended).
//
// A Commit that later removes the client, in a transparent group (the
// Remove) or an opaque one (CommitBundle.Removed), is accepted and leaves
// the window where LeaveGroup put it.
func (s *Service) LeaveGroup(ctx context.Context, client string, groupID []byte, removeProposal []byte) (lastSeq uint64, err error) {
	if err := s.allow(client); err != nil {
		return 0, err
	}
	head, err := s.checkMember(ctx, client, groupID)
	if err != nil {
		return 0, err
	}
	if len(removeProposal) > 0 {
		if head.Mode != ModeTransparent {
			return 0, fmt.Errorf("%w: group %x is opaque: the Delivery Service cannot check a Remove Proposal in it; Send it first like any other message, then leave without one", ErrInvalidArgument, head.ID)
		}
		if len(removeProposal) > s.cfg.MaxMessageSize {
			return 0, &TooLargeError{Limit: s.cfg.MaxMessageSize, What: "message bytes"}
		}
		if err := checkSelfRemove(groupID, removeProposal); err != nil {
			return 0, err
		}
		if _, err := s.Send(ctx, client, removeProposal); err != nil {
			return 0, err
		}
	}

	// Subscriptions of this node distrust what they know of the client's
	// membership from before the store changes it until they have read it
	// again (see subscription.windowsStale).
	s.fan.leaving.add(client, groupID)
	defer s.fan.leaving.remove(client, groupID)
	lastSeq, err = s.store.Leave(ctx, groupID, client)
	if isNotFound(err) || errors.Is(err, ErrNotMember) {
		// Lost a race with another LeaveGroup of the client.
		return 0, notMember(client, groupID)
	} else if err != nil {
		return 0, err
	}
	s.notify(ClientTopic(client))
	// The last member out takes the group with it. A failure here only
	// delays that: the pruner sweeps groups without members.
	_, _ = s.DeleteGroupIfEmpty(ctx, groupID)
	return lastSeq, nil
}

// checkSelfRemove checks that data is a Remove Proposal, as a
// PublicMessage of a member of groupID, that removes the sender's own leaf
// (§12.1.3). The rest (that the leaf is the caller's, the epoch, the
// signature) is checked by Send, as for any Proposal.
func checkSelfRemove(groupID, data []byte) error {
	m, err := mls.ParseMLSMessage(data)
	if err != nil {
		return invalidMessage("remove_proposal", err)
	}
	if m.WireFormat != mls.WireFormatPublicMessage {
		return invalidf("6.2", "remove_proposal must be a PublicMessage, not wire format %d, so that the Delivery Service can check it", m.WireFormat)
	}
	fc := &m.PublicMessage.Content
	if !bytes.Equal(fc.GroupID, groupID) {
		return fmt.Errorf("%w: remove_proposal is for group %x, not %x", ErrInvalidArgument, fc.GroupID, groupID)
	}
	if fc.ContentType != mls.ContentTypeProposal || fc.Proposal == nil {
		return invalidf("12.1", "remove_proposal must be a Proposal, not content type %d", fc.ContentType)
	}
	if fc.Proposal.ProposalType != mls.ProposalTypeRemove || fc.Proposal.Remove == nil {
		return invalidf("12.1.3", "remove_proposal must be a Remove Proposal, not proposal type %d", fc.Proposal.ProposalType)
	}
	if fc.Sender.SenderType != mls.SenderTypeMember {
		return invalidf("12.1.3", "remove_proposal must be sent by a member (the one leaving), not sender type %d", fc.Sender.SenderType)
	}
	if r := fc.Proposal.Remove.Removed; r != fc.Sender.LeafIndex {
		return fmt.Errorf("%w: remove_proposal removes leaf %d but is sent by leaf %d; a client leaving may only propose its own removal",
			ErrPermissionDenied, r, fc.Sender.LeafIndex)
	}
	return nil
}

// removedMembers checks the clients that an opaque Commit removes against
// the group's members now: a member is removed; a former member (one that
// left, or was removed before) is left out, since it is gone already; a
// client that never was a member is refused.
func (s *Service) removedMembers(ctx context.Context, groupID []byte, members, removed []string) ([]string, error) {
	var out []string
	for _, r := range dedupeSorted(removed) {
		if contains(members, r) {
			out = append(out, r)
			continue
		}
		ws, err := s.store.Memberships(ctx, groupID, r)
		if err != nil {
			return nil, err
		}
		if len(ws) == 0 {
			return nil, fmt.Errorf("%w: cannot remove %q: not a member of the group", ErrInvalidArgument, r)
		}
	}
	return out, nil
}

// leavingSet holds the (client, group) pairs whose LeaveGroup is under way
// on this node. Its zero value is empty and ready.
type leavingSet struct {
	n  atomic.Int64 // entries, so that the usual check takes no lock
	mu sync.Mutex
	m  map[leavingKey]int
}

type leavingKey struct{ client, group string }

func (l *leavingSet) add(client string, groupID []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[leavingKey]int)
	}
	l.m[leavingKey{client, string(groupID)}]++
	l.n.Add(1)
}

func (l *leavingSet) remove(client string, groupID []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := leavingKey{client, string(groupID)}
	if l.m[k]--; l.m[k] <= 0 {
		delete(l.m, k)
	}
	l.n.Add(-1)
}

// has reports whether client is leaving the group.
func (l *leavingSet) has(client string, groupID []byte) bool {
	if l.n.Load() == 0 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m[leavingKey{client, string(groupID)}] > 0
}
