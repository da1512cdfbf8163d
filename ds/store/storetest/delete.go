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

// testDeleteClient deletes a client that did everything a client does and
// checks, through the Store's own reads, that nothing names it any more
// while the other members keep their group and its history.
func testDeleteClient(t *testing.T, s ds.Store) {
	for _, id := range []string{"alice", "bob", "carol"} {
		mustClient(t, s, id, id)
	}
	// bob's KeyPackages: one alice claims and adds to g, one unclaimed,
	// one last-resort.
	kb1, kb2, kbLR := kp("bob", false), kp("bob", false), kp("bob", true)
	mustAddKPs(t, s, kb1, kb2, kbLR)
	// carol's KeyPackages: bob claims one.
	kc1, kc2 := kp("carol", false), kp("carol", false)
	mustAddKPs(t, s, kc1, kc2)
	if c := claimOne(t, s, "alice", "bob", t0); c.KeyPackage == nil || !bytes.Equal(c.KeyPackage.Ref, kb1.Ref) {
		t.Fatalf("claim of bob's KeyPackage = %+v", c)
	}
	if c := claimOne(t, s, "bob", "carol", t0); c.KeyPackage == nil || !bytes.Equal(c.KeyPackage.Ref, kc1.Ref) {
		t.Fatalf("claim of carol's KeyPackage = %+v", c)
	}

	// g: alice creates it, adds bob, both talk; bob leaves and is added
	// again (two windows).
	newGroup(t, s, "g", 0, "alice")
	add := msg("g", 0, mls.ContentTypeCommit, "alice", "add bob")
	add.Added = []string{"bob"}
	add.Welcome = []byte("welcome bob to g")
	add.WelcomeTo = []ds.WelcomeRoute{{ClientID: "bob", KeyPackageRef: kb1.Ref}}
	add.ConsumeKeyPackages = [][]byte{kb1.Ref}
	mustAccept(t, s, add)
	mustAccept(t, s, msg("g", 1, mls.ContentTypeApplication, "bob", "hi alice"))
	mustAccept(t, s, msg("g", 1, mls.ContentTypeApplication, "alice", "hi bob"))
	if _, err := s.Leave(ctx(), []byte("g"), "bob"); err != nil {
		t.Fatal(err)
	}
	readd := msg("g", 1, mls.ContentTypeCommit, "alice", "add bob again")
	readd.Added = []string{"bob"}
	mustAccept(t, s, readd)
	mustAccept(t, s, msg("g", 2, mls.ContentTypeApplication, "bob", "back"))
	link := joinLink("g", "bob-link", t0, time.Hour)
	link.CreatedBy = "bob"
	if err := s.CreateJoinLink(ctx(), link, 10); err != nil {
		t.Fatal(err)
	}
	aliceLink := joinLink("g", "alice-link", t0, time.Hour)
	aliceLink.CreatedBy = "alice"
	if err := s.CreateJoinLink(ctx(), aliceLink, 10); err != nil {
		t.Fatal(err)
	}

	// solo: bob's own group, with a message, a remote tree and a join link.
	newGroup(t, s, "solo", 0, "bob")
	mustAccept(t, s, msg("solo", 0, mls.ContentTypeApplication, "bob", "note to self"))
	if err := s.PutRemoteTree(ctx(), ds.RemoteTreePut{GroupID: []byte("solo"), Sender: "bob",
		Tree: ds.RemoteTree{Epoch: 0, Blob: []byte("tree")}, At: t0}); err != nil {
		t.Fatal(err)
	}
	soloLink := joinLink("solo", "solo-link", t0, time.Hour)
	soloLink.CreatedBy = "bob"
	if err := s.CreateJoinLink(ctx(), soloLink, 10); err != nil {
		t.Fatal(err)
	}

	// shared: bob creates it with carol; one Welcome for bob and alice
	// (bob's route goes, alice's stays).
	ka := kp("alice", false)
	mustAddKPs(t, s, ka)
	kb3 := kp("bob", false)
	mustAddKPs(t, s, kb3)
	newGroup(t, s, "shared", 0, "bob", "carol")
	w := msg("other", 0, mls.ContentTypeCommit, "carol", "add alice and bob")
	newGroup(t, s, "other", 0, "carol")
	w.Added = []string{"alice", "bob"}
	w.Welcome = []byte("welcome alice and bob")
	w.WelcomeTo = []ds.WelcomeRoute{{ClientID: "alice", KeyPackageRef: ka.Ref}, {ClientID: "bob", KeyPackageRef: kb3.Ref}}
	w.ConsumeKeyPackages = [][]byte{ka.Ref, kb3.Ref}
	mustAccept(t, s, w)
	if err := s.PutRemoteTree(ctx(), ds.RemoteTreePut{GroupID: []byte("shared"), Sender: "bob",
		Tree: ds.RemoteTree{Epoch: 0, Blob: []byte("shared tree")}, At: t0}); err != nil {
		t.Fatal(err)
	}

	// alone: bob's group, which he left last.
	newGroup(t, s, "alone", 0, "bob")
	mustAccept(t, s, msg("alone", 0, mls.ContentTypeApplication, "bob", "anyone?"))
	if _, err := s.Leave(ctx(), []byte("alone"), "bob"); err != nil {
		t.Fatal(err)
	}

	// bob's daily quota counters.
	day := ds.UsageDay(t0)
	if err := s.AddDailyUsage(ctx(), []ds.DailyUsage{{ClientID: "bob", Day: day, Groups: 3, Bytes: 100}, {ClientID: "alice", Day: day, Groups: 1}}); err != nil {
		t.Fatalf("AddDailyUsage: %v", err)
	}

	// A device link bob made.
	mustLink(t, s, "bob's link", "bob", "bob", time.Hour)

	d, err := s.DeleteClient(ctx(), "bob")
	if err != nil {
		t.Fatalf("DeleteClient: %v", err)
	}
	if d.UserID != "bob" || fmt.Sprintf("%q", d.Groups) != `["g" "other" "shared" "solo"]` || fmt.Sprintf("%q", d.EmptiedGroups) != `["alone" "solo"]` {
		t.Errorf("DeleteClient = user %q, groups %q, emptied %q; want bob, [g other shared solo], [alone solo]", d.UserID, d.Groups, d.EmptiedGroups)
	}
	if m, _ := s.Members(ctx(), []byte("solo")); len(m) != 0 {
		t.Errorf("Members(solo) = %v, want none", m)
	}
	mustDeleteEmptyGroup(t, s, "solo")
	mustDeleteEmptyGroup(t, s, "alone")

	// The registration, KeyPackages, windows, cursors, Welcomes go.
	if _, err := s.Client(ctx(), "bob"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("Client(bob) after deletion: %v, want ErrNotFound", err)
	}
	if cs, _ := s.ClientsOfUser(ctx(), "bob"); len(cs) != 0 {
		t.Errorf("ClientsOfUser(bob) = %+v, want none", cs)
	}
	if kps, _ := s.KeyPackages(ctx(), "bob"); len(kps) != 0 {
		t.Errorf("bob's KeyPackages after deletion: %d", len(kps))
	}
	if kps, _ := s.KeyPackagesByRef(ctx(), [][]byte{kb1.Ref, kb2.Ref, kbLR.Ref, kb3.Ref}); len(kps) != 0 {
		t.Errorf("KeyPackagesByRef finds %d of bob's KeyPackages, want none", len(kps))
	}
	if kps, _ := s.KeyPackagesByRef(ctx(), [][]byte{kc1.Ref}); len(kps) != 1 || kps[0].ClaimedBy != "" || !kps[0].Claimed() {
		t.Errorf("carol's KeyPackage that bob claimed = %+v; want it claimed, naming no claimer", kps)
	}
	if cur, _ := s.Cursors(ctx(), "bob"); len(cur) != 0 {
		t.Errorf("Cursors(bob) = %+v, want none", cur)
	}
	if ws, _ := s.PendingWelcomes(ctx(), "bob"); len(ws) != 0 {
		t.Errorf("PendingWelcomes(bob) = %+v, want none", ws)
	}
	if ws, _ := s.PendingWelcomes(ctx(), "alice"); len(ws) != 1 || string(ws[0].Data) != "welcome alice and bob" {
		t.Errorf("alice's Welcome shared with bob = %+v; want it kept", ws)
	}
	for _, g := range []string{"g", "shared", "other"} {
		if w, _ := s.Memberships(ctx(), []byte(g), "bob"); len(w) != 0 {
			t.Errorf("bob's windows in %s = %+v, want none", g, w)
		}
		m, err := s.Members(ctx(), []byte(g))
		if err != nil || len(m) == 0 || containsString(m, "bob") {
			t.Errorf("Members(%s) = %v, %v; want the others, without bob", g, m, err)
		}
		head, err := s.Group(ctx(), []byte(g))
		if err != nil {
			t.Fatalf("Group(%s): %v", g, err)
		}
		if head.Creator == "bob" {
			t.Errorf("group %s still names bob as its creator", g)
		}
	}
	if head, _ := s.Group(ctx(), []byte("shared")); head.Creator != ds.DeletedSender {
		t.Errorf("creator of shared = %q, want %q", head.Creator, ds.DeletedSender)
	}
	if u, err := s.DailyUsage(ctx(), "bob", day); err != nil || u.Groups != 0 || u.Bytes != 0 {
		t.Errorf("bob's quota counters after deletion = %+v, %v; want none", u, err)
	}
	if u, _ := s.DailyUsage(ctx(), "alice", day); u.Groups != 1 {
		t.Errorf("alice's quota counters = %+v, want kept", u)
	}
	// Its messages stay for the others, without its name.
	envs, err := s.Messages(ctx(), ds.MessageQuery{GroupID: []byte("g"), ClientID: "alice", FromSeq: 1, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(envs) != 5 {
		t.Errorf("alice sees %d messages of g after bob's deletion, want 5", len(envs))
	}
	for _, e := range envs {
		if e.Sender == "bob" {
			t.Errorf("message %d still names bob as its sender", e.GroupSeq)
		}
		if bytes.Contains(e.Data, []byte("hi alice")) && e.Sender != ds.DeletedSender {
			t.Errorf("bob's message has sender %q, want %q", e.Sender, ds.DeletedSender)
		}
	}
	// Its join links go, the others' stay.
	links, _ := s.JoinLinks(ctx(), []byte("g"), t0)
	if len(links) != 1 || links[0].ID != "alice-link" {
		t.Errorf("join links of g = %+v, want alice's only", links)
	}
	if _, err := s.JoinLinkByToken(ctx(), []byte("g"), link.TokenHash, t0); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("bob's join link still admits: %v", err)
	}
	// The group whose last member it was goes, with everything of it.
	if _, err := s.Group(ctx(), []byte("solo")); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("Group(solo) after its last member was deleted: %v, want ErrNotFound", err)
	}
	if _, _, err := s.RemoteTrees(ctx(), []byte("solo")); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("RemoteTrees(solo): %v, want ErrNotFound", err)
	}
	if _, err := s.JoinLinkByToken(ctx(), []byte("solo"), soloLink.TokenHash, t0); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("solo's join link still admits: %v", err)
	}
	if _, trees, err := s.RemoteTrees(ctx(), []byte("shared")); err != nil || len(trees) != 1 {
		t.Errorf("shared's remote tree = %d, %v; want it kept", len(trees), err)
	}
	// Its device link admits nobody.
	r := registration("bob-tablet", "bob")
	r.DeviceLink = linkHash("bob's link")
	if err := s.RegisterClient(ctx(), r); err == nil {
		// The user id is free again, so the registration may succeed as
		// the user's first client; but not through the link.
		if c, _ := s.ClientsOfUser(ctx(), "bob"); len(c) != 1 {
			t.Errorf("ClientsOfUser(bob) = %+v", c)
		}
	}

	// A later Commit that removes bob's leaf is accepted and recreates
	// nothing; so is a message of the others.
	rm := msg("g", 2, mls.ContentTypeCommit, "alice", "remove bob")
	rm.Removed = []string{"bob"}
	mustAccept(t, s, rm)
	mustAccept(t, s, msg("g", 3, mls.ContentTypeApplication, "alice", "bye bob"))
	if w, _ := s.Memberships(ctx(), []byte("g"), "bob"); len(w) != 0 {
		t.Errorf("the removal Commit recreated bob's windows: %+v", w)
	}
	if cur, _ := s.Cursors(ctx(), "bob"); len(cur) != 0 {
		t.Errorf("the removal Commit recreated bob's cursors: %+v", cur)
	}

	// Deleting again: ErrNotFound, and an unknown client too.
	if _, err := s.DeleteClient(ctx(), "bob"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("second DeleteClient: %v, want ErrNotFound", err)
	}
	if _, err := s.DeleteClient(ctx(), "nobody"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("DeleteClient(nobody): %v, want ErrNotFound", err)
	}
	// The others are untouched.
	if kps, _ := s.KeyPackages(ctx(), "carol"); len(kps) != 1 || !bytes.Equal(kps[0].Ref, kc2.Ref) {
		t.Errorf("carol's KeyPackages = %d, want her unclaimed one", len(kps))
	}
	if cur, _ := s.Cursors(ctx(), "alice"); len(cur) != 2 {
		t.Errorf("Cursors(alice) = %d groups, want 2 (g, other)", len(cur))
	}
}

// testDeleteClientFormerMember covers a client whose only trace in a group
// is a message it sent before a window that Leave deleted (it joined by
// external Commit and left before anything else came), and a client that
// left every group.
func testDeleteClientFormerMember(t *testing.T, s ds.Store) {
	mustClient(t, s, "alice", "alice")
	mustClient(t, s, "eve", "eve")
	newGroup(t, s, "g", 0, "alice")
	join := msg("g", 0, mls.ContentTypeCommit, "eve", "external join")
	join.Added = []string{"eve"}
	mustAccept(t, s, join)
	if _, err := s.Leave(ctx(), []byte("g"), "eve"); err != nil {
		t.Fatal(err)
	}
	d, err := s.DeleteClient(ctx(), "eve")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Groups) != 0 || len(d.EmptiedGroups) != 0 {
		t.Errorf("DeleteClient of a former member = %+v; want no groups", d)
	}
	envs, err := s.Messages(ctx(), ds.MessageQuery{GroupID: []byte("g"), ClientID: "alice", FromSeq: 1, Limit: 10})
	if err != nil || len(envs) != 1 {
		t.Fatalf("Messages = %d, %v; want the join", len(envs), err)
	}
	if envs[0].Sender != ds.DeletedSender {
		t.Errorf("the external join of a deleted client names %q, want %q", envs[0].Sender, ds.DeletedSender)
	}
	if _, err := s.Group(ctx(), []byte("g")); err != nil {
		t.Errorf("a group with members left went with a former member: %v", err)
	}

	// The last member of a group with a former member deletes itself:
	// the group goes.
	mustClient(t, s, "frank", "frank")
	newGroup(t, s, "h", 0, "alice", "frank")
	mustAccept(t, s, msg("h", 0, mls.ContentTypeApplication, "alice", "1"))
	if _, err := s.Leave(ctx(), []byte("h"), "alice"); err != nil {
		t.Fatal(err)
	}
	if d, err := s.DeleteClient(ctx(), "frank"); err != nil || fmt.Sprintf("%q", d.EmptiedGroups) != `["h"]` {
		t.Errorf("DeleteClient(frank) = %+v, %v; want h emptied", d, err)
	}
	mustDeleteEmptyGroup(t, s, "h")
	if _, err := s.Group(ctx(), []byte("h")); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("Group(h): %v, want ErrNotFound", err)
	}
	if cur, _ := s.Cursors(ctx(), "alice"); len(cur) != 1 {
		t.Errorf("alice's cursors = %+v; want g only (h is gone)", cur)
	}
}

// mustDeleteEmptyGroup deletes a group its last member's deletion
// emptied, as the Service does.
func mustDeleteEmptyGroup(t *testing.T, s ds.Store, id string) {
	t.Helper()
	for i := 0; ; i++ {
		done, err := s.DeleteGroupIfEmpty(ctx(), []byte(id), 1000)
		if err != nil {
			t.Fatalf("DeleteGroupIfEmpty(%s): %v", id, err)
		}
		if done {
			return
		}
		if i > 100 {
			t.Fatalf("DeleteGroupIfEmpty(%s) never done", id)
		}
	}
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
