package postgres

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// RawInsertRate measures the durable write rate of the PostgreSQL server at
// dsn, as a baseline for the engine's own rates: for about d it inserts
// rows of payload random bytes into a plain temporary-named table,
// rowsPerTx rows per transaction, one transaction after the other on one
// connection. Every commit waits for its WAL flush (synchronous_commit is
// forced on for the session; whether the server fsyncs at all is its own
// setting, fsync, which RawInsertRate reports in the error if it is off).
// It returns the rows per second and drops the table.
//
// Each row has a (group id, sequence number) key and a bytea, as a message
// row has, with no other index: what it measures is what the disk and
// PostgreSQL's commit cost, not the engine's schema.
func RawInsertRate(ctx context.Context, dsn string, payload, rowsPerTx int, d time.Duration) (float64, error) {
	if payload < 0 || rowsPerTx <= 0 || d <= 0 {
		return 0, fmt.Errorf("postgres: RawInsertRate needs payload >= 0, rowsPerTx > 0 and d > 0 (got %d, %d, %v)", payload, rowsPerTx, d)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, errors.New("postgres: cannot parse the database URL; expected postgres://user:password@host:port/database?options")
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("postgres: raw insert: connect to %s: %w", describe(cfg), err)
	}
	defer conn.Close(context.Background())
	var fsync string
	if err := conn.QueryRow(ctx, "SHOW fsync").Scan(&fsync); err != nil {
		return 0, fmt.Errorf("postgres: raw insert: %w", err)
	}
	if fsync != "on" {
		return 0, fmt.Errorf("postgres: raw insert: the server runs with fsync=%s, so its commits are not durable and a rate would mean nothing", fsync)
	}
	if _, err := conn.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		return 0, fmt.Errorf("postgres: raw insert: %w", err)
	}
	suffix := make([]byte, 6)
	rand.Read(suffix)
	table := fmt.Sprintf("mlsds_raw_insert_%x", suffix)
	if _, err := conn.Exec(ctx, "CREATE TABLE "+table+
		" (group_id bytea NOT NULL, seq bigint NOT NULL, data bytea NOT NULL, PRIMARY KEY (group_id, seq))"); err != nil {
		return 0, fmt.Errorf("postgres: raw insert: %w", err)
	}
	defer conn.Exec(context.Background(), "DROP TABLE "+table)

	data := make([]byte, payload)
	rand.Read(data)
	gid := []byte("raw-insert-group")
	seq := int64(0)
	insert := "INSERT INTO " + table + " (group_id, seq, data) VALUES ($1, $2, $3)"
	// The rows of a transaction go in one round trip, as the engine sends
	// the statements of a message.
	batch := func() error {
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			b := &pgx.Batch{}
			for range rowsPerTx {
				seq++
				b.Queue(insert, gid, seq, data)
			}
			return tx.SendBatch(ctx, b).Close()
		})
	}
	if err := batch(); err != nil { // warm-up, not measured
		return 0, fmt.Errorf("postgres: raw insert: %w", err)
	}
	rows := 0
	start := time.Now()
	for time.Since(start) < d {
		if err := batch(); err != nil {
			if ctx.Err() != nil {
				break
			}
			return 0, fmt.Errorf("postgres: raw insert: %w", err)
		}
		rows += rowsPerTx
	}
	el := time.Since(start)
	if rows == 0 {
		return 0, fmt.Errorf("postgres: raw insert: no transaction completed: %w", ctx.Err())
	}
	return float64(rows) / el.Seconds(), nil
}
