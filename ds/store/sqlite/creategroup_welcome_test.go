package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"path/filepath"
	"testing"
)

// TestMigrateCreationWelcomes: a database made before Welcomes could
// come with a group's creation (schema 8) keeps its Welcomes and their
// routes through the rebuild of both tables, whose foreign key from the
// routes to the Welcomes still holds, and can then store a Welcome with
// commit_seq 0, which no message has.
func TestMigrateCreationWelcomes(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT; INSERT INTO schema_version VALUES (8)"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"0001_init.sql", "0002_remote_trees.sql", "0003_state_log.sql", "0004_accounts.sql",
		"0005_join_links.sql", "0006_retention.sql", "0007_quotas.sql", "0008_client_keys.sql"} {
		body, err := migrations.ReadFile("migrations/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(string(body)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	for _, q := range []string{
		`INSERT INTO groups (id, mode, cipher_suite, creator, created_at, epoch, epoch_start_seq, last_seq, state_version)
			VALUES (X'67', 1, 1, 'a', 1, 1, 1, 1, 0)`,
		`INSERT INTO messages (group_id, seq, epoch, content_type, wire_format, sender, hash, data, accepted_at)
			VALUES (X'67', 1, 0, 3, 1, 'a', X'01', X'02', 5)`,
		`INSERT INTO welcomes (group_id, commit_seq, epoch, data, accepted_at) VALUES (X'67', 1, 1, X'77', 5)`,
		`INSERT INTO welcome_routes (id, client_id, group_id, commit_seq, key_package_ref, delivered)
			VALUES (7, 'j', X'67', 1, X'aa', 0), (8, 'k', X'67', 1, X'bb', 1)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// At schema 8 a Welcome must belong to a message.
	if _, err := db.Exec(`INSERT INTO welcomes (group_id, commit_seq, epoch, data, accepted_at) VALUES (X'67', 0, 1, X'78', 5)`); err == nil {
		t.Fatal("schema 8 took a Welcome with commit_seq 0; the migration under test is not needed")
	}
	db.Close()

	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := s.PendingWelcomes(ctx, "j")
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].CommitSeq != 1 || ws[0].Epoch != 1 || !bytes.Equal(ws[0].Data, []byte{0x77}) || !bytes.Equal(ws[0].KeyPackageRef, []byte{0xaa}) {
		t.Fatalf("j's pending Welcomes after migrating: %+v; want the one stored before", ws)
	}
	if ws, err := s.PendingWelcomes(ctx, "k"); err != nil || len(ws) != 0 {
		t.Fatalf("k's pending Welcomes after migrating: %+v, %v; want none (delivered before)", ws, err)
	}
	s.Close()

	db, err = sql.Open("sqlite", "file:"+path+"?_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var parent string
	if err := db.QueryRow("SELECT \"table\" FROM pragma_foreign_key_list('welcome_routes')").Scan(&parent); err != nil || parent != "welcomes" {
		t.Fatalf("welcome_routes' foreign key references %q (%v), want welcomes", parent, err)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM pragma_foreign_key_list('welcomes')").Scan(&n); err != nil || n != 0 {
		t.Fatalf("welcomes has %d foreign keys (%v), want none", n, err)
	}
	if err := db.QueryRow("SELECT count(*) FROM sqlite_master WHERE name IN ('welcome_routes_pending', 'welcome_routes_by_welcome')").Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d of the two indexes of welcome_routes (%v)", n, err)
	}
	if _, err := db.Exec(`INSERT INTO welcomes (group_id, commit_seq, epoch, data, accepted_at) VALUES (X'67', 0, 1, X'78', 5)`); err != nil {
		t.Fatalf("a Welcome with commit_seq 0 after migrating: %v", err)
	}
	if _, err := db.Exec(`INSERT INTO welcome_routes (client_id, group_id, commit_seq, key_package_ref) VALUES ('j', X'67', 5, X'cc')`); err == nil {
		t.Fatal("a route to no Welcome was taken: the foreign key is gone")
	}
}
