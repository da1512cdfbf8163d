package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/server"
)

func countKeyPackages(t testing.TB, c *tclient) int {
	t.Helper()
	res, err := c.rpc.kps.CountKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.CountKeyPackagesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	return int(res.Msg.ByCipherSuite[uint32(c.cs)])
}

func TestRegisterAndKeyPackages(t *testing.T) {
	// A low-water mark under the stock, so that the client does not top up
	// on its own in this test.
	e := startEnv(t, func(d *ds.Config, _ *server.Config) { d.KeyPackageLowWater = 1 })
	alice := e.client("alice")
	bob := e.client("bob")
	if got := countKeyPackages(t, alice); got != 5 {
		t.Fatalf("alice has %d KeyPackages published, want 5", got)
	}
	// Claim three: PublishKeyPackages uploads three again.
	for range 3 {
		if _, err := bob.rpc.kps.ClaimKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
			Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: "alice"}, CipherSuite: uint32(alice.cs)})); err != nil {
			t.Fatal(err)
		}
	}
	n, err := alice.PublishKeyPackages(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("PublishKeyPackages uploaded %d, want 3", n)
	}
	if got := countKeyPackages(t, alice); got != 5 {
		t.Fatalf("after top-up alice has %d KeyPackages, want 5", got)
	}
	if n, err := alice.PublishKeyPackages(ctxT(t)); err != nil || n != 0 {
		t.Errorf("PublishKeyPackages with a full stock = %d, %v; want 0, nil", n, err)
	}
}

// TestKeyPackageLowTopUp: the server's KeyPackageLow event makes the client
// publish more on its own.
func TestKeyPackageLowTopUp(t *testing.T) {
	e := startEnv(t, func(d *ds.Config, _ *server.Config) { d.KeyPackageLowWater = 3 })
	alice := e.client("alice")
	bob := e.client("bob")
	for range 4 { // 5 -> 1, below the low-water mark of 3
		if _, err := bob.rpc.kps.ClaimKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
			Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: "alice"}, CipherSuite: uint32(alice.cs)})); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for countKeyPackages(t, alice) != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("alice's stock stayed at %d after the low-water event", countKeyPackages(t, alice))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// group3 creates a group of alice with bob and carol added, and waits until
// both joined.
func group3(t *testing.T, e *testEnv, opts GroupOptions, alice, bob, carol *tclient) *Group {
	t.Helper()
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, bob.ID(), carol.ID()); err != nil {
		t.Fatalf("Add: %v", err)
	}
	for _, c := range []*tclient{bob, carol} {
		i := c.waitFor("EventJoined", 0, kind(EventJoined, g.ID()))
		if ev := c.snapshot()[i]; !slices.Equal(ev.Members, []string{"alice", "bob", "carol"}) || ev.Epoch != 1 {
			t.Errorf("%s joined epoch %d with members %v", c.ID(), ev.Epoch, ev.Members)
		}
	}
	return g
}

// exchange makes every client send n messages and checks that each
// receives the others' exactly once and in order.
func exchange(t *testing.T, gid []byte, n int, tag string, clients ...*tclient) {
	t.Helper()
	ctx := ctxT(t)
	before := map[string]int{}
	for _, c := range clients {
		before[c.ID()] = len(c.messages(gid))
	}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := c.Group(gid)
			for i := range n {
				if _, err := g.Send(ctx, []byte(fmt.Sprintf("%s-%d", tag, i))); err != nil {
					t.Errorf("%s: Send: %v", c.ID(), err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, c := range clients {
		want := (len(clients) - 1) * n
		got := c.waitMessages(gid, before[c.ID()]+want)[before[c.ID()]:]
		if len(got) != want {
			t.Fatalf("%s got %d messages, want %d: %v", c.ID(), len(got), want, got)
		}
		for _, o := range clients {
			if o == c {
				continue
			}
			var fromO []string
			for _, m := range got {
				if bytes.HasPrefix([]byte(m), []byte(o.ID()+":")) {
					fromO = append(fromO, m)
				}
			}
			var want []string
			for i := range n {
				want = append(want, fmt.Sprintf("%s:%s-%d", o.ID(), tag, i))
			}
			if !slices.Equal(fromO, want) {
				t.Errorf("%s received from %s: %v, want %v", c.ID(), o.ID(), fromO, want)
			}
		}
	}
}

// sameEpoch checks that the clients' groups are in the same epoch with the
// same epoch authenticator.
func sameEpoch(t *testing.T, gid []byte, clients ...*tclient) uint64 {
	t.Helper()
	g0 := clients[0].Group(gid)
	for _, c := range clients[1:] {
		g := c.Group(gid)
		if g.Epoch() != g0.Epoch() || !bytes.Equal(g.EpochAuthenticator(), g0.EpochAuthenticator()) {
			t.Fatalf("%s is at epoch %d, %s at %d (or their epoch authenticators differ)", clients[0].ID(), g0.Epoch(), c.ID(), g.Epoch())
		}
	}
	return g0.Epoch()
}

func TestGroupLifecycle(t *testing.T) {
	for _, opaque := range []bool{false, true} {
		t.Run(map[bool]string{false: "transparent", true: "opaque"}[opaque], func(t *testing.T) {
			e := startEnv(t)
			alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
			g := group3(t, e, GroupOptions{Opaque: opaque}, alice, bob, carol)
			gid := g.ID()
			ctx := ctxT(t)

			exchange(t, gid, 5, "hello", alice, bob, carol)

			// Update: everyone moves to the same new epoch.
			if err := bob.Group(gid).Update(ctx); err != nil {
				t.Fatalf("Update: %v", err)
			}
			for _, c := range []*tclient{alice, carol} {
				waitEpoch(t, c, gid, 2)
			}
			sameEpoch(t, gid, alice, bob, carol)
			exchange(t, gid, 2, "after-update", alice, bob, carol)

			// Remove carol: she gets EventRemoved and nothing after.
			if err := alice.Group(gid).Remove(ctx, "carol"); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			carol.waitFor("EventRemoved", 0, kind(EventRemoved, gid))
			bob.waitFor("EventMembersRemoved", 0, func(e Event) bool {
				return e.Kind == EventMembersRemoved && slices.Equal(e.Members, []string{"carol"})
			})
			if _, err := carol.Group(gid).Send(ctx, []byte("x")); err != ErrRemoved {
				t.Errorf("Send after removal: %v, want ErrRemoved", err)
			}
			exchange(t, gid, 2, "without-carol", alice, bob)
			evs := carol.snapshot()
			i := slices.IndexFunc(evs, kind(EventRemoved, gid))
			for _, ev := range evs[i+1:] {
				if bytes.Equal(ev.GroupID, gid) {
					t.Errorf("carol got an event after EventRemoved: %v", describe([]Event{ev}))
				}
			}

			// carol is added again: a new Welcome, a new state.
			if err := alice.Group(gid).Add(ctx, "carol"); err != nil {
				t.Fatalf("Add again: %v", err)
			}
			carol.waitFor("EventJoined again", i+1, kind(EventJoined, gid))
			exchange(t, gid, 2, "carol-back", alice, bob, carol)

			// bob leaves at once (EventLeft); alice commits his Remove
			// proposal on her own.
			if err := bob.Group(gid).Leave(ctx); err != nil {
				t.Fatalf("Leave: %v", err)
			}
			bob.waitFor("EventLeft", 0, kind(EventLeft, gid))
			if !bob.Group(gid).Removed() || bob.Group(gid).Leaving() {
				t.Errorf("after Leave: Removed %v, Leaving %v", bob.Group(gid).Removed(), bob.Group(gid).Leaving())
			}
			if i := alice.waitFor("bob removed", 0, func(e Event) bool {
				return e.Kind == EventMembersRemoved && slices.Equal(e.Members, []string{"bob"})
			}); alice.snapshot()[i].Sender != "alice" {
				t.Errorf("bob's Leave was committed by %q, want alice (the lowest leaf)", alice.snapshot()[i].Sender)
			}
			if got := alice.Group(gid).Members(); !slices.Equal(got, []string{"alice", "carol"}) {
				t.Errorf("alice's members after bob left: %v", got)
			}
			for _, c := range []*tclient{alice, bob, carol} {
				c.noUndecryptable()
			}
		})
	}
}

func TestExternalJoin(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol, dave, eve := e.client("alice"), e.client("bob"), e.client("carol"), e.client("dave"), e.client("eve")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	// dave joins from the GroupInfo the server keeps, with a join link
	// (strangers need one).
	link, err := g.CreateJoinLink(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	dg, err := dave.JoinWithLink(ctx, link)
	if err != nil {
		t.Fatalf("JoinWithLink: %v", err)
	}
	dave.waitFor("EventJoined", 0, kind(EventJoined, gid))
	for _, c := range []*tclient{alice, bob, carol} {
		c.waitFor("dave added", 0, func(e Event) bool {
			return e.Kind == EventMembersAdded && slices.Equal(e.Members, []string{"dave"})
		})
	}
	if got := dg.Members(); !slices.Equal(got, []string{"alice", "bob", "carol", "dave"}) {
		t.Errorf("dave's members: %v", got)
	}
	// eve joins from a GroupInfo a member gives her (with the link's
	// token, which the server asks of strangers).
	gi, err := bob.Group(gid).GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eve.JoinExternalWith(withJoinToken(ctx, link.Token), gi); err != nil {
		t.Fatalf("JoinExternalWith: %v", err)
	}
	all := []*tclient{alice, bob, carol, dave, eve}
	for _, c := range all {
		waitEpoch(t, c, gid, 3)
	}
	sameEpoch(t, gid, all...)
	exchange(t, gid, 3, "with-dave-and-eve", all...)
	for _, c := range all {
		c.noUndecryptable()
	}
}

// TestExternalJoinMembersOnly: a server that keeps GroupInfos from
// non-members (without a join link, its default) makes JoinExternal fail
// with advice; JoinExternalWith, with a GroupInfo a member gives and the
// token of a join link, works.
func TestExternalJoinMembersOnly(t *testing.T) {
	e := startEnv(t)
	alice, dave := e.client("alice"), e.client("dave")
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dave.JoinExternal(ctx, g.ID()); err == nil || !strings.Contains(err.Error(), "JoinExternalWith") {
		t.Fatalf("JoinExternal by a non-member: %v; want an error that points to JoinExternalWith", err)
	}
	gi, err := g.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	link, err := g.CreateJoinLink(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dave.JoinExternalWith(withJoinToken(ctx, link.Token), gi); err != nil {
		t.Fatalf("JoinExternalWith: %v", err)
	}
	waitEpoch(t, alice, g.ID(), 1)
	exchange(t, g.ID(), 2, "hi", alice, dave)
}

// TestConcurrentCommits: Commits of several members race for the same
// epoch; the losers rebase and all succeed.
func TestConcurrentCommits(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol, dave := e.client("alice"), e.client("bob"), e.client("carol"), e.client("dave")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	start := make(chan struct{})
	var wg sync.WaitGroup
	run := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := f(); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}()
	}
	run("alice Update", func() error { return alice.Group(gid).Update(ctx) })
	run("bob Update", func() error { return bob.Group(gid).Update(ctx) })
	run("carol Add dave", func() error { return carol.Group(gid).Add(ctx, "dave") })
	run("bob Update 2", func() error { return bob.Group(gid).Update(ctx) })
	close(start)
	wg.Wait()
	// Four Commits: epoch 1 -> 5.
	dave.waitFor("EventJoined", 0, kind(EventJoined, gid))
	for _, c := range []*tclient{alice, bob, carol, dave} {
		waitEpoch(t, c, gid, 5)
	}
	if ep := sameEpoch(t, gid, alice, bob, carol, dave); ep != 5 {
		t.Errorf("epoch %d after four Commits from epoch 1, want 5", ep)
	}
	exchange(t, gid, 3, "after-race", alice, bob, carol, dave)
	for _, c := range []*tclient{alice, bob, carol, dave} {
		c.noUndecryptable()
	}
}

// TestRestart: a client closed while messages arrive gets exactly those
// when it opens its state again.
func TestRestart(t *testing.T) {
	e := startEnv(t)
	dir := t.TempDir()
	alice, bob, carol := e.client("alice"), e.open("bob", dir), e.client("carol")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	exchange(t, gid, 3, "before", alice, bob, carol)
	bob.Close()
	seen := bob.snapshot()
	if fi, err := os.Stat(bob.path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode: %v, %v; want 0600", fi.Mode(), err)
	}

	for i := range 4 {
		if _, err := alice.Group(gid).Send(ctx, []byte(fmt.Sprintf("missed-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := carol.Group(gid).Update(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.Group(gid).Send(ctx, []byte("missed-after-update")); err != nil {
		t.Fatal(err)
	}

	bob2 := e.open("bob", dir, func(c *Config) { c.ClientID = "" })
	if bob2.ID() != "bob" {
		t.Fatalf("reopened client is %q", bob2.ID())
	}
	got := bob2.waitMessages(gid, 5)
	want := []string{"alice:missed-0", "alice:missed-1", "alice:missed-2", "alice:missed-3", "carol:missed-after-update"}
	if !slices.Equal(got, want) {
		t.Errorf("after restart bob got %v, want %v", got, want)
	}
	// Nothing of before the restart again.
	for _, ev := range bob2.snapshot() {
		for _, old := range seen {
			if ev.Seq == old.Seq && bytes.Equal(ev.GroupID, old.GroupID) && ev.Kind == old.Kind {
				t.Errorf("event delivered twice across the restart: %v", describe([]Event{ev}))
			}
		}
	}
	sameEpoch(t, gid, alice, bob2, carol)
	exchange(t, gid, 2, "after-restart", alice, bob2, carol)
	// Opening the state as someone else fails (once bob's Client no
	// longer holds it).
	bob2.Close()
	if _, err := Open(ctx, Config{Server: e.url, StatePath: bob.path, ClientID: "mallory", Logger: quiet}); err == nil || errors.Is(err, ErrStateInUse) {
		t.Errorf("Open with another ClientID on bob's state: %v; want a refusal of the identity", err)
	}
}

// TestSessionExpiry: with a short session lifetime the client logs in again
// as needed and keeps working.
func TestSessionExpiry(t *testing.T) {
	e := startEnv(t, func(_ *ds.Config, s *server.Config) { s.SessionTTL = time.Second })
	alice, bob := e.client("alice"), e.client("bob")
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, g.ID()))
	logins := alice.rpc.loginCount()
	for i := range 3 {
		time.Sleep(700 * time.Millisecond)
		if _, err := g.Send(ctx, []byte(fmt.Sprintf("m%d", i))); err != nil {
			t.Fatalf("Send after %d: %v", i, err)
		}
	}
	if alice.rpc.loginCount() <= logins {
		t.Errorf("alice did not log in again over 2s with a 1s session")
	}
	// A token the server does not accept: the call logs in again.
	alice.rpc.tokMu.Lock()
	alice.rpc.token, alice.rpc.expires = "v1.bogus", time.Now().Add(time.Hour)
	alice.rpc.tokMu.Unlock()
	if _, err := g.Send(ctx, []byte("m3")); err != nil {
		t.Fatalf("Send with a refused token: %v", err)
	}
	if got := bob.waitMessages(g.ID(), 4); !slices.Equal(got, []string{"alice:m0", "alice:m1", "alice:m2", "alice:m3"}) {
		t.Errorf("bob got %v", got)
	}
}

// TestRebase: a member that has not seen the latest Commits commits on its
// old state; the server refuses it with WrongEpoch and the client catches
// up and makes the Commit again, without the caller noticing.
func TestRebase(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol, dave := e.client("alice"), e.client("bob"), e.client("carol"), e.client("dave")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	// Hold bob's stream so that he misses what follows.
	release := make(chan struct{})
	var once sync.Once
	hook := func() { <-release }
	bob.testHookStream.Store(&hook)
	defer once.Do(func() { close(release) })

	if err := alice.Group(gid).Update(ctx); err != nil {
		t.Fatal(err)
	}
	if err := alice.Group(gid).Add(ctx, "dave"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Group(gid).Send(ctx, []byte("while bob was away")); err != nil {
		t.Fatal(err)
	}
	if ep := bob.Group(gid).Epoch(); ep != 1 {
		t.Fatalf("bob processed Commits while his stream was held (epoch %d)", ep)
	}
	// bob's Update is for epoch 1: refused, rebased on epoch 3.
	if err := bob.Group(gid).Update(ctx); err != nil {
		t.Fatalf("Update on an old state: %v", err)
	}
	// bob's Add of dave, already added by alice, is skipped on the new state.
	if err := bob.Group(gid).Add(ctx, "dave"); err != nil {
		t.Fatalf("Add of a member: %v", err)
	}
	if n := bob.rebases.Load(); n != 1 {
		t.Errorf("bob rebased %d times, want 1", n)
	}
	once.Do(func() { close(release) })
	bob.Client.testHookStream.Store(nil)

	all := []*tclient{alice, bob, carol, dave}
	for _, c := range all {
		waitEpoch(t, c, gid, 4)
	}
	sameEpoch(t, gid, all...)
	if got := bob.messages(gid); !slices.Equal(got, []string{"alice:while bob was away"}) {
		t.Errorf("bob's messages: %v", got)
	}
	exchange(t, gid, 2, "after-rebase", all...)
	for _, c := range all {
		c.noUndecryptable()
	}
}

// TestLeaveOfFirstMember: when the member at leaf 0 leaves, the next one
// commits its Remove proposal.
func TestLeaveOfFirstMember(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	if err := g.Leave(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	alice.waitFor("EventLeft", 0, kind(EventLeft, gid))
	i := carol.waitFor("alice removed", 0, func(e Event) bool {
		return e.Kind == EventMembersRemoved && slices.Equal(e.Members, []string{"alice"})
	})
	if s := carol.snapshot()[i].Sender; s != "bob" {
		t.Errorf("alice's Leave was committed by %q, want bob", s)
	}
	waitEpoch(t, bob, gid, 2)
	sameEpoch(t, gid, bob, carol)
	exchange(t, gid, 2, "without-alice", bob, carol)
	if _, err := g.Send(ctxT(t), []byte("x")); err != ErrRemoved {
		t.Errorf("Send after leaving: %v, want ErrRemoved", err)
	}
}

// TestCommitInFlightAcrossRestart: a client stops after its Commit was
// accepted but before it learned so (a crash, a lost answer). Its state
// file keeps the Commit in flight; after the restart the client finds it
// in the group's log and merges it. A Commit saved but never sent is
// dropped when the next Commit is made.
func TestCommitInFlightAcrossRestart(t *testing.T) {
	e := startEnv(t)
	dir := t.TempDir()
	alice, bob, carol := e.client("alice"), e.open("bob", dir), e.client("carol")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)

	release := make(chan struct{})
	hook := func() {
		select {
		case <-release:
		case <-bob.ctx.Done():
		}
	}
	bob.testHookStream.Store(&hook)
	bg := bob.Group(gid)
	bg.mu.Lock()
	p, err := bg.makeCommit(ctx, intent{update: true}, nil)
	if err != nil {
		bg.mu.Unlock()
		t.Fatal(err)
	}
	bg.pending = p
	if err := bg.persist(nil); err != nil {
		bg.mu.Unlock()
		t.Fatal(err)
	}
	if _, err := bob.rpc.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
		Commit: p.wire, Welcome: p.welcome, GroupInfo: p.groupInfo})); err != nil {
		bg.mu.Unlock()
		t.Fatal(err)
	}
	bg.mu.Unlock()
	bob.Close()

	waitEpoch(t, alice, gid, 2)
	if _, err := alice.Group(gid).Send(ctx, []byte("epoch 2")); err != nil {
		t.Fatal(err)
	}
	bob2 := e.open("bob", dir)
	if got := bob2.waitMessages(gid, 1); !slices.Equal(got, []string{"alice:epoch 2"}) {
		t.Errorf("bob after restart: %v", got)
	}
	sameEpoch(t, gid, alice, bob2, carol)

	// A Commit saved but never sent.
	bg = bob2.Group(gid)
	bg.mu.Lock()
	if p, err = bg.makeCommit(ctx, intent{update: true}, nil); err != nil {
		bg.mu.Unlock()
		t.Fatal(err)
	}
	bg.pending = p
	err = bg.persist(nil)
	bg.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	bob2.Close()
	bob3 := e.open("bob", dir)
	if err := bob3.Group(gid).Update(ctx); err != nil {
		t.Fatalf("Update after a Commit that was never sent: %v", err)
	}
	for _, c := range []*tclient{alice, carol} {
		waitEpoch(t, c, gid, 3)
	}
	if ep := sameEpoch(t, gid, alice, bob3, carol); ep != 3 {
		t.Errorf("epoch %d, want 3", ep)
	}
	exchange(t, gid, 2, "after", alice, bob3, carol)
	for _, c := range []*tclient{alice, bob2, bob3, carol} {
		c.noUndecryptable()
	}
}

// TestBackpressure: while the application does not read its events, the
// client stops taking in messages; once the application reads, every
// message arrives once and in order.
func TestBackpressure(t *testing.T) {
	oldBuf, oldHigh := eventBuffer, queueHighWater
	t.Cleanup(func() { eventBuffer, queueHighWater = oldBuf, oldHigh })
	eventBuffer, queueHighWater = 1, 2
	e := startEnv(t, func(d *ds.Config, _ *server.Config) {
		d.SlowConsumerTimeout = 100 * time.Millisecond
		d.SubscriptionBuffer = 1
	})
	ctx := ctxT(t)
	alice := e.client("alice")
	bob, err := Open(ctx, Config{Server: e.url, StatePath: t.TempDir() + "/bob.db", ClientID: "bob", Logger: quiet, KeyPackages: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	const n = 30
	for i := range n {
		if _, err := g.Send(ctx, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // let bob's stream stall (not a timing assertion)
	var got []string
	for ev := range bob.Events() {
		switch ev.Kind {
		case EventMessage:
			got = append(got, string(ev.Data))
		case EventUndecryptable:
			t.Fatalf("undecryptable: %v", ev.Err)
		}
		if len(got) == n {
			break
		}
	}
	for i := range n {
		if got[i] != fmt.Sprint(i) {
			t.Fatalf("bob got %v", got)
		}
	}
	// Nothing more (no duplicates) after a Sync.
	if err := bob.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Send(ctx, []byte("last")); err != nil {
		t.Fatal(err)
	}
	for ev := range bob.Events() {
		if ev.Kind == EventMessage {
			if string(ev.Data) != "last" {
				t.Errorf("after the %d messages bob got %q, want \"last\"", n, ev.Data)
			}
			break
		}
	}
}

// TestServerRestart: the server goes away and comes back with a new token
// key; the clients reconnect, log in again, and nothing is lost.
func TestServerRestart(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, g.ID()))
	if _, err := g.Send(ctx, []byte("before")); err != nil {
		t.Fatal(err)
	}
	bob.waitMessages(g.ID(), 1)
	logins, streams := bob.rpc.loginCount(), bob.streams.Load()
	e.restart()
	if _, err := g.Send(ctx, []byte("after")); err != nil {
		t.Fatalf("Send after the server restarted: %v", err)
	}
	if got := bob.waitMessages(g.ID(), 2); !slices.Equal(got, []string{"alice:before", "alice:after"}) {
		t.Errorf("bob got %v", got)
	}
	if bob.rpc.loginCount() == logins || bob.streams.Load() == streams {
		t.Errorf("bob did not log in again (%d) or reconnect (%d)", bob.rpc.loginCount()-logins, bob.streams.Load()-streams)
	}
	if err := bob.Group(g.ID()).Update(ctx); err != nil {
		t.Fatal(err)
	}
	waitEpoch(t, alice, g.ID(), 2)
	sameEpoch(t, g.ID(), alice, bob)
}

// TestLateApplicationMessage: a member that has not processed the latest
// Commit yet sends in the old epoch, which the server still accepts; the
// others get it after the Commit. It is delivered exactly once, as the
// message (once mls keeps past epochs) or as EventUndecryptable.
func TestLateApplicationMessage(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	release := make(chan struct{})
	hook := func() {
		select {
		case <-release:
		case <-alice.ctx.Done():
		}
	}
	alice.testHookStream.Store(&hook)
	if err := bob.Group(gid).Update(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := g.Send(ctx, []byte("late"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Epoch != 1 {
		t.Fatalf("the late message was sent in epoch %d, want 1", r.Epoch)
	}
	close(release)
	if _, err := bob.Group(gid).Send(ctx, []byte("next")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*tclient{bob, carol} {
		c.waitFor("seq of the late message", 0, func(e Event) bool { return bytes.Equal(e.GroupID, gid) && e.Seq == r.Seq })
		var at []Event
		for _, ev := range c.snapshot() {
			if bytes.Equal(ev.GroupID, gid) && ev.Seq == r.Seq {
				at = append(at, ev)
			}
		}
		switch {
		case len(at) != 1:
			t.Errorf("%s: %d events for the late message: %s", c.ID(), len(at), describe(at))
		case at[0].Kind == EventMessage && string(at[0].Data) == "late":
		case at[0].Kind == EventUndecryptable:
			t.Logf("%s: the late message is undecryptable (mls keeps no past epochs): %v", c.ID(), at[0].Err)
		default:
			t.Errorf("%s: the late message gave %s", c.ID(), describe(at))
		}
	}
	if got := alice.waitMessages(gid, 1); !slices.Equal(got, []string{"bob:next"}) {
		t.Errorf("alice got %v", got)
	}
	sameEpoch(t, gid, alice, bob, carol)
}

// TestBrokenGroupRecovery: a client that cannot process a Commit (here:
// its own, whose state it lost) reports it, refuses to send, and gets
// back in when another member removes it and adds it again.
func TestBrokenGroupRecovery(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	bg := bob.Group(gid)
	// Bob's client would rejoin on its own (TestRecoverFromBadCommit): hold
	// that back, to recover by removal and a new Welcome.
	bg.mu.Lock()
	bg.rejoinFailures = maxAutoRejoins
	bg.mu.Unlock()
	bg.mu.Lock()
	p, err := bg.makeCommit(ctx, intent{update: true}, nil)
	if err == nil {
		_, err = bob.rpc.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
			Commit: p.wire, GroupInfo: p.groupInfo}))
	}
	bg.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	// bob never kept the Commit as pending: it comes back as a stranger.
	// (The stream does not bring a client's own messages; Fetch does.)
	if err := bg.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventUndecryptable", 0, kind(EventUndecryptable, gid))
	if _, err := bg.Send(ctx, []byte("x")); err != ErrGroupBroken {
		t.Errorf("Send in a broken group: %v, want ErrGroupBroken", err)
	}
	waitEpoch(t, alice, gid, 2)
	if err := g.Remove(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(bob.snapshot(), kind(EventUndecryptable, gid))
	bob.waitFor("EventJoined again", i+1, kind(EventJoined, gid))
	if bob.Group(gid) == bg {
		t.Error("the Welcome did not replace the broken group")
	}
	sameEpoch(t, gid, alice, bob, carol)
	exchange(t, gid, 2, "recovered", alice, bob, carol)
}

// TestStateLocations: a state in memory, and a state file in a directory
// whose name needs escaping.
func TestStateLocations(t *testing.T) {
	e := startEnv(t)
	ctx := ctxT(t)
	mem, err := Open(ctx, Config{Server: e.url, ClientID: "mem", Logger: quiet, KeyPackages: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	dir := t.TempDir() + "/a dir?with#odd%20chars"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	odd := e.open("odd", dir)
	g, err := mem.CreateGroup(ctx, GroupOptions{ID: []byte("in-memory")})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, "odd"); err != nil {
		t.Fatal(err)
	}
	odd.waitFor("EventJoined", 0, kind(EventJoined, g.ID()))
	if _, err := g.Send(ctx, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	odd.waitMessages(g.ID(), 1)
	if fi, err := os.Stat(dir + "/odd.db"); err != nil || fi.Size() == 0 {
		t.Errorf("state file: %v (empty: SQLite wrote elsewhere?)", err)
	}
	odd.Close()
	again := e.open("odd", dir)
	if again.Group(g.ID()) == nil {
		t.Error("the reopened state has no group")
	}
}
