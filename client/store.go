package client

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"

	"modernc.org/sqlite" // also the database/sql driver "sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/mlsds/mlsds/mls"
)

// store is the client's local state in SQLite: the identity, the private
// keys of its KeyPackages by KeyPackageRef, and per group the member's
// mls.Group, the last processed GroupSeq and a Commit in flight. A group's
// row changes in one transaction per batch of processed messages, so that
// the state always matches the processed position.
type store struct {
	db   *sql.DB
	lock *stateLock // nil for an in-memory state

	groupWrites  atomic.Int64 // transactions of putGroup, for tests
	testFailPuts atomic.Bool  // makes putGroup fail, in tests
}

const schema = `
CREATE TABLE IF NOT EXISTS identity (
	one INTEGER PRIMARY KEY CHECK (one = 1),
	client_id TEXT NOT NULL,
	user_id TEXT NOT NULL,
	cipher_suite INTEGER NOT NULL,
	signature_priv BLOB NOT NULL,
	registered INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS key_packages (
	ref BLOB PRIMARY KEY,
	key_package BLOB NOT NULL,
	init_priv BLOB NOT NULL,
	encryption_priv BLOB NOT NULL,
	last_resort INTEGER NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (
	id BLOB PRIMARY KEY,
	state BLOB NOT NULL,
	processed INTEGER NOT NULL,
	opaque INTEGER NOT NULL,
	removed INTEGER NOT NULL DEFAULT 0,
	broken INTEGER NOT NULL DEFAULT 0,
	pending_commit BLOB,
	pending_state BLOB,
	proposals BLOB,
	leaving INTEGER NOT NULL DEFAULT 0,
	refused INTEGER NOT NULL DEFAULT 0
);
`

// migrations bring the state files of earlier versions up to the schema:
// each adds a column to a table unless it is there.
var migrations = []struct{ table, column, def string }{
	{"groups", "leaving", "INTEGER NOT NULL DEFAULT 0"},
	{"groups", "refused", "INTEGER NOT NULL DEFAULT 0"},
}

// openStore opens (creating, mode 0600) the state file at path, or an
// in-memory state if path is empty. It first locks the state (lockState):
// if another Client holds it, it fails with ErrStateInUse.
func openStore(ctx context.Context, path string) (_ *store, err error) {
	var dsn string
	var lock *stateLock
	if path == "" {
		dsn = "file::memory:"
	} else {
		if lock, err = lockState(ctx, path); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				lock.unlock()
			}
		}()
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("client: opening the state file: %w", err)
		}
		f.Close()
		dsn = "file:" + (&url.URL{Path: path}).EscapedPath() +
			"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_txlock=immediate"
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("client: opening the state file: %w", err)
	}
	// One connection: the state is small, writes are serialized anyway,
	// and an in-memory database lives in its only connection.
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	if _, err := db.ExecContext(ctx, schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("client: state file %s: %w (is it an mlsds client state?)", path, err)
	}
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("client: updating the state file %s: %w", path, err)
	}
	if err := migrateDeniable(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("client: updating the state file %s: %w", path, err)
	}
	return &store{db: db, lock: lock}, nil
}

func migrate(ctx context.Context, db *sql.DB) error {
	for _, m := range migrations {
		var n int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?`, m.table, m.column).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			if _, err := db.ExecContext(ctx, fmt.Sprintf(`ALTER TABLE %s ADD COLUMN %s %s`, m.table, m.column, m.def)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close closes the state file, then releases its lock.
// inMemory reports whether the state lives only in memory (no StatePath).
func (s *store) inMemory() bool { return s.lock == nil }

func (s *store) Close() error {
	err := s.db.Close()
	if s.lock != nil {
		s.lock.unlock()
	}
	return err
}

// lockSuffix names the file beside the state file that a Client locks
// while it has the state open. It differs from the ".lock" file of the
// mlsds CLI, which takes its own lock before it opens a Client: the two
// locks never wait for each other.
const lockSuffix = ".client-lock"

// stateLock is an exclusive lock on a state file, held by the one Client
// that has it open. It is an SQLite exclusive transaction on a small file
// beside the state file (StatePath + lockSuffix), which SQLite keeps with
// the operating system's advisory locks: it also excludes a second Client
// of the same process, and the operating system releases it when the
// process ends, however it ends. It does not lock the state file itself,
// so tools may still read it (and the CLI keeps its settings in it).
type stateLock struct {
	db   *sql.DB
	conn *sql.Conn
}

// lockState locks the state file at path.
func lockState(ctx context.Context, path string) (*stateLock, error) {
	l, err := lockFile(ctx, path+lockSuffix)
	if err != nil {
		var se *sqlite.Error
		if errors.As(err, &se) && (se.Code()&0xff == sqlite3.SQLITE_BUSY || se.Code()&0xff == sqlite3.SQLITE_LOCKED) {
			return nil, fmt.Errorf("%w: %s is open in another Client (of this process or another one); close that one first, or use another StatePath", ErrStateInUse, path)
		}
		return nil, fmt.Errorf("client: locking the state %s: %w", path, err)
	}
	return l, nil
}

// lockFile takes an exclusive lock on the SQLite file at path (creating
// it, mode 0600), without waiting.
func lockFile(ctx context.Context, path string) (*stateLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	f.Close()
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?_pragma=busy_timeout(0)&_pragma=journal_mode(MEMORY)")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err == nil {
		if _, err = conn.ExecContext(ctx, `BEGIN EXCLUSIVE`); err != nil {
			conn.Close()
		}
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return &stateLock{db: db, conn: conn}, nil
}

func (l *stateLock) unlock() {
	l.conn.ExecContext(context.Background(), `ROLLBACK`)
	l.conn.Close()
	l.db.Close()
}

// identity is the client's stored identity.
type identity struct {
	clientID, userID string
	suite            mls.CipherSuite
	sigPriv          []byte
	registered       bool
}

var errNoIdentity = errors.New("no identity")

func (s *store) identity(ctx context.Context) (identity, error) {
	var id identity
	var suite int
	err := s.db.QueryRowContext(ctx, `SELECT client_id, user_id, cipher_suite, signature_priv, registered FROM identity WHERE one = 1`).
		Scan(&id.clientID, &id.userID, &suite, &id.sigPriv, &id.registered)
	if errors.Is(err, sql.ErrNoRows) {
		return id, errNoIdentity
	}
	id.suite = mls.CipherSuite(suite)
	return id, err
}

func (s *store) putIdentity(ctx context.Context, id identity) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO identity (one, client_id, user_id, cipher_suite, signature_priv, registered) VALUES (1, ?, ?, ?, ?, ?)
		ON CONFLICT (one) DO UPDATE SET registered = excluded.registered`,
		id.clientID, id.userID, int(id.suite), id.sigPriv, id.registered)
	return err
}

// keyPackageKeys are the private keys of one of the client's KeyPackages.
type keyPackageKeys struct {
	kp         *mls.KeyPackage
	priv       *mls.KeyPackagePrivate
	lastResort bool
}

func (s *store) putKeyPackages(ctx context.Context, kps []keyPackageKeys, now int64) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, k := range kps {
		ref, err := k.kp.Ref()
		if err != nil {
			return err
		}
		data, err := k.kp.MarshalBinary()
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO key_packages (ref, key_package, init_priv, encryption_priv, last_resort, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
			[]byte(ref), data, k.priv.InitPriv, k.priv.EncryptionPriv, k.lastResort, now); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// keyPackage returns the KeyPackage with ref and its private keys (the
// signature key is the identity's), or sql.ErrNoRows.
func (s *store) keyPackage(ctx context.Context, ref []byte, sigPriv []byte) (keyPackageKeys, error) {
	var data, initPriv, encPriv []byte
	var k keyPackageKeys
	err := s.db.QueryRowContext(ctx, `SELECT key_package, init_priv, encryption_priv, last_resort FROM key_packages WHERE ref = ?`, ref).
		Scan(&data, &initPriv, &encPriv, &k.lastResort)
	if err != nil {
		return k, err
	}
	k.kp = new(mls.KeyPackage)
	if err := k.kp.UnmarshalBinary(data); err != nil {
		return k, fmt.Errorf("stored KeyPackage: %w", err)
	}
	k.priv = &mls.KeyPackagePrivate{InitPriv: initPriv, EncryptionPriv: encPriv, SignaturePriv: sigPriv}
	return k, nil
}

func (s *store) deleteKeyPackage(ctx context.Context, ref []byte) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM key_packages WHERE ref = ?`, ref)
	return err
}

// consumeKeyPackage deletes the keys of a KeyPackage a Welcome used,
// unless it is the last-resort one (as putGroup's deleteRef).
func (s *store) consumeKeyPackage(ctx context.Context, ref []byte) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM key_packages WHERE ref = ? AND last_resort = 0`, ref)
	return err
}

// groupRow is a group's stored state.
type groupRow struct {
	id        []byte
	state     []byte // mls.Group.MarshalBinary
	processed uint64
	opaque    bool
	removed   bool
	broken    bool
	leaving   bool // this client means to leave (Group.Leave)
	refused   bool // broken by a Commit the credential check refused
	// pendingCommit and pendingState are this client's Commit in flight
	// (an MLSMessage) and the group state once it is merged.
	pendingCommit, pendingState []byte
	proposals                   []byte // encodeList of the proposals of the current epoch
	// deniable is a deniable group's state besides the MLS one, nil in
	// other modes (deniable_store.go).
	deniable *deniableState
}

func (s *store) groups(ctx context.Context) ([]groupRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, state, processed, opaque, removed, broken, pending_commit, pending_state, proposals, leaving, refused FROM groups`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []groupRow
	for rows.Next() {
		var r groupRow
		var processed int64
		if err := rows.Scan(&r.id, &r.state, &processed, &r.opaque, &r.removed, &r.broken, &r.pendingCommit, &r.pendingState, &r.proposals, &r.leaving, &r.refused); err != nil {
			return nil, err
		}
		r.processed = uint64(processed)
		out = append(out, r)
	}
	return out, rows.Err()
}

// putGroup writes a group's row, and deletes the KeyPackage deleteRef if
// not nil, in one transaction.
func (s *store) putGroup(ctx context.Context, r *groupRow, deleteRef []byte) error {
	if s.testFailPuts.Load() {
		return errors.New("test: writes fail")
	}
	s.groupWrites.Add(1)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO groups (id, state, processed, opaque, removed, broken, pending_commit, pending_state, proposals, leaving, refused) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET state = excluded.state, processed = excluded.processed, opaque = excluded.opaque, removed = excluded.removed, broken = excluded.broken,
			pending_commit = excluded.pending_commit, pending_state = excluded.pending_state, proposals = excluded.proposals, leaving = excluded.leaving, refused = excluded.refused`,
		r.id, r.state, int64(r.processed), r.opaque, r.removed, r.broken, r.pendingCommit, r.pendingState, r.proposals, r.leaving, r.refused); err != nil {
		return err
	}
	if err := putDeniableTx(ctx, tx, r); err != nil {
		return err
	}
	if deleteRef != nil {
		if _, err := tx.ExecContext(ctx, `DELETE FROM key_packages WHERE ref = ? AND last_resort = 0`, deleteRef); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// pruneKeyPackages deletes the keys of the KeyPackages (not last-resort)
// created before the Unix time before.
func (s *store) pruneKeyPackages(ctx context.Context, before int64) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM key_packages WHERE created_at < ? AND last_resort = 0`, before)
	return err
}
