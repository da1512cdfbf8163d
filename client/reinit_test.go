package client

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"
)

// threeMemberGroup makes a group of alice (its creator, leaf 0), bob and
// carol, in opaque mode if asked, and waits until everyone is in.
func threeMemberGroup(t *testing.T, e *testEnv, opaque bool) (alice, bob, carol *tclient, g *Group) {
	t.Helper()
	alice, bob, carol = e.client("alice"), e.client("bob"), e.client("carol")
	return alice, bob, carol, group3(t, e, GroupOptions{Opaque: opaque}, alice, bob, carol)
}

// creatorGone makes a group of alice (its creator, her state in aliceDir),
// bob and carol (their clients opened with cfg), waits until everyone is
// in, and closes alice's client. It returns the group's id.
func creatorGone(t *testing.T, e *testEnv, aliceDir string, cfg func(*Config)) (bob, carol *tclient, gid []byte) {
	t.Helper()
	alice := e.open("alice", aliceDir)
	bob, carol = e.open("bob", t.TempDir(), cfg), e.open("carol", t.TempDir(), cfg)
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	if err := alice.Close(); err != nil {
		t.Fatal(err)
	}
	return bob, carol, g.ID()
}

// talk has each client send one message in gid and waits until every
// other one got it.
func talk(t *testing.T, gid []byte, cs ...*tclient) {
	t.Helper()
	ctx := ctxT(t)
	before := map[string]int{}
	for _, c := range cs {
		before[c.ID()] = len(c.messages(gid))
	}
	for _, c := range cs {
		g := c.Group(gid)
		if g == nil {
			t.Fatalf("%s holds no group %x", c.ID(), gid)
		}
		if _, err := g.Send(ctx, []byte("hi from "+c.ID())); err != nil {
			t.Fatalf("%s sends in %x: %v", c.ID(), gid, err)
		}
	}
	for _, c := range cs {
		got := c.waitMessages(gid, before[c.ID()]+len(cs)-1)
		for _, o := range cs {
			if o != c && !slices.Contains(got, o.ID()+":hi from "+o.ID()) {
				t.Fatalf("%s did not get %s's message: %q", c.ID(), o.ID(), got)
			}
		}
	}
}

// testReInit: one member (bob, who is not the lowest leaf, or alice, who
// is) reinitializes the group; everyone gets EventReInit, alice (leaf 0)
// creates the successor, the two others
// join it from the Welcome with the old group's resumption PSK, and all
// three get EventJoined naming the old group, agree on the
// epoch_authenticator and exchange messages in the successor. The old
// group stays closed.
func testReInit(t *testing.T, opaque bool, by string) {
	e := startEnv(t)
	alice, bob, carol, g := threeMemberGroup(t, e, opaque)
	old := g.ID()
	ctx := ctxT(t)
	next := []byte("successor of " + string(old))
	from := map[string]*tclient{"alice": alice, "bob": bob}[by]
	got, err := from.Group(old).ReInit(ctx, ReInitOptions{GroupID: next})
	if err != nil {
		t.Fatalf("ReInit: %v", err)
	}
	if !bytes.Equal(got, next) {
		t.Fatalf("ReInit returned %x, want %x", got, next)
	}
	for _, c := range []*tclient{alice, bob, carol} {
		i := c.waitFor("reinit", 0, kind(EventReInit, old))
		if ev := c.snapshot()[i]; ev.ReInit == nil || !bytes.Equal(ev.ReInit.GroupID, next) {
			t.Fatalf("%s: EventReInit %+v does not name the successor", c.ID(), ev.ReInit)
		}
		i = c.waitFor("joined successor", 0, kind(EventJoined, next))
		ev := c.snapshot()[i]
		if !bytes.Equal(ev.Predecessor, old) || ev.Epoch != 1 || len(ev.Members) != 3 {
			t.Fatalf("%s: EventJoined of the successor: predecessor %x epoch %d members %v", c.ID(), ev.Predecessor, ev.Epoch, ev.Members)
		}
	}
	auth := alice.Group(next).EpochAuthenticator()
	for _, c := range []*tclient{bob, carol} {
		if !bytes.Equal(c.Group(next).EpochAuthenticator(), auth) {
			t.Fatalf("%s and alice disagree on the successor's epoch_authenticator", c.ID())
		}
	}
	talk(t, next, alice, bob, carol)
	if err := carol.Group(next).Update(ctx); err != nil {
		t.Fatalf("Commit in the successor: %v", err)
	}
	waitEpoch(t, alice, next, 2)
	waitEpoch(t, bob, next, 2)
	talk(t, next, alice, bob, carol)
	if _, err := alice.Group(old).Send(ctx, []byte("late")); err == nil {
		t.Fatal("a message was sent in the closed group")
	}
	if id, ok, err := carol.Group(old).Successor(ctx); err != nil || !ok || !bytes.Equal(id, next) {
		t.Fatalf("Successor of the old group: %x, %v, %v", id, ok, err)
	}
	for _, c := range []*tclient{alice, bob, carol} {
		c.noUndecryptable()
	}
}

func TestReInitTransparent(t *testing.T)        { testReInit(t, false, "bob") }
func TestReInitTransparentCreator(t *testing.T) { testReInit(t, false, "alice") }
func TestReInitOpaque(t *testing.T)             { testReInit(t, true, "bob") }

// TestBranch: alice branches a subgroup with bob out of the group of
// three; bob joins it on his own (EventJoined naming the old group), carol
// is not in it, and both groups go on.
func TestBranch(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol, g := threeMemberGroup(t, e, false)
	ctx := ctxT(t)
	if _, err := g.Branch(ctx, nil, "dave"); err == nil {
		t.Fatal("a branch with a non-member was made")
	}
	sub, err := g.Branch(ctx, []byte("branch"), "bob")
	if err != nil {
		t.Fatalf("Branch: %v", err)
	}
	i := bob.waitFor("joined branch", 0, kind(EventJoined, sub.ID()))
	if ev := bob.snapshot()[i]; !bytes.Equal(ev.Predecessor, g.ID()) ||
		!slices.Equal(ev.Members, []string{"alice", "bob"}) {
		t.Fatalf("bob's EventJoined of the branch: predecessor %x members %v", ev.Predecessor, ev.Members)
	}
	if !bytes.Equal(bob.Group(sub.ID()).EpochAuthenticator(), sub.EpochAuthenticator()) {
		t.Fatal("alice and bob disagree on the branch's epoch_authenticator")
	}
	talk(t, sub.ID(), alice, bob)
	if carol.Group(sub.ID()) != nil {
		t.Fatal("carol holds the branch")
	}
	talk(t, g.ID(), alice, bob, carol)
}

// TestReInitCreatorOffline: alice, the designated creator of the
// successor (leaf 0), is offline when bob reinitializes the group. Bob's
// turn comes after Config.CommitterTimeout and he creates it; carol joins.
// When alice comes back she processes the ReInit, finds the successor on
// the server instead of making another, and joins it from her Welcome.
func TestReInitCreatorOffline(t *testing.T) {
	e := startEnv(t)
	aliceDir := t.TempDir()
	bob, carol, old := creatorGone(t, e, aliceDir, func(c *Config) { c.CommitterTimeout = 200 * time.Millisecond })
	ctx := ctxT(t)
	next := []byte("successor made by bob")
	if _, err := bob.Group(old).ReInit(ctx, ReInitOptions{GroupID: next}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*tclient{bob, carol} {
		i := c.waitFor("joined successor", 0, kind(EventJoined, next))
		if ev := c.snapshot()[i]; !bytes.Equal(ev.Predecessor, old) || len(ev.Members) != 3 {
			t.Fatalf("%s: EventJoined of the successor: predecessor %x members %v", c.ID(), ev.Predecessor, ev.Members)
		}
	}
	alice := e.open("alice", aliceDir)
	alice.waitFor("reinit", 0, kind(EventReInit, old))
	i := alice.waitFor("joined successor", 0, kind(EventJoined, next))
	if ev := alice.snapshot()[i]; !bytes.Equal(ev.Predecessor, old) {
		t.Fatalf("alice's EventJoined of the successor names %x", ev.Predecessor)
	}
	talk(t, next, alice, bob, carol)
	for _, c := range []*tclient{alice, bob, carol} {
		c.noUndecryptable()
	}
}

// TestReInitSuccessorIDTaken: mallory, who is in no group of theirs,
// creates a group with the id that the members then pick for the
// successor (an application that derives group ids predictably). The
// ReInit Commit goes through, but the successor cannot be created: ReInit
// says so with ErrSuccessorTaken instead of reporting success, and
// Successor reports the successor missing. Before, the creator took the
// server's AlreadyExists for a successor another call of its own had made.
func TestReInitSuccessorIDTaken(t *testing.T) {
	e := startEnv(t)
	alice, _, _, g := threeMemberGroup(t, e, false)
	mallory := e.client("mallory")
	ctx := ctxT(t)
	next := []byte("predictable successor id")
	if _, err := mallory.CreateGroup(ctx, GroupOptions{ID: next}); err != nil {
		t.Fatal(err)
	}
	_, err := alice.Group(g.ID()).ReInit(ctx, ReInitOptions{GroupID: next})
	if !errors.Is(err, ErrSuccessorTaken) {
		t.Fatalf("ReInit onto a taken group id: %v, want ErrSuccessorTaken", err)
	}
	if _, ok, err := alice.Group(g.ID()).Successor(ctx); ok || err != nil {
		t.Fatalf("Successor: exists %v, %v; want none", ok, err)
	}
	if alice.Group(next) != nil {
		t.Fatal("alice holds a successor that does not exist on the server")
	}
}

// TestReInitSuccessorIDSquatted: after bob's ReInit names the successor's
// id, and before anyone creates the successor (alice, whose turn it is,
// is offline; bob's and carol's turns are an hour away), carol, a member
// of the closed group, creates a group of her own with that id and adds
// bob with a plain Welcome, which carries no resumption PSK of the closed
// group. Bob's client refuses it (ErrSuccessorTaken) and does not hold
// the group: before, it joined it, reported it under the successor's id
// and took it for the successor, so that its own turn to create the real
// one did nothing.
func TestReInitSuccessorIDSquatted(t *testing.T) {
	e := startEnv(t)
	bob, carol, old := creatorGone(t, e, t.TempDir(), func(c *Config) { c.CommitterTimeout = time.Hour })
	ctx := ctxT(t)
	next := []byte("successor id, squatted")
	if _, err := bob.Group(old).ReInit(ctx, ReInitOptions{GroupID: next}); err != nil {
		t.Fatal(err)
	}
	carol.waitFor("reinit", 0, kind(EventReInit, old))
	squat, err := carol.CreateGroup(ctx, GroupOptions{ID: next})
	if err != nil {
		t.Fatal(err)
	}
	if err := squat.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	i := bob.waitFor("the squatted Welcome", 0, func(ev Event) bool {
		return bytes.Equal(ev.GroupID, next) && (ev.Kind == EventJoined || ev.Kind == EventUndecryptable)
	})
	if ev := bob.snapshot()[i]; ev.Kind != EventUndecryptable || !errors.Is(ev.Err, ErrSuccessorTaken) {
		t.Fatalf("bob's client took a Welcome into the successor's id without the ReInit's PSK: %v %v", ev.Kind, ev.Err)
	}
	if bob.Group(next) != nil {
		t.Fatal("bob holds the squatted group")
	}
}
