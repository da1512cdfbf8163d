package client

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/server"
)

// fakeClock is a settable ds.Config.Now.
type fakeClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// TestPrunedRejoin: bob is offline for longer than the server's retention
// while alice writes and commits. The server prunes what bob never got;
// when bob comes back he learns it (EventPruned), rejoins the transparent
// group by himself (EventRejoined, for the reason ErrPruned), and the two
// talk again.
func TestPrunedRejoin(t *testing.T) {
	clock := &fakeClock{}
	e := startEnv(t, func(c *ds.Config, _ *server.Config) {
		c.Now = clock.now
		c.Retention = time.Hour
		c.PruneInterval = 20 * time.Millisecond
		c.PrunePause = time.Millisecond
	})
	alice, carol := e.client("alice"), e.client("carol")
	bobDir := t.TempDir()
	bob := e.open("bob", bobDir)
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	exchange(t, gid, 1, "before", alice, bob, carol)

	if err := bob.Close(); err != nil {
		t.Fatal(err)
	}
	// While bob is away: messages and a Commit he will never get.
	for _, text := range []string{"one", "two"} {
		if _, err := g.Send(ctx, []byte(text)); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Update(ctx); err != nil {
		t.Fatal(err)
	}
	waitEpoch(t, carol, gid, 2)
	carol.waitMessages(gid, 3) // "before" of alice, "one", "two"

	// Past the retention, the pruner deletes them although bob never
	// acknowledged them: alice's Fetch from the start tells.
	clock.advance(2 * time.Hour)
	var oldest uint64
	for deadline := time.Now().Add(30 * time.Second); oldest == 0; {
		_, err := alice.rpc.groups.Fetch(ctx, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid, FromSeq: 1}))
		if err != nil {
			if oldest = prunedFrom(err); oldest == 0 {
				t.Fatalf("Fetch: %v", err)
			}
			if connect.CodeOf(err) != connect.CodeOutOfRange {
				t.Errorf("Pruned came with code %v, want OUT_OF_RANGE", connect.CodeOf(err))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing was pruned past the retention")
		}
		time.Sleep(20 * time.Millisecond)
	}

	bob = e.open("bob", bobDir)
	p := bob.waitFor("EventPruned", 0, kind(EventPruned, gid))
	if ev := bob.snapshot()[p]; !errors.Is(ev.Err, ErrPruned) || ev.Seq < oldest {
		t.Errorf("EventPruned: %v; want Err wrapping ErrPruned and Seq >= %d", describe([]Event{ev}), oldest)
	}
	r := bob.waitFor("EventRejoined", p+1, kind(EventRejoined, gid))
	if ev := bob.snapshot()[r]; !errors.Is(ev.Err, ErrPruned) || !slices.Equal(ev.Members, []string{"alice", "bob", "carol"}) {
		t.Errorf("EventRejoined: %v; want Err wrapping ErrPruned and the three members", describe([]Event{ev}))
	}
	bob.noUndecryptable()
	for _, c := range []*tclient{alice, carol} {
		waitEpoch(t, c, gid, 3)
	}
	exchange(t, gid, 2, "after", alice, bob, carol)
}
