package sdk

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/client"
)

// The tests in this file show SDK behaviours found while writing the
// `mlsds client` commands that were wrong or risky, and are fixed now.

// TestTwoClientsOneState: a state file is used by one Client at a time.
// Two Clients on one state would both follow the server and write the
// same group rows, and each would seal with a ratchet the other also uses
// (key and nonce reuse). The second Open fails with ErrStateInUse.
func TestTwoClientsOneState(t *testing.T) {
	srv := startServer(t)
	alice := srv.open("alice")
	second, err := client.Open(context.Background(), client.Config{Server: srv.url, StatePath: alice.path, Logger: quiet})
	if err == nil {
		second.Close()
		t.Fatal("a second Client opened the state file of a Client that is open")
	}
	if !errors.Is(err, client.ErrStateInUse) {
		t.Fatalf("second Open: %v; want ErrStateInUse", err)
	}
}

// TestSendBeforeRemovalProcessed: a removed client that sends before its
// client processed the Commit that removed it gets ErrRemoved, not the
// server's permission_denied: the SDK finds the Commit in the group's log.
func TestSendBeforeRemovalProcessed(t *testing.T) {
	srv := startServer(t)
	ctx := ctxT(t)
	alice, carol := srv.open("alice"), srv.open("carol")
	g, err := alice.CreateGroup(ctx, client.GroupOptions{ID: []byte("bug")})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, "carol"); err != nil {
		t.Fatal(err)
	}
	carol.waitFor("EventJoined", 0, kind(client.EventJoined, g.ID()))
	carol.Close()
	if err := g.Remove(ctx, "carol"); err != nil {
		t.Fatal(err)
	}
	// carol comes back and sends at once.
	c, err := client.Open(ctx, client.Config{Server: srv.url, StatePath: carol.path, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		for range c.Events() {
		}
	}()
	_, err = c.Group(g.ID()).Send(ctx, []byte("am I in?"))
	if !errors.Is(err, client.ErrRemoved) {
		t.Fatalf("Send by a removed member: %v; want ErrRemoved", err)
	}
}

// TestLeaveLostInRace: Leave sends a Remove proposal and returns once the
// server accepted it. If another member's Commit of the same epoch, made
// before that member saw the proposal, is ordered after it, the proposal
// is discarded with the epoch (RFC 9420 §12.4: proposals not covered by
// the Commit do not carry over). The client that leaves then proposes its
// removal again in the new epoch, and is removed in every round.
func TestLeaveLostInRace(t *testing.T) {
	srv := startServer(t)
	ctx := ctxT(t)
	alice, bob, carol := srv.open("alice"), srv.open("bob"), srv.open("carol")
	g, err := alice.CreateGroup(ctx, client.GroupOptions{ID: []byte("leave-race")})
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
	for round := range 5 {
		n0 := len(carol.snapshot())
		gate := make(chan struct{})
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, f := range []func() error{
			func() error { return carol.Group(gid).Leave(ctx) },
			func() error { return bob.Group(gid).Update(ctx) },
		} {
			wg.Add(1)
			go func() { defer wg.Done(); <-gate; errs[i] = f() }()
		}
		close(gate)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		// Leave is immediate for carol (EventLeft); the other members
		// commit her removal even when the Update ended the epoch of her
		// Remove proposal.
		carol.waitFor("EventLeft", n0, kind(client.EventLeft, gid))
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) && slices.Contains(alice.Group(gid).Members(), "carol") {
			alice.Sync(ctx)
			time.Sleep(20 * time.Millisecond)
		}
		if slices.Contains(alice.Group(gid).Members(), "carol") {
			t.Fatalf("round %d: carol left, but 5s later alice still has her in the group (%v at epoch %d)",
				round, alice.Group(gid).Members(), alice.Group(gid).Epoch())
		}
		// Carol is out; add her again for another round. (Her Welcome may
		// come before Add returns: count her events first.)
		n := len(carol.snapshot())
		if err := alice.Group(gid).Add(ctx, "carol"); err != nil {
			t.Fatal(err)
		}
		carol.waitFor("EventJoined again", n, kind(client.EventJoined, gid))
	}
}
