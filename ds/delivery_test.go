package ds_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

func fetchSeqs(t *testing.T, e *env, client string, gid []byte) []uint64 {
	t.Helper()
	var out []uint64
	for _, env := range must(e.svc.Fetch(bg, client, gid, 1, 1000)) {
		out = append(out, env.GroupSeq)
	}
	return out
}

// TestMembershipWindows: an added member receives what follows the Commit
// that added it; a removed one receives the Commit that removed it and
// nothing after.
func TestMembershipWindows(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	b := e.register("b", "b")
	e.register("c", "c")
	kpB := e.upload(b, 1, false)[0]
	g := e.createGroup(a)

	must(sendMsg(e.svc, "a", private(t, g.id, 0, mls.ContentTypeApplication))) // 1
	add, next := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kpB)}, nil)
	rAdd := must(sendBundle(e.svc, "a", ds.CommitBundle{Commit: add, Welcome: welcome(t, ref(t, kpB))})) // 2
	g.st = next
	must(sendMsg(e.svc, "a", private(t, g.id, 1, mls.ContentTypeApplication))) // 3
	must(sendMsg(e.svc, "b", private(t, g.id, 1, mls.ContentTypeApplication))) // 4
	remove, next := g.commit(t, a, 0, []mls.ProposalOrRef{removeOf(1)}, g.removePath(t, a, 0, 1))
	rRemove := must(sendMsg(e.svc, "a", remove)) // 5
	g.st = next
	must(sendMsg(e.svc, "a", private(t, g.id, 2, mls.ContentTypeApplication))) // 6

	if rAdd.GroupSeq != 2 || rRemove.GroupSeq != 5 {
		t.Fatalf("unexpected sequence numbers %d, %d", rAdd.GroupSeq, rRemove.GroupSeq)
	}
	// b's stream: the Welcome, then 3 and 5 (4 is its own).
	evs := replay(t, e, "b")
	if len(evs) == 0 || evs[0].Welcome == nil || evs[0].Welcome.CommitSeq != 2 {
		t.Fatalf("b's stream does not start with its Welcome: %+v", evs)
	}
	if got := fmt.Sprint(messageSeqs(evs)); got != "[3 5]" {
		t.Errorf("b receives %s, want [3 5]", got)
	}
	// a's stream: only b's message.
	if got := fmt.Sprint(messageSeqs(replay(t, e, "a"))); got != "[4]" {
		t.Errorf("a receives %s, want [4]", got)
	}
	// Fetch includes the client's own messages, within its windows.
	if got := fmt.Sprint(fetchSeqs(t, e, "b", g.id)); got != "[3 4 5]" {
		t.Errorf("b fetches %s, want [3 4 5]", got)
	}
	if got := fmt.Sprint(fetchSeqs(t, e, "a", g.id)); got != "[1 2 3 4 5 6]" {
		t.Errorf("a fetches %s", got)
	}
	_, err := e.svc.Fetch(bg, "c", g.id, 1, 10)
	wantIs(t, err, ds.ErrNotMember)
	_, err = e.svc.Fetch(bg, "c", []byte("nope"), 1, 10)
	wantIs(t, err, ds.ErrNotMember) // one answer for outsiders
	// b is out.
	_, err = sendMsg(e.svc, "b", private(t, g.id, 2, mls.ContentTypeApplication))
	wantIs(t, err, ds.ErrNotMember)
	_, err = e.svc.Roster(bg, "b", g.id)
	wantIs(t, err, ds.ErrNotMember)
	// (GroupInfo stays readable to b, as to any registered client: it is
	// what an external joiner needs; see TestGroupInfoExternalJoin.)
	if r := must(e.svc.Roster(bg, "a", g.id)); fmt.Sprint(r) != "[a]" {
		t.Errorf("roster %v", r)
	}
}

// TestOpaqueRoster: in an opaque group the committer declares the roster
// changes (roster_ad.go); the Welcome's joiners must be among them.
func TestOpaqueRoster(t *testing.T) {
	e := newEnv(t, ds.Config{})
	for _, id := range []string{"a", "b"} {
		e.register(id, id)
	}
	c := e.register("c", "c")
	kpC := e.upload(c, 1, false)[0]
	j := e.register("j", "j")
	kpJ := e.upload(j, 1, false)[0]
	gid := []byte("opaque")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}, GroupInfo: []byte("encrypted group info")}))

	_, err := sendBundle(e.svc, "a", ds.CommitBundle{Commit: private(t, gid, 0, mls.ContentTypeCommit), Removed: []string{"c"}})
	wantIs(t, err, ds.ErrInvalidArgument)
	_, err = sendBundle(e.svc, "a", ds.CommitBundle{Commit: private(t, gid, 0, mls.ContentTypeCommit), Added: []string{"b"}, Removed: []string{"b"}})
	wantIs(t, err, ds.ErrInvalidArgument)
	_, err = sendBundle(e.svc, "a", ds.CommitBundle{Commit: private(t, gid, 0, mls.ContentTypeCommit), Welcome: welcome(t, []byte("unknown ref"))})
	wantErr[*ds.InvalidMessageError](t, err)
	// Nobody enters the roster without a Welcome to a KeyPackage of theirs.
	_, err = sendBundle(e.svc, "a", ds.CommitBundle{Commit: private(t, gid, 0, mls.ContentTypeCommit), Added: []string{"c"}})
	wantIs(t, err, ds.ErrInvalidArgument)

	r := must(sendBundle(e.svc, "a", ds.CommitBundle{
		Commit: private(t, gid, 0, mls.ContentTypeCommit), Added: []string{"c", "j"}, Removed: []string{"b"},
		Welcome: welcome(t, ref(t, kpC), ref(t, kpJ)), GroupInfo: []byte("encrypted group info 1"),
	}))
	if got := must(e.svc.Roster(bg, "a", gid)); fmt.Sprint(got) != "[a c j]" {
		t.Errorf("roster %v, want [a c j]", got)
	}
	if info := must(e.svc.GroupInfo(bg, "c", gid)); string(info.GroupInfo) != "encrypted group info 1" || info.Epoch != 1 || info.RatchetTree != nil {
		t.Errorf("opaque GroupInfo %+v", info)
	}
	ws := pendingWelcomes(t, e, "j")
	if len(ws) != 1 || ws[0].CommitSeq != r.GroupSeq {
		t.Errorf("j's Welcomes %+v", ws)
	}
	// The Welcome is delivered once j acknowledges the Commit.
	if err := e.svc.Ack(bg, "j", gid, r.GroupSeq); err != nil {
		t.Fatal(err)
	}
	if ws := pendingWelcomes(t, e, "j"); len(ws) != 0 {
		t.Errorf("Welcome still pending after the ack")
	}
	// b, removed, receives the removing Commit and nothing after.
	must(sendMsg(e.svc, "c", private(t, gid, 1, mls.ContentTypeApplication)))
	if got := fmt.Sprint(messageSeqs(replay(t, e, "b"))); got != fmt.Sprint([]uint64{r.GroupSeq}) {
		t.Errorf("b receives %s", got)
	}
	if got := fmt.Sprint(messageSeqs(replay(t, e, "j"))); got != fmt.Sprint([]uint64{r.GroupSeq + 1}) {
		t.Errorf("j receives %s", got)
	}
}

// TestSubscribeLive: replay, the caught-up marker, then live delivery
// across groups, including a group the client joins while subscribed.
func TestSubscribeLive(t *testing.T) {
	e := newEnv(t, ds.Config{PollInterval: time.Hour}) // wake-ups only
	for _, id := range []string{"a", "b", "c"} {
		e.register(id, id)
	}
	g1 := []byte("g1")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: g1, Members: []string{"b"}}))
	for i := 0; i < 3; i++ {
		must(sendMsg(e.svc, "a", private(t, g1, 0, mls.ContentTypeApplication)))
	}
	ctx, cancel := contextWithCancel()
	defer cancel()
	ch := must(e.svc.Subscribe(ctx, "b"))
	evs := collect(t, ch, untilCaughtUp)
	if got := fmt.Sprint(messageSeqs(evs)); got != "[1 2 3]" {
		t.Fatalf("replay %s", got)
	}
	caught := 0
	for _, ev := range evs {
		if ev.CaughtUp {
			caught++
		}
	}
	if caught != 1 {
		t.Errorf("%d CaughtUp events in the replay", caught)
	}

	// Live: a's message arrives, b's own does not.
	must(sendMsg(e.svc, "b", private(t, g1, 0, mls.ContentTypeApplication)))
	data := private(t, g1, 0, mls.ContentTypeApplication)
	must(sendMsg(e.svc, "a", data))
	evs = collect(t, ch, func(evs []ds.Event) bool { return len(evs) >= 1 })
	if m := evs[0].Message; m == nil || m.GroupSeq != 5 || m.Sender != "a" || !bytes.Equal(m.Data, data) {
		t.Fatalf("live event %+v, want a's message 5", evs[0])
	}
	// A new group with b: its messages follow.
	g2 := []byte("g2")
	must(0, e.createOpaque("c", ds.CreateGroup{GroupID: g2, Members: []string{"b"}}))
	must(sendMsg(e.svc, "c", private(t, g2, 0, mls.ContentTypeApplication)))
	evs = collect(t, ch, func(evs []ds.Event) bool { return len(evs) >= 1 })
	if m := evs[0].Message; m == nil || !bytes.Equal(m.GroupID, g2) || m.GroupSeq != 1 {
		t.Fatalf("event %+v, want g2's first message", evs[0])
	}
	// Cancelling ends the stream.
	cancel()
	for ev := range ch {
		if ev.Err != nil {
			t.Errorf("cancel produced an error event: %v", ev.Err)
		}
	}
}

// TestSubscribePoll: with wake-ups lost (a Notifier that drops them), the
// poll still delivers.
func TestSubscribePoll(t *testing.T) {
	e := newEnv(t, ds.Config{PollInterval: 10 * time.Millisecond, Notifier: deafNotifier{}})
	e.register("a", "a")
	e.register("b", "b")
	gid := []byte("g")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}))
	ctx, cancel := contextWithCancel()
	defer cancel()
	ch := must(e.svc.Subscribe(ctx, "b"))
	collect(t, ch, untilCaughtUp)
	must(sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeApplication)))
	evs := collect(t, ch, func(evs []ds.Event) bool { return len(evs) >= 1 })
	if evs[0].Message == nil || evs[0].Message.GroupSeq != 1 {
		t.Errorf("event %+v", evs[0])
	}
}

type deafNotifier struct{}

func (deafNotifier) Notify(context.Context, ...string) error { return nil }
func (deafNotifier) Listen(string, func()) (stop func())     { return func() {} }

// TestCursorsSurviveReopen: acknowledged positions are durable; after a
// restart the replay starts right after them.
func TestCursorsSurviveReopen(t *testing.T) {
	e := newEnv(t, ds.Config{})
	e.register("a", "a")
	e.register("b", "b")
	gid := []byte("g")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}))
	for i := 0; i < 5; i++ {
		must(sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeApplication)))
	}
	if got := fmt.Sprint(messageSeqs(replay(t, e, "b"))); got != "[1 2 3 4 5]" {
		t.Fatalf("first replay %s", got)
	}
	must(0, e.svc.Ack(bg, "b", gid, 3))
	must(0, e.svc.Ack(bg, "b", gid, 2)) // never backwards
	wantIs(t, e.svc.Ack(bg, "b", gid, 6), ds.ErrInvalidArgument)
	wantIs(t, e.svc.Ack(bg, "b", []byte("nope"), 1), ds.ErrNotMember) // one answer for outsiders
	e.register("c", "c")
	wantIs(t, e.svc.Ack(bg, "c", gid, 1), ds.ErrNotMember)

	e.reopen()
	if got := fmt.Sprint(messageSeqs(replay(t, e, "b"))); got != "[4 5]" {
		t.Errorf("replay after reopen %s, want [4 5]", got)
	}
	// The group goes on where it was.
	r := must(sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeCommit)))
	if r.GroupSeq != 6 {
		t.Errorf("after reopen the next message got seq %d", r.GroupSeq)
	}
}

// TestTransparentStateSurvivesReopen: the tracked tree is durable.
func TestTransparentStateSurvivesReopen(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	g := e.createGroup(a)
	k := e.register("k", "k")
	kpK := e.upload(k, 1, false)[0]
	e.reopen()
	c, next := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kpK)}, nil)
	must(sendMsg(e.svc, "a", c))
	g.st = next
	e.reopen()
	info := must(e.svc.GroupInfo(bg, "k", g.id))
	tree := must(mls.UnmarshalRatchetTree(suite, info.RatchetTree))
	gc := g.st.GroupContext()
	if info.Epoch != 1 || !bytes.Equal(tree.TreeHash(), gc.TreeHash) {
		t.Errorf("after reopen: epoch %d, tree matches %v", info.Epoch, bytes.Equal(tree.TreeHash(), gc.TreeHash))
	}
}

// TestSlowConsumer: a consumer that takes nothing gets, once it reads
// again, what was buffered and then ErrSlowConsumer; nothing is lost
// because a new subscription replays from the acknowledged cursor.
func TestSlowConsumer(t *testing.T) {
	e := newEnv(t, ds.Config{SubscriptionBuffer: 2, SlowConsumerTimeout: time.Millisecond})
	e.register("a", "a")
	e.upload(e.register("b", "b"), 10, false) // no low-water event
	gid := []byte("g")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}))
	for i := 0; i < 10; i++ {
		must(sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeApplication)))
	}
	ctx, cancel := contextWithCancel()
	defer cancel()
	ch := must(e.svc.Subscribe(ctx, "b"))
	time.Sleep(300 * time.Millisecond) // far beyond the 1ms the producer waits
	var evs []ds.Event
	for ev := range ch {
		evs = append(evs, ev)
	}
	if len(evs) != 3 || evs[2].Err == nil {
		t.Fatalf("events %+v, want 2 messages and an error", evs)
	}
	wantIs(t, evs[2].Err, ds.ErrSlowConsumer)
	if got := fmt.Sprint(messageSeqs(evs)); got != "[1 2]" {
		t.Errorf("buffered %s", got)
	}
	must(0, e.svc.Ack(bg, "b", gid, 2))
	e.cfg.SubscriptionBuffer = 64
	e.reopen()
	if got := fmt.Sprint(messageSeqs(replay(t, e, "b"))); got != "[3 4 5 6 7 8 9 10]" {
		t.Errorf("resumed replay %s", got)
	}
}

// liveSub follows a subscription in the background, recording its message
// events (after the CaughtUp marker) by GroupSeq.
type liveSub struct {
	mu   sync.Mutex
	seqs []uint64
	envs []*ds.Envelope
	errs []error
	done chan struct{}
}

func followLive(t *testing.T, ctx context.Context, e *env, client string) *liveSub {
	t.Helper()
	ch := must(e.svc.Subscribe(ctx, client))
	collect(t, ch, untilCaughtUp)
	l := &liveSub{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for ev := range ch {
			l.mu.Lock()
			if ev.Err != nil {
				l.errs = append(l.errs, ev.Err)
			}
			if ev.Message != nil {
				l.seqs = append(l.seqs, ev.Message.GroupSeq)
				l.envs = append(l.envs, ev.Message)
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// waitFor waits until the subscription has n messages (a hang guard, not
// a timing assertion) and returns their sequence numbers.
func (l *liveSub) waitFor(t *testing.T, n int) []uint64 {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		l.mu.Lock()
		got, errs := slices.Clone(l.seqs), l.errs
		l.mu.Unlock()
		if len(errs) > 0 {
			t.Fatalf("subscription ended: %v", errs[0])
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d messages %v, want %d", len(got), got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func (l *liveSub) now() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.seqs)
}

func seqRange(from, to uint64, skip ...uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		if !slices.Contains(skip, s) {
			out = append(out, s)
		}
	}
	return out
}

// TestLiveMembershipWindows: subscriptions that follow a group live share
// its tail, and still each get exactly their membership windows: a member
// removed while subscribed gets the removing Commit and nothing after, a
// member added while subscribed nothing before the Commit that adds it,
// and one added back the messages of its new window.
func TestLiveMembershipWindows(t *testing.T) {
	e := newEnv(t, ds.Config{PollInterval: time.Hour}) // wake-ups only
	kps := make(map[string][]*mls.KeyPackage)
	for _, id := range []string{"a", "b", "c", "d"} {
		kps[id] = e.upload(e.register(id, id), 10, false)
	}
	gid := []byte("live")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b", "c"}}))
	ctx, cancel := contextWithCancel()
	defer cancel()
	subA := followLive(t, ctx, e, "a")
	subB := followLive(t, ctx, e, "b")
	subC := followLive(t, ctx, e, "c")
	subD := followLive(t, ctx, e, "d") // not a member yet

	app := func(sender string, epoch uint64) uint64 {
		return must(sendMsg(e.svc, sender, private(t, gid, epoch, mls.ContentTypeApplication))).GroupSeq
	}
	commit := func(epoch uint64, added, removed []string) uint64 {
		b := ds.CommitBundle{Commit: private(t, gid, epoch, mls.ContentTypeCommit), Added: added, Removed: removed}
		var refs [][]byte
		for _, id := range added { // each joins through a Welcome to one of its KeyPackages
			refs = append(refs, ref(t, kps[id][0]))
			kps[id] = kps[id][1:]
		}
		if len(refs) > 0 {
			b.Welcome = welcome(t, refs...)
		}
		return must(sendBundle(e.svc, "a", b)).GroupSeq
	}
	app("a", 0)                                    // 1
	app("b", 0)                                    // 2
	rmB := commit(0, []string{"d"}, []string{"b"}) // 3: b out, d in
	app("a", 1)                                    // 4
	app("c", 1)                                    // 5
	subC.waitFor(t, 4)                             // 1 2 3 4
	addB := commit(1, []string{"b"}, nil)          // 6: b back
	app("a", 2)                                    // 7
	last := app("d", 2)                            // 8
	if rmB != 3 || addB != 6 || last != 8 {
		t.Fatalf("unexpected sequence numbers %d %d %d", rmB, addB, last)
	}

	if got := subC.waitFor(t, 7); fmt.Sprint(got) != fmt.Sprint(seqRange(1, 8, 5)) {
		t.Errorf("c got %v", got)
	}
	if got := subA.waitFor(t, 3); fmt.Sprint(got) != "[2 5 8]" {
		t.Errorf("a got %v, want [2 5 8]", got)
	}
	if got := subD.waitFor(t, 4); fmt.Sprint(got) != "[4 5 6 7]" {
		t.Errorf("d got %v, want [4 5 6 7]", got)
	}
	if got := subB.waitFor(t, 4); fmt.Sprint(got) != "[1 3 7 8]" {
		t.Errorf("b got %v, want [1 3 7 8]", got)
	}
	// Nothing more arrives: one more message reaches everyone but its
	// sender, after which each stream holds exactly what is listed.
	app("c", 2) // 9
	subA.waitFor(t, 4)
	subB.waitFor(t, 5)
	subD.waitFor(t, 5)
	for name, l := range map[string]*liveSub{"a": subA, "b": subB, "c": subC, "d": subD} {
		got := l.now()
		if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Errorf("%s: out of order or duplicated: %v", name, got)
		}
	}
	if got := subB.now(); fmt.Sprint(got) != "[1 3 7 8 9]" {
		t.Errorf("b finally got %v", got)
	}
	cancel()
	for _, l := range []*liveSub{subA, subB, subC, subD} {
		<-l.done
	}
}

// TestTailFallback: a subscription whose position is before a group's
// tail reads the older messages from the store, then goes on from the
// tail: every message once, in order.
func TestTailFallback(t *testing.T) {
	e := newEnv(t, ds.Config{PollInterval: time.Hour})
	e.register("a", "a")
	e.upload(e.register("b", "b"), 10, false)
	e.upload(e.register("c", "c"), 10, false)
	gid := []byte("g")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b", "c"}}))
	const before = 150 // more than a new tail loads
	for range before {
		must(sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeApplication)))
	}
	ctx, cancel := contextWithCancel()
	defer cancel()
	ch := must(e.svc.Subscribe(ctx, "b"))
	if got := messageSeqs(collect(t, ch, untilCaughtUp)); fmt.Sprint(got) != fmt.Sprint(seqRange(1, before)) {
		t.Fatalf("b's replay %v", got)
	}
	subB := &liveSub{done: make(chan struct{})}
	go func() {
		defer close(subB.done)
		for ev := range ch {
			if ev.Message != nil {
				subB.mu.Lock()
				subB.seqs = append(subB.seqs, ev.Message.GroupSeq)
				subB.mu.Unlock()
			}
		}
	}()
	for range 20 {
		must(sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeApplication)))
	}
	if got := subB.waitFor(t, 20); fmt.Sprint(got) != fmt.Sprint(seqRange(before+1, before+20)) {
		t.Errorf("b live %v", got)
	}
	// c comes later, while b keeps the tail: the same history.
	if got := messageSeqs(replay(t, e, "c")); fmt.Sprint(got) != fmt.Sprint(seqRange(1, before+20)) {
		t.Errorf("c's replay %v", got)
	}
	cancel()
	<-subB.done
}

// TestFanoutConcurrent: many subscriptions of one group and concurrent
// senders; each subscription gets every message of the others exactly
// once, in order, and nothing of its own.
func TestFanoutConcurrent(t *testing.T) {
	e := newEnv(t, ds.Config{})
	const members, senders, each = 20, 4, 25
	var ids []string
	for i := range members {
		id := fmt.Sprintf("m%02d", i)
		e.upload(e.register(id, id), 10, false)
		ids = append(ids, id)
	}
	gid := []byte("concurrent")
	must(0, e.createOpaque(ids[0], ds.CreateGroup{GroupID: gid, Members: ids[1:]}))
	ctx, cancel := contextWithCancel()
	defer cancel()
	subs := make([]*liveSub, members)
	for i, id := range ids {
		subs[i] = followLive(t, ctx, e, id)
	}
	var wg sync.WaitGroup
	sentBy := make([][]uint64, senders)
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				r, err := sendMsg(e.svc, ids[s], private(t, gid, 0, mls.ContentTypeApplication))
				if err != nil {
					t.Error(err)
					return
				}
				sentBy[s] = append(sentBy[s], r.GroupSeq)
			}
		}()
	}
	wg.Wait()
	for i, l := range subs {
		var want []uint64
		for s := range senders {
			if s != i {
				want = append(want, sentBy[s]...)
			}
		}
		slices.Sort(want)
		if got := l.waitFor(t, len(want)); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s got %v, want %v", ids[i], got, want)
		}
	}
	cancel()
	for _, l := range subs {
		<-l.done
	}
}

// TestTwoServices: two Services (nodes) on one store, sharing wake-ups:
// each node's subscriptions get what the other accepted, as stored.
func TestTwoServices(t *testing.T) {
	n := ds.NewLocalNotifier()
	e := newEnv(t, ds.Config{Notifier: n, PollInterval: time.Hour})
	other := ds.New(e.store, e.cfg)
	e.register("a", "a")
	e.upload(e.register("b", "b"), 10, false)
	gid := []byte("g")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}))
	ctx, cancel := contextWithCancel()
	defer cancel()
	sub := followLive(t, ctx, e, "b")
	data := private(t, gid, 0, mls.ContentTypeApplication)
	must(sendMsg(other, "a", data))
	must(sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeApplication)))
	if got := sub.waitFor(t, 2); fmt.Sprint(got) != "[1 2]" {
		t.Errorf("b got %v", got)
	}
	sub.mu.Lock()
	if !bytes.Equal(sub.envs[0].Data, data) {
		t.Errorf("message 1 is not what the other node accepted")
	}
	sub.mu.Unlock()
	cancel()
	<-sub.done
}
