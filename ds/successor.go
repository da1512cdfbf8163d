package ds

import (
	"bytes"
	"context"
	"fmt"

	"github.com/mlsds/mlsds/mls"
)

// This file links a group that a committed ReInit closed (RFC 9420 §11.2)
// to its successor, so that members of the old group find the new one:
// CreateGroup with CreateGroup.Predecessor stores the link with the new
// group, and GroupInfo serves it as GroupInfoResult.SuccessorGroupID.
//
// What the Delivery Service checks depends on what it can see. The creator
// must be a member of the predecessor now; anyone else gets the answer a
// missing group gets. For a transparent predecessor the Service tracks the
// state, so the predecessor must be frozen by a committed ReInit whose
// group_id is the new group's id and, when the new group is transparent,
// whose version and cipher suite are the new group's; and the new group's
// roster must be the frozen group's, no more and no fewer (§11.2: all the
// members of the old group are members of the new one), so that no member
// takes the one successor link with a group of its own choosing; the new
// group must be in epoch 1 and, if it has members besides its creator,
// come with the Welcome that brings them in. An opaque
// predecessor's Commits are encrypted, but the one that carries a ReInit
// states its group_id in its authenticated_data, which the members check
// (roster_ad.go): the Commit that started the predecessor's last epoch
// must declare the new group's id, so that no member takes the one link
// with a group of its own choosing. Either way a group gets one successor: a second one fails
// with ErrAlreadyExists, also when two creations race (the store links
// in the creation's transaction).
//
// A deniable group takes no predecessor: the link would tie it to a
// group whose members the Service knows.

// checkPredecessor checks that the group rec (whose transparent state is
// st, or nil, and whose roster is members) may be created as the
// successor of pred, by creator.
func (s *Service) checkPredecessor(ctx context.Context, creator string, pred []byte, rec GroupRecord, st *mls.PublicGroupState, members []string) error {
	if len(pred) == 0 {
		return nil
	}
	if rec.Mode == ModeDeniable {
		return fmt.Errorf("%w: a deniable group takes no predecessor_group_id: the link would tie it to a group whose members the Delivery Service knows", ErrInvalidArgument)
	}
	head, err := s.checkMember(ctx, creator, pred)
	if err != nil {
		return err
	}
	if succ, err := s.store.Successor(ctx, pred); err != nil {
		return err
	} else if succ != nil {
		return fmt.Errorf("%w: group %x already has a successor, group %x", ErrAlreadyExists, pred, succ)
	}
	if head.Mode != ModeTransparent {
		return s.checkOpaqueReInit(ctx, head, rec.ID)
	}
	return s.withState(ctx, pred, func(_ GroupRecord, e *groupState) error {
		ri, frozen := e.st.Frozen()
		if !frozen {
			return invalidf("11.2", "group %x was not closed by a committed ReInit; commit one before creating its successor", pred)
		}
		if !bytes.Equal(ri.GroupID, rec.ID) {
			return invalidf("11.2", "the ReInit that closed group %x names group %x, not %x", pred, ri.GroupID, rec.ID)
		}
		was, err := rosterOf(e.st.Tree())
		if err != nil {
			return err
		}
		if !sameSet(was, members) { // send.go
			return invalidf("11.2", "the successor's members %q are not those of group %x, %q; a ReInit's successor has the same members", dedupeSorted(members), pred, was)
		}
		// §11.2: the successor starts in epoch 1, set up by the Commit
		// that adds the old members, whose Welcome brings them in.
		if rec.Epoch != 1 {
			return invalidf("11.2", "a ReInit's successor starts in epoch 1 (its creator's Commit adds the old group's members); this one is in epoch %d", rec.Epoch)
		}
		if len(members) > 1 && len(rec.Welcome) == 0 {
			return invalidf("11.2", "the successor of group %x has members besides its creator but comes with no Welcome; pass the Welcome of the Commit that added them", pred)
		}
		if st == nil {
			return nil
		}
		if gc := st.GroupContext(); gc.Version != ri.Version || gc.CipherSuite != ri.CipherSuite {
			return invalidf("11.2", "the ReInit that closed group %x asks for version %d and cipher suite %d; the new group has version %d and cipher suite %d",
				pred, ri.Version, uint16(ri.CipherSuite), gc.Version, uint16(gc.CipherSuite))
		}
		return nil
	})
}

// checkOpaqueReInit checks that the Commit that started the last epoch of
// the opaque group head declares a ReInit of group id (roster_ad.go).
// Members refuse a Commit whose declaration differs from the ReInit it
// commits, and a committed ReInit ends the group: its last Commit is the
// one that closed it.
func (s *Service) checkOpaqueReInit(ctx context.Context, head GroupRecord, id []byte) error {
	notClosed := func(why string) error {
		return invalidf("11.2", "group %x was not closed by a committed ReInit naming group %x (%s); commit one, declaring its group_id in the Commit's authenticated_data, before creating its successor", head.ID, id, why)
	}
	if head.Epoch == 0 || head.EpochStartSeq == 0 {
		return notClosed("it has no Commit")
	}
	envs, err := s.store.GroupMessages(ctx, MessageQuery{GroupID: head.ID, FromSeq: head.EpochStartSeq, Limit: 1})
	if err != nil {
		return err
	}
	if len(envs) == 0 || envs[0].GroupSeq != head.EpochStartSeq || envs[0].ContentType != mls.ContentTypeCommit {
		return notClosed("the Commit that started its epoch is no longer stored")
	}
	m, err := mls.ParseMLSMessage(envs[0].Data)
	if err != nil {
		return fmt.Errorf("ds: stored Commit %d of group %x: %w", head.EpochStartSeq, head.ID, err)
	}
	decl, _, err := ParseRosterDeclaration(CommitAuthenticatedData(m))
	if err != nil || len(decl.ReInitGroupID) == 0 {
		return notClosed("its last Commit declares no ReInit")
	}
	if !bytes.Equal(decl.ReInitGroupID, id) {
		return invalidf("11.2", "the ReInit that closed group %x names group %x, not %x", head.ID, decl.ReInitGroupID, id)
	}
	return nil
}
