package storetest

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// testDeniable: a deniable group's membership keys (first at creation, the
// next with each Commit in its transaction, the old one superseded), its
// messages without sender read with no membership window, its Welcomes
// stored under KeyPackageRefs and deletable only by their KeyPackage's
// owner, remote trees without uploader, and retention: messages by age
// only, superseded keys after the retention, never the group for want of
// members, never the current key.
func testDeniable(t *testing.T, s ds.Store) {
	key := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	g := ds.GroupRecord{ID: []byte("dg"), Mode: ds.ModeDeniable, CreatedAt: t0, MembershipKey: key(0)}
	if err := s.CreateGroup(ctx(), g, nil); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	if ms, err := s.Members(ctx(), g.ID); err != nil || len(ms) != 0 {
		t.Fatalf("Members = %v, %v; want none", ms, err)
	}
	k, err := s.MembershipKey(ctx(), g.ID, 0)
	if err != nil || !bytes.Equal(k.Key, key(0)) || k.StartSeq != 1 || !k.CreatedAt.Equal(t0) || !k.SupersededAt.IsZero() {
		t.Fatalf("MembershipKey(0) = %+v, %v", k, err)
	}
	if _, err := s.MembershipKey(ctx(), g.ID, 1); !errors.Is(err, ds.ErrNotFound) {
		t.Fatalf("MembershipKey(1) before any Commit: %v", err)
	}
	if _, err := s.MembershipKey(ctx(), []byte("nope"), 0); !errors.Is(err, ds.ErrNotFound) {
		t.Fatalf("MembershipKey of a missing group: %v", err)
	}

	// Messages with no sender, no member needed.
	mustClient(t, s, "dj", "dj")
	mustClient(t, s, "dx", "dx")
	kpJ, kpLR := kp("dj", false), kp("dj", true)
	mustAddKPs(t, s, kpJ)
	mustAddKPs(t, s, kpLR)
	mustAccept(t, s, msg("dg", 0, mls.ContentTypeApplication, "", "hello"))
	c := msg("dg", 0, mls.ContentTypeCommit, "", "commit 0")
	t1 := t0.Add(time.Minute)
	c.AcceptedAt = t1
	c.NextMembershipKey = key(1)
	c.ConsumeKeyPackages = [][]byte{kpJ.Ref}
	c.DeniableWelcome = &ds.DeniableWelcome{Refs: [][]byte{kpJ.Ref, kpLR.Ref}, Epoch: 1, Data: []byte("den welcome"), ExpiresAt: t0.Add(2 * time.Hour)}
	r := mustAccept(t, s, c)
	if r.GroupSeq != 2 {
		t.Fatalf("Commit at seq %d", r.GroupSeq)
	}
	k0, err := s.MembershipKey(ctx(), g.ID, 0)
	if err != nil || !k0.SupersededAt.Equal(t1) {
		t.Fatalf("key 0 after the Commit = %+v, %v; want superseded at %v", k0, err, t1)
	}
	k1, err := s.MembershipKey(ctx(), g.ID, 1)
	if err != nil || !bytes.Equal(k1.Key, key(1)) || k1.StartSeq != 2 || !k1.SupersededAt.IsZero() {
		t.Fatalf("key 1 = %+v, %v", k1, err)
	}
	// A Commit that loses its epoch stores no key.
	lost := msg("dg", 0, mls.ContentTypeCommit, "", "late commit")
	lost.NextMembershipKey = key(9)
	if _, err := s.AcceptMessage(ctx(), lost); err == nil {
		t.Fatal("a second Commit for epoch 0 was accepted")
	}
	if k1, _ := s.MembershipKey(ctx(), g.ID, 1); !bytes.Equal(k1.Key, key(1)) {
		t.Fatal("a refused Commit replaced the key")
	}
	envs, err := s.GroupMessages(ctx(), ds.MessageQuery{GroupID: g.ID, ClientID: "dx", FromSeq: 2, Limit: 10})
	if err != nil || len(envs) != 1 || envs[0].GroupSeq != 2 || envs[0].Sender != "" || string(envs[0].Data) != "dg|0|3||commit 0" {
		t.Fatalf("GroupMessages from 2 = %+v, %v", envs, err)
	}
	if envs, _ := s.GroupMessages(ctx(), ds.MessageQuery{GroupID: g.ID, FromSeq: 0, Limit: 10, MaxBytes: 1}); len(envs) != 1 {
		t.Fatalf("GroupMessages with a 1-byte budget: %d messages, want 1", len(envs))
	}

	// The Welcome is found through the joiner's KeyPackages: twice (two
	// refs), with no group and no Commit.
	ws, err := s.DeniableWelcomes(ctx(), "dj")
	if err != nil || len(ws) != 2 {
		t.Fatalf("DeniableWelcomes(dj) = %d, %v", len(ws), err)
	}
	for _, w := range ws {
		if w.GroupID != nil || w.CommitSeq != 0 || w.Epoch != 1 || string(w.Data) != "den welcome" {
			t.Fatalf("deniable welcome %+v", w)
		}
	}
	if ws, _ := s.DeniableWelcomes(ctx(), "dx"); len(ws) != 0 {
		t.Fatal("another client sees the Welcome")
	}
	if n, err := s.DeleteDeniableWelcomes(ctx(), "dx", [][]byte{kpJ.Ref}); err != nil || n != 0 {
		t.Fatalf("another client deleted %d Welcomes (%v)", n, err)
	}
	if n, err := s.DeleteDeniableWelcomes(ctx(), "dj", [][]byte{kpJ.Ref}); err != nil || n != 1 {
		t.Fatalf("DeleteDeniableWelcomes = %d, %v; want 1", n, err)
	}
	if ws, _ := s.DeniableWelcomes(ctx(), "dj"); len(ws) != 1 || !bytes.Equal(ws[0].KeyPackageRef, kpLR.Ref) {
		t.Fatalf("after the ack: %+v", ws)
	}
	if got, _ := s.KeyPackagesByRef(ctx(), [][]byte{kpJ.Ref}); len(got) != 1 || !got[0].Consumed() {
		t.Fatal("the Welcome's KeyPackage is not consumed")
	}

	// Remote trees without an uploader; only for the current epoch.
	if err := s.PutDeniableRemoteTree(ctx(), ds.RemoteTreePut{GroupID: g.ID, Tree: ds.RemoteTree{Epoch: 1, Blob: []byte("t1")}, At: t1}); err != nil {
		t.Fatalf("PutDeniableRemoteTree: %v", err)
	}
	var we *ds.WrongEpochError
	if err := s.PutDeniableRemoteTree(ctx(), ds.RemoteTreePut{GroupID: g.ID, Tree: ds.RemoteTree{Epoch: 0, Blob: []byte("t0")}, At: t1}); !errors.As(err, &we) {
		t.Fatalf("PutDeniableRemoteTree for an old epoch: %v", err)
	}
	if err := s.PutDeniableRemoteTree(ctx(), ds.RemoteTreePut{GroupID: []byte("nope"), Tree: ds.RemoteTree{Epoch: 0, Blob: []byte("x")}, At: t1}); !errors.Is(err, ds.ErrNotFound) {
		t.Fatalf("PutDeniableRemoteTree for a missing group: %v", err)
	}
	if _, trees, err := s.RemoteTrees(ctx(), g.ID); err != nil || len(trees) != 1 || string(trees[0].Blob) != "t1" {
		t.Fatalf("RemoteTrees = %v, %v", trees, err)
	}

	// Retention: nothing goes before it; the group is never deleted for
	// want of members.
	prune := func(expireBefore, now time.Time) {
		t.Helper()
		p := ds.PruneParams{Now: now, ExpireBefore: expireBefore, Limit: 1000}
		for {
			r, err := s.PruneMessages(ctx(), p)
			if err != nil {
				t.Fatal(err)
			}
			if p.From = r.Next; p.From == nil {
				break
			}
		}
		if _, err := s.PruneKeyPackages(ctx(), p); err != nil {
			t.Fatal(err)
		}
	}
	prune(t0, t0)
	if envs, _ := s.GroupMessages(ctx(), ds.MessageQuery{GroupID: g.ID, Limit: 10}); len(envs) != 2 {
		t.Fatalf("pruning before the retention left %d messages, want 2", len(envs))
	}
	if _, err := s.Group(ctx(), g.ID); err != nil {
		t.Fatalf("the deniable group was deleted: %v", err)
	}
	// Past the retention of the first message, not of the Commit nor of
	// key 0's supersession (both at t1): only the first message goes.
	prune(t1, t0.Add(time.Hour))
	if envs, _ := s.GroupMessages(ctx(), ds.MessageQuery{GroupID: g.ID, Limit: 10}); len(envs) != 1 || envs[0].GroupSeq != 2 {
		t.Fatalf("left %+v, want the Commit", envs)
	}
	if _, err := s.MembershipKey(ctx(), g.ID, 0); err != nil {
		t.Fatalf("key 0 went before its retention: %v", err)
	}
	prune(t1.Add(time.Microsecond), t0.Add(time.Hour))
	if envs, _ := s.GroupMessages(ctx(), ds.MessageQuery{GroupID: g.ID, Limit: 10}); len(envs) != 0 {
		t.Fatalf("past the retention %d messages are left", len(envs))
	}
	if mark, err := s.PrunedSeq(ctx(), g.ID); err != nil || mark != 2 {
		t.Fatalf("PrunedSeq = %d, %v; want 2", mark, err)
	}
	if _, err := s.MembershipKey(ctx(), g.ID, 0); !errors.Is(err, ds.ErrNotFound) {
		t.Fatalf("key 0, superseded before the retention, is still there: %v", err)
	}
	if _, err := s.MembershipKey(ctx(), g.ID, 1); err != nil {
		t.Fatalf("the current key was pruned: %v", err)
	}
	if _, err := s.Group(ctx(), g.ID); err != nil {
		t.Fatalf("the deniable group was deleted: %v", err)
	}
	// The Welcome goes once it expired.
	prune(t0, t0.Add(3*time.Hour))
	if ws, _ := s.DeniableWelcomes(ctx(), "dj"); len(ws) != 0 {
		t.Fatalf("%d expired Welcomes left", len(ws))
	}
}
