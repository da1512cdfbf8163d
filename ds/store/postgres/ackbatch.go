package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
)

var _ ds.BatchAcker = (*Store)(nil)

// ackMany is AckMany's statement, over the Acks as arrays (client, group,
// seq, check_head; a NULL client matches no cursor, a NULL seq is beyond
// any head). v reads the heads of their groups, without a lock, as
// Service.Ack does; ok keeps the Acks that pass their checks, collapsed to
// the highest Seq per cursor; l locks those cursors in the order of
// (group, client), so that batches of several nodes wait for each other
// instead of deadlocking, and the updates follow. The Welcome routes that
// it marks delivered are written only by holders of their cursor's lock.
// One row per Ack, in order: its group's last_seq (NULL: no such group)
// and whether its cursor exists.
const ackMany = `WITH v AS (
		SELECT v.i, v.client_id, v.group_id, v.seq, v.check_head, g.last_seq
		FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::bool[])
		     WITH ORDINALITY AS v(client_id, group_id, seq, check_head, i)
		LEFT JOIN groups g ON g.id = v.group_id
	), ok AS (
		SELECT client_id, group_id, max(seq) AS seq FROM v
		WHERE client_id IS NOT NULL AND seq IS NOT NULL AND (NOT check_head OR seq <= last_seq)
		GROUP BY client_id, group_id
	), l AS (
		SELECT c.client_id, c.group_id, ok.seq
		FROM cursors c JOIN ok ON c.client_id = ok.client_id AND c.group_id = ok.group_id
		ORDER BY c.group_id, c.client_id
		FOR UPDATE OF c
	), c AS (
		UPDATE cursors c SET acked = GREATEST(c.acked, l.seq)
		FROM l WHERE c.client_id = l.client_id AND c.group_id = l.group_id
		RETURNING c.client_id, c.group_id
	), w AS (
		UPDATE welcome_routes r SET delivered = true
		FROM l WHERE r.client_id = l.client_id AND r.group_id = l.group_id
		  AND r.commit_seq <= l.seq AND NOT r.delivered
	)
	SELECT v.last_seq, EXISTS (SELECT 1 FROM l WHERE l.client_id = v.client_id AND l.group_id = v.group_id)
	FROM v ORDER BY v.i`

// AckMany implements ds.BatchAcker in one statement (ackMany), pipelined
// between BEGIN and COMMIT: one round trip and one commit for all the
// Acks. It locks what Ack locks, no more: the cursor rows of the Acks that
// pass their checks, and the Welcome routes it marks delivered. A
// serialization failure or deadlock retries the batch.
func (s *Store) AckMany(ctx context.Context, ps []ds.AckParams) []error {
	if len(ps) == 1 && !ps[0].CheckHead {
		// Alone and unchecked, an Ack takes Ack's path.
		return []error{s.Ack(ctx, ps[0].ClientID, ps[0].GroupID, ps[0].Seq)}
	}
	b := newAckBatch(ps)
	err := s.pipeTx(ctx, "ack", func(c dbtx) error {
		pl := &pipeline{}
		pl.queue(beginRC)
		return commitPipeline(ctx, c, pl, b)
	})
	return b.finish(err)
}

var _ ds.AckingAccepter = (*Store)(nil)

// AcceptMessagesAndAcks implements ds.AckingAccepter: AcceptMessages' work
// and then AckMany's statement in one transaction, one commit for both
// (the statement travels with the COMMIT). The groups' rows are locked
// before the cursors', as Ack and the acceptance of a Commit lock them. A
// serialization failure or deadlock retries the whole.
func (s *Store) AcceptMessagesAndAcks(ctx context.Context, ps []ds.AcceptParams, acks []ds.AckParams) ([]ds.AcceptResult, []error, []error) {
	if len(acks) == 0 {
		res, errs := s.AcceptMessages(ctx, ps)
		return res, errs, []error{}
	}
	if len(ps) == 0 {
		return []ds.AcceptResult{}, []error{}, s.AckMany(ctx, acks)
	}
	return s.acceptBatch(ctx, "accept messages and acks", ps, acks)
}

// ackBatch is a batch of Acks as ackMany's arguments, and its outcome.
type ackBatch struct {
	ps      []ds.AckParams
	errs    []error // refusals known before the statement
	clients []*string
	groups  [][]byte
	seqs    []*int64
	checks  []bool
	out     []ackOutcome
}

type ackOutcome struct {
	last  *int64
	found bool
}

func newAckBatch(ps []ds.AckParams) *ackBatch {
	b := &ackBatch{ps: ps, errs: make([]error, len(ps)),
		clients: make([]*string, len(ps)), groups: make([][]byte, len(ps)),
		seqs: make([]*int64, len(ps)), checks: make([]bool, len(ps)),
		out: make([]ackOutcome, 0, len(ps))}
	for i, p := range ps {
		if textOK(p.ClientID) {
			b.clients[i] = &ps[i].ClientID
		}
		b.groups[i], b.checks[i] = nonNil(p.GroupID), p.CheckHead
		if v, err := u64(p.Seq); err == nil {
			b.seqs[i] = &v
		} else if !p.CheckHead {
			b.errs[i] = err
		}
	}
	return b
}

// queue adds ackMany to bt; read reads its rows. They may run more than
// once, one transaction attempt after the other.
func (b *ackBatch) queue(bt *pgx.Batch) {
	bt.Queue(ackMany, b.clients, b.groups, b.seqs, b.checks)
}

func (b *ackBatch) read(rows pgx.Rows, err error) error {
	b.out = b.out[:0]
	if err != nil {
		return err
	}
	var o ackOutcome
	_, err = pgx.ForEachRow(rows, []any{&o.last, &o.found}, func() error {
		b.out = append(b.out, o)
		return nil
	})
	return err
}

// finish returns the outcome of each Ack, with err the transaction's
// failure.
func (b *ackBatch) finish(err error) []error {
	if err == nil && len(b.out) != len(b.ps) {
		err = fmt.Errorf("postgres: ack: %d rows for %d acks", len(b.out), len(b.ps))
	}
	errs, out := b.errs, b.out
	for i, p := range b.ps {
		switch {
		case err != nil:
			errs[i] = err
		case errs[i] != nil:
		case p.CheckHead && out[i].last == nil:
			errs[i] = fmt.Errorf("%w: group %x", ds.ErrNotFound, p.GroupID)
		case p.CheckHead && p.Seq > uint64(*out[i].last):
			errs[i] = &ds.AckBeyondHeadError{Seq: p.Seq, LastSeq: uint64(*out[i].last)}
		case !out[i].found:
			errs[i] = fmt.Errorf("%w: %q was never a member of group %x", ds.ErrNotMember, p.ClientID, p.GroupID)
		}
	}
	return errs
}
