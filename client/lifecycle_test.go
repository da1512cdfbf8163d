package client

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestStateLock: a state file is used by one Client at a time. A second
// Open of it fails with ErrStateInUse and leaves the first one working;
// once the first is closed the state opens again. A lock of the state's
// ".lock" file (the mlsds CLI's) does not stand in the way.
func TestStateLock(t *testing.T) {
	e := startEnv(t)
	ctx := ctxT(t)
	dir := t.TempDir()
	alice := e.open("alice", dir)
	bob := e.client("bob")

	second, err := Open(ctx, Config{Server: e.url, StatePath: alice.path, Logger: quiet})
	if err == nil {
		second.Close()
		t.Fatal("a second Client opened the state file of an open Client")
	}
	if !errors.Is(err, ErrStateInUse) {
		t.Fatalf("second Open: %v; want ErrStateInUse", err)
	}
	// The first one goes on.
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, g.ID()))
	if _, err := g.Send(ctx, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	bob.waitMessages(g.ID(), 1)
	alice.Close()

	// The CLI locks <state>.lock the same way, then opens the Client.
	cli, err := lockFile(ctx, alice.path+".lock")
	if err != nil {
		t.Fatal(err)
	}
	defer cli.unlock()
	again := e.open("alice", dir)
	if again.Group(g.ID()) == nil {
		t.Fatal("the reopened state has no group")
	}
}

// TestStateLockProcessDeath: the lock goes with the process that holds it,
// however it ends.
func TestStateLockProcessDeath(t *testing.T) {
	if os.Getenv("MLSDS_TEST_LOCK_HOLDER") != "" {
		l, err := lockState(context.Background(), os.Getenv("MLSDS_TEST_LOCK_HOLDER"))
		if err != nil {
			os.Exit(3)
		}
		_ = l
		os.Stdout.WriteString("locked\n")
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	path := filepath.Join(t.TempDir(), "state.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestStateLockProcessDeath$")
	cmd.Env = append(os.Environ(), "MLSDS_TEST_LOCK_HOLDER="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := out.Read(buf); err != nil || string(buf) != "locked\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the helper process did not take the lock: %q, %v", buf, err)
	}
	if _, err := openStore(context.Background(), path); !errors.Is(err, ErrStateInUse) {
		t.Errorf("open while another process holds the state: %v; want ErrStateInUse", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	s, err := openStore(context.Background(), path)
	if err != nil {
		t.Fatalf("open after the holder was killed: %v", err)
	}
	s.Close()
}

// TestSendBeforeRemovalProcessed: a client removed while it was stopped
// sends at once after Open, before its stream brought the Commit that
// removed it. The server refuses with NotMember; the client finds the
// Commit in the group's log and returns ErrRemoved.
func TestSendBeforeRemovalProcessed(t *testing.T) {
	e := startEnv(t)
	ctx := ctxT(t)
	dir := t.TempDir()
	alice, bob, carol := e.client("alice"), e.client("bob"), e.open("carol", dir)
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	carol.Close()
	if err := g.Remove(ctx, "carol"); err != nil {
		t.Fatal(err)
	}
	// Keep the stream from processing anything: only the Send finds out.
	// The hook goes in before the stream starts.
	release := make(chan struct{})
	testHookOpened = func(c *Client) {
		hook := func() {
			select {
			case <-release:
			case <-c.ctx.Done():
			}
		}
		c.testHookStream.Store(&hook)
	}
	carol2 := e.open("carol", dir)
	testHookOpened = nil
	cg := carol2.Group(gid)
	if cg.Removed() {
		t.Fatal("carol knows of her removal before processing anything")
	}
	if _, err := cg.Send(ctx, []byte("am I in?")); !errors.Is(err, ErrRemoved) {
		t.Fatalf("Send by a removed member: %v; want ErrRemoved", err)
	}
	if !cg.Removed() {
		t.Error("Group.Removed is false after ErrRemoved")
	}
	close(release)
	carol2.waitFor("EventRemoved", 0, kind(EventRemoved, gid))
	if err := cg.WaitRemoved(ctx); err != nil {
		t.Errorf("WaitRemoved: %v", err)
	}
	// Another member's error stays what it is.
	if _, err := bob.Group(gid).Send(ctx, []byte("still in")); err != nil {
		t.Fatal(err)
	}
}

// TestLeaveLostInRace: carol leaves (the server takes her Remove proposal
// and stops delivering the group to her), then a Commit that bob made
// without the proposal (his stream held back) ends the epoch and the
// proposal with it. Alice and bob commit carol's removal anyway: her
// proposal was made in an epoch that ended without it, and the server's
// roster no longer lists her. A Leave cut short by a restart (the intent
// saved, the server not told) is finished on Open.
func TestLeaveLostInRace(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "running", true: "restart"}[restart], func(t *testing.T) {
			e := startEnv(t)
			ctx := ctxT(t)
			dir := t.TempDir()
			alice, bob, carol := e.client("alice"), e.client("bob"), e.open("carol", dir)
			g := group3(t, e, GroupOptions{}, alice, bob, carol)
			gid := g.ID()

			// Alice (the one to commit proposals) and bob see nothing
			// until released.
			release := make(chan struct{})
			for _, c := range []*tclient{alice, bob} {
				hook := func() {
					select {
					case <-release:
					case <-c.ctx.Done():
					}
				}
				c.testHookStream.Store(&hook)
			}
			if restart {
				// Carol stops after saving her intent, before telling
				// the server.
				cg := carol.Group(gid)
				cg.mu.Lock()
				cg.leaving = true
				err := cg.persist(nil)
				cg.mu.Unlock()
				if err != nil {
					t.Fatal(err)
				}
				carol.Close()
				carol = e.open("carol", dir)
			} else {
				if err := carol.Group(gid).Leave(ctx); err != nil {
					t.Fatal(err)
				}
			}
			cg := carol.Group(gid)
			left := carol.waitFor("EventLeft", 0, kind(EventLeft, gid))
			if cg.Leaving() || !cg.Removed() {
				t.Errorf("after leaving: Leaving %v, Removed %v", cg.Leaving(), cg.Removed())
			}
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := cg.WaitRemoved(wctx); err != nil {
				t.Errorf("WaitRemoved: %v", err)
			}
			// Bob's Update takes the epoch without the proposal.
			bg := bob.Group(gid)
			bg.mu.Lock()
			bg.proposals = nil // as if he had not seen it yet
			p, err := bg.makeCommit(ctx, intent{update: true}, nil)
			bg.mu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			bg.mu.Lock()
			bg.pending = p
			err = bg.sendPendingLocked(ctx)
			bg.mu.Unlock()
			if err != nil {
				t.Fatalf("bob's Commit without the proposal: %v", err)
			}
			if got := bg.Members(); !slices.Contains(got, "carol") {
				t.Fatalf("bob's Commit removed carol already: %v", got)
			}
			close(release)

			for _, c := range []*tclient{alice, bob} {
				c.waitFor("carol removed", 0, func(e Event) bool {
					return e.Kind == EventMembersRemoved && slices.Equal(e.Members, []string{"carol"})
				})
			}
			waitEpoch(t, bob, gid, 3)
			sameEpoch(t, gid, alice, bob)
			exchange(t, gid, 1, "without-carol", alice, bob)
			for _, ev := range carol.snapshot()[left+1:] {
				if bytes.Equal(ev.GroupID, gid) {
					t.Errorf("carol got an event after EventLeft: %v", describe([]Event{ev}))
				}
			}
		})
	}
}

// TestWaitCaughtUp: after Open, WaitCaughtUp returns once the messages
// sent while the client was stopped are processed and their events
// queued.
func TestWaitCaughtUp(t *testing.T) {
	e := startEnv(t)
	ctx := ctxT(t)
	dir := t.TempDir()
	alice, bob := e.client("alice"), e.open("bob", dir)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, g.ID()))
	if err := bob.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	bob.Close()
	const n = 5
	for range n {
		if _, err := g.Send(ctx, []byte("while away")); err != nil {
			t.Fatal(err)
		}
	}
	c, err := Open(ctx, Config{Server: e.url, StatePath: bob.path, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	// The events are queued: Close delivers them and closes the channel.
	go c.Close()
	got := 0
	for ev := range c.Events() {
		if ev.Kind == EventMessage {
			got++
		}
	}
	if got != n {
		t.Errorf("caught up with %d messages, want %d", got, n)
	}
	if err := c.WaitCaughtUp(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("WaitCaughtUp after Close: %v; want ErrClosed", err)
	}
}
