package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// Deniable groups (ds/deniable.go): membership keys, Welcomes stored under
// KeyPackageRefs only, and reads without membership windows.

// putFirstMembershipKey stores the membership key a deniable group is
// created with (CreateGroup's transaction).
func putFirstMembershipKey(ctx context.Context, tx *sql.Conn, g ds.GroupRecord, epoch int64) error {
	if g.MembershipKey == nil {
		return nil
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO membership_keys (group_id, epoch, key, start_seq, created_at)
		VALUES (?, ?, ?, 1, ?)`, g.ID, epoch, g.MembershipKey, micros(g.CreatedAt))
	return err
}

// acceptDeniable is the deniable part of AcceptMessage's transaction for
// a message stored at seq that moved the group to newEpoch: the next
// membership key and the Welcome.
func acceptDeniable(ctx context.Context, tx *sql.Conn, p ds.AcceptParams, seq, newEpoch, at int64) error {
	if p.ContentType != mls.ContentTypeCommit {
		return nil
	}
	if p.NextMembershipKey != nil {
		old, err := u64(p.Epoch)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE membership_keys SET superseded_at = ? WHERE group_id = ? AND epoch = ? AND superseded_at IS NULL",
			at, p.GroupID, old); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO membership_keys (group_id, epoch, key, start_seq, created_at)
			VALUES (?, ?, ?, ?, ?)`, p.GroupID, newEpoch, p.NextMembershipKey, seq, at); err != nil {
			return err
		}
	}
	if w := p.DeniableWelcome; w != nil {
		epoch, err := u64(w.Epoch)
		if err != nil {
			return err
		}
		for _, ref := range w.Refs {
			if _, err := tx.ExecContext(ctx, "INSERT INTO deniable_welcomes (ref, epoch, data, expires_at) VALUES (?, ?, ?, ?)",
				nonNil(ref), epoch, nonNil(w.Data), w.ExpiresAt.UnixMicro()); err != nil {
				return err
			}
		}
	}
	return nil
}

// MembershipKey implements ds.Store.
func (s *Store) MembershipKey(ctx context.Context, groupID []byte, epoch uint64) (ds.MembershipKey, error) {
	e, err := u64(epoch)
	if err != nil {
		return ds.MembershipKey{}, fmt.Errorf("%w: no key of epoch %d", ds.ErrNotFound, epoch)
	}
	k := ds.MembershipKey{GroupID: bytes.Clone(groupID), Epoch: epoch}
	var start int64
	var created, superseded sql.NullInt64
	err = s.r.QueryRowContext(ctx, `SELECT key, start_seq, created_at, superseded_at FROM membership_keys
		WHERE group_id = ? AND epoch = ?`, nonNil(groupID), e).Scan(&k.Key, &start, &created, &superseded)
	if errors.Is(err, sql.ErrNoRows) {
		return ds.MembershipKey{}, fmt.Errorf("%w: no membership key of epoch %d in group %x", ds.ErrNotFound, epoch, groupID)
	} else if err != nil {
		return ds.MembershipKey{}, err
	}
	k.StartSeq, k.CreatedAt, k.SupersededAt = uint64(start), fromMicros(created), fromMicros(superseded)
	return k, nil
}

// GroupMessages implements ds.Store.
func (s *Store) GroupMessages(ctx context.Context, q ds.MessageQuery) ([]ds.Envelope, error) {
	if q.Limit <= 0 {
		return nil, nil
	}
	from, err := u64(q.FromSeq)
	if err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT seq, epoch, sender, content_type, wire_format, data, accepted_at
		FROM messages WHERE group_id = ? AND seq >= ? ORDER BY seq LIMIT ?`, nonNil(q.GroupID), from, q.Limit)
	if err != nil {
		return nil, err
	}
	return scanEnvelopes(rows, q)
}

// PutDeniableRemoteTree implements ds.Store.
func (s *Store) PutDeniableRemoteTree(ctx context.Context, p ds.RemoteTreePut) error {
	return s.putRemoteTree(ctx, p, false)
}

// DeniableWelcomes implements ds.Store.
func (s *Store) DeniableWelcomes(ctx context.Context, clientID string) ([]ds.WelcomeEvent, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT w.ref, w.epoch, w.data FROM deniable_welcomes w
		JOIN key_packages k ON k.ref = w.ref WHERE k.client_id = ? ORDER BY w.id`, clientID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ds.WelcomeEvent
	for rows.Next() {
		var w ds.WelcomeEvent
		var epoch int64
		if err := rows.Scan(&w.KeyPackageRef, &epoch, &w.Data); err != nil {
			return nil, err
		}
		w.Epoch = uint64(epoch)
		out = append(out, w)
	}
	return out, rows.Err()
}

// DeleteDeniableWelcomes implements ds.Store.
func (s *Store) DeleteDeniableWelcomes(ctx context.Context, clientID string, refs [][]byte) (int, error) {
	n := 0
	err := s.write(ctx, func(tx *sql.Conn) error {
		n = 0
		for _, ref := range refs {
			r, err := tx.ExecContext(ctx, `DELETE FROM deniable_welcomes WHERE ref = ?1
				AND EXISTS (SELECT 1 FROM key_packages k WHERE k.ref = ?1 AND k.client_id = ?2)`, nonNil(ref), clientID)
			if err != nil {
				return err
			}
			d, _ := r.RowsAffected()
			n += int(d)
		}
		return nil
	})
	return n, err
}

// pruneDeniableGroup is pruneGroup for a deniable group: it has no
// members (and is never deleted for that) and nobody acknowledges, so its
// messages go by age only; its membership keys go once superseded before
// p.ExpireBefore.
func pruneDeniableGroup(ctx context.Context, tx *sql.Conn, id []byte, pruned int64, p ds.PruneParams, budget *int, res *ds.PruneResult) (more bool, err error) {
	if p.ExpireBefore.IsZero() {
		return false, nil
	}
	exp := p.ExpireBefore.UnixMicro()
	r, err := tx.ExecContext(ctx, "DELETE FROM membership_keys WHERE group_id = ? AND superseded_at IS NOT NULL AND superseded_at < ?", id, exp)
	if err != nil {
		return false, err
	}
	n, _ := r.RowsAffected()
	*budget -= int(n)
	var target sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(seq) FROM (SELECT seq, accepted_at FROM messages
			WHERE group_id = ? AND seq > ? ORDER BY seq LIMIT ?) WHERE accepted_at < ?`,
		id, pruned, max(*budget, 1), exp).Scan(&target); err != nil {
		return false, err
	}
	if !target.Valid || target.Int64 <= pruned || *budget <= 0 {
		return *budget <= 0 && target.Valid && target.Int64 > pruned, nil
	}
	bound := min(target.Int64, pruned+int64(*budget))
	r, err = tx.ExecContext(ctx, "DELETE FROM messages WHERE group_id = ? AND seq > ? AND seq <= ?", id, pruned, bound)
	if err != nil {
		return false, err
	}
	n, _ = r.RowsAffected()
	*budget -= int(n)
	res.Messages += int(n)
	if _, err := tx.ExecContext(ctx, "UPDATE groups SET pruned_seq = ? WHERE id = ?", bound, id); err != nil {
		return false, err
	}
	return bound < target.Int64, nil
}

// pruneDeniableWelcomes deletes up to limit deniable Welcomes that expired
// at now or whose KeyPackage is gone (nobody can fetch them any more).
func pruneDeniableWelcomes(ctx context.Context, tx *sql.Conn, p ds.PruneParams, limit int) (int, error) {
	if limit <= 0 {
		return 0, nil
	}
	r, err := tx.ExecContext(ctx, `DELETE FROM deniable_welcomes WHERE id IN (
			SELECT w.id FROM deniable_welcomes w
			WHERE w.expires_at < ?1 OR NOT EXISTS (SELECT 1 FROM key_packages k WHERE k.ref = w.ref)
			LIMIT ?2)`, p.Now.UnixMicro(), limit)
	if err != nil {
		return 0, err
	}
	n, _ := r.RowsAffected()
	return int(n), nil
}
