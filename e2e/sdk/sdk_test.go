package sdk

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlsds/mlsds/client"
)

// exchange makes every client send n messages to group gid at once and
// checks that each receives the n messages of every other one exactly
// once, in the order they were sent, and none of its own. Each client
// waits pause between its sends.
func exchange(t *testing.T, gid []byte, n int, tag string, pause time.Duration, clients ...*sdkClient) {
	t.Helper()
	ctx := ctxT(t)
	before := map[string]int{}
	for _, c := range clients {
		before[c.ID()] = len(messagesOf(c.snapshot(), gid))
	}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := c.Group(gid)
			for i := range n {
				if _, err := g.Send(ctx, fmt.Appendf(nil, "%s-%d", tag, i)); err != nil {
					t.Errorf("%s: Send %s-%d: %v", c.ID(), tag, i, err)
					return
				}
				if pause > 0 {
					time.Sleep(pause)
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	checkReceived(t, gid, n, tag, before, clients...)
}

// checkReceived checks that every client received, after its first
// before[id] messages, exactly the n messages tag-0... of every other
// client, in order.
func checkReceived(t *testing.T, gid []byte, n int, tag string, before map[string]int, clients ...*sdkClient) {
	t.Helper()
	for _, c := range clients {
		want := (len(clients) - 1) * n
		c.waitMessages(gid, before[c.ID()]+want)
		got := messagesOf(c.snapshot(), gid)[before[c.ID()]:]
		if len(got) != want {
			t.Fatalf("%s received %d messages tagged %s, want %d (a duplicate or a stray)", c.ID(), len(got), tag, want)
		}
		for _, o := range clients {
			var fromO, wantO []string
			for _, m := range got {
				if strings.HasPrefix(m, o.ID()+":") {
					fromO = append(fromO, m)
				}
			}
			if o == c {
				if len(fromO) != 0 {
					t.Errorf("%s received %d of its own messages", c.ID(), len(fromO))
				}
				continue
			}
			for i := range n {
				wantO = append(wantO, fmt.Sprintf("%s:%s-%d", o.ID(), tag, i))
			}
			if !slices.Equal(fromO, wantO) {
				t.Errorf("%s received from %s %d messages, not exactly %s-0..%d in order: %v", c.ID(), o.ID(), len(fromO), tag, n-1, fromO)
			}
		}
	}
}

// sameEpoch checks that the clients' groups gid are in one epoch with one
// epoch_authenticator (RFC 9420 §8.7) and returns the epoch.
func sameEpoch(t *testing.T, gid []byte, clients ...*sdkClient) uint64 {
	t.Helper()
	g0 := clients[0].Group(gid)
	ep, auth := g0.Epoch(), g0.EpochAuthenticator()
	for _, c := range clients[1:] {
		g := c.Group(gid)
		if g.Epoch() != ep || !bytes.Equal(g.EpochAuthenticator(), auth) {
			t.Fatalf("%s is at epoch %d, %s at epoch %d, or their epoch authenticators differ (%x, %x)",
				clients[0].ID(), ep, c.ID(), g.Epoch(), auth, g.EpochAuthenticator())
		}
		if !slices.Equal(g.Members(), g0.Members()) {
			t.Fatalf("%s sees members %v, %s sees %v", clients[0].ID(), g0.Members(), c.ID(), g.Members())
		}
	}
	return ep
}

// noDuplicates checks that no client received any message twice over the
// whole test (every message text is unique).
func noDuplicates(t *testing.T, gid []byte, clients ...*sdkClient) {
	t.Helper()
	for _, c := range clients {
		seen := map[string]bool{}
		for _, m := range messagesOf(c.snapshot(), gid) {
			if seen[m] {
				t.Errorf("%s received %q twice", c.ID(), m)
			}
			seen[m] = true
		}
	}
}

// TestGroupLife is the scenario, in order, against one server:
// three clients make a group and exchange 100 messages each way; one
// updates; one is removed and receives nothing more; a fourth joins by
// external Commit; two clients commit at the same time, twice.
func TestGroupLife(t *testing.T) {
	srv := startServer(t)
	ctx := ctxT(t)
	alice, bob, carol := srv.open("alice"), srv.open("bob"), srv.open("carol")

	// Three clients create a group and add each other: alice creates it
	// and adds bob, bob adds carol.
	g, err := alice.CreateGroup(ctx, client.GroupOptions{ID: []byte("e2e-sdk")})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatalf("alice adds bob: %v", err)
	}
	bob.waitFor("EventJoined", 0, kind(client.EventJoined, gid))
	if err := bob.Group(gid).Add(ctx, "carol"); err != nil {
		t.Fatalf("bob adds carol: %v", err)
	}
	if i := carol.waitFor("EventJoined", 0, kind(client.EventJoined, gid)); !slices.Equal(carol.snapshot()[i].Members, []string{"alice", "bob", "carol"}) {
		t.Fatalf("carol joined with members %v", carol.snapshot()[i].Members)
	}
	alice.waitEpoch(gid, 2)
	if ep := sameEpoch(t, gid, alice, bob, carol); ep != 2 {
		t.Fatalf("epoch %d after two Adds, want 2", ep)
	}

	// 100 messages each way: every client sends 100 while the others do,
	// and receives the other two's 200 exactly once, in order per sender.
	start := time.Now()
	exchange(t, gid, 100, "hundred", 0, alice, bob, carol)
	t.Logf("3 x 100 messages sent and 600 received in %v", time.Since(start).Round(time.Millisecond))

	// One client updates: everyone follows to the same epoch.
	if err := carol.Group(gid).Update(ctx); err != nil {
		t.Fatalf("carol Update: %v", err)
	}
	for _, c := range []*sdkClient{alice, bob} {
		c.waitEpoch(gid, 3)
	}
	if ep := sameEpoch(t, gid, alice, bob, carol); ep != 3 {
		t.Fatalf("epoch %d after the Update, want 3", ep)
	}
	exchange(t, gid, 5, "after-update", 0, alice, bob, carol)

	// One is removed: carol gets EventRemoved; her client stays open to
	// the end of the test and must receive nothing more of the group.
	if err := alice.Group(gid).Remove(ctx, "carol"); err != nil {
		t.Fatalf("alice removes carol: %v", err)
	}
	if i := carol.waitFor("EventRemoved", 0, kind(client.EventRemoved, gid)); carol.snapshot()[i].Sender != "alice" {
		t.Errorf("carol's EventRemoved names %q as the committer, want alice", carol.snapshot()[i].Sender)
	}
	bob.waitFor("carol removed", 0, func(e client.Event) bool {
		return e.Kind == client.EventMembersRemoved && bytes.Equal(e.GroupID, gid) && slices.Equal(e.Members, []string{"carol"})
	})
	if _, err := carol.Group(gid).Send(ctx, []byte("let me in")); !errors.Is(err, client.ErrRemoved) {
		t.Errorf("carol's Send after her removal: %v, want ErrRemoved", err)
	}
	exchange(t, gid, 10, "without-carol", 0, alice, bob)

	// A fourth client joins by external Commit, with a join link alice
	// gives it, and exchanges messages.
	dave := srv.open("dave")
	link, err := alice.Group(gid).CreateJoinLink(ctx, time.Hour)
	if err != nil {
		t.Fatalf("alice CreateJoinLink: %v", err)
	}
	parsed, err := client.ParseJoinLink(link.String())
	if err != nil {
		t.Fatalf("ParseJoinLink(%q): %v", link, err)
	}
	dg, err := dave.JoinWithLink(ctx, parsed)
	if err != nil {
		t.Fatalf("dave JoinWithLink: %v", err)
	}
	if got := dg.Members(); !slices.Equal(got, []string{"alice", "bob", "dave"}) {
		t.Errorf("dave's members after joining: %v", got)
	}
	for _, c := range []*sdkClient{alice, bob} {
		c.waitFor("dave joined", 0, func(e client.Event) bool {
			return e.Kind == client.EventMembersAdded && bytes.Equal(e.GroupID, gid) && slices.Equal(e.Members, []string{"dave"})
		})
	}
	sameEpoch(t, gid, alice, bob, dave)
	exchange(t, gid, 20, "with-dave", 0, alice, bob, dave)

	// Two clients commit at the same time, twice: both Commits go through
	// (the loser rebases on the winner), everyone ends in the same epoch
	// with the same epoch_authenticator, and every current member
	// decrypts every message sent after.
	eve := srv.open("eve")
	members := []*sdkClient{alice, bob, dave}
	for round, race := range []struct {
		name string
		a, b func() error
	}{
		{"bob Update | dave Update",
			func() error { return bob.Group(gid).Update(ctx) },
			func() error { return dave.Group(gid).Update(ctx) }},
		{"alice adds eve | dave Update",
			func() error { return alice.Group(gid).Add(ctx, "eve") },
			func() error { return dave.Group(gid).Update(ctx) }},
	} {
		e0 := sameEpoch(t, gid, members...)
		gate := make(chan struct{})
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, f := range []func() error{race.a, race.b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				errs[i] = f()
			}()
		}
		close(gate)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("race %q: %v", race.name, err)
		}
		if round == 1 {
			eve.waitFor("EventJoined", 0, kind(client.EventJoined, gid))
			members = append(members, eve)
		}
		for _, c := range members {
			c.waitEpoch(gid, e0+2)
		}
		if ep := sameEpoch(t, gid, members...); ep != e0+2 {
			t.Fatalf("race %q: epoch %d, want %d (two Commits from %d)", race.name, ep, e0+2, e0)
		}
		exchange(t, gid, 5, fmt.Sprintf("after-race-%d", round), 0, members...)
	}
	if got := alice.Group(gid).Members(); !slices.Equal(got, []string{"alice", "bob", "eve", "dave"}) && !slices.Equal(got, []string{"alice", "bob", "dave", "eve"}) {
		t.Errorf("final members: %v", got)
	}

	for _, c := range members {
		c.noUndecryptable()
	}
	noDuplicates(t, gid, alice, bob, carol, dave, eve)
	// carol received nothing of the group after her removal, though her
	// client was following the server all along.
	evs := carol.snapshot()
	i := slices.IndexFunc(evs, kind(client.EventRemoved, gid))
	for _, e := range evs[i+1:] {
		if bytes.Equal(e.GroupID, gid) {
			t.Errorf("carol got an event after her removal: %s", describe([]client.Event{e}))
		}
	}
	if err := carol.Sync(ctx); err != nil {
		t.Errorf("carol Sync: %v", err)
	}
	if got := len(carol.snapshot()); got != len(evs) {
		t.Errorf("carol got %d more events after a Sync: %s", got-len(evs), describe(carol.snapshot()[len(evs):]))
	}
}

// TestServerRestart: `mlsds serve` ends with SIGTERM and starts again on
// the same data while three clients are talking; no message is lost or
// delivered twice. Then it restarts while three Commits race, which all
// go through.
func TestServerRestart(t *testing.T) {
	srv := startServer(t)
	ctx := ctxT(t)
	alice, bob, carol := srv.open("alice"), srv.open("bob"), srv.open("carol")
	g, err := alice.CreateGroup(ctx, client.GroupOptions{ID: []byte("restart")})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	if err := g.Add(ctx, "bob", "carol"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*sdkClient{bob, carol} {
		c.waitFor("EventJoined", 0, kind(client.EventJoined, gid))
	}
	clients := []*sdkClient{alice, bob, carol}
	exchange(t, gid, 5, "before", 0, clients...)

	// Each client sends 40 messages, a few milliseconds apart. Once every
	// client has sent 10, the server gets SIGTERM, stays down for 300ms
	// and starts again; the clients go on sending all the while (the SDK
	// retries what meets no server), but send their last 10 only once
	// the new server runs.
	const n = 40
	before := map[string]int{}
	for _, c := range clients {
		before[c.ID()] = len(messagesOf(c.snapshot(), gid))
	}
	var ready sync.WaitGroup
	ready.Add(len(clients))
	stopping, restarted := make(chan struct{}), make(chan struct{})
	var down struct {
		sync.Mutex
		from, to time.Time
	}
	spanned := make([]atomic.Int64, len(clients)) // Sends in flight across the whole outage
	var wg sync.WaitGroup
	for k, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				switch i {
				case 10:
					ready.Done()
					<-stopping
				case 30:
					<-restarted
				}
				t0 := time.Now()
				if _, err := c.Group(gid).Send(ctx, fmt.Appendf(nil, "across-%d", i)); err != nil {
					t.Errorf("%s: Send across-%d: %v", c.ID(), i, err)
					return
				}
				down.Lock()
				if !down.from.IsZero() && t0.Before(down.from) && time.Now().After(down.to) && !down.to.IsZero() {
					spanned[k].Add(1)
				}
				down.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	ready.Wait()
	srv.stop(func() { close(stopping) })
	down.Lock()
	down.from = time.Now()
	down.Unlock()
	time.Sleep(300 * time.Millisecond)
	srv.start()
	down.Lock()
	down.to = time.Now()
	down.Unlock()
	close(restarted)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for k, c := range clients {
		if spanned[k].Load() == 0 {
			t.Errorf("no Send of %s was in flight while the server was down", c.ID())
		}
	}
	checkReceived(t, gid, n, "across", before, clients...)

	// Three Commits race for epoch 1 as the server stops again: each
	// meets the stopped server, waits for the new one, and the losers
	// rebase; all three go through, in one history.
	dave := srv.open("dave")
	gate := make(chan struct{})
	errs := make([]error, 3)
	for i, f := range []func() error{
		func() error { return alice.Group(gid).Update(ctx) },
		func() error { return bob.Group(gid).Add(ctx, "dave") },
		func() error { return carol.Group(gid).Update(ctx) },
	} {
		wg.Add(1)
		go func() { defer wg.Done(); <-gate; errs[i] = f() }()
	}
	srv.stop(func() { close(gate) })
	time.Sleep(300 * time.Millisecond)
	srv.start()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Commits across the restart: %v", err)
	}
	dave.waitFor("EventJoined", 0, kind(client.EventJoined, gid))
	clients = append(clients, dave)
	for _, c := range clients {
		c.waitEpoch(gid, 4)
	}
	if ep := sameEpoch(t, gid, clients...); ep != 4 {
		t.Fatalf("epoch %d after three Commits from epoch 1, want 4", ep)
	}
	exchange(t, gid, 5, "after", 0, clients...)
	noDuplicates(t, gid, clients...)
	for _, c := range clients {
		c.noUndecryptable()
	}
}
