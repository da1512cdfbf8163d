// Package postgres is the shared storage engine of mlsds: a ds.Store on a
// PostgreSQL database (13 or newer; 15 is what it is tested with), through
// github.com/jackc/pgx/v5. Several mlsds nodes may use one database at the
// same time; the database alone keeps the invariants.
//
// # Concurrency
//
// Transactions run at READ COMMITTED and take row locks where a decision
// depends on what they read:
//
//   - AcceptMessage locks the group row (SELECT ... FOR UPDATE) first.
//     Everything that decides about the message (the idempotency check on
//     the message hash, the epoch rule, membership, the state version) is
//     read after the lock, so it sees every message committed before; the
//     sequence number is the group's last_seq + 1, and the group row is
//     then updated by compare-and-set on (epoch, last_seq). Appends to one
//     group are thus serialised: sequence numbers are gap-free and become
//     visible in order, and of several Commits for one epoch exactly one
//     wins while the others get a WrongEpochError with the winner's values.
//     A unique index on (group_id, hash) backs the idempotency check.
//   - ClaimKeyPackages locks the clients rows of its targets (in sorted
//     order, so that claims for several targets cannot deadlock), then picks
//     each target's oldest claimable KeyPackage with FOR UPDATE SKIP LOCKED
//     and marks it claimed with a re-check of claimed_at IS NULL. A
//     KeyPackage is handed out at most once; the client lock also makes
//     claims for one target take the KeyPackages in upload order and their
//     Remaining count exact. AddKeyPackages takes the same client lock, so
//     the per-client limit holds under concurrent uploads.
//   - Cursors only move forward (GREATEST); inserts that may race (clients,
//     groups) use ON CONFLICT and report ErrAlreadyExists.
//
// A transaction that fails with a serialization failure or a deadlock (which
// the lock order above should avoid) is retried a few times.
//
// # Migrations
//
// The schema is embedded (migrations/NNNN_name.sql) and brought up to date
// by Open under a session-level advisory lock, so that nodes starting
// together apply each migration exactly once.
//
// # Wake-ups
//
// Store implements ds.NotifierProvider: its Notifier carries wake-ups
// between nodes over LISTEN/NOTIFY (see Notifier).
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mlsds/mlsds/ds"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the key of the advisory lock held while migrating
// ("mlsdsmig" in ASCII).
const migrationLock int64 = 0x6d6c7364736d6967

// Store is a ds.Store on a PostgreSQL database.
type Store struct {
	pool     *pgxpool.Pool
	notifier *Notifier
}

var (
	_ ds.Store            = (*Store)(nil)
	_ ds.NotifierProvider = (*Store)(nil)
)

// Options tunes Open. The zero value is fine.
type Options struct {
	// MaxConns bounds the connection pool; 0 keeps the pool_max_conns of
	// the URL, or pgx's default (the larger of 4 and the number of CPUs).
	MaxConns int32
	// Channel is the LISTEN/NOTIFY channel of the Notifier; default
	// "mlsds". Nodes that should wake each other must use the same one.
	Channel string
	// FallbackInterval: while the Notifier has no listening connection, it
	// wakes all its listeners this often, since notifications may be lost
	// meanwhile; default 1s.
	FallbackInterval time.Duration
	// KeepAlive: an idle listening connection is checked this often;
	// default 30s.
	KeepAlive time.Duration
	// Logger receives the Notifier's connection problems; default
	// slog.Default().
	Logger *slog.Logger
}

// Open connects to the database at url (a postgres:// URL or a libpq
// key=value string, see pgxpool.ParseConfig) and brings its schema up to
// date.
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The error of ParseConfig may quote the URL, password included.
		return nil, errors.New("postgres: cannot parse the database URL; expected postgres://user:password@host:port/database?options")
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	if err := migrate(ctx, cfg.ConnConfig); err != nil {
		return nil, fmt.Errorf("postgres: migrate %s: %w", describe(cfg.ConnConfig), err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect to %s: %w", describe(cfg.ConnConfig), err)
	}
	s := &Store{pool: pool}
	s.notifier = newNotifier(pool, cfg.ConnConfig, opts)
	return s, nil
}

func describe(c *pgx.ConnConfig) string {
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}

// Close stops the Notifier and closes the connection pool.
func (s *Store) Close() error {
	s.notifier.close()
	s.pool.Close()
	return nil
}

// Notifier returns the Store's LISTEN/NOTIFY Notifier (ds.NotifierProvider).
func (s *Store) Notifier() ds.Notifier { return s.notifier }

// Pool returns the Store's connection pool, for health checks and metrics.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// SchemaVersion returns the version of the schema the database is at.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.pool.QueryRow(ctx, "SELECT version FROM schema_version").Scan(&v)
	return v, err
}

type migration struct {
	version int
	name    string
}

func embeddedMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		n, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(n)
		if !ok || err != nil || v <= 0 || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("migration file %q is not named NNNN_name.sql", e.Name())
		}
		ms = append(ms, migration{v, e.Name()})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %q: versions must be 1, 2, 3, ... without gaps", m.name)
		}
	}
	return ms, nil
}

// migrate applies the embedded migrations that the database lacks, each in
// its own transaction together with the new schema_version, on a
// connection of its own that holds the advisory lock migrationLock
// throughout: of several nodes starting at once, one migrates and the
// others wait and then find nothing to do. Closing the connection releases
// the lock even if an unlock would fail.
func migrate(ctx context.Context, cc *pgx.ConnConfig) error {
	ms, err := embeddedMigrations()
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cc.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLock); err != nil {
		return fmt.Errorf("take the migration lock: %w", err)
	}
	defer conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", migrationLock)

	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"); err != nil {
		return err
	}
	current := 0
	err = conn.QueryRow(ctx, "SELECT version FROM schema_version").Scan(&current)
	if errors.Is(err, pgx.ErrNoRows) {
		if _, err := conn.Exec(ctx, "INSERT INTO schema_version (version) VALUES (0)"); err != nil {
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
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			// The simple protocol runs a file of several statements.
			if _, err := tx.Exec(ctx, string(body), pgx.QueryExecModeSimpleProtocol); err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			_, err := tx.Exec(ctx, "UPDATE schema_version SET version = $1", m.version)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// maxAttempts bounds the retries of a transaction that failed with a
// serialization failure or a deadlock.
const maxAttempts = 5

// tx runs f in a READ COMMITTED transaction and commits it if f succeeds.
// f may run more than once: it must not keep results of a failed attempt.
func (s *Store) tx(ctx context.Context, op string, f func(tx pgx.Tx) error) error {
	return retrying(ctx, op, func() error {
		return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, f)
	})
}

// retrying runs attempt until it succeeds, fails for good, or has failed
// maxAttempts times with serialization failures or deadlocks, backing off
// in between.
func retrying(ctx context.Context, op string, attempt func() error) error {
	for n := 1; ; n++ {
		err := attempt()
		if err == nil {
			return nil
		}
		if n < maxAttempts && retryable(err) && backoff(ctx, n) {
			continue
		}
		return engineErr(op, err)
	}
}

// backoff waits before another attempt of a transaction that collided
// with another, for a jittered time so that they do not collide again; it
// reports false if ctx ended first.
func backoff(ctx context.Context, attempt int) bool {
	d := time.Duration(attempt) * time.Duration(1+rand.IntN(5)) * time.Millisecond
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// engineErr wraps the errors that are not part of the Store's vocabulary
// with the operation that failed.
func engineErr(op string, err error) error {
	if err == nil || isDSError(err) {
		return err
	}
	return fmt.Errorf("postgres: %s: %w", op, err)
}

func isDSError(err error) bool {
	var we *ds.WrongEpochError
	var se *ds.StaleEpochError
	var tl *ds.TooLargeError
	return errors.Is(err, ds.ErrNotFound) || errors.Is(err, ds.ErrAlreadyExists) ||
		errors.Is(err, ds.ErrNotMember) || errors.Is(err, ds.ErrStateConflict) ||
		errors.Is(err, ds.ErrInvalidArgument) ||
		errors.As(err, &we) || errors.As(err, &se) || errors.As(err, &tl)
}

// uniqueViolation reports whether err is a unique violation, on constraint
// (any constraint when empty).
func uniqueViolation(err error, constraint string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" && (constraint == "" || pe.ConstraintName == constraint)
}

// ts converts a time for a nullable timestamptz column: the zero time is
// NULL.
func ts(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// fromTS converts a nullable timestamptz back; NULL is the zero time.
func fromTS(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// u64 converts an unsigned counter for a bigint column. A value beyond the
// column is the caller's mistake (ErrInvalidArgument), not the engine's
// failure.
func u64(v uint64) (int64, error) {
	if v > 1<<63-1 {
		return 0, fmt.Errorf("%w: %d is above %d, the largest number the store keeps", ds.ErrInvalidArgument, v, int64(1<<63-1))
	}
	return int64(v), nil
}

// nonNil makes sure a NOT NULL bytea column never receives NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// textOK reports whether PostgreSQL's text can hold s: valid UTF-8 without
// NUL bytes. A string that it cannot hold cannot have been stored, so reads
// answer "none" for it.
func textOK(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// checkText rejects identifiers that PostgreSQL's text cannot hold, with an
// error that says so instead of a driver error.
func checkText(what string, ss ...string) error {
	for _, s := range ss {
		if !textOK(s) {
			return fmt.Errorf("%w: %s %q is not valid UTF-8 or contains a NUL byte, which PostgreSQL cannot store", ds.ErrInvalidArgument, what, s)
		}
	}
	return nil
}
