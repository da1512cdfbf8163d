package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// dbtx is what the accept path needs of a transaction: a pgx.Tx, or a
// pooled connection whose transaction a pipelined BEGIN opened (pipeTx).
type dbtx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

const (
	beginRC = "BEGIN ISOLATION LEVEL READ COMMITTED"
	commit  = "COMMIT"
)

// pipeline holds statements of a transaction whose results are only
// success or failure (BEGIN, a row lock, writes whose outcome is already
// decided, SAVEPOINT and RELEASE): instead of a round trip of their own,
// they travel in front of the next statements that are sent. PostgreSQL
// skips everything after a failed statement up to the batch's end, so a
// failure among them fails what follows; the caller fails the transaction.
type pipeline struct {
	q []pending
}

type pending struct {
	sql  string
	args []any
}

func (pl *pipeline) queue(sql string, args ...any) {
	pl.q = append(pl.q, pending{sql, args})
}

// batch returns a batch that starts with the queued statements, which it
// takes, and their number; the caller reads their results with skip
// before its own.
func (pl *pipeline) batch() (*pgx.Batch, int) {
	b := &pgx.Batch{}
	if pl == nil {
		return b, 0
	}
	for _, p := range pl.q {
		b.Queue(p.sql, p.args...)
	}
	n := len(pl.q)
	pl.q = pl.q[:0]
	return b, n
}

// pipelineError is the failure of a queued statement: the transaction's,
// not that of the statements it preceded.
type pipelineError struct{ err error }

func (e *pipelineError) Error() string { return e.err.Error() }
func (e *pipelineError) Unwrap() error { return e.err }

// skip reads the results of the n queued statements at the front of br.
func skip(br pgx.BatchResults, n int) error {
	for range n {
		if _, err := br.Exec(); err != nil {
			return &pipelineError{err}
		}
	}
	return nil
}

// commitTag checks the result of the COMMIT at the end of a batch:
// PostgreSQL answers a COMMIT of a failed transaction with ROLLBACK, not
// an error.
func commitTag(tag pgconn.CommandTag, err error) error {
	if err != nil {
		return err
	}
	if tag.String() != commit {
		return fmt.Errorf("postgres: the transaction was rolled back (%s)", tag)
	}
	return nil
}

// pipeTx runs f on a connection of the pool, and retries it as tx does.
// f opens the transaction itself, with beginRC at the front of its first
// batch, and commits it with COMMIT at the end of its last, so that
// neither costs a round trip of its own; if f fails, or leaves the
// transaction open, pipeTx rolls it back. f may run more than once: it
// must not keep results of a failed attempt.
func (s *Store) pipeTx(ctx context.Context, op string, f func(c dbtx) error) error {
	return retrying(ctx, op, func() error { return s.pipeOnce(ctx, f) })
}

func (s *Store) pipeOnce(ctx context.Context, f func(c dbtx) error) error {
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	err = f(c)
	if pc := c.Conn().PgConn(); !pc.IsClosed() && pc.TxStatus() != 'I' {
		// If the ROLLBACK fails too, Release destroys the connection,
		// which is not idle.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		c.Exec(rctx, "ROLLBACK", pgx.QueryExecModeSimpleProtocol)
		cancel()
		if err == nil {
			err = errors.New("postgres: internal error: a pipelined transaction was left open")
		}
	}
	return err
}
