package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

var _ ds.BatchAccepter = (*Store)(nil)

// AcceptMessages implements ds.BatchAccepter: the messages are applied in
// order in one transaction, so that they share one commit (one WAL flush).
// If the transaction cannot commit, every message fails.
//
// The transaction is pipelined (pipeTx): statements whose results decide
// nothing travel in front of the next ones sent, so a batch of application
// messages costs two round trips, BEGIN and the reads in the first, the
// writes and COMMIT in the second.
//
// The messages of the groups that have only application messages in the
// batch go first, as one segment (appendSegment): an application message
// changes nothing but its own group, so its order relative to other
// groups' messages does not matter. The other groups' messages follow in
// order: consecutive application messages as segments, every other
// message through acceptTx, as AcceptMessage runs it, inside a SAVEPOINT
// that is rolled back if the message is refused; the others go on.
//
// The rows of all the batch's groups are locked first, in the order of
// their ids, by the first segment's first statement or a statement of its
// own, so that batches of several nodes touching the same groups wait for
// each other instead of deadlocking. A serialization failure or deadlock
// retries the whole batch, as it retries one message.
func (s *Store) AcceptMessages(ctx context.Context, ps []ds.AcceptParams) ([]ds.AcceptResult, []error) {
	res, errs, _ := s.acceptBatch(ctx, "accept messages", ps, nil)
	return res, errs
}

// acceptBatch is AcceptMessages and, with acks, AcceptMessagesAndAcks: one
// transaction for both. It returns the messages' outcomes and the Acks'.
func (s *Store) acceptBatch(ctx context.Context, op string, ps []ds.AcceptParams, acks []ds.AckParams) ([]ds.AcceptResult, []error, []error) {
	mb := newMessageBatch(ps)
	var ab *ackBatch
	if len(acks) > 0 {
		ab = newAckBatch(acks)
	}
	if len(ps) == 0 && ab == nil {
		return mb.res, mb.errs, []error{}
	}
	err := s.pipeTx(ctx, op, func(c dbtx) error { return s.acceptBatchTx(ctx, c, mb, ab) })
	mb.finish(ctx, s, err)
	if ab == nil {
		return mb.res, mb.errs, []error{}
	}
	return mb.res, mb.errs, ab.finish(err)
}

// messageBatch is a batch of messages for acceptBatchTx and its outcome.
type messageBatch struct {
	ps    []ds.AcceptParams
	ids   [][]byte        // the groups' ids, in lock order
	slow  map[string]bool // groups with a message that is not an application message
	res   []ds.AcceptResult
	errs  []error
	races []bool
}

func newMessageBatch(ps []ds.AcceptParams) *messageBatch {
	b := &messageBatch{ps: ps,
		res: make([]ds.AcceptResult, len(ps)), errs: make([]error, len(ps)), races: make([]bool, len(ps))}
	seen := make(map[string]bool)
	for i := range ps {
		p := &ps[i]
		if !fastPath(p) {
			if b.slow == nil {
				b.slow = make(map[string]bool)
			}
			b.slow[string(p.GroupID)] = true
		}
		if !seen[string(p.GroupID)] {
			seen[string(p.GroupID)] = true
			b.ids = append(b.ids, nonNil(p.GroupID))
		}
	}
	sort.Slice(b.ids, func(i, j int) bool { return bytes.Compare(b.ids[i], b.ids[j]) < 0 })
	return b
}

// lockGroups locks the rows of the groups $1 in the order of their ids.
const lockGroups = "SELECT 1 FROM groups WHERE id = ANY($1) ORDER BY id FOR UPDATE"

// acceptBatchTx is acceptBatch's work on c, from BEGIN to COMMIT; it may
// run more than once (pipeTx retries), and starts afresh each time.
func (s *Store) acceptBatchTx(ctx context.Context, c dbtx, b *messageBatch, ab *ackBatch) error {
	ps, res, errs, races := b.ps, b.res, b.errs, b.races
	clear(res)
	clear(errs)
	clear(races)
	pl := &pipeline{}
	pl.queue(beginRC)
	var first, rest []int
	for i := range ps {
		if b.slow[string(ps[i].GroupID)] {
			rest = append(rest, i)
		} else {
			first = append(first, i)
		}
	}
	if len(first) > 0 {
		if err := s.appendSegment(ctx, c, pl, b, first, b.ids); err != nil {
			return err
		}
	} else if len(b.ids) > 0 {
		pl.queue(lockGroups, b.ids)
	}
	for k := 0; k < len(rest); k++ {
		i := rest[k]
		if fastPath(&ps[i]) {
			j := k + 1
			for j < len(rest) && fastPath(&ps[rest[j]]) {
				j++
			}
			if err := s.appendSegment(ctx, c, pl, b, rest[k:j], nil); err != nil {
				return err
			}
			k = j - 1
			continue
		}
		pl.queue("SAVEPOINT accept")
		r, err := s.acceptTx(ctx, c, ps[i], pl)
		if err != nil {
			var pe *pipelineError
			if errors.As(err, &pe) || retryable(err) {
				return err
			}
			// Whatever the message wrote goes, and the transaction goes
			// on. If a statement failed, the transaction is aborted
			// until then, and takes nothing else, not even the Parse of
			// a statement new to the connection: the rollback goes at
			// once, by the simple protocol. Else it waits in pl.
			var pge *pgconn.PgError
			if errors.As(err, &pge) || errors.Is(err, errHashRace) {
				if _, rerr := c.Exec(ctx, "ROLLBACK TO SAVEPOINT accept", pgx.QueryExecModeSimpleProtocol); rerr != nil {
					return rerr
				}
			} else {
				pl.queue("ROLLBACK TO SAVEPOINT accept")
			}
			pl.queue("RELEASE SAVEPOINT accept")
			if errors.Is(err, errHashRace) {
				races[i] = true
			} else {
				errs[i] = engineErr("accept message", err)
			}
			continue
		}
		pl.queue("RELEASE SAVEPOINT accept")
		res[i] = r
	}
	return commitPipeline(ctx, c, pl, ab)
}

// commitPipeline sends what pl holds, ab's statement if ab is not nil, and
// COMMIT, in one round trip.
func commitPipeline(ctx context.Context, c dbtx, pl *pipeline, ab *ackBatch) error {
	bt, n := pl.batch()
	if ab != nil {
		ab.queue(bt)
	}
	bt.Queue(commit)
	br := c.SendBatch(ctx, bt)
	err := skip(br, n)
	if err == nil && ab != nil {
		err = ab.read(br.Query())
	}
	if err == nil {
		err = commitTag(br.Exec())
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
}

// finish sets the outcome once the transaction is over, with err its
// failure: every message fails with it, or a duplicate that hit the unique
// index (see errHashRace) is answered with the stored receipt.
func (b *messageBatch) finish(ctx context.Context, s *Store, err error) {
	if err != nil {
		for i := range b.ps {
			b.res[i], b.errs[i] = ds.AcceptResult{}, err
		}
		return
	}
	for i, race := range b.races {
		if race {
			r, err := s.MessageByHash(ctx, b.ps[i].GroupID, b.ps[i].Hash)
			b.res[i], b.errs[i] = ds.AcceptResult{Receipt: r, Duplicate: true}, err
		}
	}
}

// fastPath reports whether p is a message that appendSegment handles: an
// application message, which changes nothing but the group's sequence.
func fastPath(p *ds.AcceptParams) bool {
	return p.ContentType == mls.ContentTypeApplication &&
		!p.ChangesState() && p.NewState == nil && p.GroupInfo == nil && p.RemoteTree == nil &&
		len(p.Added) == 0 && len(p.Removed) == 0 &&
		p.Welcome == nil && len(p.WelcomeTo) == 0 && len(p.ConsumeKeyPackages) == 0
}

// head is a group's row as the accept path needs it; dirty when a message
// of the batch moved last_seq.
type head struct {
	epoch, start, last int64
	dirty              bool
}

// stored is the receipt of a message already stored.
type stored struct {
	seq, epoch int64
	at         time.Time
}

// segment is a run of application messages, b.ps[idx], and what deciding
// about them needs and yields.
type segment struct {
	b   *messageBatch
	idx []int
	ok  map[int]bool // passed the checks of the input alone

	gids         [][]byte // the groups, in the order of first appearance
	hashG, hashH [][]byte // the messages' (group, hash), to look for duplicates
	memG         [][]byte // the (group, sender) of those that require membership
	memC         []string

	// decide's outcome: the rows to insert and the groups' new last_seq.
	rG, rH, rD [][]byte
	rSeq, rEp  []int64
	rCT, rWF   []int32
	rSender    []string
	rAt        []time.Time
	upID       [][]byte
	upLast     []int64
}

func newSegment(b *messageBatch, idx []int) *segment {
	sg := &segment{b: b, idx: idx, ok: make(map[int]bool, len(idx))}
	seenG := make(map[string]bool)
	seenM := make(map[string]bool)
	for _, i := range idx {
		p := &b.ps[i]
		if _, err := u64(p.Epoch); err != nil {
			b.errs[i] = err
			continue
		}
		if err := checkText("sender id", p.Sender); err != nil {
			b.errs[i] = err
			continue
		}
		sg.ok[i] = true
		g := nonNil(p.GroupID)
		if !seenG[string(g)] {
			seenG[string(g)] = true
			sg.gids = append(sg.gids, g)
		}
		sg.hashG, sg.hashH = append(sg.hashG, g), append(sg.hashH, nonNil(p.Hash))
		if k := string(g) + "\x00" + p.Sender; p.RequireMember && !seenM[k] {
			seenM[k] = true
			sg.memG, sg.memC = append(sg.memG, g), append(sg.memC, p.Sender)
		}
	}
	return sg
}

// decide applies the rules of AcceptMessage to the segment's messages, in
// order, given the heads of their groups (which it advances), the
// messages already stored by (group, hash) and the senders' memberships;
// b.res and b.errs receive the outcomes, sg the rows to write.
func (sg *segment) decide(heads map[string]*head, known map[string]stored, members map[string]bool) {
	ps, res, errs := sg.b.ps, sg.b.res, sg.b.errs
	for _, i := range sg.idx {
		if !sg.ok[i] {
			continue
		}
		p := &ps[i]
		g := nonNil(p.GroupID)
		hd := heads[string(g)]
		if hd == nil {
			errs[i] = fmt.Errorf("%w: group %x", ds.ErrNotFound, p.GroupID)
			continue
		}
		hk := string(g) + "\x00" + string(nonNil(p.Hash))
		if d, dup := known[hk]; dup {
			res[i] = ds.AcceptResult{Duplicate: true, Receipt: ds.Receipt{GroupID: bytes.Clone(p.GroupID),
				GroupSeq: uint64(d.seq), Epoch: uint64(d.epoch), AcceptedAt: d.at.UTC()}}
			continue
		}
		// Membership before the epoch: a non-member learns nothing of
		// the group's epoch.
		if p.RequireMember && !members[string(g)+"\x00"+p.Sender] {
			errs[i] = fmt.Errorf("%w: %q is not a member of group %x", ds.ErrNotMember, p.Sender, p.GroupID)
			continue
		}
		if err := ds.CheckEpoch(*p, uint64(hd.epoch), uint64(hd.start)); err != nil {
			errs[i] = err
			continue
		}
		hd.last++
		hd.dirty = true
		at := time.UnixMicro(p.AcceptedAt.UnixMicro()).UTC() // what timestamptz keeps
		known[hk] = stored{seq: hd.last, epoch: int64(p.Epoch), at: at}
		sg.rG, sg.rH, sg.rD = append(sg.rG, g), append(sg.rH, nonNil(p.Hash)), append(sg.rD, nonNil(p.Data))
		sg.rSeq, sg.rEp = append(sg.rSeq, hd.last), append(sg.rEp, int64(p.Epoch))
		sg.rCT, sg.rWF = append(sg.rCT, int32(p.ContentType)), append(sg.rWF, int32(p.WireFormat))
		sg.rSender, sg.rAt = append(sg.rSender, p.Sender), append(sg.rAt, at)
		res[i] = ds.AcceptResult{Receipt: ds.Receipt{GroupID: bytes.Clone(p.GroupID), GroupSeq: uint64(hd.last), Epoch: p.Epoch, AcceptedAt: at}}
	}
	for _, g := range sg.gids {
		if hd := heads[string(g)]; hd != nil && hd.dirty {
			sg.upID, sg.upLast = append(sg.upID, g), append(sg.upLast, hd.last)
		}
	}
}

const (
	insertMessages = `INSERT INTO messages (group_id, seq, epoch, content_type, wire_format, sender, hash, data, accepted_at)
		SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::integer[], $5::integer[], $6::text[], $7::bytea[], $8::bytea[], $9::timestamptz[])`
	updateLastSeq = `UPDATE groups SET last_seq = v.last FROM unnest($1::bytea[], $2::bigint[]) AS v (id, last) WHERE groups.id = v.id`
)

// appendSegment applies the rules of AcceptMessage to the application
// messages b.ps[idx], in order, within the transaction on c: one round trip
// (after what pl holds) locks the groups' rows, those of lock if it is not
// nil, else the segment's, in the order of their ids (so that concurrent
// batches cannot deadlock), and reads their heads, the messages already
// stored with the same hashes and the senders' memberships; decide makes
// the decisions; the inserts of the accepted messages and the update of
// their groups' last_seq are queued on pl, for the next round trip. A
// refused message thus writes nothing. b.res and b.errs receive the
// outcomes; an error returned is the engine's and fails the whole batch.
func (s *Store) appendSegment(ctx context.Context, c dbtx, pl *pipeline, b *messageBatch, idx []int, lock [][]byte) error {
	sg := newSegment(b, idx)
	if len(sg.gids) == 0 {
		if lock != nil {
			pl.queue(lockGroups, lock)
		}
		return nil
	}
	if lock == nil {
		lock = sg.gids
	}

	bt, n := pl.batch()
	bt.Queue("SELECT id, epoch, epoch_start_seq, last_seq FROM groups WHERE id = ANY($1) ORDER BY id FOR UPDATE", lock)
	// One index probe per message, whatever the planner believes of the
	// table's size: a join would let a plan made while the table was
	// small (and cached with the prepared statement) scan all of it.
	bt.Queue(`SELECT k.g, k.h, m.seq, m.epoch, m.accepted_at
		FROM unnest($1::bytea[], $2::bytea[]) AS k (g, h)
		CROSS JOIN LATERAL (SELECT seq, epoch, accepted_at FROM messages
			WHERE group_id = k.g AND hash = k.h LIMIT 1) AS m`, sg.hashG, sg.hashH)
	bt.Queue(`SELECT k.g, k.c
		FROM unnest($1::bytea[], $2::text[]) AS k (g, c)
		CROSS JOIN LATERAL (SELECT 1 FROM memberships
			WHERE group_id = k.g AND client_id = k.c AND until_seq IS NULL LIMIT 1) AS w`, sg.memG, sg.memC)
	br := c.SendBatch(ctx, bt)
	if err := skip(br, n); err != nil {
		br.Close()
		return err
	}
	heads := make(map[string]*head)
	var id []byte
	var h head
	if _, err := pgx.ForEachRow(batchRows(br.Query()), []any{&id, &h.epoch, &h.start, &h.last}, func() error {
		hh := h
		heads[string(id)] = &hh
		return nil
	}); err != nil {
		br.Close()
		return err
	}
	known := make(map[string]stored)
	var hash []byte
	var st stored
	if _, err := pgx.ForEachRow(batchRows(br.Query()), []any{&id, &hash, &st.seq, &st.epoch, &st.at}, func() error {
		known[string(id)+"\x00"+string(hash)] = st
		return nil
	}); err != nil {
		br.Close()
		return err
	}
	members := make(map[string]bool)
	var client string
	if _, err := pgx.ForEachRow(batchRows(br.Query()), []any{&id, &client}, func() error {
		members[string(id)+"\x00"+client] = true
		return nil
	}); err != nil {
		br.Close()
		return err
	}
	if err := br.Close(); err != nil {
		return err
	}

	sg.decide(heads, known, members)
	if len(sg.rG) > 0 {
		pl.queue(insertMessages, sg.rG, sg.rSeq, sg.rEp, sg.rCT, sg.rWF, sg.rSender, sg.rH, sg.rD, sg.rAt)
		pl.queue(updateLastSeq, sg.upID, sg.upLast)
	}
	return nil
}

// batchRows passes a batch result on; its error comes again from the read.
func batchRows(rows pgx.Rows, _ error) pgx.Rows { return rows }
