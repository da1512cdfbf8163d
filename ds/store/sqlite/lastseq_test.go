package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// lastSeqFixture: a store with one opaque group of "a" and "b" and n
// application messages from "a", accepted in one batch.
func lastSeqFixture(t *testing.T, path string, n int) (*Store, []byte) {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	gid := []byte("group-lastseq")
	if err := s.CreateGroup(ctx, ds.GroupRecord{ID: gid, Mode: ds.ModeOpaque, CipherSuite: 1, Creator: "a", CreatedAt: time.Now()},
		[]string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	acceptApp(t, s, gid, "first", n)
	return s, gid
}

// acceptApp accepts n application messages from "a" in one batch and
// returns their GroupSeqs.
func acceptApp(t *testing.T, s *Store, gid []byte, tag string, n int) []uint64 {
	t.Helper()
	var ps []ds.AcceptParams
	for i := range n {
		ps = append(ps, appParams(gid, "a", tag+string(rune('A'+i))))
	}
	res, errs := s.AcceptMessages(context.Background(), ps)
	var seqs []uint64
	for i, err := range errs {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		seqs = append(seqs, res[i].Receipt.GroupSeq)
	}
	return seqs
}

// appParams is an application message of group gid at epoch 0 from a
// member, sender, with text as its bytes and its hash.
func appParams(gid []byte, sender, text string) ds.AcceptParams {
	return ds.AcceptParams{GroupID: gid, Hash: []byte(text), ContentType: mls.ContentTypeApplication,
		WireFormat: mls.WireFormatPrivateMessage, Sender: sender, Data: []byte(text), AcceptedAt: time.Now(),
		MaxEpochLag: 2, RequireMember: true}
}

// TestBatchLeavesGroupRow: application messages accepted in a batch do
// not write their group's row (a statement and a page per group and
// batch), and the group's head still moves: Group, GroupState, Ack's
// check against the head and Leave see the last message.
func TestBatchLeavesGroupRow(t *testing.T) {
	ctx := context.Background()
	s, gid := lastSeqFixture(t, filepath.Join(t.TempDir(), "mlsds.db"), 1)
	defer s.Close()
	for _, q := range []string{
		"CREATE TABLE group_writes (id BLOB)",
		"CREATE TRIGGER group_written AFTER UPDATE ON groups BEGIN INSERT INTO group_writes (id) VALUES (NEW.id); END",
	} {
		if _, err := s.w.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	seqs := acceptApp(t, s, gid, "second", 3)
	if want := []uint64{2, 3, 4}; len(seqs) != 3 || seqs[0] != want[0] || seqs[2] != want[2] {
		t.Fatalf("GroupSeqs %v, want %v", seqs, want)
	}
	var writes int
	if err := s.w.QueryRowContext(ctx, "SELECT COUNT(*) FROM group_writes").Scan(&writes); err != nil {
		t.Fatal(err)
	}
	if writes != 0 {
		t.Errorf("a batch of application messages wrote the group's row %d times, want 0", writes)
	}
	g, err := s.Group(ctx, gid)
	if err != nil || g.LastSeq != 4 {
		t.Errorf("Group: LastSeq %d, %v; want 4", g.LastSeq, err)
	}
	g, err = s.GroupState(ctx, gid)
	if err != nil || g.LastSeq != 4 {
		t.Errorf("GroupState: LastSeq %d, %v; want 4", g.LastSeq, err)
	}
	errs := s.AckMany(ctx, []ds.AckParams{
		{ClientID: "b", GroupID: gid, Seq: 4, CheckHead: true},
		{ClientID: "b", GroupID: gid, Seq: 5, CheckHead: true},
	})
	var beyond *ds.AckBeyondHeadError
	if errs[0] != nil {
		t.Errorf("Ack of the last message: %v", errs[0])
	}
	if !errors.As(errs[1], &beyond) || beyond.LastSeq != 4 {
		t.Errorf("Ack beyond the head: %v; want an AckBeyondHeadError with LastSeq 4", errs[1])
	}
	// A Commit (acceptTx) takes the next GroupSeq after the batch's.
	c := ds.AcceptParams{GroupID: gid, Hash: []byte("commit"), ContentType: mls.ContentTypeCommit,
		WireFormat: mls.WireFormatPublicMessage, Sender: "a", Data: []byte("commit"), AcceptedAt: time.Now(),
		MaxEpochLag: 2, RequireMember: true}
	r, err := s.AcceptMessage(ctx, c)
	if err != nil || r.Receipt.GroupSeq != 5 {
		t.Fatalf("Commit after the batch: GroupSeq %d, %v; want 5", r.Receipt.GroupSeq, err)
	}
	if seqs := acceptApp(t, s, gid, "third", 1); seqs[0] != 6 {
		t.Errorf("message after the Commit: GroupSeq %d, want 6", seqs[0])
	}
	last, err := s.Leave(ctx, gid, "b")
	if err != nil || last != 6 {
		t.Errorf("Leave: %d, %v; want 6, the last message", last, err)
	}
}

// TestPrunedHeadStays: once the messages a batch appended are pruned, the
// group's head does not go back, and the next message does not reuse a
// GroupSeq.
func TestPrunedHeadStays(t *testing.T) {
	ctx := context.Background()
	s, gid := lastSeqFixture(t, filepath.Join(t.TempDir(), "mlsds.db"), 5)
	defer s.Close()
	for _, c := range []string{"a", "b"} {
		if err := s.Ack(ctx, c, gid, 5); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.PruneMessages(ctx, ds.PruneParams{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if res.Messages != 5 {
		t.Fatalf("pruned %d messages, want 5", res.Messages)
	}
	g, err := s.Group(ctx, gid)
	if err != nil || g.LastSeq != 5 {
		t.Errorf("after pruning: LastSeq %d, %v; want 5", g.LastSeq, err)
	}
	if seqs := acceptApp(t, s, gid, "after", 1); seqs[0] != 6 {
		t.Errorf("message after pruning: GroupSeq %d, want 6", seqs[0])
	}
}

// TestCloseSettlesHead: a cleanly closed database has every group's head
// in groups.last_seq, as an mlsds that reads only the column expects.
func TestCloseSettlesHead(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "mlsds.db")
	s, gid := lastSeqFixture(t, path, 3)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var col int64
	if err := s.w.QueryRowContext(ctx, "SELECT last_seq FROM groups WHERE id = ?", gid).Scan(&col); err != nil || col != 3 {
		t.Errorf("groups.last_seq after Close = %d, %v; want 3", col, err)
	}
}

// TestUseAfterClose: a write after Close, and a second Close, fail
// rather than wait for the writer connection forever.
func TestUseAfterClose(t *testing.T) {
	s, gid := lastSeqFixture(t, filepath.Join(t.TempDir(), "mlsds.db"), 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, errs := s.AcceptMessages(context.Background(), []ds.AcceptParams{appParams(gid, "a", "late")}); errs[0] == nil {
		t.Error("AcceptMessages after Close succeeded")
	}
	s.Close()
}
