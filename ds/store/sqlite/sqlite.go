// Package sqlite is the embedded storage engine of mlsds: a ds.Store on one
// SQLite file, through the pure-Go driver modernc.org/sqlite.
//
// The database runs in WAL mode with synchronous=FULL, so a transaction
// that returned is on disk: a receipt given to a client survives a crash or
// a kill -9. Writes go through a single connection (SQLite has one writer
// at a time anyway; queuing in Go avoids lock-upgrade failures), reads
// through a small pool that WAL lets run beside the writer. Migrations are
// embedded and applied by Open.
//
// The writer connection is held by the Store for its whole life, and a
// write transaction is BEGIN IMMEDIATE and COMMIT on it: a database/sql
// transaction would start a goroutine per transaction to watch its
// context, and bind every prepared statement to it anew, which cost more
// CPU than a batch of small inserts.
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
	"sync"
	"time"

	"github.com/mlsds/mlsds/ds"

	sqlite3 "modernc.org/sqlite" // also registers the "sqlite" database/sql driver
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is a ds.Store on a SQLite database file.
type Store struct {
	wdb    *sql.DB              // the writer's pool of one connection
	w      *sql.Conn            // that connection, held until Close
	wsem   chan struct{}        // one write transaction at a time on w
	wstmts map[string]*sql.Stmt // writerStmts, compiled on w at Open
	r      *readDB              // readers
	path   string
	hot    hotCache // guarded by wsem (batch.go)
}

var _ ds.Store = (*Store)(nil)

// walCheckpointBytes is about how large the write-ahead log grows before
// the writer copies it back into the database file (a checkpoint, in
// SQLite's default 4 KiB pages) and starts it over. SQLite's default is
// 1000 pages: at thousands of messages per second that is a checkpoint
// every few dozen transactions, each writing back mostly the same index
// pages again. 40 MiB lets a checkpoint write each hot page once for
// hundreds of transactions. The log stays near this size on disk (a
// reader that keeps an old snapshot can make it grow past it until the
// reader is done); when it is started over it is cut back to this size.
const walCheckpointBytes = 40 << 20

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
	useFdatasync()
	busy := strconv.FormatInt(opts.BusyTimeout.Milliseconds(), 10)
	common := "_pragma=busy_timeout(" + busy + ")&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)"

	w, err := sql.Open("sqlite", "file:"+path+"?"+common+"&_pragma=journal_mode(WAL)&_txlock=immediate"+
		"&_pragma=wal_autocheckpoint("+strconv.Itoa(walCheckpointBytes/4096)+")&_pragma=journal_size_limit("+strconv.Itoa(walCheckpointBytes)+")")
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
	s := &Store{wdb: w, wsem: make(chan struct{}, 1), wstmts: make(map[string]*sql.Stmt), r: &readDB{DB: r, cache: newStmtCache(r)}, path: path}
	if s.w, err = w.Conn(ctx); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("sqlite: %s: %w", path, err)
	}
	for _, q := range writerStmts {
		st, err := s.w.PrepareContext(ctx, q)
		if err != nil {
			s.closeWriter()
			r.Close()
			return nil, fmt.Errorf("sqlite: %s: %w", path, err)
		}
		s.wstmts[q] = st
	}
	return s, nil
}

// closeWriter closes the writer's statements and connection.
func (s *Store) closeWriter() error {
	for _, st := range s.wstmts {
		st.Close()
	}
	return errors.Join(s.w.Close(), s.wdb.Close())
}

// useFdatasync makes SQLite commit with fdatasync(2) instead of fsync(2),
// for the whole process (modernc.org/sqlite keeps SQLite's source default,
// fsync; the SQLite of Linux distributions uses fdatasync). fdatasync
// writes a file's data and the metadata needed to read it back, its size
// included, so a commit is as durable; it skips the timestamps, whose
// journaling can make an fsync take twice as long. Where fdatasync does
// not exist (macOS, Windows) nothing changes.
func useFdatasync() {
	fdatasyncOnce.Do(func() { sqlite3.Fdatasync(true) })
}

var fdatasyncOnce sync.Once

// Close closes the database. It first writes every group's head into
// groups.last_seq (see lastSeq), so that a cleanly closed database reads
// the same to an mlsds from before the column became a floor.
func (s *Store) Close() error {
	s.wsem <- struct{}{} // after the write transaction under way, if any
	defer func() { <-s.wsem }()
	s.w.ExecContext(context.Background(), "UPDATE groups SET last_seq = "+lastStored("groups")+
		" WHERE last_seq < "+lastStored("groups"))
	return errors.Join(s.r.Close(), s.closeWriter())
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

// The statements that begin and commit a write transaction, compiled at
// Open with writerStmts.
const (
	qBegin  = "BEGIN IMMEDIATE"
	qCommit = "COMMIT"
)

// write runs f in a write transaction on the writer connection tx and
// commits it if f succeeds; f must not keep tx. If f fails (or panics), or
// COMMIT fails, the transaction is rolled back: SQLite may keep it open
// after a failed COMMIT (a deferred constraint, a busy reader), and
// nothing of it may be committed later with another transaction's work.
// Without an open transaction (SQLite rolled it back itself) the ROLLBACK
// fails harmlessly.
func (s *Store) write(ctx context.Context, f func(tx *sql.Conn) error) error {
	select {
	case s.wsem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("sqlite: begin: %w", ctx.Err())
	}
	defer func() { <-s.wsem }()
	if _, err := s.wstmts[qBegin].ExecContext(ctx); err != nil {
		return fmt.Errorf("sqlite: begin: %w", err)
	}
	committed := false
	s.hot.keep, s.hot.checked = false, false
	defer func() {
		if !committed {
			s.w.ExecContext(context.Background(), "ROLLBACK")
		}
		if !committed || !s.hot.keep {
			s.hot.forget()
		}
	}()
	if err := f(s.w); err != nil {
		return err
	}
	if _, err := s.wstmts[qCommit].ExecContext(ctx); err != nil {
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	committed = true
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
