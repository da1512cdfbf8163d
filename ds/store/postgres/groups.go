package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// CreateGroup implements ds.Store.
func (s *Store) CreateGroup(ctx context.Context, g ds.GroupRecord, members []string) error {
	epoch, err := u64(g.Epoch)
	if err != nil {
		return err
	}
	if err := checkText("creator id", g.Creator); err != nil {
		return err
	}
	if err := checkText("member id", members...); err != nil {
		return err
	}
	for _, w := range g.WelcomeTo {
		if err := checkText("Welcome recipient id", w.ClientID); err != nil {
			return err
		}
	}
	members = dedupe(members)
	return s.tx(ctx, "create group", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO groups
			(id, mode, cipher_suite, creator, created_at, epoch, epoch_start_seq, last_seq, state_version, group_info)
			VALUES ($1, $2, $3, $4, $5, $6, 1, 0, 0, $7)
			ON CONFLICT (id) DO NOTHING`,
			nonNil(g.ID), int32(g.Mode), int32(g.CipherSuite), g.Creator, ts(g.CreatedAt), epoch, g.GroupInfo)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: group %x", ds.ErrAlreadyExists, g.ID)
		}
		if err := linkSuccessor(ctx, tx, g); err != nil {
			return err
		}
		b := &pgx.Batch{}
		if g.State != nil {
			queuePutSnapshot(b, nonNil(g.ID), 0, g.State)
		}
		if len(members) > 0 {
			queueAddMembers(b, g.ID, members, 1)
		}
		if g.Welcome != nil {
			queueCreationWelcome(b, g, epoch)
		}
		queueFirstMembershipKey(b, g, epoch) // deniable.go
		consume := dedupeRefs(g.ConsumeKeyPackages)
		if len(consume) > 0 {
			queueConsume(b, consume, g.CreatedAt)
		}
		if b.Len() == 0 {
			return nil
		}
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		for i := 0; i < b.Len(); i++ {
			if i == b.Len()-1 && len(consume) > 0 {
				if err := checkConsumed(br.QueryRow(), consume); err != nil {
					return err
				}
				continue
			}
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		return br.Close()
	})
}

// queueCreationWelcome queues the storing of the Welcome of a group's
// creation, with commit_seq 0, and its routes.
func queueCreationWelcome(b *pgx.Batch, g ds.GroupRecord, epoch int64) {
	b.Queue("INSERT INTO welcomes (group_id, commit_seq, epoch, data, accepted_at) VALUES ($1, 0, $2, $3, $4)",
		nonNil(g.ID), epoch, g.Welcome, ts(g.CreatedAt))
	clients := make([]string, 0, len(g.WelcomeTo))
	refs := make([][]byte, 0, len(g.WelcomeTo))
	for _, w := range g.WelcomeTo {
		clients = append(clients, w.ClientID)
		refs = append(refs, nonNil(w.KeyPackageRef))
	}
	if len(clients) > 0 {
		b.Queue(`INSERT INTO welcome_routes (client_id, group_id, commit_seq, key_package_ref)
			SELECT r.client_id, $1, 0, r.ref
			FROM unnest($2::text[], $3::bytea[]) WITH ORDINALITY AS r (client_id, ref, ord)
			ORDER BY r.ord
			ON CONFLICT (client_id, group_id, commit_seq) DO NOTHING`,
			nonNil(g.ID), clients, refs)
	}
}

// queueAddMembers opens membership windows starting at from for clients
// (distinct, none of them a member now) and moves their cursors to at least
// from-1.
func queueAddMembers(b *pgx.Batch, groupID []byte, clients []string, from int64) {
	b.Queue(`INSERT INTO memberships (group_id, client_id, from_seq)
		SELECT $1, c, $2 FROM unnest($3::text[]) AS c`, groupID, from, clients)
	b.Queue(`INSERT INTO cursors (client_id, group_id, acked)
		SELECT c, $1, $2 FROM unnest($3::text[]) AS c
		ON CONFLICT (client_id, group_id) DO UPDATE SET acked = GREATEST(cursors.acked, excluded.acked)`,
		groupID, from-1, clients)
}

const groupColumns = "id, mode, cipher_suite, creator, created_at, epoch, epoch_start_seq, last_seq, state_version"

func scanGroup(row pgx.Row, extra ...any) (ds.GroupRecord, error) {
	var g ds.GroupRecord
	var mode, cs int32
	var epoch, start, last, version int64
	var created *time.Time
	dst := append([]any{&g.ID, &mode, &cs, &g.Creator, &created, &epoch, &start, &last, &version}, extra...)
	if err := row.Scan(dst...); err != nil {
		return ds.GroupRecord{}, err
	}
	g.Mode = ds.Mode(mode)
	g.CipherSuite = mls.CipherSuite(cs)
	g.CreatedAt = fromTS(created)
	g.Epoch, g.EpochStartSeq, g.LastSeq, g.StateVersion = uint64(epoch), uint64(start), uint64(last), uint64(version)
	return g, nil
}

// Group implements ds.Store.
func (s *Store) Group(ctx context.Context, groupID []byte) (ds.GroupRecord, error) {
	g, err := scanGroup(s.pool.QueryRow(ctx, "SELECT "+groupColumns+" FROM groups WHERE id = $1", nonNil(groupID)))
	if errors.Is(err, pgx.ErrNoRows) {
		return ds.GroupRecord{}, fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
	}
	return g, engineErr("read group", err)
}

// GroupState implements ds.Store.
func (s *Store) GroupState(ctx context.Context, groupID []byte) (ds.GroupRecord, error) {
	var state, gi []byte
	var snapVersion *int64
	// One statement, so that the head and the snapshot are read together.
	g, err := scanGroup(s.pool.QueryRow(ctx,
		"SELECT "+prefixed("g.", groupColumns)+`, s.state, s.state_version, g.group_info
		FROM groups g LEFT JOIN group_snapshots s ON s.group_id = g.id WHERE g.id = $1`, nonNil(groupID)), &state, &snapVersion, &gi)
	if errors.Is(err, pgx.ErrNoRows) {
		return ds.GroupRecord{}, fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
	}
	if err != nil {
		return ds.GroupRecord{}, engineErr("read group state", err)
	}
	g.State, g.GroupInfo = state, gi
	if snapVersion != nil {
		g.SnapshotVersion = uint64(*snapVersion)
	}
	return g, nil
}

// prefixed qualifies every column of a comma-separated list.
func prefixed(prefix, columns string) string {
	cols := strings.Split(columns, ", ")
	for i, c := range cols {
		cols[i] = prefix + c
	}
	return strings.Join(cols, ", ")
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
	// The group's existence and its log in one statement: a group without
	// log entries gives one row of NULLs.
	rows, err := s.pool.Query(ctx, `SELECT m.state_version, m.seq, m.hash, m.data
		FROM groups g LEFT JOIN LATERAL (
			SELECT state_version, seq, hash, data FROM messages
			WHERE group_id = g.id AND state_version > $2 ORDER BY state_version LIMIT $3) m ON true
		WHERE g.id = $1 ORDER BY m.state_version`, nonNil(groupID), after, limit)
	if err != nil {
		return nil, engineErr("read state log", err)
	}
	var out []ds.StateLogEntry
	found := false
	for rows.Next() {
		found = true
		var v, seq *int64
		var e ds.StateLogEntry
		if err := rows.Scan(&v, &seq, &e.Hash, &e.Data); err != nil {
			rows.Close()
			return nil, engineErr("read state log", err)
		}
		if v == nil {
			continue
		}
		e.Version, e.GroupSeq = uint64(*v), uint64(*seq)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, engineErr("read state log", err)
	}
	if !found {
		return nil, fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
	}
	return out, nil
}

// PutSnapshot implements ds.Store.
func (s *Store) PutSnapshot(ctx context.Context, groupID []byte, version uint64, state []byte) error {
	v, err := u64(version)
	if err != nil {
		return err
	}
	return s.tx(ctx, "put snapshot", func(tx pgx.Tx) error {
		var current int64
		err := tx.QueryRow(ctx, "SELECT state_version FROM groups WHERE id = $1", nonNil(groupID)).Scan(&current)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
		} else if err != nil {
			return err
		}
		if v > current {
			return fmt.Errorf("%w: snapshot of state version %d, but group %x is at %d", ds.ErrInvalidArgument, v, groupID, current)
		}
		b := &pgx.Batch{}
		queuePutSnapshot(b, nonNil(groupID), v, state)
		return tx.SendBatch(ctx, b).Close()
	})
}

// queuePutSnapshot stores a snapshot unless a newer one is stored.
func queuePutSnapshot(b *pgx.Batch, groupID []byte, version int64, state []byte) {
	b.Queue(`INSERT INTO group_snapshots (group_id, state_version, state) VALUES ($1, $2, $3)
		ON CONFLICT (group_id) DO UPDATE SET state_version = excluded.state_version, state = excluded.state
		WHERE excluded.state_version > group_snapshots.state_version`, groupID, version, nonNil(state))
}

// Members implements ds.Store.
func (s *Store) Members(ctx context.Context, groupID []byte) ([]string, error) {
	rows, err := s.pool.Query(ctx,
		"SELECT client_id FROM memberships WHERE group_id = $1 AND until_seq IS NULL ORDER BY client_id", nonNil(groupID))
	if err != nil {
		return nil, engineErr("read members", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return out, engineErr("read members", err)
}

// Memberships implements ds.Store.
func (s *Store) Memberships(ctx context.Context, groupID []byte, clientID string) ([]ds.MembershipWindow, error) {
	if !textOK(clientID) {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx,
		"SELECT from_seq, until_seq FROM memberships WHERE group_id = $1 AND client_id = $2 ORDER BY from_seq",
		nonNil(groupID), clientID)
	if err != nil {
		return nil, engineErr("read memberships", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ds.MembershipWindow, error) {
		var from int64
		var until *int64
		if err := r.Scan(&from, &until); err != nil {
			return ds.MembershipWindow{}, err
		}
		w := ds.MembershipWindow{FromSeq: uint64(from)}
		if until != nil {
			w.UntilSeq = uint64(*until)
		}
		return w, nil
	})
	return out, engineErr("read memberships", err)
}

// MessageByHash implements ds.Store.
func (s *Store) MessageByHash(ctx context.Context, groupID, hash []byte) (ds.Receipt, error) {
	r, err := receiptByHash(ctx, s.pool.QueryRow(ctx,
		"SELECT seq, epoch, accepted_at FROM messages WHERE group_id = $1 AND hash = $2", nonNil(groupID), nonNil(hash)), groupID)
	return r, engineErr("read message by hash", err)
}

func receiptByHash(_ context.Context, row pgx.Row, groupID []byte) (ds.Receipt, error) {
	var seq, epoch int64
	var at time.Time
	err := row.Scan(&seq, &epoch, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return ds.Receipt{}, fmt.Errorf("%w: no message with this hash in group %x", ds.ErrNotFound, groupID)
	}
	if err != nil {
		return ds.Receipt{}, err
	}
	return ds.Receipt{GroupID: bytes.Clone(groupID), GroupSeq: uint64(seq), Epoch: uint64(epoch), AcceptedAt: at.UTC()}, nil
}

// errHashRace reports that the insert of a message hit the unique index on
// its hash: a duplicate committed between our check and our insert, which
// the group lock should make impossible. AcceptMessage then answers with
// the stored receipt, as for any duplicate.
var errHashRace = errors.New("postgres: concurrent duplicate message")

// AcceptMessage implements ds.Store.
func (s *Store) AcceptMessage(ctx context.Context, p ds.AcceptParams) (ds.AcceptResult, error) {
	var res ds.AcceptResult
	err := s.tx(ctx, "accept message", func(tx pgx.Tx) error {
		var err error
		res, err = s.acceptTx(ctx, tx, p, nil)
		return err
	})
	if errors.Is(err, errHashRace) {
		r, err := s.MessageByHash(ctx, p.GroupID, p.Hash)
		if err != nil {
			return ds.AcceptResult{}, err
		}
		return ds.AcceptResult{Receipt: r, Duplicate: true}, nil
	}
	if err != nil {
		return ds.AcceptResult{}, err
	}
	return res, nil
}

// acceptTx does the work of AcceptMessage inside the transaction tx, which
// the caller commits: AcceptMessage runs it alone, AcceptMessages once per
// message of a batch. It costs two round trips, the reads and then the
// writes; what pl holds (if pl is not nil) goes in front of the reads,
// and a failure of it comes back as a *pipelineError. On an error tx may
// hold part of the message's changes (or be aborted); the caller rolls
// them back. errHashRace is left to the caller to resolve once the
// transaction is over.
func (s *Store) acceptTx(ctx context.Context, tx dbtx, p ds.AcceptParams, pl *pipeline) (ds.AcceptResult, error) {
	msgEpoch, err := u64(p.Epoch)
	if err != nil {
		return ds.AcceptResult{}, err
	}
	if err := checkText("sender id", p.Sender); err != nil {
		return ds.AcceptResult{}, err
	}
	if err := checkText("added member id", p.Added...); err != nil {
		return ds.AcceptResult{}, err
	}
	if err := checkText("removed member id", p.Removed...); err != nil {
		return ds.AcceptResult{}, err
	}
	added := dedupe(p.Added)
	removed := dedupe(p.Removed)
	var routeClients []string
	var routeRefs [][]byte
	seenRoute := make(map[string]bool)
	for _, w := range p.WelcomeTo {
		if err := checkText("Welcome recipient id", w.ClientID); err != nil {
			return ds.AcceptResult{}, err
		}
		if !seenRoute[w.ClientID] { // the first route of a client wins
			seenRoute[w.ClientID] = true
			routeClients = append(routeClients, w.ClientID)
			routeRefs = append(routeRefs, nonNil(w.KeyPackageRef))
		}
	}
	groupID, hash := nonNil(p.GroupID), nonNil(p.Hash)
	at := time.UnixMicro(p.AcceptedAt.UnixMicro()).UTC() // what timestamptz keeps

	var res ds.AcceptResult
	err = func() error {
		res = ds.AcceptResult{}

		// Lock the group, then read what the decision depends on: at READ
		// COMMITTED every statement after the lock sees all that was
		// committed before it was granted.
		b, n := pl.batch()
		b.Queue("SELECT epoch, epoch_start_seq, last_seq, state_version FROM groups WHERE id = $1 FOR UPDATE", groupID)
		b.Queue("SELECT seq, epoch, accepted_at FROM messages WHERE group_id = $1 AND hash = $2", groupID, hash)
		if p.RequireMember {
			b.Queue(`SELECT EXISTS (SELECT 1 FROM memberships
				WHERE group_id = $1 AND client_id = $2 AND until_seq IS NULL)`, groupID, p.Sender)
		}
		br := tx.SendBatch(ctx, b)
		if err := skip(br, n); err != nil {
			br.Close()
			return err
		}
		var epoch, start, last, version int64
		gerr := br.QueryRow().Scan(&epoch, &start, &last, &version)
		dup, derr := receiptByHash(ctx, br.QueryRow(), groupID)
		member := true
		var merr error
		if p.RequireMember {
			merr = br.QueryRow().Scan(&member)
		}
		cerr := br.Close()
		switch {
		case errors.Is(gerr, pgx.ErrNoRows):
			return fmt.Errorf("%w: group %x", ds.ErrNotFound, p.GroupID)
		case gerr != nil:
			return gerr
		case derr == nil:
			res = ds.AcceptResult{Receipt: dup, Duplicate: true}
			return nil
		case !errors.Is(derr, ds.ErrNotFound):
			return derr
		case merr != nil:
			return merr
		case cerr != nil:
			return cerr
		}

		// Membership before the epoch: a non-member learns nothing of
		// the group's epoch.
		if !member {
			return fmt.Errorf("%w: %q is not a member of group %x", ds.ErrNotMember, p.Sender, p.GroupID)
		}
		if err := ds.CheckEpoch(p, uint64(epoch), uint64(start)); err != nil {
			return err
		}
		if p.ChangesState() && uint64(version) != p.StateVersion {
			return ds.ErrStateConflict
		}

		seq := last + 1
		newEpoch, newStart := epoch, start
		if p.ContentType == mls.ContentTypeCommit {
			newEpoch, newStart = epoch+1, seq
		}
		newVersion := version
		var logVersion *int64 // the message's place in the state log, if any
		if p.ChangesState() {
			newVersion++
			logVersion = &newVersion
		}

		w := &pgx.Batch{}
		w.Queue(`INSERT INTO messages (group_id, seq, epoch, content_type, wire_format, sender, hash, data, accepted_at, state_version)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			groupID, seq, msgEpoch, int32(p.ContentType), int32(p.WireFormat), p.Sender, hash, nonNil(p.Data), at, logVersion)
		// Compare-and-set on what was read under the lock.
		w.Queue(`UPDATE groups SET last_seq = $2, epoch = $3, epoch_start_seq = $4, state_version = $5,
			group_info = CASE WHEN $6 THEN $7::bytea ELSE group_info END
			WHERE id = $1 AND epoch = $8 AND last_seq = $9`,
			groupID, seq, newEpoch, newStart, newVersion,
			p.GroupInfo != nil, p.GroupInfo, epoch, last)
		if p.NewState != nil {
			queuePutSnapshot(w, groupID, newVersion, p.NewState)
		}
		if len(removed) > 0 {
			w.Queue(`UPDATE memberships SET until_seq = $1
				WHERE group_id = $2 AND client_id = ANY($3) AND until_seq IS NULL`, seq, groupID, removed)
		}
		if len(added) > 0 {
			queueAddMembers(w, groupID, added, seq+1)
		}
		if p.Welcome != nil {
			w.Queue("INSERT INTO welcomes (group_id, commit_seq, epoch, data, accepted_at) VALUES ($1, $2, $3, $4, $5)",
				groupID, seq, newEpoch, p.Welcome, at)
			if len(routeClients) > 0 {
				w.Queue(`INSERT INTO welcome_routes (client_id, group_id, commit_seq, key_package_ref)
					SELECT r.client_id, $1, $2, r.ref
					FROM unnest($3::text[], $4::bytea[]) WITH ORDINALITY AS r (client_id, ref, ord)
					ORDER BY r.ord
					ON CONFLICT (client_id, group_id, commit_seq) DO NOTHING`,
					groupID, seq, routeClients, routeRefs)
			}
		}
		consumeAt := -1 // the index of its statement in w
		consume := dedupeRefs(p.ConsumeKeyPackages)
		if len(consume) > 0 {
			consumeAt = w.Len()
			queueConsume(w, consume, at)
		}
		if err := queueRemoteTree(w, p, newEpoch); err != nil {
			return err
		}
		if err := queueDeniable(w, p, seq, newEpoch, at); err != nil { // deniable.go
			return err
		}
		wr := tx.SendBatch(ctx, w)
		defer wr.Close()
		if _, err := wr.Exec(); err != nil {
			if uniqueViolation(err, "messages_by_hash") {
				return errHashRace
			}
			return err
		}
		tag, err := wr.Exec()
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("postgres: group %x changed under its row lock", p.GroupID)
		}
		for i := 2; i < w.Len(); i++ {
			if i == consumeAt {
				if err := checkConsumed(wr.QueryRow(), consume); err != nil {
					return err
				}
				continue
			}
			if _, err := wr.Exec(); err != nil {
				return err
			}
		}
		if err := wr.Close(); err != nil {
			return err
		}
		res.Receipt = ds.Receipt{GroupID: bytes.Clone(p.GroupID), GroupSeq: uint64(seq), Epoch: p.Epoch, AcceptedAt: at}
		return nil
	}()
	if err != nil {
		return ds.AcceptResult{}, err
	}
	return res, nil
}

// dedupe returns the distinct strings of ss, sorted.
func dedupe(ss []string) []string {
	seen := make(map[string]bool, len(ss))
	out := make([]string, 0, len(ss))
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
	if q.Limit <= 0 || !textOK(q.ClientID) {
		return nil, nil
	}
	from, err := u64(q.FromSeq)
	if err != nil {
		return nil, err
	}
	var rows pgx.Rows
	if q.MaxBytes <= 0 {
		rows, err = s.pool.Query(ctx, `SELECT m.seq, m.epoch, m.sender, m.content_type, m.wire_format, m.data, m.accepted_at
		FROM messages m
		WHERE m.group_id = $1 AND m.seq >= $2
		  AND EXISTS (SELECT 1 FROM memberships w
		              WHERE w.group_id = m.group_id AND w.client_id = $3
		                AND m.seq >= w.from_seq AND (w.until_seq IS NULL OR m.seq <= w.until_seq))
		  AND NOT ($4 AND m.sender = $3)
		ORDER BY m.seq LIMIT $5`,
			nonNil(q.GroupID), from, q.ClientID, q.ExcludeOwn, q.Limit)
	} else {
		// The server sends every row of a result: the budget is applied
		// in the query, on the sizes alone (octet_length reads no TOASTed
		// data), and only the rows within it are read in full. A row is in
		// the page while the messages before it sum to less than MaxBytes.
		rows, err = s.pool.Query(ctx, `WITH page AS (
			SELECT m.seq, octet_length(m.data) AS len
			FROM messages m
			WHERE m.group_id = $1 AND m.seq >= $2
			  AND EXISTS (SELECT 1 FROM memberships w
			              WHERE w.group_id = m.group_id AND w.client_id = $3
			                AND m.seq >= w.from_seq AND (w.until_seq IS NULL OR m.seq <= w.until_seq))
			  AND NOT ($4 AND m.sender = $3)
			ORDER BY m.seq LIMIT $5
		), kept AS (
			SELECT seq FROM (
				SELECT seq, COALESCE(SUM(len) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
				FROM page) r
			WHERE before < $6
		)
		SELECT m.seq, m.epoch, m.sender, m.content_type, m.wire_format, m.data, m.accepted_at
		FROM kept JOIN messages m ON m.group_id = $1 AND m.seq = kept.seq
		ORDER BY m.seq`,
			nonNil(q.GroupID), from, q.ClientID, q.ExcludeOwn, q.Limit, int64(q.MaxBytes))
	}
	if err != nil {
		return nil, engineErr("read messages", err)
	}
	out, err := collectEnvelopes(rows, q.GroupID)
	return out, engineErr("read messages", err)
}

// collectEnvelopes reads the messages of group groupID from rows (seq,
// epoch, sender, content_type, wire_format, data, accepted_at), and
// closes rows.
func collectEnvelopes(rows pgx.Rows, groupID []byte) ([]ds.Envelope, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ds.Envelope, error) {
		var e ds.Envelope
		var seq, epoch int64
		var ct, wf int32
		if err := r.Scan(&seq, &epoch, &e.Sender, &ct, &wf, &e.Data, &e.AcceptedAt); err != nil {
			return ds.Envelope{}, err
		}
		e.GroupID = bytes.Clone(groupID)
		e.GroupSeq, e.Epoch = uint64(seq), uint64(epoch)
		e.ContentType, e.WireFormat = mls.ContentType(ct), mls.WireFormat(wf)
		e.AcceptedAt = e.AcceptedAt.UTC()
		return e, nil
	})
}

// Cursors implements ds.Store.
func (s *Store) Cursors(ctx context.Context, clientID string) ([]ds.GroupCursor, error) {
	if !textOK(clientID) {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT w.group_id, c.acked, w.from_seq, w.until_seq
		FROM memberships w JOIN cursors c ON c.client_id = w.client_id AND c.group_id = w.group_id
		WHERE w.client_id = $1 ORDER BY w.group_id, w.from_seq`, clientID)
	if err != nil {
		return nil, engineErr("read cursors", err)
	}
	var out []ds.GroupCursor
	var gid []byte
	var acked, from int64
	var until *int64
	_, err = pgx.ForEachRow(rows, []any{&gid, &acked, &from, &until}, func() error {
		if len(out) == 0 || !bytes.Equal(out[len(out)-1].GroupID, gid) {
			out = append(out, ds.GroupCursor{GroupID: bytes.Clone(gid), Acked: uint64(acked)})
		}
		c := &out[len(out)-1]
		w := ds.MembershipWindow{FromSeq: uint64(from)}
		if until != nil {
			w.UntilSeq = uint64(*until)
		}
		c.Windows = append(c.Windows, w)
		return nil
	})
	if err != nil {
		return nil, engineErr("read cursors", err)
	}
	return out, nil
}

// Ack implements ds.Store. One statement: the cursor moves (never back) and
// the Welcomes up to seq are marked delivered only if the cursor exists.
func (s *Store) Ack(ctx context.Context, clientID string, groupID []byte, seq uint64) error {
	v, err := u64(seq)
	if err != nil {
		return err
	}
	if !textOK(clientID) {
		return fmt.Errorf("%w: %q was never a member of group %x", ds.ErrNotMember, clientID, groupID)
	}
	var n int
	err = s.pool.QueryRow(ctx, `WITH c AS (
			UPDATE cursors SET acked = GREATEST(acked, $3)
			WHERE client_id = $1 AND group_id = $2
			RETURNING 1
		), w AS (
			UPDATE welcome_routes SET delivered = true
			WHERE client_id = $1 AND group_id = $2 AND commit_seq <= $3 AND NOT delivered
			  AND EXISTS (SELECT 1 FROM c)
		)
		SELECT count(*) FROM c`, clientID, nonNil(groupID), v).Scan(&n)
	if err != nil {
		return engineErr("ack", err)
	}
	if n == 0 {
		return fmt.Errorf("%w: %q was never a member of group %x", ds.ErrNotMember, clientID, groupID)
	}
	return nil
}

// PendingWelcomes implements ds.Store.
func (s *Store) PendingWelcomes(ctx context.Context, clientID string) ([]ds.WelcomeEvent, error) {
	if !textOK(clientID) {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT r.group_id, r.commit_seq, w.epoch, r.key_package_ref, w.data, w.accepted_at
		FROM welcome_routes r JOIN welcomes w ON w.group_id = r.group_id AND w.commit_seq = r.commit_seq
		WHERE r.client_id = $1 AND NOT r.delivered ORDER BY r.id`, clientID)
	if err != nil {
		return nil, engineErr("read pending welcomes", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ds.WelcomeEvent, error) {
		var w ds.WelcomeEvent
		var seq, epoch int64
		if err := r.Scan(&w.GroupID, &seq, &epoch, &w.KeyPackageRef, &w.Data, &w.AcceptedAt); err != nil {
			return ds.WelcomeEvent{}, err
		}
		w.CommitSeq, w.Epoch = uint64(seq), uint64(epoch)
		w.AcceptedAt = w.AcceptedAt.UTC()
		return w, nil
	})
	return out, engineErr("read pending welcomes", err)
}

// queueConsume marks the KeyPackages refs (distinct) used at at, leaving
// last-resort ones as they are; one used without a claim counts as claimed
// too, so that no claim hands it out afterwards. Each must be stored and, unless
// last-resort, not used yet: the statement answers how many refs passed,
// and checkConsumed fails with ds.ErrKeyPackageUsed unless all did. Under
// READ COMMITTED a concurrent transaction that used one first makes its
// row fail the WHERE once its lock is released, so two groups cannot both
// use one KeyPackage.
func queueConsume(b *pgx.Batch, refs [][]byte, at time.Time) {
	b.Queue(`WITH used AS (
			UPDATE key_packages SET consumed_at = $1, claimed_at = COALESCE(claimed_at, $1)
			WHERE ref = ANY($2) AND NOT last_resort AND consumed_at IS NULL
			RETURNING 1)
		SELECT (SELECT count(*) FROM used) + (SELECT count(*) FROM key_packages WHERE ref = ANY($2) AND last_resort)`, at, refs)
}

// checkConsumed reads the answer of queueConsume's statement.
func checkConsumed(row pgx.Row, refs [][]byte) error {
	var n int64
	if err := row.Scan(&n); err != nil {
		return err
	}
	if n != int64(len(refs)) {
		return fmt.Errorf("%w: one of KeyPackages %x", ds.ErrKeyPackageUsed, refs)
	}
	return nil
}

// dedupeRefs returns refs without repetitions, in their first order.
func dedupeRefs(refs [][]byte) [][]byte {
	seen := make(map[string]bool, len(refs))
	var out [][]byte
	for _, r := range refs {
		if !seen[string(r)] {
			seen[string(r)] = true
			out = append(out, nonNil(r))
		}
	}
	return out
}
