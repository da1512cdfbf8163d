package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// PutRemoteTree implements ds.Store. It locks the group row, as
// AcceptMessage does, so that a Commit and an upload for the epoch it ends
// are ordered: the upload after the Commit fails with a WrongEpochError.
func (s *Store) PutRemoteTree(ctx context.Context, p ds.RemoteTreePut) error {
	return s.putRemoteTree(ctx, p, true)
}

// putRemoteTree stores p.Tree if it is of the group's current epoch. With
// fromMember, p.Sender must be a current member of the group and is
// recorded as the tree's sender; without (a deniable group, which has no
// members on the server), the tree has no sender.
func (s *Store) putRemoteTree(ctx context.Context, p ds.RemoteTreePut, fromMember bool) error {
	want, err := u64(p.Tree.Epoch)
	if err != nil {
		return err
	}
	if fromMember && !textOK(p.Sender) {
		return fmt.Errorf("%w: %q is not a member of group %x", ds.ErrNotMember, p.Sender, p.GroupID)
	}
	op, sender := "put deniable remote tree", ""
	if fromMember {
		op, sender = "put remote tree", p.Sender
	}
	groupID := nonNil(p.GroupID)
	at := time.UnixMicro(p.At.UnixMicro()).UTC()
	return s.tx(ctx, op, func(tx pgx.Tx) error {
		var epoch, start int64
		err := tx.QueryRow(ctx, "SELECT epoch, epoch_start_seq FROM groups WHERE id = $1 FOR UPDATE", groupID).Scan(&epoch, &start)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: group %x", ds.ErrNotFound, p.GroupID)
		} else if err != nil {
			return err
		}
		if fromMember {
			var member bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM memberships
				WHERE group_id = $1 AND client_id = $2 AND until_seq IS NULL)`, groupID, p.Sender).Scan(&member); err != nil {
				return err
			}
			if !member {
				return fmt.Errorf("%w: %q is not a member of group %x", ds.ErrNotMember, p.Sender, p.GroupID)
			}
		}
		if want != epoch {
			return &ds.WrongEpochError{Expected: uint64(epoch), FetchFromSeq: uint64(start), Got: p.Tree.Epoch}
		}
		return storeRemoteTree(ctx, tx, groupID, epoch, p.Tree.Blob, sender, at)
	})
}

// storeRemoteTree writes the remote tree of epoch, replacing one of the
// same epoch, and deletes those of epochs before epoch-1. The caller holds
// the group's row lock.
func storeRemoteTree(ctx context.Context, tx pgx.Tx, groupID []byte, epoch int64, blob []byte, sender string, at time.Time) error {
	if _, err := tx.Exec(ctx, upsertRemoteTree, groupID, epoch, nonNil(blob), sender, at); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, deleteOldRemoteTrees, groupID, epoch-1)
	return err
}

const (
	upsertRemoteTree = `INSERT INTO remote_trees (group_id, epoch, blob, sender, stored_at)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (group_id, epoch) DO UPDATE SET blob = excluded.blob, sender = excluded.sender, stored_at = excluded.stored_at`
	// deleteOldRemoteTrees keeps the remote trees of the group's current
	// epoch and the one before ($2).
	deleteOldRemoteTrees = "DELETE FROM remote_trees WHERE group_id = $1 AND epoch < $2"
)

// queueRemoteTree queues on w the remote-tree part of AcceptMessage's
// transaction (under the group's row lock): a Commit that moves the group
// to newEpoch stores p.RemoteTree, which must be for newEpoch, and drops
// the trees older than the previous epoch.
func queueRemoteTree(w *pgx.Batch, p ds.AcceptParams, newEpoch int64) error {
	if p.ContentType != mls.ContentTypeCommit {
		return nil
	}
	groupID := nonNil(p.GroupID)
	if p.RemoteTree != nil {
		if p.RemoteTree.Epoch != uint64(newEpoch) {
			return fmt.Errorf("%w: the remote tree is for epoch %d, but the Commit starts epoch %d", ds.ErrInvalidArgument, p.RemoteTree.Epoch, newEpoch)
		}
		at := time.UnixMicro(p.AcceptedAt.UnixMicro()).UTC()
		w.Queue(upsertRemoteTree, groupID, newEpoch, nonNil(p.RemoteTree.Blob), p.Sender, at)
	}
	w.Queue(deleteOldRemoteTrees, groupID, newEpoch-1)
	return nil
}

// RemoteTrees implements ds.Store. One statement, so that the epoch and
// the trees come from the same snapshot.
func (s *Store) RemoteTrees(ctx context.Context, groupID []byte) (uint64, []ds.RemoteTree, error) {
	rows, err := s.pool.Query(ctx, `SELECT g.epoch, t.epoch, t.blob
		FROM groups g LEFT JOIN remote_trees t
		  ON t.group_id = g.id AND t.epoch <= g.epoch AND t.epoch + 1 >= g.epoch
		WHERE g.id = $1 ORDER BY t.epoch DESC`, nonNil(groupID))
	if err != nil {
		return 0, nil, engineErr("remote trees", err)
	}
	defer rows.Close()
	found := false
	var current int64
	var out []ds.RemoteTree
	for rows.Next() {
		var epoch *int64
		var blob []byte
		if err := rows.Scan(&current, &epoch, &blob); err != nil {
			return 0, nil, engineErr("remote trees", err)
		}
		found = true
		if epoch != nil {
			out = append(out, ds.RemoteTree{Epoch: uint64(*epoch), Blob: blob})
		}
	}
	if err := rows.Err(); err != nil {
		return 0, nil, engineErr("remote trees", err)
	}
	if !found {
		return 0, nil, fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
	}
	return uint64(current), out, nil
}
