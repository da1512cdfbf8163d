package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// Deniable groups (ds/deniable.go): membership keys, Welcomes stored under
// KeyPackageRefs only, and reads without membership windows.

// queueFirstMembershipKey queues the storing of the membership key a
// deniable group is created with (CreateGroup's transaction).
func queueFirstMembershipKey(b *pgx.Batch, g ds.GroupRecord, epoch int64) {
	if g.MembershipKey == nil {
		return
	}
	b.Queue(`INSERT INTO membership_keys (group_id, epoch, key, start_seq, created_at) VALUES ($1, $2, $3, 1, $4)`,
		nonNil(g.ID), epoch, g.MembershipKey, ts(g.CreatedAt))
}

// queueDeniable queues on w the deniable part of AcceptMessage's
// transaction (under the group's row lock) for a message stored at seq
// that moved the group to newEpoch: the next membership key and the
// Welcome.
func queueDeniable(w *pgx.Batch, p ds.AcceptParams, seq, newEpoch int64, at time.Time) error {
	if p.ContentType != mls.ContentTypeCommit {
		return nil
	}
	groupID := nonNil(p.GroupID)
	if p.NextMembershipKey != nil {
		old, err := u64(p.Epoch)
		if err != nil {
			return err
		}
		w.Queue("UPDATE membership_keys SET superseded_at = $1 WHERE group_id = $2 AND epoch = $3 AND superseded_at IS NULL",
			at, groupID, old)
		w.Queue(`INSERT INTO membership_keys (group_id, epoch, key, start_seq, created_at) VALUES ($1, $2, $3, $4, $5)`,
			groupID, newEpoch, p.NextMembershipKey, seq, at)
	}
	if dw := p.DeniableWelcome; dw != nil {
		epoch, err := u64(dw.Epoch)
		if err != nil {
			return err
		}
		refs := make([][]byte, len(dw.Refs))
		for i, r := range dw.Refs {
			refs[i] = nonNil(r)
		}
		w.Queue(`INSERT INTO deniable_welcomes (ref, epoch, data, expires_at)
			SELECT r, $2, $3, $4 FROM unnest($1::bytea[]) AS r`,
			refs, epoch, nonNil(dw.Data), dw.ExpiresAt.UTC())
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
	var created time.Time
	var superseded *time.Time
	err = s.pool.QueryRow(ctx, `SELECT key, start_seq, created_at, superseded_at FROM membership_keys
		WHERE group_id = $1 AND epoch = $2`, nonNil(groupID), e).Scan(&k.Key, &start, &created, &superseded)
	if errors.Is(err, pgx.ErrNoRows) {
		return ds.MembershipKey{}, fmt.Errorf("%w: no membership key of epoch %d in group %x", ds.ErrNotFound, epoch, groupID)
	} else if err != nil {
		return ds.MembershipKey{}, engineErr("membership key", err)
	}
	k.StartSeq, k.CreatedAt, k.SupersededAt = uint64(start), created.UTC(), fromTS(superseded)
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
	maxBytes := int64(q.MaxBytes)
	if maxBytes <= 0 {
		maxBytes = 1 << 62
	}
	// As in Messages: the budget is applied on the sizes alone, and only
	// the rows within it are read in full.
	rows, err := s.pool.Query(ctx, `WITH page AS (
			SELECT seq, octet_length(data) AS len FROM messages
			WHERE group_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3
		), kept AS (
			SELECT seq FROM (
				SELECT seq, COALESCE(SUM(len) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
				FROM page) r
			WHERE before < $4
		)
		SELECT m.seq, m.epoch, m.sender, m.content_type, m.wire_format, m.data, m.accepted_at
		FROM kept JOIN messages m ON m.group_id = $1 AND m.seq = kept.seq
		ORDER BY m.seq`, nonNil(q.GroupID), from, q.Limit, maxBytes)
	if err != nil {
		return nil, engineErr("read group messages", err)
	}
	out, err := collectEnvelopes(rows, q.GroupID)
	return out, engineErr("read group messages", err)
}

// PutDeniableRemoteTree implements ds.Store.
func (s *Store) PutDeniableRemoteTree(ctx context.Context, p ds.RemoteTreePut) error {
	return s.putRemoteTree(ctx, p, false)
}

// DeniableWelcomes implements ds.Store.
func (s *Store) DeniableWelcomes(ctx context.Context, clientID string) ([]ds.WelcomeEvent, error) {
	if !textOK(clientID) {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT w.ref, w.epoch, w.data FROM deniable_welcomes w
		JOIN key_packages k ON k.ref = w.ref WHERE k.client_id = $1 ORDER BY w.id`, clientID)
	if err != nil {
		return nil, engineErr("deniable welcomes", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ds.WelcomeEvent, error) {
		var w ds.WelcomeEvent
		var epoch int64
		if err := r.Scan(&w.KeyPackageRef, &epoch, &w.Data); err != nil {
			return ds.WelcomeEvent{}, err
		}
		w.Epoch = uint64(epoch)
		return w, nil
	})
	return out, engineErr("deniable welcomes", err)
}

// DeleteDeniableWelcomes implements ds.Store.
func (s *Store) DeleteDeniableWelcomes(ctx context.Context, clientID string, refs [][]byte) (int, error) {
	if !textOK(clientID) || len(refs) == 0 {
		return 0, nil
	}
	rs := make([][]byte, len(refs))
	for i, r := range refs {
		rs[i] = nonNil(r)
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM deniable_welcomes w WHERE w.ref = ANY($1::bytea[])
		AND EXISTS (SELECT 1 FROM key_packages k WHERE k.ref = w.ref AND k.client_id = $2)`, rs, clientID)
	if err != nil {
		return 0, engineErr("delete deniable welcomes", err)
	}
	return int(tag.RowsAffected()), nil
}

// pruneDeniableGroup is pruneGroup for a deniable group: it has no
// members (and is never deleted for that) and nobody acknowledges, so its
// messages go by age only; its membership keys go once superseded before
// p.ExpireBefore.
func pruneDeniableGroup(ctx context.Context, tx pgx.Tx, id []byte, pruned int64, p ds.PruneParams, budget *int, res *ds.PruneResult) (more bool, err error) {
	if p.ExpireBefore.IsZero() {
		return false, nil
	}
	tag, err := tx.Exec(ctx, "DELETE FROM membership_keys WHERE group_id = $1 AND superseded_at IS NOT NULL AND superseded_at < $2", id, p.ExpireBefore)
	if err != nil {
		return false, err
	}
	*budget -= int(tag.RowsAffected())
	var target *int64
	if err := tx.QueryRow(ctx, `SELECT MAX(seq) FROM (SELECT seq, accepted_at FROM messages
			WHERE group_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) r WHERE accepted_at < $4`,
		id, pruned, max(*budget, 1), p.ExpireBefore).Scan(&target); err != nil {
		return false, err
	}
	if target == nil || *target <= pruned || *budget <= 0 {
		return *budget <= 0 && target != nil && *target > pruned, nil
	}
	bound := min(*target, pruned+int64(*budget))
	tag, err = tx.Exec(ctx, "DELETE FROM messages WHERE group_id = $1 AND seq > $2 AND seq <= $3", id, pruned, bound)
	if err != nil {
		return false, err
	}
	*budget -= int(tag.RowsAffected())
	res.Messages += int(tag.RowsAffected())
	if _, err := tx.Exec(ctx, "UPDATE groups SET pruned_seq = $1 WHERE id = $2", bound, id); err != nil {
		return false, err
	}
	return bound < *target, nil
}

// pruneDeniableWelcomes deletes up to limit deniable Welcomes that expired
// at now or whose KeyPackage is gone (nobody can fetch them any more).
func pruneDeniableWelcomes(ctx context.Context, tx pgx.Tx, p ds.PruneParams, limit int) (int, error) {
	if limit <= 0 {
		return 0, nil
	}
	tag, err := tx.Exec(ctx, `DELETE FROM deniable_welcomes WHERE id IN (
			SELECT w.id FROM deniable_welcomes w
			WHERE w.expires_at < $1 OR NOT EXISTS (SELECT 1 FROM key_packages k WHERE k.ref = w.ref)
			LIMIT $2)`, p.Now, limit)
	if err != nil {
		return 0, err
	}
	return int(tag.RowsAffected()), nil
}
