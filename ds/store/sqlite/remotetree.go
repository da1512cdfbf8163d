package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// PutRemoteTree implements ds.Store.
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
	return s.write(ctx, func(tx *sql.Conn) error {
		var epoch, start int64
		err := tx.QueryRowContext(ctx, "SELECT epoch, epoch_start_seq FROM groups WHERE id = ?", p.GroupID).Scan(&epoch, &start)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: group %x", ds.ErrNotFound, p.GroupID)
		} else if err != nil {
			return err
		}
		sender := ""
		if fromMember {
			var one int
			err = tx.QueryRowContext(ctx,
				"SELECT 1 FROM memberships WHERE group_id = ? AND client_id = ? AND until_seq IS NULL", p.GroupID, p.Sender).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("%w: %q is not a member of group %x", ds.ErrNotMember, p.Sender, p.GroupID)
			} else if err != nil {
				return err
			}
			sender = p.Sender
		}
		if want != epoch {
			return &ds.WrongEpochError{Expected: uint64(epoch), FetchFromSeq: uint64(start), Got: p.Tree.Epoch}
		}
		return storeRemoteTree(ctx, tx, p.GroupID, epoch, p.Tree.Blob, sender, p.At.UnixMicro())
	})
}

// storeRemoteTree writes the remote tree of epoch, replacing one of the
// same epoch, and deletes those of epochs before epoch-1.
func storeRemoteTree(ctx context.Context, tx *sql.Conn, groupID []byte, epoch int64, blob []byte, sender string, at int64) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO remote_trees (group_id, epoch, blob, sender, stored_at)
		VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (group_id, epoch) DO UPDATE SET blob = excluded.blob, sender = excluded.sender, stored_at = excluded.stored_at`,
		groupID, epoch, nonNil(blob), sender, at); err != nil {
		return err
	}
	return pruneRemoteTrees(ctx, tx, groupID, epoch)
}

// pruneRemoteTrees keeps the remote trees of the group's current epoch and
// the one before.
func pruneRemoteTrees(ctx context.Context, tx *sql.Conn, groupID []byte, current int64) error {
	_, err := tx.ExecContext(ctx, "DELETE FROM remote_trees WHERE group_id = ? AND epoch < ?", groupID, current-1)
	return err
}

// acceptRemoteTree is the remote-tree part of AcceptMessage's transaction:
// a Commit that moves the group to newEpoch stores p.RemoteTree, which must
// be for newEpoch, and drops the trees older than the previous epoch.
func acceptRemoteTree(ctx context.Context, tx *sql.Conn, p ds.AcceptParams, newEpoch int64) error {
	if p.ContentType != mls.ContentTypeCommit {
		return nil
	}
	if p.RemoteTree == nil {
		return pruneRemoteTrees(ctx, tx, p.GroupID, newEpoch)
	}
	if p.RemoteTree.Epoch != uint64(newEpoch) {
		return fmt.Errorf("%w: the remote tree is for epoch %d, but the Commit starts epoch %d", ds.ErrInvalidArgument, p.RemoteTree.Epoch, newEpoch)
	}
	return storeRemoteTree(ctx, tx, p.GroupID, newEpoch, p.RemoteTree.Blob, p.Sender, p.AcceptedAt.UnixMicro())
}

// RemoteTrees implements ds.Store. One statement, so that the epoch and
// the trees come from the same snapshot.
func (s *Store) RemoteTrees(ctx context.Context, groupID []byte) (uint64, []ds.RemoteTree, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT g.epoch, t.epoch, t.blob
		FROM groups g LEFT JOIN remote_trees t
		  ON t.group_id = g.id AND t.epoch <= g.epoch AND t.epoch + 1 >= g.epoch
		WHERE g.id = ? ORDER BY t.epoch DESC`, groupID)
	if err != nil {
		return 0, nil, err
	}
	defer rows.Close()
	found := false
	var current int64
	var out []ds.RemoteTree
	for rows.Next() {
		var epoch sql.NullInt64
		var blob []byte
		if err := rows.Scan(&current, &epoch, &blob); err != nil {
			return 0, nil, err
		}
		found = true
		if epoch.Valid {
			out = append(out, ds.RemoteTree{Epoch: uint64(epoch.Int64), Blob: blob})
		}
	}
	if err := rows.Err(); err != nil {
		return 0, nil, err
	}
	if !found {
		return 0, nil, fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
	}
	return uint64(current), out, nil
}
