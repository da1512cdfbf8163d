package ds

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// gatedStore is a Store whose AcceptMessages records each batch and, while
// gated, waits for the test to let it go.
type gatedStore struct {
	Store // nil: only the accept methods are used

	mu      sync.Mutex
	batches [][]string // the Data of each batch's messages
	seq     uint64
	fail    map[string]error
	panicOn string

	entered chan struct{} // receives when a batch reaches the store
	gate    chan struct{} // a batch waits for a value (or close)
}

func newGatedStore() *gatedStore {
	return &gatedStore{entered: make(chan struct{}, 100), gate: make(chan struct{}, 100)}
}

func (g *gatedStore) AcceptMessages(_ context.Context, ps []AcceptParams) ([]AcceptResult, []error) {
	g.entered <- struct{}{}
	<-g.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	var datas []string
	res := make([]AcceptResult, len(ps))
	errs := make([]error, len(ps))
	for i, p := range ps {
		d := string(p.Data)
		datas = append(datas, d)
		if d == g.panicOn {
			panic("engine bug")
		}
		if err := g.fail[d]; err != nil {
			errs[i] = err
			continue
		}
		g.seq++
		res[i] = AcceptResult{Receipt: Receipt{GroupID: p.GroupID, GroupSeq: g.seq}}
	}
	g.batches = append(g.batches, datas)
	return res, errs
}

func (g *gatedStore) AcceptMessage(context.Context, AcceptParams) (AcceptResult, error) {
	panic("the batcher must use AcceptMessages")
}

type notifyLog struct {
	mu     sync.Mutex
	topics []string
}

func (n *notifyLog) notify(topics ...string) {
	n.mu.Lock()
	n.topics = append(n.topics, topics...)
	n.mu.Unlock()
}

type outcome struct {
	res AcceptResult
	err error
}

func params(data string) AcceptParams {
	return AcceptParams{GroupID: []byte("g"), Data: []byte(data)}
}

// queued waits until n requests wait in the batcher's queue.
func queued(t *testing.T, b *batcher, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.mu.Lock()
		k := len(b.queue)
		b.mu.Unlock()
		if k == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued, want %d", k, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func acceptAsync(b *batcher, ctx context.Context, data string) <-chan outcome {
	ch := make(chan outcome, 1)
	go func() {
		res, err := b.accept(ctx, params(data), []string{"topic-" + data}, nil)
		ch <- outcome{res, err}
	}()
	return ch
}

// TestBatcherGroupsWaitingMessages: what queues while a batch commits is
// the next batch, whole and in order; nothing waits for more when idle.
func TestBatcherGroupsWaitingMessages(t *testing.T) {
	st := newGatedStore()
	var n notifyLog
	b := newBatcher(st, n.notify)
	first := acceptAsync(b, bg(), "m0")
	<-st.entered // m0 alone: nothing else was queued
	var rest []<-chan outcome
	for i := 1; i <= 10; i++ {
		rest = append(rest, acceptAsync(b, bg(), fmt.Sprint("m", i)))
		queued(t, b, i) // in this order
	}
	st.gate <- struct{}{}
	if o := <-first; o.err != nil || o.res.GroupSeq != 1 {
		t.Fatalf("m0: %+v", o)
	}
	<-st.entered
	st.gate <- struct{}{}
	for i, ch := range rest {
		if o := <-ch; o.err != nil || o.res.GroupSeq != uint64(i+2) {
			t.Errorf("m%d: %+v, want seq %d", i+1, o, i+2)
		}
	}
	if len(st.batches) != 2 || len(st.batches[0]) != 1 || len(st.batches[1]) != 10 {
		t.Errorf("batches %v, want [m0] then m1..m10", st.batches)
	}
	// The committer goroutine ends when the queue is empty, after the
	// wake-ups.
	idle(t, b)
	if got := n.get(); len(got) != 11 {
		t.Errorf("notified %v, want the 11 topics", got)
	}
}

// idle waits until the batcher's committer goroutine has ended and its
// wake-ups are sent.
func idle(t *testing.T, b *batcher) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.mu.Lock()
		running := b.running
		b.mu.Unlock()
		b.nmu.Lock()
		notifying := b.notifying
		b.nmu.Unlock()
		if !running && !notifying {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the committer still runs with an empty queue")
		}
		time.Sleep(time.Millisecond)
	}
}

func (n *notifyLog) get() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.topics)
}

// TestBatcherCancel: a caller that gives up while its message is queued
// gets its context's error at once and its message is not stored; one whose
// message is already being committed gets the outcome. Neither disturbs the
// batch of the others.
func TestBatcherCancel(t *testing.T) {
	st := newGatedStore()
	var n notifyLog
	b := newBatcher(st, n.notify)

	inFlightCtx, cancelInFlight := context.WithCancel(bg())
	inFlight := acceptAsync(b, inFlightCtx, "in-flight")
	<-st.entered
	queuedCtx, cancelQueued := context.WithCancel(bg())
	withdrawn := acceptAsync(b, queuedCtx, "withdrawn")
	queued(t, b, 1)
	other := acceptAsync(b, bg(), "other")
	queued(t, b, 2)

	cancelQueued()
	if o := <-withdrawn; !errors.Is(o.err, context.Canceled) {
		t.Fatalf("withdrawn: %+v, want context.Canceled", o)
	}
	cancelInFlight()
	select {
	case o := <-inFlight:
		t.Fatalf("a caller whose message is being committed returned before the outcome: %+v", o)
	case <-time.After(20 * time.Millisecond):
	}
	st.gate <- struct{}{}
	if o := <-inFlight; o.err != nil || o.res.GroupSeq != 1 {
		t.Errorf("in-flight after its caller gave up: %+v, want its receipt", o)
	}
	<-st.entered
	st.gate <- struct{}{}
	if o := <-other; o.err != nil || o.res.GroupSeq != 2 {
		t.Errorf("other: %+v, want seq 2", o)
	}
	if fmt.Sprint(st.batches) != "[[in-flight] [other]]" {
		t.Errorf("batches %v: the withdrawn message reached the store", st.batches)
	}
	idle(t, b)
	if slices.Contains(n.get(), "topic-withdrawn") {
		t.Errorf("the withdrawn message was notified")
	}
}

// TestBatcherErrors: each message gets its own error, only stored messages
// wake subscriptions, and a panicking engine fails its batch without
// leaving anyone waiting.
func TestBatcherErrors(t *testing.T) {
	st := newGatedStore()
	close(st.gate)
	st.fail = map[string]error{"bad": ErrNotMember}
	var n notifyLog
	b := newBatcher(st, n.notify)
	first := acceptAsync(b, bg(), "first")
	<-st.entered
	good := acceptAsync(b, bg(), "good")
	bad := acceptAsync(b, bg(), "bad")
	if o := <-first; o.err != nil {
		t.Fatal(o.err)
	}
	if o := <-good; o.err != nil {
		t.Errorf("good: %v", o.err)
	}
	if o := <-bad; !errors.Is(o.err, ErrNotMember) {
		t.Errorf("bad: %v, want ErrNotMember", o.err)
	}
	idle(t, b)
	if got := n.get(); slices.Contains(got, "topic-bad") || !slices.Contains(got, "topic-good") {
		t.Errorf("notified %v", got)
	}

	st.mu.Lock()
	st.panicOn = "boom"
	st.mu.Unlock()
	if _, err := b.accept(bg(), params("boom"), nil, nil); err == nil {
		t.Error("a batch whose engine panicked succeeded")
	}
	if r, err := b.accept(bg(), params("after"), nil, nil); err != nil || r.GroupSeq == 0 {
		t.Errorf("after a panic: %+v, %v", r, err)
	}
}

// TestBatcherOnlyWithBatchAccepter: an engine without AcceptMessages keeps
// the direct path.
func TestBatcherOnlyWithBatchAccepter(t *testing.T) {
	type plain struct{ Store }
	if b := newBatcher(plain{}, func(...string) {}); b != nil {
		t.Error("a batcher over a store without AcceptMessages")
	}
}

func bg() context.Context { return context.Background() }
