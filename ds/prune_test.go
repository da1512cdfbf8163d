package ds_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// prune runs one sweep of svc's pruner.
func prune(t *testing.T, svc *ds.Service) ds.PruneResult {
	t.Helper()
	r, err := svc.Prune(bg)
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	return r
}

// groupEvents leaves out the events that are not about a group's messages.
func groupEvents(evs []ds.Event) []ds.Event {
	var out []ds.Event
	for _, ev := range evs {
		if ev.Message != nil || ev.Pruned != nil {
			out = append(out, ev)
		}
	}
	return out
}

// TestPrunedFetchAndSubscribe: messages that outlived the retention go
// even though b never acknowledged them; b's Fetch from its old position
// gets a PrunedError naming the first GroupSeq left, and its subscription
// a PrunedEvent before the messages that follow.
func TestPrunedFetchAndSubscribe(t *testing.T) {
	e := newEnv(t, ds.Config{Retention: time.Hour, PruneInterval: -1})
	e.register("a", "a")
	e.register("b", "b")
	gid := []byte("pruned-group")
	if err := e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeApplication)); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.svc.Ack(bg, "b", gid, 2); err != nil {
		t.Fatal(err)
	}
	// Within the retention, b keeps what it did not acknowledge.
	prune(t, e.svc)
	envs, err := e.svc.Fetch(bg, "b", gid, 3, 0)
	if err != nil || len(envs) != 3 {
		t.Fatalf("Fetch from b's position within the retention: %d messages, %v; want 3", len(envs), err)
	}

	e.clock.Advance(2 * time.Hour)
	r, err := sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeApplication))
	if err != nil {
		t.Fatal(err)
	}
	if got := prune(t, e.svc); got.Messages == 0 {
		t.Fatalf("nothing pruned past the retention")
	}
	_, err = e.svc.Fetch(bg, "b", gid, 3, 0)
	pe := wantErr[*ds.PrunedError](t, err)
	if pe.OldestSeq != r.GroupSeq || !bytes.Equal(pe.GroupID, gid) {
		t.Errorf("PrunedError = %+v, want oldest seq %d of group %q", pe, r.GroupSeq, gid)
	}
	if envs, err := e.svc.Fetch(bg, "b", gid, pe.OldestSeq, 0); err != nil || len(envs) != 1 || envs[0].GroupSeq != r.GroupSeq {
		t.Errorf("Fetch from the oldest seq: %d messages, %v", len(envs), err)
	}

	evs := groupEvents(replay(t, e, "b"))
	if len(evs) != 2 || evs[0].Pruned == nil || evs[1].Message == nil {
		t.Fatalf("replay after pruning: %+v, want a PrunedEvent and the message left", evs)
	}
	if p := evs[0].Pruned; p.OldestSeq != r.GroupSeq || !bytes.Equal(p.GroupID, gid) {
		t.Errorf("PrunedEvent = %+v, want oldest seq %d", p, r.GroupSeq)
	}
	if evs[1].Message.GroupSeq != r.GroupSeq {
		t.Errorf("after the PrunedEvent: message %d, want %d", evs[1].Message.GroupSeq, r.GroupSeq)
	}
	// Once b acknowledged it, the group is empty of messages and nobody
	// is told of pruning any more.
	if err := e.svc.Ack(bg, "b", gid, r.GroupSeq); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Ack(bg, "a", gid, r.GroupSeq); err != nil {
		t.Fatal(err)
	}
	prune(t, e.svc)
	if evs := groupEvents(replay(t, e, "b")); len(evs) != 0 {
		t.Errorf("replay with everything acknowledged: %+v", evs)
	}
}

// TestPruneTransparentRestart: the pruner writes a snapshot before it
// prunes a transparent group's log; the Proposals of the current epoch
// stay and GetGroupInfo serves them; a Service started over the same store
// rebuilds the state from what is left.
func TestPruneTransparentRestart(t *testing.T) {
	e := newEnv(t, ds.Config{Retention: time.Hour, PruneInterval: -1, SnapshotEvery: 1000})
	// Background snapshots are dropped, as by a node that crashed before
	// writing them: the pruner has to write its own.
	e.svc = ds.New(noSnapshots{e.store}, e.cfg)
	a := e.register("a", "a")
	g := e.createGroup(a)
	e.grow(g, e.svc, 2, "x")
	for i := 0; i < 3; i++ {
		commit, next := g.pathCommit(t, a, 0)
		if _, err := sendMsg(e.svc, "a", commit); err != nil {
			t.Fatal(err)
		}
		g.st = next
	}
	before, err := e.store.GroupState(bg, g.id)
	if err != nil {
		t.Fatal(err)
	}
	if before.SnapshotVersion == before.StateVersion {
		t.Fatalf("test setup: the snapshot is at the current version already")
	}

	e.clock.Advance(2 * time.Hour)
	e.svc = ds.New(e.store, e.cfg) // the pruning node writes its snapshots
	prune(t, e.svc)
	rec, err := e.store.GroupState(bg, g.id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.SnapshotVersion != rec.StateVersion {
		t.Errorf("after pruning: snapshot at %d, state version %d; want a snapshot of the current state", rec.SnapshotVersion, rec.StateVersion)
	}
	if log, _ := e.store.StateLog(bg, g.id, 0, 100); len(log) != 0 {
		t.Errorf("%d log entries left behind the snapshot", len(log))
	}
	if st := e.svc.PruneStats(); st.Snapshots == 0 || st.Messages == 0 {
		t.Errorf("PruneStats = %+v, want snapshots and messages", st)
	}

	// A Proposal of the current epoch survives any pruning.
	kp := e.upload(e.register("y", "y"), 1, false)[0]
	prop := g.proposal(t, a, 0, &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}})
	if _, err := sendMsg(e.svc, "a", prop); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Hour)
	prune(t, e.svc)
	info, err := e.svc.GroupInfo(bg, "a", g.id)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Proposals) != 1 || !bytes.Equal(info.Proposals[0], prop) {
		t.Errorf("GroupInfo after pruning: %d Proposals, want the pending one", len(info.Proposals))
	}

	e.reopen()
	checkTree(t, e.svc, "a", g)
	info, err = e.svc.GroupInfo(bg, "x0", g.id)
	if err != nil {
		t.Fatalf("GroupInfo after a restart: %v", err)
	}
	if len(info.Proposals) != 1 || !bytes.Equal(info.Proposals[0], prop) {
		t.Errorf("GroupInfo after a restart: %d Proposals, want the pending one", len(info.Proposals))
	}
	// The group goes on: a Commit by reference to the Proposal.
	pref := must(g.st.HandleProposal(must(mls.ParseMLSMessage(prop)).PublicMessage))
	commit, next := g.commit(t, a, 0, []mls.ProposalOrRef{{Type: mls.ProposalOrRefTypeReference, Reference: pref}}, nil)
	if _, err := sendBundle(e.svc, "a", ds.CommitBundle{Commit: commit, Welcome: welcome(t, ref(t, kp))}); err != nil {
		t.Fatalf("Commit after pruning and a restart: %v", err)
	}
	g.st = next
	checkTree(t, e.svc, "y", g)
}

// TestDeleteGroupIfEmpty: the Service deletes a group once its last
// member left, and not before.
func TestDeleteGroupIfEmpty(t *testing.T) {
	e := newEnv(t, ds.Config{PruneInterval: -1})
	e.register("a", "a")
	e.register("b", "b")
	gid := []byte("emptied")
	if err := e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeApplication)); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.svc.DeleteGroupIfEmpty(bg, gid); ok || err != nil {
		t.Fatalf("DeleteGroupIfEmpty with members = %v, %v", ok, err)
	}
	for _, c := range []string{"a", "b"} {
		if _, err := e.store.Leave(bg, gid, c); err != nil {
			t.Fatal(err)
		}
	}
	if r := prune(t, e.svc); r.Groups != 1 {
		t.Errorf("the sweep deleted %d groups, want 1", r.Groups)
	}
	if _, err := e.store.Group(bg, gid); err == nil {
		t.Errorf("the emptied group is still there")
	}
}

// TestLastLeaveDeletesGroup: when the last member leaves through
// LeaveGroup, the group goes at once, without waiting for the pruner.
func TestLastLeaveDeletesGroup(t *testing.T) {
	e := newEnv(t, ds.Config{PruneInterval: -1})
	e.register("a", "a")
	e.register("b", "b")
	gid := []byte("left-empty")
	if err := e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.LeaveGroup(bg, "a", gid, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Group(bg, gid); err != nil {
		t.Fatalf("the group went while b was still in it: %v", err)
	}
	if _, err := e.svc.LeaveGroup(bg, "b", gid, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Group(bg, gid); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("after the last member left, Group = %v; want ErrNotFound", err)
	}
}
