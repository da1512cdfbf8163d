package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"path/filepath"
	"testing"
)

// TestMigrateClientKeys: a database made before client_keys (schema 7)
// gets every client's registered key as its one key.
func TestMigrateClientKeys(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT; INSERT INTO schema_version VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"0001_init.sql", "0002_remote_trees.sql", "0003_state_log.sql", "0004_accounts.sql",
		"0005_join_links.sql", "0006_retention.sql", "0007_quotas.sql"} {
		body, err := migrations.ReadFile("migrations/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(string(body)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if _, err := db.Exec(`INSERT INTO clients (id, user_id, cipher_suite, signature_key, created_at)
		VALUES ('a', 'a', 1, X'0a0a', 1), ('b', 'b', 1, X'0b0b', 2)`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m, err := s.ClientKeys(ctx, []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if len(m["a"]) != 1 || !bytes.Equal(m["a"][0], []byte{0x0a, 0x0a}) || len(m["b"]) != 1 || !bytes.Equal(m["b"][0], []byte{0x0b, 0x0b}) {
		t.Fatalf("keys after migrating = %x; want each client's registered key", m)
	}
}
