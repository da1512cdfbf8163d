// Package sqlite is the embedded storage engine of mlsds: a ds.Store on one
// SQLite file, through the pure-Go driver modernc.org/sqlite.
//
// The database runs in WAL mode with synchronous=FULL, so a transaction
// that returned is on disk: a receipt given to a client survives a crash or
// a kill -9. Writes go through a single connection (SQLite has one writer
// at a time anyway; queuing in Go avoids lock-upgrade failures), reads
// through a small pool that WAL lets run beside the writer. Migrations are
// embedded and applied by Open.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mlsds/mlsds/ds"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is a ds.Store on a SQLite database file.
type Store struct {
	w      *sql.DB    // the single writer connection
	wstmts *stmtCache // compiled statements of w (stmtcache.go)
	r      *readDB    // readers
	path   string
}

var _ ds.Store = (*Store)(nil)

// Options tunes Open. The zero value is fine.
type Options struct {
	// ReadConns is the number of reading connections; default 4.
	ReadConns int
	// BusyTimeout is how long a connection waits for a lock held by
	// another process before failing; default 10s.
	BusyTimeout time.Duration
}

// Open opens (creating it if needed) the database file at path and brings
// its schema up to date.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("sqlite: unusable database path %q", path)
	}
	if opts.ReadConns <= 0 {
		opts.ReadConns = 4
	}
	if opts.BusyTimeout <= 0 {
		opts.BusyTimeout = 10 * time.Second
	}
	busy := strconv.FormatInt(opts.BusyTimeout.Milliseconds(), 10)
	common := "_pragma=busy_timeout(" + busy + ")&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)"

	w, err := sql.Open("sqlite", "file:"+path+"?"+common+"&_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	var mode string
	if err := w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || !strings.EqualFold(mode, "wal") {
		w.Close()
		return nil, fmt.Errorf("sqlite: %s: cannot switch to WAL mode (got %q, %v)", path, mode, err)
	}
	if err := migrate(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: migrate %s: %w", path, err)
	}

	r, err := sql.Open("sqlite", "file:"+path+"?"+common+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	r.SetMaxOpenConns(opts.ReadConns)
	r.SetMaxIdleConns(opts.ReadConns)
	wstmts := newStmtCache(w, false)
	if err := wstmts.prepare(ctx, writerStmts...); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("sqlite: %s: %w", path, err)
	}
	return &Store{w: w, wstmts: wstmts, r: &readDB{DB: r, cache: newStmtCache(r, true)}, path: path}, nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.wstmts.close()
	return errors.Join(s.r.Close(), s.w.Close())
}

// SchemaVersion returns the version of the schema the database is at.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.r.QueryRowContext(ctx, "SELECT version FROM schema_version").Scan(&v)
	return v, err
}

// migrate applies the embedded migrations that the database lacks, each in
// its own transaction together with the new schema_version.
func migrate(ctx context.Context, db *sql.DB) error {
	type migration struct {
		version int
		name    string
	}
	entries, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		return err
	}
	var ms []migration
	for _, e := range entries {
		n, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(n)
		if !ok || err != nil || v <= 0 || !strings.HasSuffix(e.Name(), ".sql") {
			return fmt.Errorf("migration file %q is not named NNNN_name.sql", e.Name())
		}
		ms = append(ms, migration{v, e.Name()})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return fmt.Errorf("migration %q: versions must be 1, 2, 3, ... without gaps", m.name)
		}
	}

	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL) STRICT"); err != nil {
		return err
	}
	current := 0
	err = db.QueryRowContext(ctx, "SELECT version FROM schema_version").Scan(&current)
	if errors.Is(err, sql.ErrNoRows) {
		if _, err := db.ExecContext(ctx, "INSERT INTO schema_version (version) VALUES (0)"); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if current > len(ms) {
		return fmt.Errorf("the database is at schema version %d, newer than this mlsds knows (%d): run a newer mlsds", current, len(ms))
	}
	for _, m := range ms[current:] {
		body, err := migrations.ReadFile(path.Join("migrations", m.name))
		if err != nil {
			return err
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			tx.Rollback()
			return fmt.Errorf("%s: %w", m.name, err)
		}
		if _, err := tx.ExecContext(ctx, "UPDATE schema_version SET version = ?", m.version); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// write runs f in a write transaction and commits it if f succeeds. If
// COMMIT fails, SQLite may keep the transaction open (a deferred
// constraint, a busy reader); it is rolled back here, so that nothing of it
// can be committed later with another transaction's work and the
// connection stays usable.
func (s *Store) write(ctx context.Context, f func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: begin: %w", err)
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		// The single writer connection is the one the transaction ran on.
		// Without an open transaction this ROLLBACK fails harmlessly.
		s.w.ExecContext(context.Background(), "ROLLBACK")
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	return nil
}

// micros converts a time to the stored form; the zero time is NULL.
func micros(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

// fromMicros converts a stored time back; NULL is the zero time.
func fromMicros(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.UnixMicro(n.Int64).UTC()
}

// u64 converts an unsigned counter for storage. A value beyond the column
// is the caller's mistake (ErrInvalidArgument), not the engine's failure.
func u64(v uint64) (int64, error) {
	if v > 1<<63-1 {
		return 0, fmt.Errorf("%w: %d is above %d, the largest number the store keeps", ds.ErrInvalidArgument, v, int64(1<<63-1))
	}
	return int64(v), nil
}

// nonNil makes sure a NOT NULL blob column never receives NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// placeholders returns "?, ?, ..." for n arguments.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}
