package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// CreateGroup implements ds.Store.
func (s *Store) CreateGroup(ctx context.Context, g ds.GroupRecord, members []string) error {
	epoch, err := u64(g.Epoch)
	if err != nil {
		return err
	}
	return s.write(ctx, func(tx *sql.Conn) error {
		var one int
		err := tx.QueryRowContext(ctx, "SELECT 1 FROM groups WHERE id = ?", g.ID).Scan(&one)
		if err == nil {
			return fmt.Errorf("%w: group %x", ds.ErrAlreadyExists, g.ID)
		} else if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO groups
			(id, mode, cipher_suite, creator, created_at, epoch, epoch_start_seq, last_seq, state_version, group_info)
			VALUES (?, ?, ?, ?, ?, ?, 1, 0, 0, ?)`,
			g.ID, int64(g.Mode), int64(g.CipherSuite), g.Creator, micros(g.CreatedAt), epoch, g.GroupInfo); err != nil {
			return err
		}
		if err := linkSuccessor(ctx, tx, g); err != nil {
			return err
		}
		if g.State != nil {
			if err := putSnapshot(ctx, tx, g.ID, 0, g.State); err != nil {
				return err
			}
		}
		if err := consumeKeyPackages(ctx, tx, g.ConsumeKeyPackages, micros(g.CreatedAt)); err != nil {
			return err
		}
		seen := make(map[string]bool)
		for _, m := range members {
			if seen[m] {
				continue
			}
			seen[m] = true
			if err := addMember(ctx, tx, g.ID, m, 1); err != nil {
				return err
			}
		}
		if err := putFirstMembershipKey(ctx, tx, g, epoch); err != nil { // deniable.go
			return err
		}
		return putCreationWelcome(ctx, tx, g, epoch)
	})
}

// putCreationWelcome stores the Welcome of a group's creation, if any,
// with commit_seq 0, and its routes.
func putCreationWelcome(ctx context.Context, tx *sql.Conn, g ds.GroupRecord, epoch int64) error {
	if g.Welcome == nil {
		return nil
	}
	if _, err := tx.ExecContext(ctx,
		"INSERT INTO welcomes (group_id, commit_seq, epoch, data, accepted_at) VALUES (?, 0, ?, ?, ?)",
		g.ID, epoch, g.Welcome, micros(g.CreatedAt)); err != nil {
		return err
	}
	for _, w := range g.WelcomeTo {
		if _, err := tx.ExecContext(ctx, `INSERT INTO welcome_routes
			(client_id, group_id, commit_seq, key_package_ref) VALUES (?, ?, 0, ?)
			ON CONFLICT (client_id, group_id, commit_seq) DO NOTHING`,
			w.ClientID, g.ID, nonNil(w.KeyPackageRef)); err != nil {
			return err
		}
	}
	return nil
}

// addMember opens a membership window starting at from and moves the
// client's cursor to at least from-1.
func addMember(ctx context.Context, tx *sql.Conn, groupID []byte, client string, from int64) error {
	if _, err := tx.ExecContext(ctx,
		"INSERT INTO memberships (group_id, client_id, from_seq, until_seq) VALUES (?, ?, ?, NULL)",
		groupID, client, from); err != nil {
		return fmt.Errorf("sqlite: add %q to group %x: %w", client, groupID, err)
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO cursors (client_id, group_id, acked) VALUES (?, ?, ?)
		ON CONFLICT (client_id, group_id) DO UPDATE SET acked = MAX(acked, excluded.acked)`,
		client, groupID, from-1)
	return err
}

// groupColumns are the columns of a groups row t that scanGroup reads.
func groupColumns(t string) string {
	return t + ".id, " + t + ".mode, " + t + ".cipher_suite, " + t + ".creator, " + t + ".created_at, " +
		t + ".epoch, " + t + ".epoch_start_seq, " + lastSeq(t) + ", " + t + ".state_version"
}

// lastSeq is the SQL expression of the GroupSeq of the last message of
// the group in the groups row t (0 if none).
//
// The column groups.last_seq is only a floor of it: an application
// message accepted in a batch (appendBatch) does not write it, which would
// cost a statement and a page of the groups table per group and batch;
// its head is the last message stored. The column is written by every
// message that changes the group's head (acceptTx) and settled before
// messages are deleted (settleLastSeq), so that the head never goes back.
func lastSeq(t string) string {
	return "MAX(" + t + ".last_seq, " + lastStored(t) + ")"
}

// lastStored is the SQL expression of the GroupSeq of the last message
// stored of the group in the groups row t (0 if none).
func lastStored(t string) string {
	return "IFNULL((SELECT m.seq FROM messages m WHERE m.group_id = " + t + ".id ORDER BY m.seq DESC LIMIT 1), 0)"
}

// settleLastSeq writes the group's head into groups.last_seq (see lastSeq),
// as needed before its messages are deleted. It writes nothing when the
// column is right already.
func settleLastSeq(ctx context.Context, tx *sql.Conn, id []byte) error {
	_, err := tx.ExecContext(ctx, "UPDATE groups SET last_seq = "+lastStored("groups")+
		" WHERE id = ? AND last_seq < "+lastStored("groups"), id)
	return err
}

func scanGroup(row interface{ Scan(...any) error }, extra ...any) (ds.GroupRecord, error) {
	var g ds.GroupRecord
	var mode, cs, epoch, start, last, version int64
	var created sql.NullInt64
	dst := append([]any{&g.ID, &mode, &cs, &g.Creator, &created, &epoch, &start, &last, &version}, extra...)
	if err := row.Scan(dst...); err != nil {
		return ds.GroupRecord{}, err
	}
	g.Mode = ds.Mode(mode)
	g.CipherSuite = mls.CipherSuite(cs)
	g.CreatedAt = fromMicros(created)
	g.Epoch, g.EpochStartSeq, g.LastSeq, g.StateVersion = uint64(epoch), uint64(start), uint64(last), uint64(version)
	return g, nil
}

// Group implements ds.Store.
func (s *Store) Group(ctx context.Context, groupID []byte) (ds.GroupRecord, error) {
	g, err := scanGroup(s.r.QueryRowContext(ctx, "SELECT "+groupColumns("groups")+" FROM groups WHERE id = ?", groupID))
	if errors.Is(err, sql.ErrNoRows) {
		return ds.GroupRecord{}, fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
	}
	return g, err
}

// GroupState implements ds.Store.
func (s *Store) GroupState(ctx context.Context, groupID []byte) (ds.GroupRecord, error) {
	var state, gi []byte
	var snapVersion sql.NullInt64
	// One statement, so that the head and the snapshot are read together.
	g, err := scanGroup(s.r.QueryRowContext(ctx,
		"SELECT "+groupColumns("g")+`, s.state, s.state_version, g.group_info
		FROM groups g LEFT JOIN group_snapshots s ON s.group_id = g.id WHERE g.id = ?`, groupID), &state, &snapVersion, &gi)
	if errors.Is(err, sql.ErrNoRows) {
		return ds.GroupRecord{}, fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
	}
	g.State, g.SnapshotVersion, g.GroupInfo = state, uint64(snapVersion.Int64), gi
	return g, err
}

// StateLog implements ds.Store.
func (s *Store) StateLog(ctx context.Context, groupID []byte, afterVersion uint64, limit int) ([]ds.StateLogEntry, error) {
	after, err := u64(afterVersion)
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	// Read the group and its log in one transaction, so that an unknown
	// group is told apart from an empty log.
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	var one int
	if err := tx.QueryRowContext(ctx, "SELECT 1 FROM groups WHERE id = ?", groupID).Scan(&one); errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
	} else if err != nil {
		return nil, err
	}
	rows, err := tx.QueryContext(ctx, `SELECT state_version, seq, hash, data FROM messages
		WHERE group_id = ? AND state_version > ? ORDER BY state_version LIMIT ?`, groupID, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ds.StateLogEntry
	for rows.Next() {
		var e ds.StateLogEntry
		var v, seq int64
		if err := rows.Scan(&v, &seq, &e.Hash, &e.Data); err != nil {
			return nil, err
		}
		e.Version, e.GroupSeq = uint64(v), uint64(seq)
		out = append(out, e)
	}
	return out, rows.Err()
}

// PutSnapshot implements ds.Store.
func (s *Store) PutSnapshot(ctx context.Context, groupID []byte, version uint64, state []byte) error {
	v, err := u64(version)
	if err != nil {
		return err
	}
	return s.write(ctx, func(tx *sql.Conn) error {
		var current int64
		err := tx.QueryRowContext(ctx, "SELECT state_version FROM groups WHERE id = ?", groupID).Scan(&current)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
		} else if err != nil {
			return err
		}
		if v > current {
			return fmt.Errorf("%w: snapshot of state version %d, but group %x is at %d", ds.ErrInvalidArgument, v, groupID, current)
		}
		s.hot.keep = true // a snapshot changes no head and no membership
		return putSnapshot(ctx, tx, groupID, v, state)
	})
}

// putSnapshot stores a snapshot unless a newer one is stored.
func putSnapshot(ctx context.Context, tx *sql.Conn, groupID []byte, version int64, state []byte) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO group_snapshots (group_id, state_version, state) VALUES (?, ?, ?)
		ON CONFLICT (group_id) DO UPDATE SET state_version = excluded.state_version, state = excluded.state
		WHERE excluded.state_version > group_snapshots.state_version`, groupID, version, nonNil(state))
	return err
}

// Members implements ds.Store.
func (s *Store) Members(ctx context.Context, groupID []byte) ([]string, error) {
	rows, err := s.r.QueryContext(ctx,
		"SELECT client_id FROM memberships WHERE group_id = ? AND until_seq IS NULL ORDER BY client_id", groupID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// Memberships implements ds.Store.
func (s *Store) Memberships(ctx context.Context, groupID []byte, clientID string) ([]ds.MembershipWindow, error) {
	rows, err := s.r.QueryContext(ctx,
		"SELECT from_seq, until_seq FROM memberships WHERE group_id = ? AND client_id = ? ORDER BY from_seq", groupID, clientID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ds.MembershipWindow
	for rows.Next() {
		var from int64
		var until sql.NullInt64
		if err := rows.Scan(&from, &until); err != nil {
			return nil, err
		}
		out = append(out, ds.MembershipWindow{FromSeq: uint64(from), UntilSeq: uint64(until.Int64)})
	}
	return out, rows.Err()
}

// MessageByHash implements ds.Store.
func (s *Store) MessageByHash(ctx context.Context, groupID, hash []byte) (ds.Receipt, error) {
	return receiptByHash(ctx, s.r, groupID, hash)
}

func receiptByHash(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, groupID, hash []byte) (ds.Receipt, error) {
	var seq, epoch int64
	var at sql.NullInt64
	err := q.QueryRowContext(ctx,
		"SELECT seq, epoch, accepted_at FROM messages WHERE group_id = ? AND hash = ?", groupID, hash).Scan(&seq, &epoch, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return ds.Receipt{}, fmt.Errorf("%w: no message with this hash in group %x", ds.ErrNotFound, groupID)
	}
	if err != nil {
		return ds.Receipt{}, err
	}
	return ds.Receipt{GroupID: bytes.Clone(groupID), GroupSeq: uint64(seq), Epoch: uint64(epoch), AcceptedAt: fromMicros(at)}, nil
}

// AcceptMessage implements ds.Store.
func (s *Store) AcceptMessage(ctx context.Context, p ds.AcceptParams) (ds.AcceptResult, error) {
	var res ds.AcceptResult
	err := s.write(ctx, func(tx *sql.Conn) error {
		// acceptTx changes the head and the members of p's group only:
		// what the hotCache holds of other groups stays right.
		s.hot.forgetGroup(p.GroupID)
		s.hot.keep = true
		var err error
		res, err = s.acceptTx(ctx, tx, p)
		return err
	})
	if err != nil {
		return ds.AcceptResult{}, err
	}
	return res, nil
}

// acceptTx does the work of AcceptMessage inside the write transaction tx,
// which the caller commits: AcceptMessage runs it alone, AcceptMessages
// once per message of a batch. On an error tx may hold part of the
// message's changes; the caller rolls them back.
func (s *Store) acceptTx(ctx context.Context, tx *sql.Conn, p ds.AcceptParams) (ds.AcceptResult, error) {
	msgEpoch, err := u64(p.Epoch)
	if err != nil {
		return ds.AcceptResult{}, err
	}
	var res ds.AcceptResult
	err = func() error {
		res = ds.AcceptResult{}
		r, err := receiptByHash(ctx, tx, p.GroupID, p.Hash)
		if err == nil {
			res = ds.AcceptResult{Receipt: r, Duplicate: true}
			return nil
		} else if !errors.Is(err, ds.ErrNotFound) {
			return err
		}

		var epoch, start, last, version int64
		err = tx.QueryRowContext(ctx,
			"SELECT epoch, epoch_start_seq, "+lastSeq("groups")+", state_version FROM groups WHERE id = ?", p.GroupID).
			Scan(&epoch, &start, &last, &version)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: group %x", ds.ErrNotFound, p.GroupID)
		} else if err != nil {
			return err
		}
		// Membership before the epoch: a non-member learns nothing of
		// the group's epoch.
		if p.RequireMember {
			var one int
			err := tx.QueryRowContext(ctx,
				"SELECT 1 FROM memberships WHERE group_id = ? AND client_id = ? AND until_seq IS NULL", p.GroupID, p.Sender).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("%w: %q is not a member of group %x", ds.ErrNotMember, p.Sender, p.GroupID)
			} else if err != nil {
				return err
			}
		}
		if err := ds.CheckEpoch(p, uint64(epoch), uint64(start)); err != nil {
			return err
		}
		if p.ChangesState() && uint64(version) != p.StateVersion {
			return ds.ErrStateConflict
		}
		newVersion := version
		var logVersion any // the message's place in the state log, if any
		if p.ChangesState() {
			newVersion++
			logVersion = newVersion
		}

		seq := last + 1
		at := p.AcceptedAt.UnixMicro()
		if _, err := tx.ExecContext(ctx, `INSERT INTO messages
			(group_id, seq, epoch, content_type, wire_format, sender, hash, data, accepted_at, state_version)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			p.GroupID, seq, msgEpoch, int64(p.ContentType), int64(p.WireFormat), p.Sender, p.Hash, nonNil(p.Data), at, logVersion); err != nil {
			return err
		}

		newEpoch, newStart := epoch, start
		if p.ContentType == mls.ContentTypeCommit {
			newEpoch, newStart = epoch+1, seq
		}
		if _, err := tx.ExecContext(ctx, `UPDATE groups SET
			last_seq = ?, epoch = ?, epoch_start_seq = ?, state_version = ?,
			group_info = CASE WHEN ? THEN ? ELSE group_info END
			WHERE id = ?`,
			seq, newEpoch, newStart, newVersion,
			p.GroupInfo != nil, p.GroupInfo, p.GroupID); err != nil {
			return err
		}
		if p.NewState != nil {
			if err := putSnapshot(ctx, tx, p.GroupID, newVersion, p.NewState); err != nil {
				return err
			}
		}

		for _, c := range p.Removed {
			if _, err := tx.ExecContext(ctx,
				"UPDATE memberships SET until_seq = ? WHERE group_id = ? AND client_id = ? AND until_seq IS NULL",
				seq, p.GroupID, c); err != nil {
				return err
			}
		}
		added := dedupe(p.Added)
		for _, c := range added {
			if err := addMember(ctx, tx, p.GroupID, c, seq+1); err != nil {
				return err
			}
		}

		if p.Welcome != nil {
			if _, err := tx.ExecContext(ctx,
				"INSERT INTO welcomes (group_id, commit_seq, epoch, data, accepted_at) VALUES (?, ?, ?, ?, ?)",
				p.GroupID, seq, newEpoch, p.Welcome, at); err != nil {
				return err
			}
			for _, w := range p.WelcomeTo {
				if _, err := tx.ExecContext(ctx, `INSERT INTO welcome_routes
					(client_id, group_id, commit_seq, key_package_ref) VALUES (?, ?, ?, ?)
					ON CONFLICT (client_id, group_id, commit_seq) DO NOTHING`,
					w.ClientID, p.GroupID, seq, nonNil(w.KeyPackageRef)); err != nil {
					return err
				}
			}
		}
		if err := consumeKeyPackages(ctx, tx, p.ConsumeKeyPackages, at); err != nil {
			return err
		}
		if err := acceptRemoteTree(ctx, tx, p, newEpoch); err != nil {
			return err
		}
		if err := acceptDeniable(ctx, tx, p, seq, newEpoch, at); err != nil { // deniable.go
			return err
		}
		res.Receipt = ds.Receipt{GroupID: bytes.Clone(p.GroupID), GroupSeq: uint64(seq), Epoch: p.Epoch, AcceptedAt: fromMicros(sql.NullInt64{Int64: at, Valid: true})}
		return nil
	}()
	if err != nil {
		return ds.AcceptResult{}, err
	}
	return res, nil
}

// consumeKeyPackages marks the KeyPackages refs used at at, leaving
// last-resort ones as they are. One used without a claim (its leaf came
// from the client by another way) counts as claimed too, so that no claim
// hands it out afterwards. Each must be stored and, unless
// last-resort, not used yet: otherwise another group used it first (or
// its client deleted it), and ds.ErrKeyPackageUsed fails the transaction.
func consumeKeyPackages(ctx context.Context, tx *sql.Conn, refs [][]byte, at any) error {
	seen := make(map[string]bool, len(refs))
	for _, ref := range refs {
		if seen[string(ref)] {
			continue
		}
		seen[string(ref)] = true
		res, err := tx.ExecContext(ctx,
			"UPDATE key_packages SET consumed_at = ?, claimed_at = COALESCE(claimed_at, ?) WHERE ref = ? AND last_resort = 0 AND consumed_at IS NULL",
			at, at, nonNil(ref))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 1 {
			continue
		}
		var lastResort bool
		err = tx.QueryRowContext(ctx, "SELECT last_resort FROM key_packages WHERE ref = ?", nonNil(ref)).Scan(&lastResort)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if !lastResort {
			return fmt.Errorf("%w: KeyPackage %x", ds.ErrKeyPackageUsed, ref)
		}
	}
	return nil
}

func dedupe(ss []string) []string {
	seen := make(map[string]bool, len(ss))
	var out []string
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// Messages implements ds.Store.
func (s *Store) Messages(ctx context.Context, q ds.MessageQuery) ([]ds.Envelope, error) {
	if q.Limit <= 0 {
		return nil, nil
	}
	from, err := u64(q.FromSeq)
	if err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT m.seq, m.epoch, m.sender, m.content_type, m.wire_format, m.data, m.accepted_at
		FROM messages m
		WHERE m.group_id = ? AND m.seq >= ?
		  AND EXISTS (SELECT 1 FROM memberships w
		              WHERE w.group_id = m.group_id AND w.client_id = ?
		                AND m.seq >= w.from_seq AND (w.until_seq IS NULL OR m.seq <= w.until_seq))
		  AND NOT (? AND m.sender = ?)
		ORDER BY m.seq LIMIT ?`,
		q.GroupID, from, q.ClientID, q.ExcludeOwn, q.ClientID, q.Limit)
	if err != nil {
		return nil, err
	}
	return scanEnvelopes(rows, q)
}

// scanEnvelopes reads the messages of q's group from rows (seq, epoch,
// sender, content_type, wire_format, data, accepted_at), stopping once
// they hold q.MaxBytes, and closes rows.
func scanEnvelopes(rows *sql.Rows, q ds.MessageQuery) ([]ds.Envelope, error) {
	defer rows.Close()
	var out []ds.Envelope
	total := 0
	for rows.Next() {
		var e ds.Envelope
		var seq, epoch, ct, wf int64
		var at sql.NullInt64
		if err := rows.Scan(&seq, &epoch, &e.Sender, &ct, &wf, &e.Data, &at); err != nil {
			return nil, err
		}
		e.GroupID = bytes.Clone(q.GroupID)
		e.GroupSeq, e.Epoch = uint64(seq), uint64(epoch)
		e.ContentType, e.WireFormat = mls.ContentType(ct), mls.WireFormat(wf)
		e.AcceptedAt = fromMicros(at)
		out = append(out, e)
		// SQLite computes rows one at a time as they are read: stopping
		// here leaves the rest of the page unread.
		if total += len(e.Data); q.MaxBytes > 0 && total >= q.MaxBytes {
			break
		}
	}
	return out, rows.Err()
}

// Cursors implements ds.Store.
func (s *Store) Cursors(ctx context.Context, clientID string) ([]ds.GroupCursor, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT w.group_id, c.acked, w.from_seq, w.until_seq
		FROM memberships w JOIN cursors c ON c.client_id = w.client_id AND c.group_id = w.group_id
		WHERE w.client_id = ? ORDER BY w.group_id, w.from_seq`, clientID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ds.GroupCursor
	for rows.Next() {
		var gid []byte
		var acked, from int64
		var until sql.NullInt64
		if err := rows.Scan(&gid, &acked, &from, &until); err != nil {
			return nil, err
		}
		if len(out) == 0 || !bytes.Equal(out[len(out)-1].GroupID, gid) {
			out = append(out, ds.GroupCursor{GroupID: gid, Acked: uint64(acked)})
		}
		c := &out[len(out)-1]
		c.Windows = append(c.Windows, ds.MembershipWindow{FromSeq: uint64(from), UntilSeq: uint64(until.Int64)})
	}
	return out, rows.Err()
}

// Ack implements ds.Store.
func (s *Store) Ack(ctx context.Context, clientID string, groupID []byte, seq uint64) error {
	v, err := u64(seq)
	if err != nil {
		return err
	}
	return s.write(ctx, func(tx *sql.Conn) error {
		res, err := tx.ExecContext(ctx,
			"UPDATE cursors SET acked = MAX(acked, ?) WHERE client_id = ? AND group_id = ?", v, clientID, groupID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("%w: %q was never a member of group %x", ds.ErrNotMember, clientID, groupID)
		}
		_, err = tx.ExecContext(ctx,
			"UPDATE welcome_routes SET delivered = 1 WHERE client_id = ? AND group_id = ? AND commit_seq <= ? AND delivered = 0",
			clientID, groupID, v)
		return err
	})
}

// PendingWelcomes implements ds.Store.
func (s *Store) PendingWelcomes(ctx context.Context, clientID string) ([]ds.WelcomeEvent, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT r.group_id, r.commit_seq, w.epoch, r.key_package_ref, w.data, w.accepted_at
		FROM welcome_routes r JOIN welcomes w ON w.group_id = r.group_id AND w.commit_seq = r.commit_seq
		WHERE r.client_id = ? AND r.delivered = 0 ORDER BY r.id`, clientID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ds.WelcomeEvent
	for rows.Next() {
		var w ds.WelcomeEvent
		var seq, epoch int64
		var at sql.NullInt64
		if err := rows.Scan(&w.GroupID, &seq, &epoch, &w.KeyPackageRef, &w.Data, &at); err != nil {
			return nil, err
		}
		w.CommitSeq, w.Epoch = uint64(seq), uint64(epoch)
		w.AcceptedAt = fromMicros(at)
		out = append(out, w)
	}
	return out, rows.Err()
}
