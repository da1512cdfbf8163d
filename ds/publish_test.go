package ds_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
)

// readCounting is the SQLite store, counting the reads of messages and
// memberships.
type readCounting struct {
	*sqlite.Store
	messages, memberships atomic.Int64
}

func (r *readCounting) Memberships(ctx context.Context, groupID []byte, client string) ([]ds.MembershipWindow, error) {
	r.memberships.Add(1)
	return r.Store.Memberships(ctx, groupID, client)
}

func (r *readCounting) Messages(ctx context.Context, q ds.MessageQuery) ([]ds.Envelope, error) {
	r.messages.Add(1)
	return r.Store.Messages(ctx, q)
}

// sameEnvelope reports whether a delivered envelope is the stored one.
func sameEnvelope(a, b *ds.Envelope) bool {
	return bytes.Equal(a.GroupID, b.GroupID) && a.GroupSeq == b.GroupSeq && a.Epoch == b.Epoch &&
		a.Sender == b.Sender && a.ContentType == b.ContentType && a.WireFormat == b.WireFormat &&
		bytes.Equal(a.Data, b.Data) && a.AcceptedAt.Equal(b.AcceptedAt)
}

// checkAsStored checks that what l received is, envelope for envelope,
// what Fetch returns for client from the store.
func checkAsStored(t *testing.T, svc *ds.Service, client string, gid []byte, l *liveSub) {
	t.Helper()
	stored := must(svc.Fetch(bg, client, gid, 1, 1000))
	bySeq := make(map[uint64]*ds.Envelope)
	for i := range stored {
		bySeq[stored[i].GroupSeq] = &stored[i]
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, got := range l.envs {
		want := bySeq[got.GroupSeq]
		if want == nil || !sameEnvelope(got, want) {
			t.Errorf("%s received %+v for GroupSeq %d; the store holds %+v", client, got, got.GroupSeq, want)
		}
	}
}

// TestDeliverFromMemory: the messages a node accepts reach its own
// subscriptions without being read back from the store, exactly as
// stored, once each and in order; handshake messages too.
func TestDeliverFromMemory(t *testing.T) {
	e := newEnv(t, ds.Config{PollInterval: time.Hour})
	st := &readCounting{Store: e.store}
	e.svc = ds.New(st, e.cfg)
	e.register("a", "a")
	e.upload(e.register("b", "b"), 10, false)
	e.upload(e.register("c", "c"), 10, false)
	gid := []byte("memory")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b", "c"}}))
	ctx, cancel := contextWithCancel()
	defer cancel()
	subB := followLive(t, ctx, e, "b")
	subC := followLive(t, ctx, e, "c")

	reads := st.messages.Load()
	const n = 30
	var want []uint64
	for i := range n {
		ct := mls.ContentTypeApplication
		if i%10 == 5 {
			ct = mls.ContentTypeProposal
		}
		r := must(sendMsg(e.svc, "a", private(t, gid, 0, ct)))
		want = append(want, r.GroupSeq)
		// One at a time: each message is its own batch and wake-up.
		subB.waitFor(t, i+1)
	}
	for _, l := range []*liveSub{subB, subC} {
		if got := l.waitFor(t, n); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("received %v, want %v", got, want)
		}
	}
	if d := st.messages.Load() - reads; d != 0 {
		t.Errorf("the store's messages were read %d times for %d messages this node accepted; want none", d, n)
	}
	checkAsStored(t, e.svc, "b", gid, subB)
	checkAsStored(t, e.svc, "c", gid, subC)
	cancel()
	<-subB.done
	<-subC.done
}

// TestDeliverAcrossNodes: two nodes on one store, each accepting messages
// of one group concurrently. Each node's subscriptions get its own
// messages from memory and the other's from the store: every message of
// the others exactly once, in order, as stored.
func TestDeliverAcrossNodes(t *testing.T) {
	e := newEnv(t, ds.Config{Notifier: ds.NewLocalNotifier(), PollInterval: time.Hour})
	nodeA := e.svc
	nodeB := ds.New(e.store, e.cfg)
	ids := []string{"a", "b", "c", "d"}
	for _, id := range ids {
		e.upload(e.register(id, id), 10, false)
	}
	gid := []byte("two-nodes")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: ids[1:]}))
	ctx, cancel := contextWithCancel()
	defer cancel()
	// c follows on node A, d on node B.
	subC := followLive(t, ctx, e, "c")
	e.svc = nodeB
	subD := followLive(t, ctx, e, "d")
	e.svc = nodeA

	// a sends through node A, b through node B, at the same time.
	const each = 40
	var wg sync.WaitGroup
	sent := make([][]uint64, 2)
	for i, node := range []*ds.Service{nodeA, nodeB} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				r, err := sendMsg(node, ids[i], private(t, gid, 0, mls.ContentTypeApplication))
				if err != nil {
					t.Error(err)
					return
				}
				sent[i] = append(sent[i], r.GroupSeq)
			}
		}()
	}
	wg.Wait()
	all := slices.Sorted(slices.Values(append(slices.Clone(sent[0]), sent[1]...)))
	for name, l := range map[string]*liveSub{"c": subC, "d": subD} {
		if got := l.waitFor(t, len(all)); fmt.Sprint(got) != fmt.Sprint(all) {
			t.Errorf("%s received %v, want %v", name, got, all)
		}
	}
	// One more message through each node, one at a time: each node's
	// subscription is woken for the other's (no wake-up was taken for
	// the echo of its own), and nothing comes twice.
	for i, node := range []*ds.Service{nodeB, nodeA} {
		must(sendMsg(node, "b", private(t, gid, 0, mls.ContentTypeApplication)))
		for name, l := range map[string]*liveSub{"c": subC, "d": subD} {
			if got := l.waitFor(t, len(all)+i+1); len(got) != len(all)+i+1 {
				t.Errorf("%s received %v after the last messages", name, got)
			}
		}
	}
	checkAsStored(t, nodeA, "c", gid, subC)
	checkAsStored(t, nodeB, "d", gid, subD)
	cancel()
	<-subC.done
	<-subD.done
}

// TestAckRemembersMembers: a client that acknowledges as it reads has its
// membership read once, not at every Ack; a stranger is refused every
// time, whether the group exists or not.
func TestAckRemembersMembers(t *testing.T) {
	e := newEnv(t, ds.Config{})
	st := &readCounting{Store: e.store}
	e.svc = ds.New(st, e.cfg)
	e.register("a", "a")
	e.upload(e.register("b", "b"), 10, false)
	e.register("stranger", "stranger")
	gid := []byte("acks")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}))
	reads := st.memberships.Load()
	const n = 10
	for range n {
		r := must(sendMsg(e.svc, "a", private(t, gid, 0, mls.ContentTypeApplication)))
		must(0, e.svc.Ack(bg, "b", gid, r.GroupSeq))
	}
	if d := st.memberships.Load() - reads; d != 1 {
		t.Errorf("%d Acks of a member read its memberships %d times; want once", n, d)
	}
	// Still the store's answers: beyond the head, and for strangers.
	wantIs(t, e.svc.Ack(bg, "b", gid, n+1), ds.ErrInvalidArgument)
	for range 3 {
		wantIs(t, e.svc.Ack(bg, "stranger", gid, 1), ds.ErrNotMember)
		wantIs(t, e.svc.Ack(bg, "stranger", []byte("nope"), 1), ds.ErrNotMember)
	}
	// The cursor moved as acknowledged.
	curs := must(e.store.Cursors(bg, "b"))
	if len(curs) != 1 || curs[0].Acked != n {
		t.Errorf("b's cursors %+v, want group %q at %d", curs, gid, n)
	}
}
