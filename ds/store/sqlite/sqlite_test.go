package sqlite

import (
	"context"
	"io/fs"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/storetest"

	sqlite3 "modernc.org/sqlite"
)

func openTemp(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "mlsds.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) ds.Store { return openTemp(t) })
}

func TestSchemaAndPragmas(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "mlsds.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.SchemaVersion(ctx)
	files, _ := fs.ReadDir(migrations, "migrations")
	if err != nil || v != len(files) || v < 1 {
		t.Fatalf("SchemaVersion = %d, %v; want %d, one per migration", v, err, len(files))
	}
	var mode string
	var sync int
	if err := s.w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v", mode, err)
	}
	if err := s.w.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil || sync != 2 {
		t.Errorf("synchronous = %d, %v; want 2 (FULL)", sync, err)
	}
	if err := s.r.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil || sync != 2 {
		t.Errorf("reader synchronous = %d, %v; want 2 (FULL)", sync, err)
	}
	// The write-ahead log is checkpointed at walCheckpointBytes, and cut
	// back to that size when it starts over.
	var pages, limit int
	if err := s.w.QueryRowContext(ctx, "PRAGMA wal_autocheckpoint").Scan(&pages); err != nil || pages != walCheckpointBytes/4096 {
		t.Errorf("wal_autocheckpoint = %d, %v; want %d pages", pages, err, walCheckpointBytes/4096)
	}
	if err := s.w.QueryRowContext(ctx, "PRAGMA journal_size_limit").Scan(&limit); err != nil || limit != walCheckpointBytes {
		t.Errorf("journal_size_limit = %d, %v; want %d", limit, err, walCheckpointBytes)
	}
	if runtime.GOOS == "linux" && !sqlite3.FdatasyncEnabled() {
		t.Error("SQLite commits with fsync, want fdatasync")
	}
	// Data written before a close is there after a reopen, and the
	// migrations are not applied twice.
	if err := s.CreateClient(ctx, ds.Client{ID: "a", UserID: "a", CipherSuite: 1, SignatureKey: []byte("k"), CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, path, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if _, err := s.Client(ctx, "a"); err != nil {
		t.Errorf("after reopen: %v", err)
	}
	// A database from a newer mlsds is refused, not modified.
	if _, err := s.w.ExecContext(ctx, "UPDATE schema_version SET version = 99"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(ctx, path, Options{}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("opening a newer schema: %v", err)
	}
	if _, err := Open(ctx, "bad?path", Options{}); err == nil {
		t.Error("a path with '?' was accepted")
	}
}
