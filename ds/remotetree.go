package ds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
)

// Remote trees. An opaque group's Delivery Service cannot read the group,
// so it cannot hand a joiner the ratchet tree (§12.4.3.3) as it does for a
// transparent group. Instead, members upload the GroupInfo and ratchet
// tree of an epoch encrypted under a key that only members of that epoch
// can derive (an MLS-Exporter secret, §8.5), and the Service stores the
// blob as given and serves it to the members and to the clients it routed
// a Welcome to. It keeps the blobs of the current and the previous epoch.

// RemoteTree is one epoch's encrypted GroupInfo and ratchet tree of an
// opaque group. The Service never looks inside Blob.
type RemoteTree struct {
	Epoch uint64
	Blob  []byte
}

// RemoteTreePut asks a Store to keep a remote tree uploaded by a member.
type RemoteTreePut struct {
	GroupID []byte
	Sender  string // must be a member now
	Tree    RemoteTree
	At      time.Time
}

// RemoteTreesResult is what GetRemoteTree answers: the group's current
// epoch and the stored remote trees, newest first (the current epoch's,
// then the previous epoch's, as far as stored).
type RemoteTreesResult struct {
	GroupID []byte
	Epoch   uint64
	Trees   []RemoteTree
}

// errTransparentRemoteTree refuses a remote tree for a transparent group.
func errTransparentRemoteTree(groupID []byte) error {
	return fmt.Errorf("%w: group %x is transparent: the Delivery Service keeps its ratchet tree itself (GetGroupInfo serves it); remote trees are for opaque groups only",
		ErrInvalidArgument, groupID)
}

// checkRemoteTreeBlob checks what the Service can check of a blob: that
// there is one, and its size.
func (s *Service) checkRemoteTreeBlob(blob []byte) error {
	if len(blob) == 0 {
		return fmt.Errorf("%w: the remote tree has an empty blob; encrypt the epoch's GroupInfo and ratchet tree into it", ErrInvalidArgument)
	}
	if len(blob) > s.cfg.MaxMessageSize {
		return &TooLargeError{Limit: s.cfg.MaxMessageSize, What: "remote tree bytes"}
	}
	return nil
}

// PutRemoteTree stores the remote tree t of an opaque group for its
// current epoch, replacing one stored for that epoch before; the trees of
// epochs before the previous one are dropped. Only members may upload; t.Epoch
// must be the group's current epoch (else *WrongEpochError, checked again
// in the Store's transaction); transparent groups refuse with
// ErrInvalidArgument.
func (s *Service) PutRemoteTree(ctx context.Context, client string, groupID []byte, t RemoteTree) error {
	if err := s.allow(client); err != nil {
		return err
	}
	if err := s.checkRemoteTreeBlob(t.Blob); err != nil {
		return err
	}
	if err := checkEpochBound("remote tree epoch", t.Epoch); err != nil {
		return err
	}
	head, err := s.checkMember(ctx, client, groupID)
	if err != nil {
		return err
	}
	if head.Mode != ModeOpaque {
		return errTransparentRemoteTree(head.ID)
	}
	if t.Epoch != head.Epoch {
		return &WrongEpochError{Expected: head.Epoch, FetchFromSeq: head.EpochStartSeq, Got: t.Epoch}
	}
	charge, err := s.meter.reserve(ctx, client, int64(len(t.Blob)))
	if err != nil {
		return err
	}
	defer charge.release()
	err = s.store.PutRemoteTree(ctx, RemoteTreePut{
		GroupID: bytes.Clone(groupID),
		Sender:  client,
		Tree:    RemoteTree{Epoch: t.Epoch, Blob: bytes.Clone(t.Blob)},
		At:      s.now(),
	})
	if err == nil {
		charge.keep()
	}
	return err
}

// RemoteTrees returns an opaque group's current epoch and its stored remote
// trees, newest first. Members may ask, and so may clients that hold a
// Welcome of the group not yet acknowledged (they need the tree to join).
func (s *Service) RemoteTrees(ctx context.Context, client string, groupID []byte) (RemoteTreesResult, error) {
	if err := s.allow(client); err != nil {
		return RemoteTreesResult{}, err
	}
	head, err := s.checkMember(ctx, client, groupID)
	if errors.Is(err, ErrNotMember) {
		ok, werr := s.hasPendingWelcome(ctx, client, groupID)
		if werr != nil {
			return RemoteTreesResult{}, werr
		}
		if !ok {
			return RemoteTreesResult{}, err
		}
		head, err = s.store.Group(ctx, groupID)
	}
	if err != nil {
		return RemoteTreesResult{}, err
	}
	if head.Mode != ModeOpaque {
		return RemoteTreesResult{}, errTransparentRemoteTree(head.ID)
	}
	epoch, trees, err := s.store.RemoteTrees(ctx, groupID)
	if err != nil {
		return RemoteTreesResult{}, err
	}
	return RemoteTreesResult{GroupID: head.ID, Epoch: epoch, Trees: trees}, nil
}

// hasPendingWelcome reports whether a Welcome of the group waits for the
// client.
func (s *Service) hasPendingWelcome(ctx context.Context, client string, groupID []byte) (bool, error) {
	ws, err := s.store.PendingWelcomes(ctx, client)
	if err != nil {
		return false, err
	}
	for _, w := range ws {
		if bytes.Equal(w.GroupID, groupID) {
			return true, nil
		}
	}
	return false, nil
}

// bundleRemoteTree checks the remote tree of an opaque commit bundle: it
// must be for the epoch the Commit starts.
func (s *Service) bundleRemoteTree(sub *submission, t *RemoteTree) (*RemoteTree, error) {
	if err := s.checkRemoteTreeBlob(t.Blob); err != nil {
		return nil, err
	}
	if t.Epoch != sub.epoch+1 {
		return nil, fmt.Errorf("%w: the bundle's remote tree is for epoch %d, but the Commit starts epoch %d; encrypt the new epoch's GroupInfo and tree",
			ErrInvalidArgument, t.Epoch, sub.epoch+1)
	}
	return &RemoteTree{Epoch: t.Epoch, Blob: bytes.Clone(t.Blob)}, nil
}
