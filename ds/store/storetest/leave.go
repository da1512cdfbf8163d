package storetest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// testLeave covers Store.Leave: the window closes at the group's last
// message, a second Leave is refused, a later Commit that removes the
// client changes nothing, and the client's pending Welcomes of the group
// go.
func testLeave(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b")
	mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "a", "1"))
	mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "b", "2"))

	until, err := s.Leave(ctx(), []byte("g"), "b")
	if err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if until != 2 {
		t.Errorf("Leave = %d, want 2 (the group's last GroupSeq)", until)
	}
	mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "a", "3"))
	if got := fmt.Sprint(visible(t, s, "g", "b")); got != "[1 2]" {
		t.Errorf("b sees %s after leaving at 2, want [1 2]", got)
	}
	if m, _ := s.Members(ctx(), []byte("g")); fmt.Sprint(m) != "[a]" {
		t.Errorf("Members = %v, want [a]", m)
	}
	if w, _ := s.Memberships(ctx(), []byte("g"), "b"); len(w) != 1 || w[0] != (ds.MembershipWindow{FromSeq: 1, UntilSeq: 2}) {
		t.Errorf("b's windows = %+v, want [{1 2}]", w)
	}
	// The cursor stays: b can still acknowledge what it received.
	if cur, _ := s.Cursors(ctx(), "b"); len(cur) != 1 || len(cur[0].Windows) != 1 || cur[0].Windows[0].UntilSeq != 2 {
		t.Errorf("Cursors(b) = %+v, want g with the window {1 2}", cur)
	}
	if err := s.Ack(ctx(), "b", []byte("g"), 2); err != nil {
		t.Errorf("Ack after leaving: %v", err)
	}
	// b may not send any more.
	p := msg("g", 0, mls.ContentTypeApplication, "b", "after")
	p.RequireMember = true
	if _, err := s.AcceptMessage(ctx(), p); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("sending after leaving: %v, want ErrNotMember", err)
	}

	// Leaving again, leaving a group one never was in, an unknown group.
	if _, err := s.Leave(ctx(), []byte("g"), "b"); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("second Leave: %v, want ErrNotMember", err)
	}
	if _, err := s.Leave(ctx(), []byte("g"), "stranger"); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("Leave by a stranger: %v, want ErrNotMember", err)
	}
	if _, err := s.Leave(ctx(), []byte("nope"), "b"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("Leave of an unknown group: %v, want ErrNotFound", err)
	}
	if w, _ := s.Memberships(ctx(), []byte("g"), "b"); len(w) != 1 || w[0].UntilSeq != 2 {
		t.Errorf("a refused Leave moved the window: %+v", w)
	}

	// The Commit that removes b comes later: accepted, and b's window
	// stays where it was.
	c := msg("g", 0, mls.ContentTypeCommit, "a", "remove b")
	c.Removed = []string{"b"}
	mustAccept(t, s, c) // seq 4
	if w, _ := s.Memberships(ctx(), []byte("g"), "b"); len(w) != 1 || w[0] != (ds.MembershipWindow{FromSeq: 1, UntilSeq: 2}) {
		t.Errorf("b's windows after the Commit that removes it = %+v, want [{1 2}]", w)
	}
	if got := fmt.Sprint(visible(t, s, "g", "b")); got != "[1 2]" {
		t.Errorf("b sees %s after the late removal, want [1 2]", got)
	}
	// The same in a batch.
	if ba, ok := s.(ds.BatchAccepter); ok {
		c := msg("g", 1, mls.ContentTypeCommit, "a", "remove b again")
		c.Removed = []string{"b"}
		res, errs := ba.AcceptMessages(ctx(), []ds.AcceptParams{msg("g", 1, mls.ContentTypeApplication, "a", "5"), c})
		for i, err := range errs {
			if err != nil {
				t.Fatalf("batch item %d: %v", i, err)
			}
		}
		if res[1].GroupSeq != 6 {
			t.Errorf("batched Commit got seq %d, want 6", res[1].GroupSeq)
		}
		if w, _ := s.Memberships(ctx(), []byte("g"), "b"); len(w) != 1 || w[0] != (ds.MembershipWindow{FromSeq: 1, UntilSeq: 2}) {
			t.Errorf("b's windows after a batched Commit that removes it = %+v, want [{1 2}]", w)
		}
	}

	// Added again later, b gets a new window.
	head, _ := s.Group(ctx(), []byte("g"))
	c = msg("g", head.Epoch, mls.ContentTypeCommit, "a", "re-add b")
	c.Added = []string{"b"}
	re := mustAccept(t, s, c)
	mustAccept(t, s, msg("g", head.Epoch+1, mls.ContentTypeApplication, "a", "after re-add"))
	if w, _ := s.Memberships(ctx(), []byte("g"), "b"); len(w) != 2 || !w[1].Open() || w[1].FromSeq != re.GroupSeq+1 {
		t.Errorf("b's windows after being added again = %+v", w)
	}
	if got, want := fmt.Sprint(visible(t, s, "g", "b")), fmt.Sprint([]uint64{1, 2, re.GroupSeq + 1}); got != want {
		t.Errorf("b sees %s, want %s", got, want)
	}
}

// testLeaveEmptyWindow covers leaving before any message of the window:
// the window goes, since it held nothing.
func testLeaveEmptyWindow(t *testing.T, s ds.Store) {
	// The creator of a group without messages.
	newGroup(t, s, "h", 0, "a")
	if until, err := s.Leave(ctx(), []byte("h"), "a"); err != nil || until != 0 {
		t.Fatalf("Leave of an empty group = %d, %v; want 0", until, err)
	}
	if w, _ := s.Memberships(ctx(), []byte("h"), "a"); len(w) != 0 {
		t.Errorf("windows after leaving an empty group = %+v, want none", w)
	}
	if m, _ := s.Members(ctx(), []byte("h")); len(m) != 0 {
		t.Errorf("Members = %v, want none", m)
	}
	mustAccept(t, s, msg("h", 0, mls.ContentTypeApplication, "x", "later"))
	if got := visible(t, s, "h", "a"); len(got) != 0 {
		t.Errorf("a sees %v of a group it left before its first message", got)
	}

	// A joiner that leaves right after the Commit that added it; its
	// Welcome of that group goes too, another group's stays.
	mustClient(t, s, "j", "j")
	k1, k2 := kp("j", false), kp("j", false)
	mustAddKPs(t, s, k1, k2)
	newGroup(t, s, "g", 0, "a")
	newGroup(t, s, "other", 0, "a")
	for _, g := range []struct {
		id  string
		ref []byte
	}{{"g", k1.Ref}, {"other", k2.Ref}} {
		c := msg(g.id, 0, mls.ContentTypeCommit, "a", "add j")
		c.Added = []string{"j"}
		c.Welcome = []byte("welcome to " + g.id)
		c.WelcomeTo = []ds.WelcomeRoute{{ClientID: "j", KeyPackageRef: g.ref}}
		mustAccept(t, s, c)
	}
	if ws, _ := s.PendingWelcomes(ctx(), "j"); len(ws) != 2 {
		t.Fatalf("PendingWelcomes(j) = %d, want 2", len(ws))
	}
	until, err := s.Leave(ctx(), []byte("g"), "j")
	if err != nil || until != 1 {
		t.Fatalf("Leave = %d, %v; want 1", until, err)
	}
	if w, _ := s.Memberships(ctx(), []byte("g"), "j"); len(w) != 0 {
		t.Errorf("j's windows = %+v, want none (it received nothing)", w)
	}
	ws, _ := s.PendingWelcomes(ctx(), "j")
	if len(ws) != 1 || string(ws[0].GroupID) != "other" {
		t.Errorf("PendingWelcomes(j) after leaving g = %+v, want only other's", ws)
	}
	mustAccept(t, s, msg("g", 1, mls.ContentTypeApplication, "a", "after j left"))
	if got := visible(t, s, "g", "j"); len(got) != 0 {
		t.Errorf("j sees %v of g", got)
	}
	if _, err := s.Leave(ctx(), []byte("g"), "j"); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("second Leave: %v, want ErrNotMember", err)
	}
}
