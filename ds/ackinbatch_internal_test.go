package ds

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// gatedBoth is a gatedStore that is also an AckingAccepter: the Acks of a
// batch go to an ungated gatedAcker after its messages, and each call is
// recorded.
type gatedBoth struct {
	*gatedStore
	acker *gatedAcker

	cmu   sync.Mutex
	calls []bothCall
}

type bothCall struct {
	msgs []string
	acks []AckParams
}

func newGatedBoth() *gatedBoth {
	a := newGatedAcker()
	close(a.gate)
	a.entered = make(chan struct{}, 1000)
	return &gatedBoth{gatedStore: newGatedStore(), acker: a}
}

func (g *gatedBoth) AcceptMessagesAndAcks(ctx context.Context, ps []AcceptParams, acks []AckParams) ([]AcceptResult, []error, []error) {
	res, errs := g.AcceptMessages(ctx, ps)
	ackErrs := g.acker.AckMany(ctx, acks)
	var msgs []string
	for _, p := range ps {
		msgs = append(msgs, string(p.Data))
	}
	g.cmu.Lock()
	g.calls = append(g.calls, bothCall{msgs, append([]AckParams(nil), acks...)})
	g.cmu.Unlock()
	return res, errs, ackErrs
}

// acksQueued waits until n Acks wait in the batcher's queue.
func acksQueued(t *testing.T, b *batcher, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.mu.Lock()
		k := 0
		for _, r := range b.acks {
			if !r.withdrawn {
				k++
			}
		}
		b.mu.Unlock()
		if k == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d Acks queued, want %d", k, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestAcksInMessageBatch: with an AckingAccepter, the Acks that queue
// while a batch commits go into the next batch's transaction with the
// messages that queued meanwhile (collapsed per cursor, as the coalescer
// does), an Ack whose collapsed Ack went beyond the head comes again in
// the batch after, an Ack withdrawn before its batch is not applied, and
// Acks alone still commit.
func TestAcksInMessageBatch(t *testing.T) {
	st := newGatedBoth()
	var n notifyLog
	s := &Service{store: st}
	s.batcher = newBatcher(st, n.notify)
	b := s.batcher
	if b.both == nil {
		t.Fatal("the batcher did not take the store as an AckingAccepter")
	}

	first := acceptAsync(b, bg(), "m0")
	<-st.entered // m0 holds the engine
	type ack struct {
		client, group string
		seq           uint64
		ch            <-chan error
	}
	var acks []*ack
	for _, a := range []ack{
		{client: "c1", group: "g", seq: 3}, {client: "c1", group: "g", seq: 7},
		{client: "c3", group: "g", seq: 8}, {client: "c3", group: "g", seq: 50}, // 50 is beyond g's head
		{client: "stranger", group: "g", seq: 1},
	} {
		a.ch = ackAsync(s, bg(), a.client, a.group, a.seq)
		acks = append(acks, &a)
		acksQueued(t, b, len(acks))
	}
	ctx, cancel := context.WithCancel(bg())
	withdrawn := ackAsync(s, ctx, "c2", "g", 4)
	acksQueued(t, b, len(acks)+1)
	cancel()
	if err := <-withdrawn; !errors.Is(err, context.Canceled) {
		t.Errorf("withdrawn Ack: %v, want context.Canceled", err)
	}
	second := acceptAsync(b, bg(), "m1")
	queued(t, b, 1)

	st.gate <- struct{}{}
	if o := <-first; o.err != nil {
		t.Fatalf("m0: %v", o.err)
	}
	<-st.entered // m1 with the Acks
	st.gate <- struct{}{}
	<-st.entered // c3's Ack within the head, again, alone
	st.gate <- struct{}{}
	if o := <-second; o.err != nil {
		t.Errorf("m1: %v", o.err)
	}
	errs := make([]error, len(acks))
	for i, a := range acks {
		errs[i] = <-a.ch
	}
	for _, i := range []int{0, 1, 2} {
		if errs[i] != nil {
			t.Errorf("Ack(%s, %s, %d): %v", acks[i].client, acks[i].group, acks[i].seq, errs[i])
		}
	}
	var beyond *AckBeyondHeadError
	if !errors.As(errs[3], &beyond) || beyond.Seq != 50 || beyond.LastSeq != 10 {
		t.Errorf("Ack beyond the head: %v, want an AckBeyondHeadError of 50 after 10", errs[3])
	}
	if !errors.Is(errs[4], ErrNotMember) {
		t.Errorf("stranger's Ack: %v, want ErrNotMember", errs[4])
	}
	if c := st.acker.cursor("c1", "g"); c != 7 {
		t.Errorf("c1's cursor = %d, want 7", c)
	}
	if c := st.acker.cursor("c3", "g"); c != 8 {
		t.Errorf("c3's cursor = %d, want 8", c)
	}
	if c := st.acker.cursor("c2", "g"); c != 0 {
		t.Errorf("c2's withdrawn Ack moved its cursor to %d", c)
	}
	idle(t, b)
	st.cmu.Lock()
	got := fmt.Sprint(st.calls)
	st.cmu.Unlock()
	want := fmt.Sprint([]bothCall{
		{[]string{"m1"}, []AckParams{{"c1", []byte("g"), 7, true}, {"c3", []byte("g"), 50, true}, {"stranger", []byte("g"), 1, true}}},
		{nil, []AckParams{{"c3", []byte("g"), 8, true}}},
	})
	if got != want {
		t.Errorf("calls with Acks = %s, want %s", got, want)
	}
	if fmt.Sprint(st.batches) != "[[m0] [m1] []]" {
		t.Errorf("message batches = %v, want [m0] alone (nothing else was queued), then m1 with the Acks, then none", st.batches)
	}
	ackers.mu.Lock()
	_, used := ackers.m[s]
	ackers.mu.Unlock()
	if used {
		t.Error("the Acks went through the separate coalescer")
	}
}
