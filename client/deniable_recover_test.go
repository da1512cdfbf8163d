package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// deniableWithMallory makes a deniable group of alice (creator), bob,
// carol and mallory, and returns it with a copy of mallory's state, her
// client closed (see malicious_test.go).
func deniableWithMallory(t *testing.T, e *testEnv, cfg ...func(*Config)) (alice, bob, carol, mallory *tclient, gid []byte, mst *mls.Group) {
	t.Helper()
	open := func(id string) *tclient { return e.open(id, t.TempDir(), cfg...) }
	alice, bob, carol, mallory = open("alice"), open("bob"), open("carol"), open("mallory")
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{Deniable: true})
	if err != nil {
		t.Fatal(err)
	}
	gid = g.ID()
	if err := g.Add(ctx, "bob", "carol", "mallory"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*tclient{bob, carol, mallory} {
		c.waitFor("EventJoined", 0, kind(EventJoined, gid))
	}
	exchange(t, gid, 1, "before", alice, bob, carol)
	mallory.Close()
	mg := mallory.Group(gid)
	mg.mu.Lock()
	mst, err = cloneState(mg.st)
	mg.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	return alice, bob, carol, mallory, gid, mst
}

// commitWrongKey sends, as mallory, a Commit (an empty one, with a path)
// of st's epoch whose bundle gives the server a random K_{e+1}, and
// returns the epoch it starts.
func commitWrongKey(t *testing.T, mallory *tclient, st *mls.Group) uint64 {
	t.Helper()
	ke, err := membershipKeyOf(st)
	if err != nil {
		t.Fatal(err)
	}
	next, err := cloneState(st)
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := next.CommitMessage(mls.CommitOptions{WireFormat: mls.WireFormatPrivateMessage})
	if err != nil {
		t.Fatal(err)
	}
	wire, err := mlsMessage(msg)
	if err != nil {
		t.Fatal(err)
	}
	wrong := make([]byte, ds.MembershipKeySize)
	rand.Read(wrong)
	a := &membershipAuth{groupID: st.GroupID(), epoch: st.Epoch(), key: ke}
	if _, err := mallory.den.groups.SendCommitBundle(withMembership(ctxT(t), a), connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
		Commit: wire, NextMembershipKey: wrong})); err != nil {
		t.Fatalf("the server refused mallory's Commit: %v", err)
	}
	return st.Epoch() + 1
}

// count returns how many recorded events f accepts.
func (c *tclient) count(f func(Event) bool) int {
	n := 0
	for _, e := range c.snapshot() {
		if f(e) {
			n++
		}
	}
	return n
}

// TestDeniableKeyMismatchRecovery: mallory, a member of a deniable group,
// commits with a wrong next_membership_key, so that no honest member can
// prove membership of the epoch her Commit starts. alice, bob and carol
// each report EventKeyMismatch naming mallory, continue in a new deniable
// group (a branch without mallory, which alice, the lowest leaf, makes)
// and talk there; they leave the old group; mallory proves membership of
// the new group with nothing she holds.
func TestDeniableKeyMismatchRecovery(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol, mallory, gid, mst := deniableWithMallory(t, e)
	honest := []*tclient{alice, bob, carol}
	epoch := commitWrongKey(t, mallory, mst)

	isMismatch := func(ev Event) bool { return ev.Kind == EventKeyMismatch && bytes.Equal(ev.GroupID, gid) }
	var branch []byte
	for _, c := range honest {
		i := c.waitFor("EventKeyMismatch", 0, isMismatch)
		ev := c.snapshot()[i]
		if ev.Sender != "mallory" || ev.Epoch != epoch || !errors.Is(ev.Err, ErrKeyMismatch) {
			t.Errorf("%s: EventKeyMismatch names %q at epoch %d (want mallory at %d), err %v", c.ID(), ev.Sender, ev.Epoch, epoch, ev.Err)
		}
		j := c.waitFor("EventJoined of the branch", 0, func(ev Event) bool { return ev.Kind == EventJoined && bytes.Equal(ev.Predecessor, gid) })
		joined := c.snapshot()[j]
		if branch == nil {
			branch = joined.GroupID
		} else if !bytes.Equal(branch, joined.GroupID) {
			t.Fatalf("%s joined branch %x, another member %x; events %s", c.ID(), joined.GroupID, branch, describe(c.snapshot()))
		}
		if want := []string{"alice", "bob", "carol"}; !slices.Equal(joined.Members, want) {
			t.Errorf("%s joined the branch with members %v, want %v", c.ID(), joined.Members, want)
		}
		c.waitFor("EventLeft of the old group", 0, kind(EventLeft, gid))
		if g := c.Group(branch); g == nil || g.den == nil {
			t.Errorf("%s: the branch is not a deniable group", c.ID())
		}
	}
	// The members talk in the branch.
	exchange(t, branch, 2, "branch", alice, bob, carol)
	for _, c := range honest {
		if n := c.count(isMismatch); n != 1 {
			t.Errorf("%s reported EventKeyMismatch %d times, want once", c.ID(), n)
		}
		// A deniable group keeps no roster: its refusals never read as
		// being dropped from one.
		if n := c.count(func(ev Event) bool { return ev.Kind == EventDropped }); n != 0 {
			t.Errorf("%s reported EventDropped %d times in a deniable group: %s", c.ID(), n, describe(c.snapshot()))
		}
		if !errors.Is(func() error { _, err := c.Group(gid).Send(ctxT(t), []byte("x")); return err }(), ErrRemoved) {
			t.Errorf("%s: the old group still takes messages after the recovery", c.ID())
		}
		c.noUndecryptable()
	}

	// mallory holds no key of the branch: whatever she derives from her
	// state of the old group proves nothing.
	for ep := uint64(0); ep <= 3; ep++ {
		key, err := mst.Export(ds.MembershipLabel, ds.MembershipKeyContext(branch, ep), ds.MembershipKeySize)
		if err != nil {
			t.Fatal(err)
		}
		a := &membershipAuth{groupID: branch, epoch: ep, key: key}
		_, err = mallory.den.groups.GetGroupInfo(withMembership(ctxT(t), a), connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: branch}))
		if !refusedAsOutsider(err) {
			t.Errorf("mallory's proof for epoch %d of the branch: %v, want the outsiders' answer", ep, err)
		}
	}
	// The server never linked the branch to the old group.
	for _, c := range honest {
		_, err := c.rpc.groups.GetGroupInfo(ctxT(t), connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: branch}))
		if err != nil {
			t.Fatalf("%s: GetGroupInfo of the branch: %v", c.ID(), err)
		}
	}
}

// TestDeniableKeyMismatchFallback: alice, whose turn it is to branch, is
// offline when mallory's Commit breaks the epoch; bob, next in leaf
// order, branches after the committer timeout, with carol and alice, who
// joins when she comes back.
func TestDeniableKeyMismatchFallback(t *testing.T) {
	e := startEnv(t)
	fast := func(c *Config) { c.CommitterTimeout = 300 * time.Millisecond }
	alice, bob, carol, mallory, gid, mst := deniableWithMallory(t, e, fast)
	alice.Close()
	commitWrongKey(t, mallory, mst)
	isMismatch := func(ev Event) bool {
		return ev.Kind == EventKeyMismatch && bytes.Equal(ev.GroupID, gid) && ev.Sender == "mallory"
	}
	var branch []byte
	for _, c := range []*tclient{bob, carol} {
		c.waitFor("EventKeyMismatch", 0, isMismatch)
		j := c.waitFor("EventJoined of the branch", 0, func(ev Event) bool { return ev.Kind == EventJoined && bytes.Equal(ev.Predecessor, gid) })
		branch = c.snapshot()[j].GroupID
	}
	if got := bob.Group(branch).members(); !slices.Equal(got, []string{"bob", "alice", "carol"}) && !slices.Equal(got, []string{"bob", "carol", "alice"}) {
		t.Errorf("bob's branch has members %v", got)
	}
	alice = e.open("alice", filepath.Dir(alice.path), fast)
	alice.waitFor("EventJoined of the branch", 0, func(ev Event) bool { return ev.Kind == EventJoined && bytes.Equal(ev.GroupID, branch) })
	exchange(t, branch, 1, "fallback", alice, bob, carol)
	// alice, back after her turn passed, took bob's branch and made none
	// of her own.
	alice.waitFor("EventKeyMismatch", 0, isMismatch)
	alice.waitFor("EventLeft of the old group", 0, kind(EventLeft, gid))
	time.Sleep(2 * time.Duration(300*time.Millisecond)) // her own turn, had she kept one
	for _, c := range []*tclient{alice, bob, carol} {
		if n := c.count(func(ev Event) bool { return ev.Kind == EventJoined && bytes.Equal(ev.Predecessor, gid) }); n != 1 {
			t.Errorf("%s joined %d branches of the old group, want 1: %s", c.ID(), n, describe(c.snapshot()))
		}
	}
}

// TestDeniableRefusalNoKeyMismatch: refusals that are not a wrong key
// raise no EventKeyMismatch: a refusal under the newest key that the
// server in fact takes (the answer a replayed proof gets), and the calls
// of a member that was removed.
func TestDeniableRefusalNoKeyMismatch(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	g := group3(t, e, GroupOptions{Deniable: true}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	if err := bob.Group(gid).Update(ctx); err != nil {
		t.Fatal(err)
	}
	waitEpoch(t, alice, gid, 2)
	refused := connect.NewError(connect.CodeNotFound, errors.New("group not found"))

	// A refusal of a call under the newest key, which the server holds:
	// the probe finds the key good.
	ag := alice.Group(gid)
	a, err := ag.newestAuth()
	if err != nil {
		t.Fatal(err)
	}
	if mismatch, err := alice.probeKeys(ag, a.epoch); err != nil || mismatch {
		t.Errorf("probing a good key: mismatch %v, err %v", mismatch, err)
	}
	before := alice.MembershipMACs()
	alice.keyRefused(context.Background(), a, refused)
	waitUntil(t, "alice's probe", func() bool {
		ag.den.rcv.mu.Lock()
		defer ag.den.rcv.mu.Unlock()
		return !ag.den.rcv.lastProbe.IsZero() && !ag.den.rcv.probing
	})
	if alice.MembershipMACs() == before {
		t.Error("the refusal started no probe")
	}

	// carol is removed: her last key still passes (until the server lets
	// it expire), and a refusal she is told of finds nothing.
	if err := alice.Group(gid).Remove(ctx, "carol"); err != nil {
		t.Fatal(err)
	}
	carol.waitFor("EventRemoved", 0, kind(EventRemoved, gid))
	cg := carol.Group(gid)
	ca, err := cg.newestAuth()
	if err != nil {
		t.Fatal(err)
	}
	if mismatch, err := carol.probeKeys(cg, ca.epoch); err != nil || mismatch {
		t.Errorf("probing a removed member's last key: mismatch %v, err %v", mismatch, err)
	}
	carol.keyRefused(context.Background(), ca, refused)
	waitUntil(t, "carol's probe", func() bool {
		cg.den.rcv.mu.Lock()
		defer cg.den.rcv.mu.Unlock()
		return !cg.den.rcv.lastProbe.IsZero() && !cg.den.rcv.probing
	})
	exchange(t, gid, 1, "after", alice, bob)
	for _, c := range []*tclient{alice, bob, carol} {
		if n := c.count(func(ev Event) bool { return ev.Kind == EventKeyMismatch }); n != 0 {
			t.Errorf("%s reported EventKeyMismatch %d times", c.ID(), n)
		}
	}
}

// TestDeniableCommittersEncoding: the committers of the last epochs
// survive a restart (the state file), bounded like the keys, and a state
// of format 1, which has none, still reads.
func TestDeniableCommittersEncoding(t *testing.T) {
	d := &deniableState{welcomeRef: []byte("ref")}
	at := time.UnixMilli(1_700_000_000_123)
	for ep := uint64(1); ep <= keptMembershipKeys+2; ep++ {
		d.add(ep, bytes.Repeat([]byte{byte(ep)}, ds.MembershipKeySize))
		d.noteCommitter(ep, mls.LeafIndex(ep%4), "member-"+string(rune('a'+ep)), at.Add(time.Duration(ep)*time.Second))
	}
	data := d.marshal()
	got, err := unmarshalDeniableState(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.committers) != keptMembershipKeys {
		t.Errorf("%d committers kept, want %d", len(got.committers), keptMembershipKeys)
	}
	last := uint64(keptMembershipKeys + 2)
	c, ok := got.committerOf(last)
	if want, _ := d.committerOf(last); !ok || c != want {
		t.Errorf("committer of epoch %d: %+v, want %+v", last, c, want)
	}
	if _, ok := got.committerOf(1); ok {
		t.Error("the committer of epoch 1 was kept past the bound")
	}
	// Format 1: the same without the committers list (its two length
	// bytes and entries are the end of the encoding).
	var n int
	for _, c := range d.committers {
		n += 8 + 4 + 1 + len(c.id) + 8
	}
	v1 := bytes.Clone(data[:len(data)-2-n])
	v1[0] = 1
	old, err := unmarshalDeniableState(v1)
	if err != nil {
		t.Fatalf("a state of format 1: %v", err)
	}
	if len(old.committers) != 0 || len(old.keys) != keptMembershipKeys || !bytes.Equal(old.welcomeRef, []byte("ref")) {
		t.Errorf("a state of format 1 read as %d committers, %d keys, ref %q", len(old.committers), len(old.keys), old.welcomeRef)
	}
	if _, err := unmarshalDeniableState(data[:len(data)-3]); err == nil {
		t.Error("a truncated committers list was read")
	}
}

// TestBranchDelay: the member at position p branches p timeouts after
// the Commit; one that notices after the first turn passed waits a
// timeout more.
func TestBranchDelay(t *testing.T) {
	const to = 10 * time.Second
	for _, c := range []struct {
		pos     int
		elapsed time.Duration
		want    time.Duration
	}{
		{0, 0, 0},
		{0, time.Second, 0},
		{1, time.Second, 9 * time.Second},
		{2, 3 * time.Second, 17 * time.Second},
		{0, time.Minute, to},                      // back late: a timeout for a waiting Welcome
		{2, 15 * time.Second, 5*time.Second + to}, // second turn not yet come
		{1, time.Hour, to},
	} {
		if got := branchDelay(c.pos, to, c.elapsed); got != c.want {
			t.Errorf("branchDelay(%d, %v, %v) = %v, want %v", c.pos, to, c.elapsed, got, c.want)
		}
	}
}

// TestDeniableBranch: Group.Branch of a deniable group makes a new
// deniable group of the members named, which they join from its Welcome
// (EventJoined with Predecessor), and the old group goes on; nobody
// reports a wrong key.
func TestDeniableBranch(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	g := group3(t, e, GroupOptions{Deniable: true}, alice, bob, carol)
	gid := g.ID()
	sub, err := g.Branch(ctxT(t), nil, "bob")
	if err != nil {
		t.Fatalf("Branch: %v", err)
	}
	if sub.den == nil {
		t.Fatal("the branch of a deniable group is not deniable")
	}
	i := bob.waitFor("EventJoined of the branch", 0, kind(EventJoined, sub.ID()))
	if ev := bob.snapshot()[i]; !bytes.Equal(ev.Predecessor, gid) || !slices.Equal(ev.Members, []string{"alice", "bob"}) {
		t.Errorf("bob joined the branch with predecessor %x, members %v", ev.Predecessor, ev.Members)
	}
	exchange(t, sub.ID(), 1, "sub", alice, bob)
	exchange(t, gid, 1, "main", alice, bob, carol)
	if carol.Group(sub.ID()) != nil {
		t.Error("carol holds the branch she was not named in")
	}
	for _, c := range []*tclient{alice, bob, carol} {
		if n := c.count(func(ev Event) bool { return ev.Kind == EventKeyMismatch || ev.Kind == EventLeft }); n != 0 {
			t.Errorf("%s: %s", c.ID(), describe(c.snapshot()))
		}
	}
}
