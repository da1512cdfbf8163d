package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// RawInsertRate measures the durable write rate that the storage under dir
// gives SQLite, as a baseline for the engine's own rates: for about d it
// inserts rows of payload random bytes into a plain table of a throwaway
// database in dir, rowsPerTx rows per transaction, one transaction after
// the other on one connection, with the engine's durability settings (WAL,
// synchronous=FULL, fdatasync: every commit waits for the disk). It
// returns the rows per second and removes the database.
//
// Each row has an integer key and a blob, with no other index: what it
// measures is what the disk and SQLite's commit cost, not the engine's
// schema.
func RawInsertRate(ctx context.Context, dir string, payload, rowsPerTx int, d time.Duration) (float64, error) {
	if payload < 0 || rowsPerTx <= 0 || d <= 0 {
		return 0, fmt.Errorf("sqlite: RawInsertRate needs payload >= 0, rowsPerTx > 0 and d > 0 (got %d, %d, %v)", payload, rowsPerTx, d)
	}
	tmp, err := os.MkdirTemp(dir, "mlsds-rawinsert-")
	if err != nil {
		return 0, fmt.Errorf("sqlite: raw insert: %w", err)
	}
	defer os.RemoveAll(tmp)
	useFdatasync() // as Open
	file := filepath.Join(tmp, "raw.db")
	db, err := sql.Open("sqlite", "file:"+file+"?_pragma=synchronous(FULL)&_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		return 0, fmt.Errorf("sqlite: raw insert: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		return 0, fmt.Errorf("sqlite: raw insert: cannot switch to WAL mode (got %q, %v)", mode, err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE raw (group_id BLOB NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (group_id, seq)) STRICT"); err != nil {
		return 0, fmt.Errorf("sqlite: raw insert: %w", err)
	}
	data := make([]byte, payload)
	rand.Read(data)
	gid := []byte("raw-insert-group")
	seq := 0

	// A first transaction outside the measurement warms the file up.
	batch := func() error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		for range rowsPerTx {
			seq++
			if _, err := tx.ExecContext(ctx, "INSERT INTO raw (group_id, seq, data) VALUES (?, ?, ?)", gid, seq, data); err != nil {
				return err
			}
		}
		return tx.Commit()
	}
	if err := batch(); err != nil {
		return 0, fmt.Errorf("sqlite: raw insert: %w", err)
	}
	rows := 0
	start := time.Now()
	for time.Since(start) < d {
		if err := batch(); err != nil {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				break
			}
			return 0, fmt.Errorf("sqlite: raw insert: %w", err)
		}
		rows += rowsPerTx
	}
	el := time.Since(start)
	if rows == 0 {
		return 0, fmt.Errorf("sqlite: raw insert: no transaction completed: %w", ctx.Err())
	}
	return float64(rows) / el.Seconds(), nil
}
