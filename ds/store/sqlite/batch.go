package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

var _ ds.BatchAccepter = (*Store)(nil)

// AcceptMessages implements ds.BatchAccepter: the messages are applied in
// order in one write transaction, which costs one fsync for all of them.
// If the transaction cannot commit, every message fails.
//
// Application messages take a fast path (appendBatch): the group's head and
// the sender's membership are read once and kept up to date in memory
// (hotCache, which outlives the batch), and the message is inserted with a
// prepared statement. The group's row is not written: its last message is
// its head (lastSeq). Such a message writes one row with one statement, so
// one that fails changes nothing. Every other message runs acceptTx, as
// AcceptMessage does, inside a SAVEPOINT that is rolled back if it fails;
// the fast path's cache is forgotten before it.
//
// The batch's statements do not watch ctx: the driver would start a
// goroutine per statement to interrupt it, which costs more than the
// statement. Nothing of a local SQLite write waits on the network; its
// lock waits are bounded by the busy timeout, and an interrupt could not
// end a stalled disk write anyway.
func (s *Store) AcceptMessages(ctx context.Context, ps []ds.AcceptParams) ([]ds.AcceptResult, []error) {
	ctx = context.WithoutCancel(ctx)
	res := make([]ds.AcceptResult, len(ps))
	errs := make([]error, len(ps))
	if len(ps) == 1 && !fastPath(&ps[0]) {
		// Alone, a message takes AcceptMessage's path: no batch
		// machinery to pay for. (An application message alone still
		// takes the fast path, whose statements are compiled once.)
		res[0], errs[0] = s.AcceptMessage(ctx, ps[0])
		return res, errs
	}
	err := s.write(ctx, func(tx *sql.Conn) error { return s.acceptBatchTx(ctx, tx, ps, res, errs) })
	if err != nil {
		for i := range ps {
			res[i], errs[i] = ds.AcceptResult{}, err
		}
	}
	return res, errs
}

// acceptBatchTx is AcceptMessages' work under tx: res and errs receive
// the outcome of each message; an error return fails the whole batch.
func (s *Store) acceptBatchTx(ctx context.Context, tx *sql.Conn, ps []ds.AcceptParams, res []ds.AcceptResult, errs []error) error {
	if err := s.hot.check(ctx, s); err != nil {
		return err
	}
	a := &appendBatch{store: s, groups: s.hot.groups, members: s.hot.members}
	for i := range ps {
		p := &ps[i]
		if fastPath(p) {
			if i == 0 || !fastPath(&ps[i-1]) {
				if err := a.prefetchMembers(ctx, ps[i:]); err != nil {
					return err
				}
			}
			res[i], errs[i] = a.accept(ctx, p)
			if errs[i] != nil && !isRefusal(errs[i]) {
				// An engine failure: the transaction may be
				// unusable; fail the batch rather than guess.
				return errs[i]
			}
			continue
		}
		s.hot.forgetGroup(p.GroupID)
		if _, err := tx.ExecContext(ctx, "SAVEPOINT accept_message"); err != nil {
			return fmt.Errorf("sqlite: savepoint: %w", err)
		}
		r, err := s.acceptTx(ctx, tx, *p)
		if err != nil {
			errs[i] = err
			if _, err := tx.ExecContext(ctx, "ROLLBACK TO accept_message"); err != nil {
				return fmt.Errorf("sqlite: rollback to savepoint: %w", err)
			}
		} else {
			res[i] = r
		}
		if _, err := tx.ExecContext(ctx, "RELEASE accept_message"); err != nil {
			return fmt.Errorf("sqlite: release savepoint: %w", err)
		}
		// What acceptTx changed is read again by the next application
		// message of the group (forgetGroup above).
	}
	s.hot.keep = true
	return nil
}

// hotCache keeps what appendBatch has read and written of groups' heads
// and senders' memberships from one write transaction to the next: in the
// steady state, a batch of application messages reads neither. It is
// guarded by the writer's semaphore (write) and stays valid only as long
// as every transaction that commits leaves it right:
//
//   - write forgets it unless the transaction that just committed set
//     keep, and whenever a transaction fails (nothing of it was kept,
//     while the cache may hold its writes);
//   - acceptBatchTx sets keep: its fast path keeps the cache up to date,
//     and before each other message it forgets that message's group
//     (acceptTx changes the head and the members of that group, and
//     nothing else that is cached); AcceptMessage does the same for its
//     one message; ackManyTx and PutSnapshot set keep, as Acks and
//     snapshots change no head and no membership; every other write
//     forgets it;
//   - check forgets it when another connection has written to the
//     database (PRAGMA data_version), which no other mlsds should do, but
//     a tool might.
type hotCache struct {
	groups      map[string]*batchGroup
	members     map[string]map[string]bool // by group, by client
	dataVersion int64
	checked     bool // check ran in this transaction
	keep        bool
	// misses counts the heads and memberships read from the database,
	// which tests watch.
	misses int
}

// hotCacheMax bounds the groups of the hotCache.
const hotCacheMax = 1 << 16

func (h *hotCache) forget() {
	clear(h.groups)
	clear(h.members)
}

// forgetGroup forgets what is cached of group g, as the message about to
// be written may change its head and its members (a Commit). It changes
// nothing of other groups.
func (h *hotCache) forgetGroup(g []byte) {
	delete(h.groups, string(g))
	delete(h.members, string(g))
}

// check forgets the cache if another connection wrote to the database
// since the last check, or if it has grown past hotCacheMax.
func (h *hotCache) check(ctx context.Context, s *Store) error {
	if h.groups == nil {
		h.groups = make(map[string]*batchGroup)
		h.members = make(map[string]map[string]bool)
	}
	if h.checked {
		return nil
	}
	st, err := s.wstmt(qDataVersion)
	if err != nil {
		return err
	}
	var v int64
	if err := st.QueryRowContext(ctx).Scan(&v); err != nil {
		return err
	}
	if v != h.dataVersion || len(h.groups) > hotCacheMax || len(h.members) > hotCacheMax {
		h.forget()
		h.dataVersion = v
	}
	h.checked = true
	return nil
}

// fastPath reports whether p is a message that appendBatch handles: an
// application message, which changes nothing but the group's sequence.
func fastPath(p *ds.AcceptParams) bool {
	return p.ContentType == mls.ContentTypeApplication &&
		!p.ChangesState() && p.NewState == nil && p.GroupInfo == nil && p.RemoteTree == nil &&
		len(p.Added) == 0 && len(p.Removed) == 0 &&
		p.Welcome == nil && len(p.WelcomeTo) == 0 && len(p.ConsumeKeyPackages) == 0
}

// isRefusal reports whether err is one of the Store's answers about a
// message (as opposed to an engine failure).
func isRefusal(err error) bool {
	var we *ds.WrongEpochError
	var se *ds.StaleEpochError
	return errors.Is(err, ds.ErrNotFound) || errors.Is(err, ds.ErrNotMember) ||
		errors.As(err, &we) || errors.As(err, &se) || errors.Is(err, errRange)
}

// errRange marks a value that does not fit the schema.
var errRange = errors.New("sqlite: value out of range")

// The statements of appendBatch, compiled once on the writer connection
// when the Store opens (see writerStmts).
var (
	qBatchInsert = `INSERT INTO messages
		(group_id, seq, epoch, content_type, wire_format, sender, hash, data, accepted_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (group_id, hash) DO NOTHING`
	qBatchHead    = "SELECT epoch, epoch_start_seq, " + lastSeq("groups") + " FROM groups WHERE id = ?"
	qBatchMember  = "SELECT EXISTS (SELECT 1 FROM memberships WHERE group_id = ? AND client_id = ? AND until_seq IS NULL)"
	qBatchMembers = `SELECT client_id FROM memberships
		WHERE group_id = ? AND until_seq IS NULL AND client_id IN (SELECT value FROM json_each(?))`
	qBatchByHash = "SELECT seq, epoch, accepted_at FROM messages WHERE group_id = ? AND hash = ?"
	// qDataVersion tells whether another connection wrote (hotCache).
	qDataVersion = "PRAGMA data_version"
	// qBatchHeadMember is qBatchHead and qBatchMember in one query, for a
	// group with one sender in the batch (the usual case).
	qBatchHeadMember = `SELECT epoch, epoch_start_seq, ` + lastSeq("groups") + `,
		EXISTS (SELECT 1 FROM memberships WHERE group_id = groups.id AND client_id = ? AND until_seq IS NULL)
		FROM groups WHERE id = ?`
)

// writerStmts are compiled on the writer connection at Open.
var writerStmts = []string{qBegin, qCommit, qBatchInsert, qBatchHead, qBatchMember, qBatchMembers, qBatchByHash, qBatchHeadMember, qDataVersion,
	qAckCursor, qAckWelcomes, qAckHead}

// appendBatch appends application messages within one write transaction.
// What it caches (the maps of the hotCache) was read under a write
// transaction, which holds SQLite's write lock: nothing else changes it.
type appendBatch struct {
	store   *Store
	groups  map[string]*batchGroup
	members map[string]map[string]bool
}

// batchGroup is a group's head as the batch has left it.
type batchGroup struct {
	epoch, start, last int64
}

// accept applies the rules of AcceptMessage to an application message:
// the first receipt for a known hash, else ErrNotFound, the epoch rule and
// membership, and then the next sequence number of the group.
func (a *appendBatch) accept(ctx context.Context, p *ds.AcceptParams) (ds.AcceptResult, error) {
	msgEpoch, err := u64(p.Epoch)
	if err != nil {
		return ds.AcceptResult{}, fmt.Errorf("%w: %w", errRange, err)
	}
	g, err := a.group(ctx, p.GroupID)
	if err != nil {
		return ds.AcceptResult{}, err
	}
	// Membership before the epoch: a non-member learns nothing of the
	// group's epoch.
	var refuse error
	if p.RequireMember {
		ok, err := a.isMember(ctx, p.GroupID, p.Sender)
		if err != nil {
			return ds.AcceptResult{}, err
		}
		if !ok {
			refuse = fmt.Errorf("%w: %q is not a member of group %x", ds.ErrNotMember, p.Sender, p.GroupID)
		}
	}
	if refuse == nil {
		refuse = ds.CheckEpoch(*p, uint64(g.epoch), uint64(g.start))
	}
	if refuse != nil {
		// A message stored before is answered with its receipt
		// whatever the group's epoch or roster is now.
		if dup, err := a.receipt(ctx, p); err == nil {
			return ds.AcceptResult{Receipt: dup, Duplicate: true}, nil
		} else if !errors.Is(err, ds.ErrNotFound) {
			return ds.AcceptResult{}, err
		}
		return ds.AcceptResult{}, refuse
	}
	ins, err := a.store.wstmt(qBatchInsert)
	if err != nil {
		return ds.AcceptResult{}, err
	}
	seq := g.last + 1
	at := p.AcceptedAt.UnixMicro()
	r, err := ins.ExecContext(ctx, p.GroupID, seq, msgEpoch, int64(p.ContentType), int64(p.WireFormat),
		p.Sender, p.Hash, nonNil(p.Data), at)
	if err != nil {
		return ds.AcceptResult{}, err
	}
	if n, err := r.RowsAffected(); err != nil {
		return ds.AcceptResult{}, err
	} else if n == 0 {
		// The hash is stored already (before or earlier in the batch).
		dup, err := a.receipt(ctx, p)
		if err != nil {
			return ds.AcceptResult{}, err
		}
		return ds.AcceptResult{Receipt: dup, Duplicate: true}, nil
	}
	g.last = seq
	return ds.AcceptResult{Receipt: ds.Receipt{GroupID: bytes.Clone(p.GroupID), GroupSeq: uint64(seq), Epoch: p.Epoch,
		AcceptedAt: fromMicros(sql.NullInt64{Int64: at, Valid: true})}}, nil
}

func (a *appendBatch) group(ctx context.Context, id []byte) (*batchGroup, error) {
	if g := a.groups[string(id)]; g != nil {
		return g, nil
	}
	st, err := a.store.wstmt(qBatchHead)
	if err != nil {
		return nil, err
	}
	g := &batchGroup{}
	a.store.hot.misses++
	err = st.QueryRowContext(ctx, id).Scan(&g.epoch, &g.start, &g.last)
	if errors.Is(err, sql.ErrNoRows) {
		// No group, so no message of it either.
		return nil, fmt.Errorf("%w: group %x", ds.ErrNotFound, id)
	} else if err != nil {
		return nil, err
	}
	a.groups[string(id)] = g
	return g, nil
}

func (a *appendBatch) isMember(ctx context.Context, group []byte, client string) (bool, error) {
	if ok, known := a.members[string(group)][client]; known {
		return ok, nil
	}
	st, err := a.store.wstmt(qBatchMember)
	if err != nil {
		return false, err
	}
	var ok bool
	a.store.hot.misses++
	if err := st.QueryRowContext(ctx, group, client).Scan(&ok); err != nil {
		return false, err
	}
	a.setMember(string(group), client, ok)
	return ok, nil
}

// setMember records whether client is a member of group g.
func (a *appendBatch) setMember(g, client string, ok bool) {
	m := a.members[g]
	if m == nil {
		m = make(map[string]bool)
		a.members[g] = m
	}
	m[client] = ok
}

// prefetchMembers learns, with one query per group, which senders of the
// application messages at the start of ps (up to the first other message)
// are members, so that accept need not look them up one by one. For a
// group with one sender whose head is not known yet, the same query reads
// the head too.
func (a *appendBatch) prefetchMembers(ctx context.Context, ps []ds.AcceptParams) error {
	senders := make(map[string][]string)
	seen := make(map[[2]string]bool, len(ps))
	for i := range ps {
		p := &ps[i]
		if !fastPath(p) {
			break
		}
		k := [2]string{string(p.GroupID), p.Sender}
		if !p.RequireMember || seen[k] {
			continue
		}
		seen[k] = true
		if _, known := a.members[k[0]][p.Sender]; !known {
			senders[k[0]] = append(senders[k[0]], p.Sender)
		}
	}
	if len(senders) == 0 {
		return nil
	}
	for g, ids := range senders {
		if len(ids) == 1 && a.groups[g] == nil {
			if err := a.headAndMember(ctx, g, ids[0]); err != nil {
				return err
			}
			continue
		}
		st, err := a.store.wstmt(qBatchMembers)
		if err != nil {
			return err
		}
		list, err := json.Marshal(ids)
		if err != nil {
			return err
		}
		for _, id := range ids {
			a.setMember(g, id, false)
		}
		a.store.hot.misses++
		rows, err := st.QueryContext(ctx, []byte(g), string(list))
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			a.setMember(g, id, true)
		}
		if err := rows.Close(); err != nil {
			return err
		}
	}
	return nil
}

// headAndMember reads the head of group g and whether client is a member
// of it, in one query. An unknown group is left for group to report.
func (a *appendBatch) headAndMember(ctx context.Context, g, client string) error {
	st, err := a.store.wstmt(qBatchHeadMember)
	if err != nil {
		return err
	}
	h := &batchGroup{}
	var member bool
	a.store.hot.misses++
	err = st.QueryRowContext(ctx, client, []byte(g)).Scan(&h.epoch, &h.start, &h.last, &member)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	} else if err != nil {
		return err
	}
	a.groups[g] = h
	a.setMember(g, client, member)
	return nil
}

func (a *appendBatch) receipt(ctx context.Context, p *ds.AcceptParams) (ds.Receipt, error) {
	st, err := a.store.wstmt(qBatchByHash)
	if err != nil {
		return ds.Receipt{}, err
	}
	var seq, epoch int64
	var at sql.NullInt64
	err = st.QueryRowContext(ctx, p.GroupID, p.Hash).Scan(&seq, &epoch, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return ds.Receipt{}, fmt.Errorf("%w: no message with this hash in group %x", ds.ErrNotFound, p.GroupID)
	} else if err != nil {
		return ds.Receipt{}, err
	}
	return ds.Receipt{GroupID: bytes.Clone(p.GroupID), GroupSeq: uint64(seq), Epoch: uint64(epoch), AcceptedAt: fromMicros(at)}, nil
}
