package sqlite

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// acceptOne accepts one application message from sender through
// AcceptMessages (the batch path) and returns its outcome.
func acceptOne(s *Store, gid []byte, sender, text string) (ds.AcceptResult, error) {
	res, errs := s.AcceptMessages(context.Background(), []ds.AcceptParams{appParams(gid, sender, text)})
	return res[0], errs[0]
}

// TestHotCacheSeesOtherWrites: the heads and memberships that batches
// keep from one transaction to the next (hotCache) are read again after a
// write of another kind (Leave) and after a write by another connection to
// the database file: a client that left, or that a tool removed, is
// refused, and sequence numbers follow what is stored.
func TestHotCacheSeesOtherWrites(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "mlsds.db")
	s, gid := lastSeqFixture(t, path, 1) // members a and b; message 1 from a
	defer s.Close()
	if _, err := acceptOne(s, gid, "b", "b1"); err != nil { // 2: b's membership is cached
		t.Fatal(err)
	}

	// Another kind of write: b leaves.
	if _, err := s.Leave(ctx, gid, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := acceptOne(s, gid, "b", "b2"); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("a batch from b after b left: %v, want ErrNotMember", err)
	}

	// Another connection: it ends a's window and appends a message.
	if r, err := acceptOne(s, gid, "a", "a1"); err != nil || r.Receipt.GroupSeq != 3 {
		t.Fatalf("a1: %+v, %v; want GroupSeq 3", r, err)
	}
	other, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, q := range []string{
		`INSERT INTO messages (group_id, seq, epoch, content_type, wire_format, sender, hash, data, accepted_at)
			VALUES (x'` + hex.EncodeToString(gid) + `', 4, 0, 1, 2, 'tool', x'01', x'01', 0)`,
	} {
		if _, err := other.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// a is still a member: its next message follows the one the tool
	// appended.
	if r, err := acceptOne(s, gid, "a", "a2"); err != nil || r.Receipt.GroupSeq != 5 {
		t.Errorf("a2 after another connection appended GroupSeq 4: %+v, %v; want GroupSeq 5", r, err)
	}
	if _, err := other.ExecContext(ctx, "UPDATE memberships SET until_seq = 5 WHERE client_id = 'a' AND until_seq IS NULL"); err != nil {
		t.Fatal(err)
	}
	if _, err := acceptOne(s, gid, "a", "a3"); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("a batch from a after another connection ended a's window: %v, want ErrNotMember", err)
	}
}

// TestHotCacheForgetsFailedBatch: a batch of application messages whose
// commit fails leaves no trace in the cached heads: the next message
// takes the GroupSeq after the last one stored.
func TestHotCacheForgetsFailedBatch(t *testing.T) {
	ctx := context.Background()
	s, gid := lastSeqFixture(t, filepath.Join(t.TempDir(), "mlsds.db"), 1) // message 1 from a
	defer s.Close()
	for _, q := range []string{
		"CREATE TABLE poison_guard (group_id BLOB REFERENCES groups (id) DEFERRABLE INITIALLY DEFERRED)",
		`CREATE TRIGGER poison AFTER INSERT ON messages WHEN NEW.sender = 'b'
			BEGIN INSERT INTO poison_guard (group_id) VALUES (x'00'); END`,
	} {
		if _, err := s.w.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	_, errs := s.AcceptMessages(ctx, []ds.AcceptParams{appParams(gid, "a", "x1"), appParams(gid, "a", "x2"), appParams(gid, "b", "x3")})
	for i, err := range errs {
		if err == nil {
			t.Fatalf("message %d of a batch that cannot commit was accepted", i)
		}
	}
	if r, err := acceptOne(s, gid, "a", "after"); err != nil || r.Receipt.GroupSeq != 2 {
		t.Errorf("after a failed batch: %+v, %v; want GroupSeq 2", r, err)
	}
}

// TestHotCacheCommitInBatch: a Commit in a batch that removes a member
// makes the cache forget that group: the removed member's next message,
// in the same batch and in the next one, is refused, while another
// group's messages go on at the right GroupSeqs.
func TestHotCacheCommitInBatch(t *testing.T) {
	ctx := context.Background()
	s, gid, other := twoGroupsFixture(t)
	defer s.Close()
	if _, err := acceptOne(s, gid, "b", "b1"); err != nil { // 2
		t.Fatal(err)
	}
	if _, err := acceptOne(s, other, "b", "o1"); err != nil { // other 1
		t.Fatal(err)
	}
	c := ds.AcceptParams{GroupID: gid, Hash: []byte("remove b"), ContentType: mls.ContentTypeCommit,
		WireFormat: mls.WireFormatPublicMessage, Sender: "a", Data: []byte("remove b"), AcceptedAt: time.Now(),
		MaxEpochLag: 2, RequireMember: true, Removed: []string{"b"}}
	b2 := appParams(gid, "b", "b2")
	b2.Epoch = 1
	res, errs := s.AcceptMessages(ctx, []ds.AcceptParams{
		appParams(gid, "b", "b before"), // 3
		c,                               // 4, epoch 1
		b2,
		appParams(other, "b", "o2"), // other 2
	})
	if errs[0] != nil || res[0].Receipt.GroupSeq != 3 {
		t.Errorf("b's message before the Commit: %+v, %v; want GroupSeq 3", res[0], errs[0])
	}
	if errs[1] != nil || res[1].Receipt.GroupSeq != 4 {
		t.Errorf("the Commit: %+v, %v; want GroupSeq 4", res[1], errs[1])
	}
	if !errors.Is(errs[2], ds.ErrNotMember) {
		t.Errorf("b's message after the Commit that removed b: %+v, %v; want ErrNotMember", res[2], errs[2])
	}
	if errs[3] != nil || res[3].Receipt.GroupSeq != 2 {
		t.Errorf("other group: %+v, %v; want GroupSeq 2", res[3], errs[3])
	}
	next := appParams(gid, "b", "b3")
	next.Epoch = 1
	if _, errs := s.AcceptMessages(ctx, []ds.AcceptParams{next}); !errors.Is(errs[0], ds.ErrNotMember) {
		t.Errorf("b's message in the next batch: %v; want ErrNotMember", errs[0])
	}
	a := appParams(gid, "a", "a at epoch 1")
	a.Epoch = 1
	if res, errs := s.AcceptMessages(ctx, []ds.AcceptParams{a}); errs[0] != nil || res[0].Receipt.GroupSeq != 5 {
		t.Errorf("a's message at epoch 1: %+v, %v; want GroupSeq 5", res[0], errs[0])
	}
}

// TestHotCacheOutlivesOtherGroupsWrites: a Commit accepted alone
// (AcceptMessage) forgets only its own group, and a snapshot forgets
// nothing: the next batch of another group reads neither its head nor
// its sender's membership from the database, while the committed group's
// are read again and the Commit's removal holds.
func TestHotCacheOutlivesOtherGroupsWrites(t *testing.T) {
	ctx := context.Background()
	s, gid, other := twoGroupsFixture(t)
	defer s.Close()
	// Both groups' heads and both senders are cached.
	if res, errs := s.AcceptMessages(ctx, []ds.AcceptParams{
		appParams(gid, "b", "b1"), appParams(other, "a", "o1"), appParams(other, "b", "o2"),
	}); errs[0] != nil || errs[1] != nil || errs[2] != nil || res[0].Receipt.GroupSeq != 2 {
		t.Fatalf("warm-up batch: %+v, %v", res, errs)
	}

	c := ds.AcceptParams{GroupID: gid, Hash: []byte("remove b"), ContentType: mls.ContentTypeCommit,
		WireFormat: mls.WireFormatPublicMessage, Sender: "a", Data: []byte("remove b"), AcceptedAt: time.Now(),
		MaxEpochLag: 2, RequireMember: true, Removed: []string{"b"}, NewState: []byte("state 1")}
	if r, err := s.AcceptMessage(ctx, c); err != nil || r.Receipt.GroupSeq != 3 {
		t.Fatalf("the Commit: %+v, %v; want GroupSeq 3", r, err)
	}
	if err := s.PutSnapshot(ctx, gid, 1, []byte("state 1 again")); err != nil {
		t.Fatal(err)
	}

	before := s.hot.misses
	res, errs := s.AcceptMessages(ctx, []ds.AcceptParams{appParams(other, "a", "o3"), appParams(other, "b", "o4")})
	if errs[0] != nil || errs[1] != nil || res[0].Receipt.GroupSeq != 3 || res[1].Receipt.GroupSeq != 4 {
		t.Fatalf("the other group's batch: %+v, %v; want GroupSeqs 3 and 4", res, errs)
	}
	if n := s.hot.misses - before; n != 0 {
		t.Errorf("the other group's batch after a Commit and a snapshot of another group read %d heads or memberships; want 0", n)
	}

	// The committed group is read again: b was removed, a goes on.
	b := appParams(gid, "b", "b after removal")
	b.Epoch = 1
	a := appParams(gid, "a", "a at epoch 1")
	a.Epoch = 1
	before = s.hot.misses
	res, errs = s.AcceptMessages(ctx, []ds.AcceptParams{b, a})
	if !errors.Is(errs[0], ds.ErrNotMember) {
		t.Errorf("b after the Commit that removed b: %+v, %v; want ErrNotMember", res[0], errs[0])
	}
	if errs[1] != nil || res[1].Receipt.GroupSeq != 4 {
		t.Errorf("a at epoch 1: %+v, %v; want GroupSeq 4", res[1], errs[1])
	}
	if s.hot.misses == before {
		t.Error("the committed group's head and members were not read again")
	}
}

// twoGroupsFixture is lastSeqFixture with one message, and a second group
// of the same members a and b with none.
func twoGroupsFixture(t *testing.T) (s *Store, gid, other []byte) {
	t.Helper()
	s, gid = lastSeqFixture(t, filepath.Join(t.TempDir(), "mlsds.db"), 1)
	other = []byte("group-other")
	if err := s.CreateGroup(context.Background(), ds.GroupRecord{ID: other, Mode: ds.ModeOpaque, CipherSuite: 1, Creator: "a", CreatedAt: time.Now()},
		[]string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	return s, gid, other
}
