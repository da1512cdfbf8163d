package ds_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// TestSubscriptionBudgets: with small byte budgets, consumers that take
// nothing (two streams of one client, one of another) hold no more than
// their budgets, per subscription, per client and in all (where a reader
// may pass the shared ones by the one message it holds), while the reader
// of the same group gets every message once and in order; once the
// stalled consumers read, they too get everything once and in order (what
// was held back comes from the store), and when they go, nothing stays
// buffered.
func TestSubscriptionBudgets(t *testing.T) {
	const (
		size     = 2000
		messages = 120
		perSub   = 12_000
		perCl    = 18_000
		total    = 30_000
	)
	e := newEnv(t, ds.Config{
		MaxMessageSize:             4096,
		SubscriptionMaxBytes:       perSub,
		ClientSubscriptionMaxBytes: perCl,
		BufferedMaxBytes:           total,
		SlowConsumerTimeout:        time.Minute, // the stalled ones stay
	})
	e.register("a", "a")
	for _, id := range []string{"reader", "stuck", "other"} {
		e.upload(e.register(id, id), 10, false)
	}
	gid := []byte("g")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"reader", "stuck", "other"}}))

	ctx, cancel := contextWithCancel()
	defer cancel()
	reader := must(e.svc.Subscribe(ctx, "reader"))
	var stalled []<-chan ds.Event
	for _, id := range []string{"stuck", "stuck", "other"} {
		stalled = append(stalled, must(e.svc.Subscribe(ctx, id)))
	}
	got := make(chan []uint64)
	go func() {
		var seqs []uint64
		for ev := range reader {
			if ev.Err != nil {
				t.Errorf("reader: %v", ev.Err)
				break
			}
			if ev.Message != nil {
				if seqs = append(seqs, ev.Message.GroupSeq); len(seqs) == messages {
					break
				}
			}
		}
		got <- seqs
	}()
	ds.BufferedForTest(e.svc)
	for range messages {
		must(sendMsg(e.svc, "a", privateTB(t, gid, 0, mls.ContentTypeApplication, size)))
	}
	want := fmt.Sprint(seqRange(1, messages))
	if seqs := <-got; fmt.Sprint(seqs) != want {
		t.Fatalf("the reader got %v, want %s", seqs, want)
	}
	time.Sleep(100 * time.Millisecond) // let the stalled ones try (not a timing assertion)
	sub, client, all := ds.BufferedForTest(e.svc)
	t.Logf("largest buffered: %d per subscription, %d per client, %d in all", sub, client, all)
	// The reader, holding nothing, may always take one message beyond
	// the shared budgets (see buffered.reserve).
	if one := int64(size + 200); sub > perSub || client > perCl || all > total+one {
		t.Errorf("buffered %d per subscription (budget %d), %d per client (%d), %d in all (%d)", sub, perSub, client, perCl, all, total)
	}
	if sub == 0 {
		t.Error("nothing was buffered: the test shows nothing")
	}
	if st := e.svc.BufferStats(); st.BackPressure == 0 {
		t.Error("no event was held back")
	}
	// The stalled consumers read now: everything, once, in order.
	for i, ch := range stalled {
		var seqs []uint64
		for ev := range ch {
			if ev.Err != nil {
				t.Fatalf("stalled %d: %v", i, ev.Err)
			}
			if ev.Message != nil {
				if seqs = append(seqs, ev.Message.GroupSeq); len(seqs) == messages {
					break
				}
			}
		}
		if fmt.Sprint(seqs) != want {
			t.Errorf("stalled %d got %v, want %s", i, seqs, want)
		}
	}
	cancel()
	for _, ch := range append(stalled, reader) {
		for range ch {
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.svc.BufferStats().Bytes != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still buffered after every subscription ended", e.svc.BufferStats().Bytes)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSlowConsumerNoNewEvents: a consumer that stops taking events is
// ended after SlowConsumerTimeout even when nothing more comes for it (its
// events wait in the channel), and what it held is released.
func TestSlowConsumerNoNewEvents(t *testing.T) {
	e := newEnv(t, ds.Config{SlowConsumerTimeout: 50 * time.Millisecond})
	e.register("a", "a")
	e.upload(e.register("b", "b"), 10, false)
	gid := []byte("g")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}))
	for range 3 {
		must(sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeApplication)))
	}
	ctx, cancel := contextWithCancel()
	defer cancel()
	ch := must(e.svc.Subscribe(ctx, "b"))
	time.Sleep(500 * time.Millisecond) // ten times the timeout (not a timing assertion)
	if st := e.svc.BufferStats(); st.Bytes != 0 || st.SlowConsumers != 1 {
		t.Errorf("after the timeout: %+v, want nothing buffered and one slow consumer", st)
	}
	var evs []ds.Event
	for ev := range ch {
		evs = append(evs, ev)
	}
	if len(evs) == 0 || evs[len(evs)-1].Err == nil {
		t.Fatalf("events %+v: want an error at the end", evs)
	}
	wantIs(t, evs[len(evs)-1].Err, ds.ErrSlowConsumer)
}
