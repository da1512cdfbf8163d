package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

var _ ds.BatchAccepter = (*Store)(nil)

// AcceptMessages implements ds.BatchAccepter: the messages are applied in
// order in one transaction, so that they share one commit (one WAL flush).
// If the transaction cannot commit, every message fails.
//
// Consecutive application messages are appended together (appendSegment):
// two round trips for all of them. Every other message runs acceptTx, as
// AcceptMessage does, inside a SAVEPOINT that is rolled back if the
// message is refused; the others go on.
//
// The rows of all the batch's groups are locked first, in the order of
// their ids (by the segment's first statement when the batch holds only
// application messages), so that batches of several nodes touching the
// same groups wait for each other instead of deadlocking. A serialization failure or
// deadlock retries the whole batch, as it retries one message.
func (s *Store) AcceptMessages(ctx context.Context, ps []ds.AcceptParams) ([]ds.AcceptResult, []error) {
	if len(ps) == 1 {
		// Alone, a message takes AcceptMessage's path: no batch
		// machinery to pay for.
		res, errs := make([]ds.AcceptResult, 1), make([]error, 1)
		res[0], errs[0] = s.AcceptMessage(ctx, ps[0])
		return res, errs
	}
	b := newMessageBatch(ps)
	err := s.tx(ctx, "accept messages", func(tx pgx.Tx) error { return s.acceptBatchTx(ctx, tx, b) })
	b.finish(ctx, s, err)
	return b.res, b.errs
}

// messageBatch is a batch of messages for acceptBatchTx and its outcome.
type messageBatch struct {
	ps      []ds.AcceptParams
	ids     [][]byte // the groups' ids, in lock order
	allFast bool
	res     []ds.AcceptResult
	errs    []error
	races   []bool
}

func newMessageBatch(ps []ds.AcceptParams) *messageBatch {
	b := &messageBatch{ps: ps, allFast: true,
		res: make([]ds.AcceptResult, len(ps)), errs: make([]error, len(ps)), races: make([]bool, len(ps))}
	seen := make(map[string]bool)
	for i := range ps {
		p := &ps[i]
		b.allFast = b.allFast && fastPath(p)
		if !seen[string(p.GroupID)] {
			seen[string(p.GroupID)] = true
			b.ids = append(b.ids, nonNil(p.GroupID))
		}
	}
	sort.Slice(b.ids, func(i, j int) bool { return bytes.Compare(b.ids[i], b.ids[j]) < 0 })
	return b
}

// acceptBatchTx is AcceptMessages' work under tx; it may run more than
// once (s.tx retries), and starts afresh each time.
func (s *Store) acceptBatchTx(ctx context.Context, tx pgx.Tx, b *messageBatch) error {
	ps, res, errs, races := b.ps, b.res, b.errs, b.races
	clear(res)
	clear(errs)
	clear(races)
	if len(ps) == 0 {
		return nil
	}
	if !b.allFast {
		// A batch of application messages only is one segment,
		// whose first statement takes these locks anyway.
		if _, err := tx.Exec(ctx, "SELECT 1 FROM groups WHERE id = ANY($1) ORDER BY id FOR UPDATE", b.ids); err != nil {
			return err
		}
	}
	for i := 0; i < len(ps); i++ {
		if fastPath(&ps[i]) {
			j := i + 1
			for j < len(ps) && fastPath(&ps[j]) {
				j++
			}
			if err := s.appendSegment(ctx, tx, ps[i:j], res[i:j], errs[i:j]); err != nil {
				return err
			}
			i = j - 1
			continue
		}
		p := ps[i]
		sp, err := tx.Begin(ctx) // SAVEPOINT
		if err != nil {
			return err
		}
		r, err := s.acceptTx(ctx, sp, p)
		if err != nil {
			if rerr := sp.Rollback(ctx); rerr != nil {
				return rerr
			}
			switch {
			case retryable(err):
				return err
			case errors.Is(err, errHashRace):
				races[i] = true
			default:
				errs[i] = engineErr("accept message", err)
			}
			continue
		}
		if err := sp.Commit(ctx); err != nil { // RELEASE SAVEPOINT
			return err
		}
		res[i] = r
	}
	return nil
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

// appendSegment applies the rules of AcceptMessage to application messages
// in order, within tx: one round trip locks the groups' rows (in the
// order of their ids, so that concurrent batches cannot deadlock) and
// reads their heads, the messages already stored with the
// same hashes and the senders' memberships; the decisions are made here,
// message by message, as acceptTx would make them; one more round trip
// inserts the accepted messages and moves the groups' last_seq. A refused
// message thus writes nothing. res and errs receive the outcomes; an error
// returned is the engine's and fails the whole batch.
func (s *Store) appendSegment(ctx context.Context, tx pgx.Tx, ps []ds.AcceptParams, res []ds.AcceptResult, errs []error) error {
	type head struct {
		epoch, start, last int64
		dirty              bool
	}
	type stored struct {
		seq, epoch int64
		at         time.Time
	}
	var gids, hashG, hashH, memG [][]byte
	var memC []string
	seenG := make(map[string]bool)
	seenM := make(map[string]bool)
	ok := make([]bool, len(ps))
	for i := range ps {
		p := &ps[i]
		if _, err := u64(p.Epoch); err != nil {
			errs[i] = err
			continue
		}
		if err := checkText("sender id", p.Sender); err != nil {
			errs[i] = err
			continue
		}
		ok[i] = true
		g := nonNil(p.GroupID)
		if !seenG[string(g)] {
			seenG[string(g)] = true
			gids = append(gids, g)
		}
		hashG, hashH = append(hashG, g), append(hashH, nonNil(p.Hash))
		if k := string(g) + "\x00" + p.Sender; p.RequireMember && !seenM[k] {
			seenM[k] = true
			memG, memC = append(memG, g), append(memC, p.Sender)
		}
	}
	if len(gids) == 0 {
		return nil
	}

	b := &pgx.Batch{}
	b.Queue("SELECT id, epoch, epoch_start_seq, last_seq FROM groups WHERE id = ANY($1) ORDER BY id FOR UPDATE", gids)
	b.Queue(`SELECT m.group_id, m.hash, m.seq, m.epoch, m.accepted_at
		FROM messages m JOIN unnest($1::bytea[], $2::bytea[]) AS k (g, h) ON m.group_id = k.g AND m.hash = k.h`, hashG, hashH)
	b.Queue(`SELECT w.group_id, w.client_id
		FROM memberships w JOIN unnest($1::bytea[], $2::text[]) AS k (g, c) ON w.group_id = k.g AND w.client_id = k.c
		WHERE w.until_seq IS NULL`, memG, memC)
	br := tx.SendBatch(ctx, b)
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

	var (
		rG, rH, rD [][]byte
		rSeq, rEp  []int64
		rCT, rWF   []int32
		rSender    []string
		rAt        []time.Time
	)
	for i := range ps {
		if !ok[i] {
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
		rG, rH, rD = append(rG, g), append(rH, nonNil(p.Hash)), append(rD, nonNil(p.Data))
		rSeq, rEp = append(rSeq, hd.last), append(rEp, int64(p.Epoch))
		rCT, rWF = append(rCT, int32(p.ContentType)), append(rWF, int32(p.WireFormat))
		rSender, rAt = append(rSender, p.Sender), append(rAt, at)
		res[i] = ds.AcceptResult{Receipt: ds.Receipt{GroupID: bytes.Clone(p.GroupID), GroupSeq: uint64(hd.last), Epoch: p.Epoch, AcceptedAt: at}}
	}
	if len(rG) == 0 {
		return nil
	}
	var upID [][]byte
	var upLast []int64
	for _, g := range gids {
		if hd := heads[string(g)]; hd != nil && hd.dirty {
			upID, upLast = append(upID, g), append(upLast, hd.last)
		}
	}
	w := &pgx.Batch{}
	w.Queue(`INSERT INTO messages (group_id, seq, epoch, content_type, wire_format, sender, hash, data, accepted_at)
		SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::integer[], $5::integer[], $6::text[], $7::bytea[], $8::bytea[], $9::timestamptz[])`,
		rG, rSeq, rEp, rCT, rWF, rSender, rH, rD, rAt)
	w.Queue(`UPDATE groups SET last_seq = v.last FROM unnest($1::bytea[], $2::bigint[]) AS v (id, last) WHERE groups.id = v.id`,
		upID, upLast)
	return tx.SendBatch(ctx, w).Close()
}

// batchRows passes a batch result on; its error comes again from the read.
func batchRows(rows pgx.Rows, _ error) pgx.Rows { return rows }
