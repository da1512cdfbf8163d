package ds_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// usageCounter counts the daily-usage writes that reach the store.
type usageCounter struct {
	ds.Store
	adds, charges atomic.Int64
	mu            sync.Mutex
	batches       [][]ds.DailyUsage
}

func (c *usageCounter) AddDailyUsage(ctx context.Context, us []ds.DailyUsage) error {
	c.adds.Add(1)
	c.mu.Lock()
	c.batches = append(c.batches, us)
	c.mu.Unlock()
	return c.Store.AddDailyUsage(ctx, us)
}

func (c *usageCounter) ChargeDailyUsage(ctx context.Context, u, limit ds.DailyUsage) (ds.DailyUsage, error) {
	c.charges.Add(1)
	return c.Store.ChargeDailyUsage(ctx, u, limit)
}

// TestDailyBytesBatched: accepted messages cost no store write each; the
// node writes one sum per client when it flushes, and the sum survives a
// restart.
func TestDailyBytesBatched(t *testing.T) {
	e := newEnv(t, ds.Config{MaxBytesPerDay: 1 << 20, QuotaFlushInterval: time.Hour})
	e.register("a", "a")
	e.register("b", "b")
	gid := []byte("batched")
	if err := e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}); err != nil {
		t.Fatal(err)
	}
	st := &usageCounter{Store: e.store}
	svc := ds.New(st, e.cfg)
	const n = 40
	var total atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		sender := []string{"a", "b"}[i%2]
		wg.Go(func() {
			msg := private(t, gid, 0, mls.ContentTypeApplication)
			if _, err := svc.Send(bg, sender, msg); err != nil {
				t.Error(err)
				return
			}
			total.Add(int64(len(msg)))
		})
	}
	wg.Wait()
	if got := st.adds.Load() + st.charges.Load(); got != 0 {
		t.Fatalf("%d sends wrote the daily usage %d times before any flush, want 0", n, got)
	}
	if got := svc.QuotaStats().BytesAccepted; got != total.Load() {
		t.Errorf("QuotaStats.BytesAccepted = %d, want %d", got, total.Load())
	}
	if err := svc.FlushQuotas(bg); err != nil {
		t.Fatal(err)
	}
	if len(st.batches) != 1 || len(st.batches[0]) != 2 {
		t.Fatalf("one flush wrote %v, want one batch of one sum per client", st.batches)
	}
	day := ds.UsageDay(e.clock.Now())
	a, _ := e.store.DailyUsage(bg, "a", day)
	b, _ := e.store.DailyUsage(bg, "b", day)
	if a.Bytes+b.Bytes != total.Load() {
		t.Errorf("the store counts %d + %d bytes, want %d", a.Bytes, b.Bytes, total.Load())
	}
	// Nothing left to write: a second flush writes nothing.
	if err := svc.FlushQuotas(bg); err != nil || st.adds.Load() != 1 {
		t.Errorf("second flush: %v, %d writes in all", err, st.adds.Load())
	}
	e.reopen()
	if a2, _ := e.store.DailyUsage(bg, "a", day); a2.Bytes != a.Bytes {
		t.Errorf("after a restart: %d bytes, want %d", a2.Bytes, a.Bytes)
	}
}

// TestDailyBytesConcurrent: on one node, concurrent sends cannot pass the
// quota together (each reserves its bytes before it is accepted), and the
// refused ones leave nothing in the group.
func TestDailyBytesConcurrent(t *testing.T) {
	e := newEnv(t, ds.Config{})
	e.register("a", "a")
	gid := []byte("concurrent")
	if err := e.createOpaque("a", ds.CreateGroup{GroupID: gid}); err != nil {
		t.Fatal(err)
	}
	size := len(private(t, gid, 0, mls.ContentTypeApplication))
	const quota, n = 10, 30
	cfg := e.cfg
	cfg.MaxBytesPerDay = int64(quota * size)
	svc := ds.New(e.store, cfg)
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			_, err := svc.Send(bg, "a", private(t, gid, 0, mls.ContentTypeApplication))
			if err == nil {
				ok.Add(1)
				return
			}
			qe := wantErr[*ds.QuotaExceededError](t, err)
			if qe.What != ds.QuotaBytesPerDay || qe.RetryAfter <= 0 || qe.RetryAfter > 24*time.Hour {
				t.Errorf("refusal %+v", qe)
			}
			refused.Add(1)
		})
	}
	wg.Wait()
	if ok.Load() != quota || refused.Load() != n-quota {
		t.Fatalf("%d sends accepted and %d refused under a quota of %d messages, want %d and %d", ok.Load(), refused.Load(), quota, quota, n-quota)
	}
	head, err := e.store.Group(bg, gid)
	if err != nil || head.LastSeq != quota {
		t.Errorf("the group holds %d messages (%v), want %d", head.LastSeq, err, quota)
	}
}
