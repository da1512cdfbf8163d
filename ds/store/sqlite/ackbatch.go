package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/mlsds/mlsds/ds"
)

var _ ds.BatchAcker = (*Store)(nil)

// AckMany implements ds.BatchAcker: the Acks are applied in order in one
// write transaction, which costs one fsync for all of them, with the
// statements of Ack prepared once. The group heads that CheckHead needs are
// read once per group: the transaction holds the database's write lock,
// so they do not change under it (and Acks do not change them). An Ack
// that is refused has changed nothing: it failed before its cursor update
// or that update matched no row. If the transaction cannot commit, every
// Ack fails.
func (s *Store) AckMany(ctx context.Context, ps []ds.AckParams) []error {
	errs := make([]error, len(ps))
	err := s.write(ctx, func(tx *sql.Conn) error {
		clear(errs)
		return s.ackManyTx(ctx, tx, ps, errs)
	})
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
	}
	return errs
}

var _ ds.AckingAccepter = (*Store)(nil)

// AcceptMessagesAndAcks implements ds.AckingAccepter: AcceptMessages' work
// and then AckMany's in one write transaction, one fsync for both.
func (s *Store) AcceptMessagesAndAcks(ctx context.Context, ps []ds.AcceptParams, acks []ds.AckParams) ([]ds.AcceptResult, []error, []error) {
	ctx = context.WithoutCancel(ctx) // as AcceptMessages
	res := make([]ds.AcceptResult, len(ps))
	errs := make([]error, len(ps))
	ackErrs := make([]error, len(acks))
	err := s.write(ctx, func(tx *sql.Conn) error {
		if err := s.acceptBatchTx(ctx, tx, ps, res, errs); err != nil {
			return err
		}
		return s.ackManyTx(ctx, tx, acks, ackErrs)
	})
	if err != nil {
		for i := range ps {
			res[i], errs[i] = ds.AcceptResult{}, err
		}
		for i := range ackErrs {
			ackErrs[i] = err
		}
	}
	return res, errs, ackErrs
}

// The statements of ackManyTx, compiled once on the writer connection
// (writerStmts).
var (
	qAckCursor   = "UPDATE cursors SET acked = MAX(acked, ?) WHERE client_id = ? AND group_id = ?"
	qAckWelcomes = "UPDATE welcome_routes SET delivered = 1 WHERE client_id = ? AND group_id = ? AND commit_seq <= ? AND delivered = 0"
	qAckHead     = "SELECT " + lastSeq("groups") + " FROM groups WHERE id = ?"
)

// ackManyTx is AckMany's work under tx: errs receives the refusal of each
// Ack; an error return fails the whole batch.
func (s *Store) ackManyTx(ctx context.Context, tx *sql.Conn, ps []ds.AckParams, errs []error) error {
	if len(ps) == 0 {
		s.hot.keep = true
		return nil
	}
	// A group's head known to the hotCache (by the batch just run, say)
	// need not be read.
	if err := s.hot.check(ctx, s); err != nil {
		return err
	}
	var head *sql.Stmt
	heads := make(map[string]int64) // last_seq by group; -1: no such group
	cursor, err := s.wstmt(qAckCursor)
	if err != nil {
		return err
	}
	welcomes, err := s.wstmt(qAckWelcomes)
	if err != nil {
		return err
	}
	for i, p := range ps {
		if p.CheckHead {
			last, ok := heads[string(p.GroupID)]
			if g := s.hot.groups[string(p.GroupID)]; !ok && g != nil {
				last, ok = g.last, true
			}
			if !ok {
				if head == nil {
					if head, err = s.wstmt(qAckHead); err != nil {
						return err
					}
				}
				err := head.QueryRowContext(ctx, p.GroupID).Scan(&last)
				if errors.Is(err, sql.ErrNoRows) {
					last = -1
				} else if err != nil {
					return err
				}
				heads[string(p.GroupID)] = last
			}
			if last < 0 {
				errs[i] = fmt.Errorf("%w: group %x", ds.ErrNotFound, p.GroupID)
				continue
			}
			if p.Seq > uint64(last) {
				errs[i] = &ds.AckBeyondHeadError{Seq: p.Seq, LastSeq: uint64(last)}
				continue
			}
		}
		v, err := u64(p.Seq)
		if err != nil {
			errs[i] = err
			continue
		}
		res, err := cursor.ExecContext(ctx, v, p.ClientID, p.GroupID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			errs[i] = fmt.Errorf("%w: %q was never a member of group %x", ds.ErrNotMember, p.ClientID, p.GroupID)
			continue
		}
		if _, err := welcomes.ExecContext(ctx, p.ClientID, p.GroupID, v); err != nil {
			return err
		}
	}
	s.hot.keep = true // Acks change no head and no membership
	return nil
}
