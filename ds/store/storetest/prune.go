package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// Retention (ds/prune.go): what PruneMessages, PruneKeyPackages,
// PrunedSeq, DeleteGroupIfEmpty and LockPruner must do.

// pruneAll runs PruneMessages sweeps until one is complete, as the Service
// does, and returns the sum and the groups that asked for a snapshot.
func pruneAll(t *testing.T, s ds.Store, p ds.PruneParams) (ds.PruneResult, [][]byte) {
	t.Helper()
	if p.Now.IsZero() {
		p.Now = t0
	}
	if p.Limit == 0 {
		p.Limit = 1000
	}
	var total ds.PruneResult
	var snaps [][]byte
	for i := 0; ; i++ {
		r, err := s.PruneMessages(ctx(), p)
		if err != nil {
			t.Fatalf("PruneMessages: %v", err)
		}
		total.Messages += r.Messages
		total.Groups += r.Groups
		snaps = append(snaps, r.NeedSnapshot...)
		if r.Next == nil {
			return total, snaps
		}
		if i > 1000 {
			t.Fatalf("PruneMessages never completes a sweep (next %x)", r.Next)
		}
		p.From = r.Next
	}
}

// stored returns the GroupSeqs of the messages of the group still stored,
// whoever they are for.
func stored(t *testing.T, s ds.Store, group string, clients ...string) []uint64 {
	t.Helper()
	seen := map[uint64]bool{}
	for _, c := range clients {
		for _, q := range visible(t, s, group, c) {
			seen[q] = true
		}
	}
	var out []uint64
	for q := uint64(1); q <= 1000; q++ {
		if seen[q] {
			out = append(out, q)
		}
	}
	return out
}

func mustAck(t *testing.T, s ds.Store, client, group string, seq uint64) {
	t.Helper()
	if err := s.Ack(ctx(), client, []byte(group), seq); err != nil {
		t.Fatalf("Ack(%s, %s, %d): %v", client, group, seq, err)
	}
}

func wantPrunedSeq(t *testing.T, s ds.Store, group string, want uint64) {
	t.Helper()
	got, err := s.PrunedSeq(ctx(), []byte(group))
	if err != nil {
		t.Fatalf("PrunedSeq(%s): %v", group, err)
	}
	if got != want {
		t.Errorf("PrunedSeq(%s) = %d, want %d", group, got, want)
	}
}

// testPruneAcked: a message goes once every client it is for acknowledged
// it, the sender of an application message excepted; partly acknowledged
// ones stay; the watermark moves over the acknowledged prefix only.
func testPruneAcked(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b", "c")
	for i := 1; i <= 3; i++ {
		mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "a", fmt.Sprint(i)))
	}
	mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "b", "4"))
	mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "c", "5"))
	wantPrunedSeq(t, s, "g", 0)

	// Nobody acknowledged anything: everything stays.
	if r, _ := pruneAll(t, s, ds.PruneParams{}); r.Messages != 0 {
		t.Errorf("pruned %d messages that nobody acknowledged", r.Messages)
	}
	// b and c have everything; a, the sender of 1-3, nothing: a's own
	// messages go (nobody else needs them), b's and c's stay for a.
	mustAck(t, s, "b", "g", 5)
	mustAck(t, s, "c", "g", 5)
	r, _ := pruneAll(t, s, ds.PruneParams{})
	if got := fmt.Sprint(stored(t, s, "g", "a", "b", "c")); got != "[4 5]" || r.Messages != 3 {
		t.Errorf("after b and c acknowledged all: stored %s (pruned %d), want [4 5] (a's own 1-3 gone)", got, r.Messages)
	}
	wantPrunedSeq(t, s, "g", 0) // a misses nothing it was sent
	// a has 4 but not 5: 4 goes, and the watermark with it.
	mustAck(t, s, "a", "g", 4)
	pruneAll(t, s, ds.PruneParams{})
	if got := fmt.Sprint(stored(t, s, "g", "a", "b", "c")); got != "[5]" {
		t.Errorf("after a acknowledged 4: stored %s, want [5]", got)
	}
	wantPrunedSeq(t, s, "g", 4)
	// A Commit is never pruned as its sender's own message: the sender
	// may need it to learn whether it won.
	mustAck(t, s, "a", "g", 5)
	c := mustAccept(t, s, msg("g", 0, mls.ContentTypeCommit, "a", "commit")) // 6
	mustAck(t, s, "b", "g", c.GroupSeq)
	mustAck(t, s, "c", "g", c.GroupSeq)
	pruneAll(t, s, ds.PruneParams{})
	if got := fmt.Sprint(stored(t, s, "g", "a", "b", "c")); got != "[6]" {
		t.Errorf("after the others acknowledged a's Commit: stored %s, want [6]", got)
	}
	mustAck(t, s, "a", "g", c.GroupSeq)
	pruneAll(t, s, ds.PruneParams{})
	if got := stored(t, s, "g", "a", "b", "c"); len(got) != 0 {
		t.Errorf("everything acknowledged by all, still stored: %v", got)
	}
	wantPrunedSeq(t, s, "g", 6)

	// A former member holds back the messages of its window until it
	// acknowledged them; a member's window that starts later does not.
	newGroup(t, s, "h", 0, "a", "b")
	mustAccept(t, s, msg("h", 0, mls.ContentTypeApplication, "a", "1"))
	rm := msg("h", 0, mls.ContentTypeCommit, "a", "remove b, add c")
	rm.Removed, rm.Added = []string{"b"}, []string{"c"}
	mustAccept(t, s, rm)                                                // 2: b's window is [1, 2]
	mustAccept(t, s, msg("h", 1, mls.ContentTypeApplication, "c", "3")) // c from 3
	mustAck(t, s, "a", "h", 3)
	mustAck(t, s, "c", "h", 3)
	pruneAll(t, s, ds.PruneParams{})
	if got := fmt.Sprint(stored(t, s, "h", "a", "b", "c")); got != "[1 2 3]" {
		t.Errorf("with b behind: stored %s, want [1 2 3]", got)
	}
	mustAck(t, s, "b", "h", 2)
	pruneAll(t, s, ds.PruneParams{})
	if got := stored(t, s, "h", "a", "b", "c"); len(got) != 0 {
		t.Errorf("after b acknowledged its window: stored %v, want none", got)
	}
}

// testPruneRetention: past ExpireBefore a message goes whoever has not
// acknowledged it, in steps of at most Limit messages.
func testPruneRetention(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b")
	for i := 1; i <= 7; i++ {
		p := msg("g", 0, mls.ContentTypeApplication, "a", fmt.Sprint(i))
		p.AcceptedAt = t0.Add(time.Duration(i) * time.Hour)
		mustAccept(t, s, p)
	}
	// Before the retention: nothing (b acknowledged nothing).
	if r, _ := pruneAll(t, s, ds.PruneParams{ExpireBefore: t0}); r.Messages != 0 {
		t.Errorf("pruned %d messages before their time", r.Messages)
	}
	// Messages 1-5 are older than the retention: they go, in steps of 2.
	r, err := s.PruneMessages(ctx(), ds.PruneParams{Now: t0, ExpireBefore: t0.Add(5*time.Hour + time.Minute), Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if r.Messages > 2 || r.Next == nil {
		t.Errorf("a step of limit 2 pruned %d messages, next %x; want at most 2 and more to do", r.Messages, r.Next)
	}
	pruneAll(t, s, ds.PruneParams{ExpireBefore: t0.Add(5*time.Hour + time.Minute), Limit: 2})
	if got := fmt.Sprint(stored(t, s, "g", "a", "b")); got != "[6 7]" {
		t.Errorf("after the retention of 1-5: stored %s, want [6 7]", got)
	}
	wantPrunedSeq(t, s, "g", 5)
	// What b may still fetch starts at 6.
	if got := fmt.Sprint(visible(t, s, "g", "b")); got != "[6 7]" {
		t.Errorf("b sees %s", got)
	}
}

// testPruneStateLog: a message of the state log newer than the snapshot
// stays, whatever its age, and the group asks for a snapshot; once one
// covers it, it goes, and the snapshot plus the rest of the log still
// give the state.
func testPruneStateLog(t *testing.T, s ds.Store) {
	g := ds.GroupRecord{ID: []byte("t"), Mode: ds.ModeTransparent, CipherSuite: suite, Creator: "a", CreatedAt: t0,
		State: []byte("state-0"), GroupInfo: []byte("gi-0")}
	if err := s.CreateGroup(ctx(), g, []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	advance := func(p ds.AcceptParams, version uint64) ds.Receipt {
		t.Helper()
		p.AdvanceState, p.StateVersion = true, version
		return mustAccept(t, s, p)
	}
	advance(msg("t", 0, mls.ContentTypeProposal, "a", "p1"), 0)          // 1, v1
	advance(msg("t", 0, mls.ContentTypeCommit, "b", "c1"), 1)            // 2, v2
	mustAccept(t, s, msg("t", 1, mls.ContentTypeApplication, "a", "m3")) // 3
	advance(msg("t", 1, mls.ContentTypeCommit, "a", "c2"), 2)            // 4, v3
	advance(msg("t", 2, mls.ContentTypeProposal, "b", "p2"), 3)          // 5, v4: pending
	mustAck(t, s, "a", "t", 5)
	mustAck(t, s, "b", "t", 5)

	r, snaps := pruneAll(t, s, ds.PruneParams{ExpireBefore: t0.Add(time.Hour)})
	if got := fmt.Sprint(stored(t, s, "t", "a")); got != "[1 2 4 5]" {
		t.Errorf("with the snapshot at version 0: stored %s (pruned %d), want the log [1 2 4 5]", got, r.Messages)
	}
	if len(snaps) == 0 || !bytes.Equal(snaps[0], []byte("t")) {
		t.Errorf("NeedSnapshot = %q, want [t]", snaps)
	}
	// A snapshot of version 3 (the pending Proposal is not in it).
	if err := s.PutSnapshot(ctx(), []byte("t"), 3, []byte("state-3")); err != nil {
		t.Fatal(err)
	}
	pruneAll(t, s, ds.PruneParams{ExpireBefore: t0.Add(time.Hour)})
	if got := fmt.Sprint(stored(t, s, "t", "a")); got != "[5]" {
		t.Errorf("with the snapshot at version 3: stored %s, want [5] (the Proposal after it)", got)
	}
	rec, err := s.GroupState(ctx(), []byte("t"))
	if err != nil {
		t.Fatal(err)
	}
	log, err := s.StateLog(ctx(), []byte("t"), rec.SnapshotVersion, 10)
	if err != nil {
		t.Fatal(err)
	}
	if string(rec.State) != "state-3" || rec.SnapshotVersion != 3 || len(log) != 1 || log[0].Version != 4 || log[0].GroupSeq != 5 {
		t.Errorf("after pruning: snapshot %q at %d, log %+v; want state-3 at 3 and the Proposal (v4, seq 5)", rec.State, rec.SnapshotVersion, log)
	}
	// The group goes on.
	advance(msg("t", 2, mls.ContentTypeCommit, "a", "c3"), 4)
	if h, _ := s.Group(ctx(), []byte("t")); h.StateVersion != 5 || h.LastSeq != 6 {
		t.Errorf("head after pruning and one more Commit: %+v", h)
	}
}

// testPruneKeyPackages: expired KeyPackages go, with the Welcomes still
// waiting on them; delivered Welcomes go; then their Commits may go too.
func testPruneKeyPackages(t *testing.T, s ds.Store) {
	mustClient(t, s, "j1", "j1")
	mustClient(t, s, "j2", "j2")
	mustClient(t, s, "k", "k")
	k1, k2 := kp("j1", false), kp("j2", false)
	k2.NotAfter = t0.Add(72 * time.Hour)
	spare := kp("k", false)
	spare.NotAfter = t0.Add(time.Hour)
	mustAddKPs(t, s, k1)
	mustAddKPs(t, s, k2)
	mustAddKPs(t, s, spare)
	newGroup(t, s, "g", 0, "a")
	c := msg("g", 0, mls.ContentTypeCommit, "a", "add j1 j2")
	c.Added = []string{"j1", "j2"}
	c.Welcome = []byte("welcome")
	c.WelcomeTo = []ds.WelcomeRoute{{ClientID: "j1", KeyPackageRef: k1.Ref}, {ClientID: "j2", KeyPackageRef: k2.Ref}}
	c.ConsumeKeyPackages = [][]byte{k1.Ref, k2.Ref}
	r := mustAccept(t, s, c)
	mustAck(t, s, "a", "g", r.GroupSeq)

	// Nothing expired yet; j1 acknowledges its Welcome, j2 does not.
	mustAck(t, s, "j1", "g", r.GroupSeq)
	res, err := s.PruneKeyPackages(ctx(), ds.PruneParams{Now: t0, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if res.KeyPackages != 0 || res.Welcomes != 0 {
		t.Errorf("at t0: pruned %d KeyPackages, %d Welcomes; want none (one route is pending)", res.KeyPackages, res.Welcomes)
	}
	if ws, _ := s.PendingWelcomes(ctx(), "j2"); len(ws) != 1 {
		t.Fatalf("j2's Welcome is gone before its KeyPackage expired")
	}
	// The Commit stays while its Welcome is stored.
	pruneAll(t, s, ds.PruneParams{})
	if got := fmt.Sprint(stored(t, s, "g", "a")); got != fmt.Sprint([]uint64{r.GroupSeq}) {
		t.Errorf("the Commit of a pending Welcome: stored %s", got)
	}
	// A day later j1's KeyPackage and the spare one expired; k2 not yet.
	res, err = s.PruneKeyPackages(ctx(), ds.PruneParams{Now: t0.Add(48 * time.Hour), Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if res.KeyPackages != 2 {
		t.Errorf("pruned %d expired KeyPackages, want 2", res.KeyPackages)
	}
	if got, _ := s.KeyPackagesByRef(ctx(), [][]byte{k1.Ref, k2.Ref, spare.Ref}); len(got) != 1 || !bytes.Equal(got[0].Ref, k2.Ref) {
		t.Errorf("KeyPackages left: %d, want k2 only", len(got))
	}
	if ws, _ := s.PendingWelcomes(ctx(), "j2"); len(ws) != 1 {
		t.Errorf("j2's Welcome went while its KeyPackage is valid")
	}
	// Once k2 expired, j2's Welcome goes with it, and so does the Welcome.
	res, err = s.PruneKeyPackages(ctx(), ds.PruneParams{Now: t0.Add(96 * time.Hour), Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if res.KeyPackages != 1 || res.Welcomes != 1 {
		t.Errorf("after k2 expired: pruned %d KeyPackages, %d Welcomes; want 1 and 1", res.KeyPackages, res.Welcomes)
	}
	if ws, _ := s.PendingWelcomes(ctx(), "j2"); len(ws) != 0 {
		t.Errorf("j2's Welcome outlived its KeyPackage: %+v", ws)
	}
	mustAck(t, s, "j2", "g", r.GroupSeq)
	pruneAll(t, s, ds.PruneParams{})
	if got := stored(t, s, "g", "a"); len(got) != 0 {
		t.Errorf("the Commit stayed after its Welcome went: %v", got)
	}
}

// testPruneEmptyGroups: a group without members goes with everything of
// it, in bounded steps; one with a member does not.
func testPruneEmptyGroups(t *testing.T, s ds.Store) {
	newGroup(t, s, "e", 0, "a", "b")
	newGroup(t, s, "f", 0, "a")
	for i := 0; i < 5; i++ {
		mustAccept(t, s, msg("e", 0, mls.ContentTypeApplication, "a", fmt.Sprint(i)))
	}
	if err := s.CreateJoinLink(ctx(), joinLink("e", "l1", t0, time.Hour), 10); err != nil {
		t.Fatal(err)
	}
	if err := putTree(s, "e", "a", 0, "tree"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteGroupIfEmpty(ctx(), []byte("e"), 10); !errors.Is(err, ds.ErrGroupNotEmpty) {
		t.Errorf("DeleteGroupIfEmpty of a group with members: %v, want ErrGroupNotEmpty", err)
	}
	if _, err := s.DeleteGroupIfEmpty(ctx(), []byte("nope"), 10); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("DeleteGroupIfEmpty of an unknown group: %v, want ErrNotFound", err)
	}
	for _, c := range []string{"a", "b"} {
		if _, err := s.Leave(ctx(), []byte("e"), c); err != nil {
			t.Fatal(err)
		}
	}
	// Bounded steps: 2 messages at a time.
	done, err := s.DeleteGroupIfEmpty(ctx(), []byte("e"), 2)
	if err != nil || done {
		t.Fatalf("first step of deleting a group of 5 messages, limit 2: done %v, %v; want more to do", done, err)
	}
	if got := len(stored(t, s, "e", "a")); got != 3 {
		t.Errorf("after one step of 2: %d messages left, want 3", got)
	}
	// The sweep finishes it.
	r, _ := pruneAll(t, s, ds.PruneParams{Limit: 2})
	if r.Groups != 1 {
		t.Errorf("the sweep deleted %d groups, want 1", r.Groups)
	}
	if _, err := s.Group(ctx(), []byte("e")); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("Group(e) after deleting it: %v", err)
	}
	if _, err := s.JoinLinks(ctx(), []byte("e"), t0); err != nil && !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("JoinLinks of a deleted group: %v", err)
	} else if ls, _ := s.JoinLinks(ctx(), []byte("e"), t0); len(ls) != 0 {
		t.Errorf("join links outlived their group: %+v", ls)
	}
	if w, _ := s.Memberships(ctx(), []byte("e"), "a"); len(w) != 0 {
		t.Errorf("windows outlived their group: %+v", w)
	}
	if cur, _ := s.Cursors(ctx(), "b"); len(cur) != 0 {
		t.Errorf("b's cursors still name the deleted group: %+v", cur)
	}
	// The same id may be used again, from scratch.
	newGroup(t, s, "e", 0, "a")
	wantPrunedSeq(t, s, "e", 0)
	if _, err := s.Group(ctx(), []byte("f")); err != nil {
		t.Errorf("a group with a member went too: %v", err)
	}
}

// testPrunerLock: one pruner at a time.
func testPrunerLock(t *testing.T, s ds.Store) {
	unlock, err := s.LockPruner(ctx())
	if err != nil {
		t.Fatalf("LockPruner: %v", err)
	}
	if u2, err := s.LockPruner(ctx()); !errors.Is(err, ds.ErrPrunerBusy) {
		if u2 != nil {
			u2()
		}
		t.Errorf("second LockPruner: %v, want ErrPrunerBusy", err)
	}
	unlock()
	unlock() // twice is harmless
	u3, err := s.LockPruner(ctx())
	if err != nil {
		t.Fatalf("LockPruner after unlock: %v", err)
	}
	u3()
}
