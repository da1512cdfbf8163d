package postgres

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/internal/pgtest"
)

// countingStore records how many pruning steps run at once, over all the
// Stores that share one counter.
type countingStore struct {
	ds.Store
	inside, most *atomic.Int32
}

func (c *countingStore) step() func() {
	n := c.inside.Add(1)
	for {
		m := c.most.Load()
		if n <= m || c.most.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(2 * time.Millisecond) // let the other node try meanwhile
	return func() { c.inside.Add(-1) }
}

func (c *countingStore) PruneMessages(ctx context.Context, p ds.PruneParams) (ds.PruneResult, error) {
	defer c.step()()
	return c.Store.PruneMessages(ctx, p)
}

func (c *countingStore) PruneKeyPackages(ctx context.Context, p ds.PruneParams) (ds.PruneResult, error) {
	defer c.step()()
	return c.Store.PruneKeyPackages(ctx, p)
}

// TestPrunersOnTwoNodes: two nodes (two Stores, two Services) on one
// database never prune at the same time: the advisory lock of one keeps
// the other out until it is released.
func TestPrunersOnTwoNodes(t *testing.T) {
	url := pgtest.NewDatabase(t)
	a, b := open(t, url, Options{}), open(t, url, Options{})

	unlock, err := a.LockPruner(ctx())
	if err != nil {
		t.Fatal(err)
	}
	if u, err := b.LockPruner(ctx()); !errors.Is(err, ds.ErrPrunerBusy) {
		if u != nil {
			u()
		}
		t.Fatalf("LockPruner on node B while A holds it: %v, want ErrPrunerBusy", err)
	}
	unlock()
	u, err := b.LockPruner(ctx())
	if err != nil {
		t.Fatalf("LockPruner on node B after A released it: %v", err)
	}
	u()

	var inside, most atomic.Int32
	cfg := ds.Config{PruneInterval: -1, PrunePause: time.Millisecond, RequestsPerSecond: -1}
	nodes := []*ds.Service{
		ds.New(&countingStore{Store: a, inside: &inside, most: &most}, cfg),
		ds.New(&countingStore{Store: b, inside: &inside, most: &most}, cfg),
	}
	var busy atomic.Int32
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				_, err := n.Prune(ctx())
				if errors.Is(err, ds.ErrPrunerBusy) {
					busy.Add(1)
				} else if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Errorf("%d pruning steps ran at once on two nodes, want 1", most.Load())
	}
	st := nodes[0].PruneStats()
	t.Logf("node A: %d sweeps, %d left to B; %d refusals in all", st.Runs, st.Skipped, busy.Load())
}
