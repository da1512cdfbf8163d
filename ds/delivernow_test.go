package ds_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// TestDeliverNow: a message accepted on this node goes from the accepting
// goroutine straight to a subscriber whose consumer waits for it, in
// order and once, without waking the subscription's worker goroutine;
// the worker still takes over where it must (here, after a Commit, whose
// successors need the windows read again).
func TestDeliverNow(t *testing.T) {
	e := newEnv(t, ds.Config{PollInterval: time.Hour})
	a := e.register("a", "a")
	b := e.register("b", "b")
	c := e.register("c", "c")
	kpB := e.upload(b, 1, false)[0]
	kpC := e.upload(c, 1, false)[0]
	g := e.createGroup(a)
	add, next := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kpB)}, nil)
	must(sendBundle(e.svc, "a", ds.CommitBundle{Commit: add, Welcome: welcome(t, ref(t, kpB))}))
	g.st = next

	ctx, cancel := contextWithCancel()
	defer cancel()
	ch, err := e.svc.Subscribe(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	collect(t, ch, untilCaughtUp)
	// The consumer: always waiting on the channel, as a server's stream
	// handler is between events.
	got := make(chan ds.Event, 64)
	go func() {
		for ev := range ch {
			got <- ev
		}
		close(got)
	}()
	next1 := func(i int) ds.Event {
		t.Helper()
		select {
		case ev := <-got:
			return ev
		case <-time.After(20 * time.Second): // a hang, not a speed check
			t.Fatalf("message %d: nothing delivered", i)
		}
		return ds.Event{}
	}

	// A first message lets the worker finish its own wake-ups (the
	// Welcome's client topic, the first fill of the group's tail).
	r := must(sendMsg(e.svc, "a", private(t, g.id, 1, mls.ContentTypeApplication)))
	if ev := next1(0); ev.Message == nil || ev.Message.GroupSeq != r.GroupSeq {
		t.Fatalf("first event %+v, want message %d", ev, r.GroupSeq)
	}
	time.Sleep(200 * time.Millisecond) // let the worker park and end

	const n = 20
	before := ds.WorkerRunsForTest(e.svc)
	for i := range n {
		data := private(t, g.id, 1, mls.ContentTypeApplication)
		r := must(sendMsg(e.svc, "a", data))
		ev := next1(i)
		if ev.Message == nil || ev.Message.GroupSeq != r.GroupSeq || !bytes.Equal(ev.Message.Data, data) {
			t.Fatalf("message %d: got %+v, want GroupSeq %d", i, ev, r.GroupSeq)
		}
	}
	// Each of the n messages woke the worker before; a stray wake-up
	// (a lost race of the consumer back to its receive) may remain.
	if runs := ds.WorkerRunsForTest(e.svc) - before; runs > n/4 {
		t.Fatalf("%d messages woke the subscription's worker %d times; want them delivered by the accepting goroutine", n, runs)
	}

	// After a Commit, the worker reads the windows again and delivers
	// what follows, in order.
	addC, next2 := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kpC)}, nil)
	rc := must(sendBundle(e.svc, "a", ds.CommitBundle{Commit: addC, Welcome: welcome(t, ref(t, kpC))}))
	g.st = next2
	if ev := next1(n); ev.Message == nil || ev.Message.GroupSeq != rc.GroupSeq {
		t.Fatalf("after the messages: %+v, want the Commit %d", ev, rc.GroupSeq)
	}
	for i := range 3 {
		r := must(sendMsg(e.svc, "a", private(t, g.id, 2, mls.ContentTypeApplication)))
		if ev := next1(n + 1 + i); ev.Message == nil || ev.Message.GroupSeq != r.GroupSeq {
			t.Fatalf("after the Commit, message %d: %+v, want GroupSeq %d", i, ev, r.GroupSeq)
		}
	}
	select {
	case ev := <-got:
		t.Fatalf("an extra event: %+v", ev)
	default:
	}
}
