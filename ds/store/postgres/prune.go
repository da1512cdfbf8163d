package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// Retention (ds/prune.go). Every step is one READ COMMITTED transaction of
// at most p.Limit deleted rows. Pruning takes no lock on a group that it
// does not delete until it moves the group's watermark at the end: what it
// reads (cursors, windows, the snapshot's version) only ever moves towards
// "more may go", and new membership windows start after every message it
// can see, so a stale read only keeps a message longer. Deleting an empty
// group locks its row first, as every accept does.

// prunerLock is the key of the session-level advisory lock that one pruner
// of all nodes holds ("mlsdsprn" in ASCII).
const prunerLock int64 = 0x6d6c736473707266

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
	err := s.tx(ctx, "prune messages", func(tx pgx.Tx) error {
		res = ds.PruneResult{}
		rows, err := tx.Query(ctx, "SELECT id FROM groups WHERE id >= $1 ORDER BY id LIMIT $2",
			nonNil(p.From), min(p.Limit, pruneGroupsPerStep))
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
		if err != nil {
			return err
		}
		budget := p.Limit
		for _, id := range ids {
			more, err := pruneGroup(ctx, tx, id, p, &budget, &res)
			if err != nil {
				return fmt.Errorf("group %x: %w", id, err)
			}
			if more || budget <= 0 {
				res.Next = id
				if !more {
					res.Next = append(append([]byte(nil), id...), 0)
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
func pruneGroup(ctx context.Context, tx pgx.Tx, id []byte, p ds.PruneParams, budget *int, res *ds.PruneResult) (more bool, err error) {
	var mode int
	var lastSeq, pruned int64
	var snap *int64
	var members bool
	err = tx.QueryRow(ctx, `SELECT g.mode, g.last_seq, g.pruned_seq,
			(SELECT s.state_version FROM group_snapshots s WHERE s.group_id = g.id),
			EXISTS (SELECT 1 FROM memberships m WHERE m.group_id = g.id AND m.until_seq IS NULL)
		FROM groups g WHERE g.id = $1`, id).Scan(&mode, &lastSeq, &pruned, &snap, &members)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil // deleted meanwhile
	}
	if err != nil {
		return false, err
	}
	if ds.Mode(mode) == ds.ModeDeniable {
		return pruneDeniableGroup(ctx, tx, id, pruned, p, budget, res) // deniable.go
	}
	if !members {
		n, done, err := deleteGroupTx(ctx, tx, id, *budget)
		if errors.Is(err, ds.ErrGroupNotEmpty) || errors.Is(err, ds.ErrNotFound) {
			return false, nil // joined or deleted meanwhile
		}
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
	if snap != nil {
		snapVersion = *snap
	}

	// The acknowledged prefix: l1 is the lowest position of a client that
	// still waits for messages (its cursor, or the GroupSeq before its
	// window), l2 the lowest of every other client.
	l1, l2, c1 := lastSeq, lastSeq, ""
	i := 0
	rows, err := tx.Query(ctx, `SELECT w.client_id, MIN(GREATEST(COALESCE(c.acked, 0), w.from_seq - 1)) AS l
		FROM memberships w LEFT JOIN cursors c ON c.client_id = w.client_id AND c.group_id = w.group_id
		WHERE w.group_id = $1 AND (w.until_seq IS NULL OR COALESCE(c.acked, 0) < w.until_seq)
		GROUP BY w.client_id ORDER BY l LIMIT 2`, id)
	if err != nil {
		return false, err
	}
	for rows.Next() {
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
		i++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return false, err
	}

	// The expired prefix, looked for within the budget.
	target := l1
	if !p.ExpireBefore.IsZero() {
		var r *int64
		if err := tx.QueryRow(ctx, `SELECT MAX(seq) FROM (SELECT seq, accepted_at FROM messages
				WHERE group_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) m WHERE accepted_at < $4`,
			id, pruned, *budget, p.ExpireBefore).Scan(&r); err != nil {
			return false, err
		}
		if r != nil {
			target = max(target, *r)
		}
	}
	bound := min(target, pruned+int64(*budget))
	more = bound < target

	// What is below the new watermark goes, but for the state log after
	// the snapshot and the Commits of stored Welcomes (stragglers of
	// earlier steps too).
	upTo := max(bound, pruned)
	if upTo > 0 {
		if ds.Mode(mode) == ds.ModeTransparent {
			var held bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM messages
					WHERE group_id = $1 AND seq <= $2 AND state_version > $3)`, id, upTo, snapVersion).Scan(&held); err != nil {
				return false, err
			}
			if held {
				res.NeedSnapshot = append(res.NeedSnapshot, append([]byte(nil), id...))
			}
		}
		tag, err := tx.Exec(ctx, `DELETE FROM messages WHERE group_id = $1 AND seq IN (
				SELECT m.seq FROM messages m WHERE m.group_id = $1 AND m.seq <= $2
					AND (m.state_version IS NULL OR m.state_version <= $3)
					AND NOT EXISTS (SELECT 1 FROM welcomes w WHERE w.group_id = m.group_id AND w.commit_seq = m.seq)
				ORDER BY m.seq LIMIT $4)`, id, upTo, snapVersion, *budget)
		if err != nil {
			return false, err
		}
		n := int(tag.RowsAffected())
		*budget -= n
		res.Messages += n
		if *budget <= 0 {
			more = true
		}
		if bound > pruned {
			if _, err := tx.Exec(ctx, "UPDATE groups SET pruned_seq = $2 WHERE id = $1 AND pruned_seq < $2", id, bound); err != nil {
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
		tag, err := tx.Exec(ctx, `DELETE FROM messages WHERE group_id = $1 AND seq IN (
				SELECT seq FROM messages WHERE group_id = $1 AND seq > $2 AND seq <= $3
					AND sender = $4 AND content_type = $5 AND state_version IS NULL
				ORDER BY seq LIMIT $6)`, id, lo, hi, c1, int(mls.ContentTypeApplication), *budget)
		if err != nil {
			return false, err
		}
		n := int(tag.RowsAffected())
		*budget -= n
		res.Messages += n
	}
	return false, nil
}

// PruneKeyPackages implements ds.Store.
func (s *Store) PruneKeyPackages(ctx context.Context, p ds.PruneParams) (ds.PruneResult, error) {
	if p.Limit <= 0 {
		p.Limit = 1000
	}
	var res ds.PruneResult
	err := s.tx(ctx, "prune key packages", func(tx pgx.Tx) error {
		res = ds.PruneResult{}
		// Routes first: delivered, through a KeyPackage that expired or is
		// gone, or of an expired Welcome.
		tag, err := tx.Exec(ctx, `DELETE FROM welcome_routes WHERE id IN (
				SELECT r.id FROM welcome_routes r
					JOIN welcomes w ON w.group_id = r.group_id AND w.commit_seq = r.commit_seq
					LEFT JOIN key_packages k ON k.ref = r.key_package_ref
				WHERE r.delivered OR k.ref IS NULL OR k.not_after < $1 OR w.accepted_at < $2
				LIMIT $3)`, p.Now, ts(p.ExpireBefore), p.Limit)
		if err != nil {
			return err
		}
		routes := int(tag.RowsAffected())
		left := p.Limit - routes
		if left > 0 {
			tag, err = tx.Exec(ctx, `DELETE FROM welcomes WHERE (group_id, commit_seq) IN (
					SELECT w.group_id, w.commit_seq FROM welcomes w WHERE NOT EXISTS (
						SELECT 1 FROM welcome_routes r WHERE r.group_id = w.group_id AND r.commit_seq = w.commit_seq)
					LIMIT $1)`, left)
			if err != nil {
				return err
			}
			res.Welcomes = int(tag.RowsAffected())
			left -= res.Welcomes
		}
		if left > 0 {
			tag, err = tx.Exec(ctx, `DELETE FROM key_packages WHERE id IN (
					SELECT id FROM key_packages WHERE not_after < $1 ORDER BY not_after LIMIT $2)`, p.Now, left)
			if err != nil {
				return err
			}
			res.KeyPackages = int(tag.RowsAffected())
			left -= res.KeyPackages
		}
		n, err := pruneDeniableWelcomes(ctx, tx, p, left) // deniable.go
		if err != nil {
			return err
		}
		res.Welcomes += n
		res.More = routes+res.Rows() >= p.Limit
		return nil
	})
	if err != nil {
		return ds.PruneResult{}, err
	}
	return res, nil
}

// PrunedSeq implements ds.Store.
func (s *Store) PrunedSeq(ctx context.Context, groupID []byte) (uint64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, "SELECT pruned_seq FROM groups WHERE id = $1", nonNil(groupID)).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, ds.ErrNotFound
	}
	if err != nil {
		return 0, engineErr("pruned seq", err)
	}
	return uint64(n), nil
}

// DeleteGroupIfEmpty implements ds.Store.
func (s *Store) DeleteGroupIfEmpty(ctx context.Context, groupID []byte, limit int) (bool, error) {
	if limit <= 0 {
		limit = 1000
	}
	var done bool
	err := s.tx(ctx, "delete empty group", func(tx pgx.Tx) error {
		var err error
		_, done, err = deleteGroupTx(ctx, tx, nonNil(groupID), limit)
		return err
	})
	return done, err
}

// deleteGroupTx locks the group, checks that it has no member, and deletes
// up to limit of its messages and, once none is left, everything else of
// it; done reports the latter.
func deleteGroupTx(ctx context.Context, tx pgx.Tx, id []byte, limit int) (n int, done bool, err error) {
	var members bool
	err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM memberships m WHERE m.group_id = g.id AND m.until_seq IS NULL)
		FROM groups g WHERE g.id = $1 FOR UPDATE OF g`, id).Scan(&members)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, fmt.Errorf("%w: group %x", ds.ErrNotFound, id)
	}
	if err != nil {
		return 0, false, err
	}
	if members {
		return 0, false, ds.ErrGroupNotEmpty
	}
	for _, q := range []string{
		"DELETE FROM welcome_routes WHERE group_id = $1",
		"DELETE FROM welcomes WHERE group_id = $1",
	} {
		if _, err := tx.Exec(ctx, q, id); err != nil {
			return 0, false, err
		}
	}
	limit = max(limit, 1)
	tag, err := tx.Exec(ctx, `DELETE FROM messages WHERE group_id = $1 AND seq IN (
			SELECT seq FROM messages WHERE group_id = $1 ORDER BY seq LIMIT $2)`, id, limit)
	if err != nil {
		return 0, false, err
	}
	d := int(tag.RowsAffected())
	if d >= limit {
		var left bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM messages WHERE group_id = $1)", id).Scan(&left); err != nil {
			return 0, false, err
		}
		if left {
			return d, false, nil
		}
	}
	for _, t := range []string{"join_links", "remote_trees", "group_snapshots", "cursors", "memberships", "membership_keys", "group_successors"} {
		if _, err := tx.Exec(ctx, "DELETE FROM "+t+" WHERE group_id = $1", id); err != nil {
			return 0, false, fmt.Errorf("%s: %w", t, err)
		}
	}
	// A link to this group as a successor goes with it.
	if _, err := tx.Exec(ctx, "DELETE FROM group_successors WHERE successor_id = $1", id); err != nil {
		return 0, false, fmt.Errorf("group_successors: %w", err)
	}
	if _, err := tx.Exec(ctx, "DELETE FROM groups WHERE id = $1", id); err != nil {
		return 0, false, err
	}
	return d, true, nil
}

// LockPruner implements ds.Store with a session-level advisory lock on a
// connection of its own, held until unlock: one pruner at a time among all
// the nodes that share the database. If the connection dies, PostgreSQL
// releases the lock with it.
func (s *Store) LockPruner(ctx context.Context) (func(), error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, engineErr("lock pruner", err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", prunerLock).Scan(&ok); err != nil {
		conn.Release()
		return nil, engineErr("lock pruner", err)
	}
	if !ok {
		conn.Release()
		return nil, ds.ErrPrunerBusy
	}
	released := false
	return func() {
		if released {
			return
		}
		released = true
		unlockPruner(conn)
	}, nil
}

func unlockPruner(conn *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_advisory_unlock($1)", prunerLock).Scan(&ok); err != nil || !ok {
		// Whatever the state of the session, closing it frees the lock.
		conn.Conn().Close(ctx)
	}
	conn.Release()
}
