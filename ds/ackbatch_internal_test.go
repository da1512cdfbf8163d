package ds

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// gatedAcker is a Store whose AckMany applies Acks to cursors in memory,
// records each batch and, while gated, waits for the test to let it go.
type gatedAcker struct {
	Store // nil: only AckMany is used

	mu      sync.Mutex
	last    map[string]uint64    // each group's last GroupSeq
	cursors map[[2]string]uint64 // by client, group
	batches [][]AckParams
	panicOn string // a client whose Ack makes AckMany panic

	entered chan struct{} // receives when a batch reaches the store
	gate    chan struct{} // a batch waits for a value (or close)
}

func newGatedAcker() *gatedAcker {
	return &gatedAcker{
		last:    map[string]uint64{"g": 10, "h": 5},
		cursors: map[[2]string]uint64{{"c1", "g"}: 0, {"c2", "g"}: 0, {"c3", "g"}: 0, {"c1", "h"}: 0},
		entered: make(chan struct{}, 100),
		gate:    make(chan struct{}, 100),
	}
}

func (g *gatedAcker) AckMany(_ context.Context, ps []AckParams) []error {
	g.entered <- struct{}{}
	<-g.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	g.batches = append(g.batches, append([]AckParams(nil), ps...))
	errs := make([]error, len(ps))
	for i, p := range ps {
		if p.ClientID == g.panicOn {
			panic("engine bug")
		}
		if p.CheckHead {
			last, ok := g.last[string(p.GroupID)]
			if !ok {
				errs[i] = ErrNotFound
				continue
			}
			if p.Seq > last {
				errs[i] = &AckBeyondHeadError{Seq: p.Seq, LastSeq: last}
				continue
			}
		}
		k := [2]string{p.ClientID, string(p.GroupID)}
		c, ok := g.cursors[k]
		if !ok {
			errs[i] = ErrNotMember
			continue
		}
		g.cursors[k] = max(c, p.Seq)
	}
	return errs
}

func (g *gatedAcker) cursor(client, group string) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cursors[[2]string{client, group}]
}

// waitQueued waits until n Acks of s are queued (not withdrawn).
func waitQueued(t *testing.T, s *Service, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ackers.mu.Lock()
		got := 0
		if a := ackers.m[s]; a != nil {
			for _, r := range a.queue {
				if !r.withdrawn {
					got++
				}
			}
		}
		ackers.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d Acks queued, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// ackIdle reports whether s has no entry in the coalescer, once its
// committer's linger (committerLinger) has passed, waiting up to 10s.
func ackIdle(s *Service) bool {
	deadline := time.Now().Add(10 * time.Second)
	for {
		ackers.mu.Lock()
		_, busy := ackers.m[s]
		ackers.mu.Unlock()
		if !busy || time.Now().After(deadline) {
			return !busy
		}
		time.Sleep(time.Millisecond)
	}
}

func ackAsync(s *Service, ctx context.Context, client, group string, seq uint64) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- s.ackDurably(ctx, client, []byte(group), seq) }()
	return ch
}

func TestAckCoalescer(t *testing.T) {
	st := newGatedAcker()
	s := &Service{store: st}

	// The first Ack commits alone (nothing else was queued) and holds the
	// engine; the others queue behind it.
	first := ackAsync(s, bg(), "c1", "h", 1)
	<-st.entered
	type ack struct {
		client, group string
		seq           uint64
		ch            <-chan error
	}
	var acks []*ack
	for _, a := range []ack{
		{client: "c1", group: "g", seq: 3}, {client: "c1", group: "g", seq: 7}, {client: "c1", group: "g", seq: 5},
		{client: "c2", group: "g", seq: 2},
		{client: "stranger", group: "g", seq: 4},
		{client: "c1", group: "nope", seq: 1},
		{client: "c3", group: "g", seq: 8}, {client: "c3", group: "g", seq: 50}, // 50 is beyond g's head
	} {
		a.ch = ackAsync(s, bg(), a.client, a.group, a.seq)
		acks = append(acks, &a)
		waitQueued(t, s, len(acks)) // in this order
	}
	st.gate <- struct{}{}
	if err := <-first; err != nil {
		t.Fatalf("first Ack: %v", err)
	}
	// The second batch: one Ack per cursor, at its highest Seq, in the
	// order of their first Acks.
	<-st.entered
	st.gate <- struct{}{}
	// The third: c3's Ack within the head, whose collapsed Ack (50) was
	// refused, again.
	<-st.entered
	st.gate <- struct{}{}
	errs := make([]error, len(acks))
	for i, a := range acks {
		errs[i] = <-a.ch
	}
	for _, i := range []int{0, 1, 2, 3, 6} {
		if errs[i] != nil {
			t.Errorf("Ack(%s, %s, %d): %v", acks[i].client, acks[i].group, acks[i].seq, errs[i])
		}
	}
	if !errors.Is(errs[4], ErrNotMember) || !errors.Is(errs[5], ErrNotFound) {
		t.Errorf("refusals: %v, %v; want ErrNotMember, ErrNotFound", errs[4], errs[5])
	}
	var beyond *AckBeyondHeadError
	if !errors.As(errs[7], &beyond) || beyond.Seq != 50 || beyond.LastSeq != 10 || !errors.Is(errs[7], ErrInvalidArgument) {
		t.Errorf("Ack beyond the head: %v, want an AckBeyondHeadError of 50 after 10", errs[7])
	}
	if c := st.cursor("c1", "g"); c != 7 {
		t.Errorf("c1's cursor after Acks 3, 7, 5 = %d, want 7", c)
	}
	if c := st.cursor("c3", "g"); c != 8 {
		t.Errorf("c3's cursor = %d, want 8", c)
	}
	st.mu.Lock()
	batches := st.batches
	st.mu.Unlock()
	want := [][]AckParams{
		{{"c1", []byte("h"), 1, true}},
		{{"c1", []byte("g"), 7, true}, {"c2", []byte("g"), 2, true}, {"stranger", []byte("g"), 4, true},
			{"c1", []byte("nope"), 1, true}, {"c3", []byte("g"), 50, true}},
		{{"c3", []byte("g"), 8, true}},
	}
	if !sameBatches(batches, want) {
		t.Errorf("batches = %v, want %v", batches, want)
	}
	if !ackIdle(s) {
		t.Errorf("the coalescer still holds an entry for an idle Service")
	}
}

func sameBatches(a, b [][]AckParams) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return false
		}
		for j := range a[i] {
			x, y := a[i][j], b[i][j]
			if x.ClientID != y.ClientID || string(x.GroupID) != string(y.GroupID) || x.Seq != y.Seq || x.CheckHead != y.CheckHead {
				return false
			}
		}
	}
	return true
}

func TestAckCoalescerCancel(t *testing.T) {
	st := newGatedAcker()
	s := &Service{store: st}

	first := ackAsync(s, bg(), "c1", "g", 1)
	<-st.entered
	ctx1, cancel1 := context.WithCancel(bg())
	queued := ackAsync(s, ctx1, "c2", "g", 5)
	waitQueued(t, s, 1)
	ctx2, cancel2 := context.WithCancel(bg())
	defer cancel2()
	taken := ackAsync(s, ctx2, "c3", "g", 6)
	waitQueued(t, s, 2)

	// A queued caller that gives up is told so, and its Ack is dropped.
	cancel1()
	if err := <-queued; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled queued Ack: %v, want context.Canceled", err)
	}
	waitQueued(t, s, 1)
	st.gate <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	// One whose Ack is in a committing batch waits for its outcome; the
	// batch goes on.
	<-st.entered
	cancel2()
	st.gate <- struct{}{}
	if err := <-taken; err != nil {
		t.Errorf("cancelled Ack of a committing batch: %v, want its outcome (success)", err)
	}
	if c := st.cursor("c3", "g"); c != 6 {
		t.Errorf("c3's cursor = %d, want 6", c)
	}
	if c := st.cursor("c2", "g"); c != 0 {
		t.Errorf("the withdrawn Ack moved c2's cursor to %d", c)
	}
	// A caller whose context is already done queues nothing.
	if err := s.ackDurably(ctx1, "c2", []byte("g"), 5); !errors.Is(err, context.Canceled) {
		t.Errorf("Ack with a done context: %v", err)
	}
	if !ackIdle(s) {
		t.Errorf("the coalescer still holds an entry for an idle Service")
	}
}

func TestAckCoalescerPanic(t *testing.T) {
	st := newGatedAcker()
	st.panicOn = "c2"
	close(st.gate)
	s := &Service{store: st}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := "c1"
			if i == 3 {
				client = "c2"
			}
			errs[i] = s.ackDurably(bg(), client, []byte("g"), uint64(i))
		}()
	}
	wg.Wait()
	// Every caller gets an answer; those batched with c2's Ack an error.
	if errs[3] == nil {
		t.Errorf("the Ack whose batch panicked succeeded")
	}
	if !ackIdle(s) {
		t.Errorf("the coalescer still holds an entry for an idle Service")
	}
}
