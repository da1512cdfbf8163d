package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// Retention (ds/prune.go). Every step is one write transaction of at most
// p.Limit deleted rows; the writer connection is free between steps.

// pruneGroupsPerStep bounds the groups one step looks at.
const pruneGroupsPerStep = 100

// pruneSenderScan bounds, in multiples of p.Limit, the range of GroupSeqs
// past the acknowledged prefix in which a member's own application
// messages are looked for.
const pruneSenderScan = 4

// PruneMessages implements ds.Store.
func (s *Store) PruneMessages(ctx context.Context, p ds.PruneParams) (ds.PruneResult, error) {
	if p.Limit <= 0 {
		p.Limit = 1000
	}
	var res ds.PruneResult
	err := s.write(ctx, func(tx *sql.Conn) error {
		res = ds.PruneResult{}
		ids, err := blobColumn(ctx, tx, "SELECT id FROM groups WHERE id >= ? ORDER BY id LIMIT ?",
			nonNil(p.From), min(p.Limit, pruneGroupsPerStep))
		if err != nil {
			return err
		}
		budget := p.Limit
		for _, id := range ids {
			more, err := pruneGroup(ctx, tx, id, p, &budget, &res)
			if err != nil {
				return fmt.Errorf("sqlite: prune group %x: %w", id, err)
			}
			if more || budget <= 0 {
				res.Next = id // go on with this group
				if !more {
					res.Next = append(append([]byte(nil), id...), 0) // right after it
				}
				return nil
			}
		}
		if len(ids) == min(p.Limit, pruneGroupsPerStep) {
			res.Next = append(append([]byte(nil), ids[len(ids)-1]...), 0)
		}
		return nil
	})
	if err != nil {
		return ds.PruneResult{}, err
	}
	return res, nil
}

// pruneGroup does what PruneMessages does for one group, within *budget
// deleted rows; more reports that the group has more to delete.
func pruneGroup(ctx context.Context, tx *sql.Conn, id []byte, p ds.PruneParams, budget *int, res *ds.PruneResult) (more bool, err error) {
	if err := settleLastSeq(ctx, tx, id); err != nil {
		return false, err
	}
	var mode int
	var lastSeq, pruned int64
	var snap sql.NullInt64
	err = tx.QueryRowContext(ctx, `SELECT g.mode, g.last_seq, g.pruned_seq,
			(SELECT s.state_version FROM group_snapshots s WHERE s.group_id = g.id)
		FROM groups g WHERE g.id = ?`, id).Scan(&mode, &lastSeq, &pruned, &snap)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil // deleted meanwhile
	}
	if err != nil {
		return false, err
	}
	if ds.Mode(mode) == ds.ModeDeniable {
		return pruneDeniableGroup(ctx, tx, id, pruned, p, budget, res) // deniable.go
	}
	var members bool
	if err := tx.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM memberships WHERE group_id = ? AND until_seq IS NULL)", id).Scan(&members); err != nil {
		return false, err
	}
	if !members {
		n, done, err := deleteGroupTx(ctx, tx, id, *budget)
		if err != nil {
			return false, err
		}
		*budget -= n
		res.Messages += n
		if done {
			res.Groups++
			*budget--
		}
		return !done, nil
	}
	snapVersion := int64(-1) // none: every state-log message stays
	if snap.Valid {
		snapVersion = snap.Int64
	}

	// The acknowledged prefix: l1 is the lowest position of a client that
	// still waits for messages (its cursor, or the GroupSeq before its
	// window), l2 the lowest of every other client.
	rows, err := tx.QueryContext(ctx, `SELECT w.client_id, MIN(MAX(COALESCE(c.acked, 0), w.from_seq - 1)) AS l
		FROM memberships w LEFT JOIN cursors c ON c.client_id = w.client_id AND c.group_id = w.group_id
		WHERE w.group_id = ? AND (w.until_seq IS NULL OR COALESCE(c.acked, 0) < w.until_seq)
		GROUP BY w.client_id ORDER BY l LIMIT 2`, id)
	if err != nil {
		return false, err
	}
	l1, l2, c1 := lastSeq, lastSeq, ""
	for i := 0; rows.Next(); i++ {
		var c string
		var l int64
		if err := rows.Scan(&c, &l); err != nil {
			rows.Close()
			return false, err
		}
		if i == 0 {
			c1, l1 = c, l
		} else {
			l2 = l
		}
	}
	if err := rows.Close(); err != nil {
		return false, err
	}

	// The expired prefix, looked for within the budget.
	target := l1
	if !p.ExpireBefore.IsZero() {
		var r sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MAX(seq) FROM (SELECT seq, accepted_at FROM messages
				WHERE group_id = ? AND seq > ? ORDER BY seq LIMIT ?) WHERE accepted_at < ?`,
			id, pruned, *budget, micros(p.ExpireBefore)).Scan(&r); err != nil {
			return false, err
		}
		if r.Valid {
			target = max(target, r.Int64)
		}
	}
	bound := min(target, pruned+int64(*budget))
	more = bound < target

	// What is below the new watermark goes, but for the state log after
	// the snapshot and the Commits of stored Welcomes (stragglers of
	// earlier steps too).
	if bound > pruned || pruned > 0 {
		if ds.Mode(mode) == ds.ModeTransparent {
			var held bool
			if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM messages
					WHERE group_id = ? AND seq <= ? AND state_version > ?)`, id, max(bound, pruned), snapVersion).Scan(&held); err != nil {
				return false, err
			}
			if held {
				res.NeedSnapshot = append(res.NeedSnapshot, append([]byte(nil), id...))
			}
		}
		r, err := tx.ExecContext(ctx, `DELETE FROM messages WHERE group_id = ?1 AND seq IN (
				SELECT m.seq FROM messages m WHERE m.group_id = ?1 AND m.seq <= ?2
					AND (m.state_version IS NULL OR m.state_version <= ?3)
					AND NOT EXISTS (SELECT 1 FROM welcomes w WHERE w.group_id = m.group_id AND w.commit_seq = m.seq)
				ORDER BY m.seq LIMIT ?4)`, id, max(bound, pruned), snapVersion, *budget)
		if err != nil {
			return false, err
		}
		n, _ := r.RowsAffected()
		*budget -= int(n)
		res.Messages += int(n)
		if *budget <= 0 {
			more = true
		}
		if bound > pruned {
			if _, err := tx.ExecContext(ctx, "UPDATE groups SET pruned_seq = ? WHERE id = ?", bound, id); err != nil {
				return false, err
			}
		}
	}
	if more || *budget <= 0 {
		return more, nil
	}

	// A member's own application messages that everybody else has: they
	// go without moving the watermark, since nobody misses them.
	lo, hi := max(bound, l1), min(l2, l1+int64(pruneSenderScan*p.Limit))
	if c1 != "" && hi > lo {
		r, err := tx.ExecContext(ctx, `DELETE FROM messages WHERE group_id = ?1 AND seq IN (
				SELECT seq FROM messages WHERE group_id = ?1 AND seq > ?2 AND seq <= ?3
					AND sender = ?4 AND content_type = ?5 AND state_version IS NULL
				ORDER BY seq LIMIT ?6)`, id, lo, hi, c1, int(mls.ContentTypeApplication), *budget)
		if err != nil {
			return false, err
		}
		n, _ := r.RowsAffected()
		*budget -= int(n)
		res.Messages += int(n)
	}
	return false, nil
}

// PruneKeyPackages implements ds.Store.
func (s *Store) PruneKeyPackages(ctx context.Context, p ds.PruneParams) (ds.PruneResult, error) {
	if p.Limit <= 0 {
		p.Limit = 1000
	}
	var res ds.PruneResult
	err := s.write(ctx, func(tx *sql.Conn) error {
		res = ds.PruneResult{}
		// Routes first: delivered, through a KeyPackage that expired or is
		// gone, or of an expired Welcome.
		r, err := tx.ExecContext(ctx, `DELETE FROM welcome_routes WHERE id IN (
				SELECT r.id FROM welcome_routes r
					JOIN welcomes w ON w.group_id = r.group_id AND w.commit_seq = r.commit_seq
					LEFT JOIN key_packages k ON k.ref = r.key_package_ref
				WHERE r.delivered = 1 OR k.ref IS NULL OR k.not_after < ?1 OR w.accepted_at < ?2
				LIMIT ?3)`, p.Now.UnixMicro(), micros(p.ExpireBefore), p.Limit)
		if err != nil {
			return err
		}
		routes, _ := r.RowsAffected()
		left := p.Limit - int(routes)
		if left > 0 {
			r, err = tx.ExecContext(ctx, `DELETE FROM welcomes WHERE rowid IN (
					SELECT w.rowid FROM welcomes w WHERE NOT EXISTS (
						SELECT 1 FROM welcome_routes r WHERE r.group_id = w.group_id AND r.commit_seq = w.commit_seq)
					LIMIT ?)`, left)
			if err != nil {
				return err
			}
			n, _ := r.RowsAffected()
			res.Welcomes = int(n)
			left -= int(n)
		}
		if left > 0 {
			r, err = tx.ExecContext(ctx, `DELETE FROM key_packages WHERE id IN (
					SELECT id FROM key_packages WHERE not_after < ? ORDER BY not_after LIMIT ?)`, p.Now.UnixMicro(), left)
			if err != nil {
				return err
			}
			n, _ := r.RowsAffected()
			res.KeyPackages = int(n)
			left -= int(n)
		}
		n, err := pruneDeniableWelcomes(ctx, tx, p, left) // deniable.go
		if err != nil {
			return err
		}
		res.Welcomes += n
		res.More = int(routes)+res.Rows() >= p.Limit
		return nil
	})
	if err != nil {
		return ds.PruneResult{}, fmt.Errorf("sqlite: prune key packages: %w", err)
	}
	return res, nil
}

// PrunedSeq implements ds.Store.
func (s *Store) PrunedSeq(ctx context.Context, groupID []byte) (uint64, error) {
	var n int64
	err := s.r.QueryRowContext(ctx, "SELECT pruned_seq FROM groups WHERE id = ?", nonNil(groupID)).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, ds.ErrNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("sqlite: pruned seq: %w", err)
	}
	return uint64(n), nil
}

// DeleteGroupIfEmpty implements ds.Store.
func (s *Store) DeleteGroupIfEmpty(ctx context.Context, groupID []byte, limit int) (bool, error) {
	if limit <= 0 {
		limit = 1000
	}
	var done bool
	err := s.write(ctx, func(tx *sql.Conn) error {
		var one int
		err := tx.QueryRowContext(ctx, "SELECT 1 FROM groups WHERE id = ?", nonNil(groupID)).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return ds.ErrNotFound
		}
		if err != nil {
			return err
		}
		var members bool
		if err := tx.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM memberships WHERE group_id = ? AND until_seq IS NULL)", groupID).Scan(&members); err != nil {
			return err
		}
		if members {
			return ds.ErrGroupNotEmpty
		}
		_, done, err = deleteGroupTx(ctx, tx, groupID, limit)
		return err
	})
	if err != nil && !errors.Is(err, ds.ErrNotFound) && !errors.Is(err, ds.ErrGroupNotEmpty) {
		err = fmt.Errorf("sqlite: delete group %x: %w", groupID, err)
	}
	return done, err
}

// deleteGroupTx deletes up to limit messages of a group without members
// and, once none is left, everything else of it; done reports the latter.
func deleteGroupTx(ctx context.Context, tx *sql.Conn, id []byte, limit int) (n int, done bool, err error) {
	if err := settleLastSeq(ctx, tx, id); err != nil {
		return 0, false, err
	}
	for _, q := range []string{
		"DELETE FROM welcome_routes WHERE group_id = ?",
		"DELETE FROM welcomes WHERE group_id = ?",
	} {
		if _, err := tx.ExecContext(ctx, q, id); err != nil {
			return 0, false, err
		}
	}
	r, err := tx.ExecContext(ctx, `DELETE FROM messages WHERE group_id = ?1 AND seq IN (
			SELECT seq FROM messages WHERE group_id = ?1 ORDER BY seq LIMIT ?2)`, id, max(limit, 1))
	if err != nil {
		return 0, false, err
	}
	d, _ := r.RowsAffected()
	if int(d) >= max(limit, 1) {
		var left bool
		if err := tx.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM messages WHERE group_id = ?)", id).Scan(&left); err != nil {
			return 0, false, err
		}
		if left {
			return int(d), false, nil
		}
	}
	for _, t := range []string{"join_links", "remote_trees", "group_snapshots", "cursors", "memberships", "membership_keys", "group_successors"} {
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+t+" WHERE group_id = ?", id); err != nil {
			return 0, false, fmt.Errorf("%s: %w", t, err)
		}
	}
	// A link to this group as a successor goes with it.
	if _, err := tx.ExecContext(ctx, "DELETE FROM group_successors WHERE successor_id = ?", id); err != nil {
		return 0, false, fmt.Errorf("group_successors: %w", err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM groups WHERE id = ?", id); err != nil {
		return 0, false, err
	}
	return int(d), true, nil
}

// prunerLocks holds one lock per database file: one pruner at a time in
// the process (SQLite has one writing process).
var prunerLocks sync.Map // path -> *sync.Mutex

// LockPruner implements ds.Store.
func (s *Store) LockPruner(ctx context.Context) (func(), error) {
	v, _ := prunerLocks.LoadOrStore(s.path, new(sync.Mutex))
	mu := v.(*sync.Mutex)
	if !mu.TryLock() {
		return nil, ds.ErrPrunerBusy
	}
	var once sync.Once
	return func() { once.Do(mu.Unlock) }, nil
}

// blobColumn runs a query whose rows are one BLOB each.
func blobColumn(ctx context.Context, tx *sql.Conn, q string, args ...any) ([][]byte, error) {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}
