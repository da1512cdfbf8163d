package server_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// receiver consumes one member's stream the way a client should: it keeps
// what it processed, acknowledges it before hanging up, and resubscribes.
type receiver struct {
	m    *member
	sub  *subscription
	mu   sync.Mutex
	got  map[string][]*mlsdsv1.Envelope // by group id
	last map[string]uint64              // last seq processed, by group
}

func newReceiver(m *member) *receiver {
	return &receiver{m: m, got: map[string][]*mlsdsv1.Envelope{}, last: map[string]uint64{}}
}

// run processes events until stop is closed or want messages arrived.
func (r *receiver) run(t *testing.T, want int, stop <-chan struct{}) {
	for {
		r.mu.Lock()
		n := 0
		for _, envs := range r.got {
			n += len(envs)
		}
		r.mu.Unlock()
		if n >= want {
			return
		}
		select {
		case <-stop:
			return
		case ev, ok := <-r.sub.events:
			if !ok {
				return
			}
			if env := ev.GetMessage(); env != nil {
				r.mu.Lock()
				g := string(env.GroupId)
				r.got[g] = append(r.got[g], env)
				r.last[g] = env.GroupSeq
				r.mu.Unlock()
			}
		}
	}
}

// reconnect acknowledges everything processed, hangs up and subscribes
// again.
func (r *receiver) reconnect(t *testing.T) {
	r.sub.close()
	r.mu.Lock()
	var cursors []*mlsdsv1.Cursor
	for g, seq := range r.last {
		cursors = append(cursors, &mlsdsv1.Cursor{GroupId: []byte(g), Seq: seq})
	}
	r.mu.Unlock()
	if len(cursors) > 0 {
		if _, err := r.m.groups.Ack(context.Background(), connect.NewRequest(&mlsdsv1.AckRequest{Cursors: cursors})); err != nil {
			t.Errorf("ack: %v", err)
		}
	}
	r.sub = r.m.subscribe()
}

// TestFanOut: 3 groups of 5 clients (overlapping, 9 clients in all), 200
// messages from random members. Every member receives every message of its
// groups exactly once, in group order, across a disconnect and reconnect
// in the middle of the traffic, and never its own.
func TestFanOut(t *testing.T) {
	e := startEnv(t)
	clients := make([]*member, 9)
	for i := range clients {
		clients[i] = e.client(fmt.Sprintf("c%d", i))
	}
	groups := [][]int{{0, 1, 2, 3, 4}, {2, 3, 4, 5, 6}, {4, 5, 6, 7, 8}}
	gids := make([][]byte, len(groups))
	for gi, idx := range groups {
		gids[gi] = groupID(fmt.Sprintf("fan%d", gi))
		var others []*member
		for _, i := range idx[1:] {
			others = append(others, clients[i])
		}
		clients[idx[0]].createOpaqueGroup(gids[gi], others...)
	}

	// Plan the traffic, so that each receiver knows how much to expect.
	type msg struct {
		group, sender int
		data          []byte
	}
	const total = 200
	rng := rand.New(rand.NewPCG(1, 2))
	plan := make([]msg, total)
	want := make([]int, len(clients))
	for k := range plan {
		g := rng.IntN(len(groups))
		s := groups[g][rng.IntN(len(groups[g]))]
		plan[k] = msg{g, s, privateMessage(t, gids[g], 0, mls.ContentTypeApplication, 40+rng.IntN(200))}
		for _, i := range groups[g] {
			if i != s {
				want[i]++
			}
		}
	}

	recv := make([]*receiver, len(clients))
	for i, c := range clients {
		recv[i] = newReceiver(c)
		recv[i].sub = c.subscribe()
		recv[i].sub.waitCaughtUp(t)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	halfway := make(chan struct{})
	for i, r := range recv {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.run(t, want[i], halfway)
			if i%2 == 0 { // half of the clients drop their stream mid-traffic
				r.reconnect(t)
			}
			r.run(t, want[i], stop)
		}()
	}

	receipts := make([]*mlsdsv1.Receipt, total)
	for k, p := range plan {
		if k == total/2 {
			close(halfway)
		}
		receipts[k] = clients[p.sender].mustSend(p.data)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		close(stop)
		<-done
		t.Fatal("receivers did not get all messages within 60s")
	}

	// Expected per member and group: the seqs of the others' messages.
	for i, r := range recv {
		for g, idx := range groups {
			isMember := false
			for _, j := range idx {
				isMember = isMember || j == i
			}
			var expect []*mlsdsv1.Receipt
			var data [][]byte
			for k, p := range plan {
				if p.group == g && p.sender != i && isMember {
					expect = append(expect, receipts[k])
					data = append(data, p.data)
				}
			}
			got := r.got[string(gids[g])]
			if len(got) != len(expect) {
				t.Fatalf("client c%d, group %d: got %d messages, want %d", i, g, len(got), len(expect))
			}
			for k := range got {
				if got[k].GroupSeq != expect[k].GroupSeq || !bytes.Equal(got[k].Message, data[k]) {
					t.Fatalf("client c%d, group %d, message %d: seq %d, want %d (duplicate, gap or reorder)",
						i, g, k, got[k].GroupSeq, expect[k].GroupSeq)
				}
				if got[k].SenderClientId == clients[i].id {
					t.Fatalf("client c%d received its own message", i)
				}
			}
		}
	}
}

// TestAckResume: a new subscription replays exactly what was not
// acknowledged, then says caught_up.
func TestAckResume(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("resume")
	alice.createOpaqueGroup(gid, bob)
	var sent [][]byte
	for i := 0; i < 5; i++ {
		m := privateMessage(t, gid, 0, mls.ContentTypeApplication, 30)
		alice.mustSend(m)
		sent = append(sent, m)
	}
	sub := bob.subscribe()
	got := sub.waitCaughtUp(t)
	if len(got) != 5 {
		t.Fatalf("replayed %d, want 5", len(got))
	}
	bob.ack(gid, got[2].GroupSeq)
	sub.close()
	// Acknowledging backwards changes nothing.
	bob.ack(gid, 1)

	sub = bob.subscribe()
	got = sub.waitCaughtUp(t)
	if len(got) != 2 || !bytes.Equal(got[0].Message, sent[3]) || !bytes.Equal(got[1].Message, sent[4]) {
		t.Fatalf("after ack of 3: replayed %d messages", len(got))
	}
	// Live messages follow the marker.
	m := privateMessage(t, gid, 0, mls.ContentTypeApplication, 30)
	alice.mustSend(m)
	if ev := sub.nextData(t).GetMessage(); ev == nil || !bytes.Equal(ev.Message, m) {
		t.Fatalf("live event %v", ev)
	}
	// Acknowledging beyond the end of the group is refused.
	_, err := bob.groups.Ack(context.Background(), connect.NewRequest(&mlsdsv1.AckRequest{
		Cursors: []*mlsdsv1.Cursor{{GroupId: gid, Seq: 1000}}}))
	connectErr(t, err, connect.CodeInvalidArgument)
}

func TestFetchPaging(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("paging")
	alice.createOpaqueGroup(gid, bob)
	for i := 0; i < 25; i++ {
		alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 30))
	}
	var seqs []uint64
	from := uint64(0)
	for pages := 0; ; pages++ {
		page, err := bob.fetch(gid, from, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, env := range page.Messages {
			seqs = append(seqs, env.GroupSeq)
		}
		if len(page.Messages) == 0 {
			if page.NextSeq != from {
				t.Fatalf("empty page moved next_seq from %d to %d", from, page.NextSeq)
			}
			break
		}
		from = page.NextSeq
		if pages > 5 {
			t.Fatal("too many pages")
		}
	}
	if len(seqs) != 25 {
		t.Fatalf("fetched %d messages, want 25", len(seqs))
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("message %d has seq %d", i, s)
		}
	}
}

// TestMembershipWindows: in an opaque group the committer's bundle adds and
// removes members; a removed client gets the removing Commit and nothing
// after it, an added one starts right after the Commit that added it.
func TestMembershipWindows(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	gid := groupID("windows")
	alice.createOpaqueGroup(gid, bob)
	before := alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 30))
	ctx := context.Background()
	// Carol joins through a Welcome to a KeyPackage of hers that alice
	// claimed.
	carolRef, err := mustKP(t, alice, carol).Ref()
	if err != nil {
		t.Fatal(err)
	}
	res, err := alice.groups.SendCommitBundle(ctx, connect.NewRequest(opaqueBundle(t, &mlsdsv1.SendCommitBundleRequest{
		Commit: privateMessage(t, gid, 0, mls.ContentTypeCommit, 60), Welcome: welcomeTo(t, carolRef),
		Added: []string{"carol"}, Removed: []string{"bob"}})))
	if err != nil {
		t.Fatal(err)
	}
	commitSeq := res.Msg.Receipt.GroupSeq
	after := alice.mustSend(privateMessage(t, gid, 1, mls.ContentTypeApplication, 30))

	seqs := func(m *member) []uint64 {
		sub := m.subscribe()
		defer sub.close()
		var out []uint64
		for _, env := range sub.waitCaughtUp(t) {
			out = append(out, env.GroupSeq)
		}
		return out
	}
	roster, err := alice.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(roster.Msg.ClientIds); got != "[alice carol]" {
		t.Fatalf("roster %s, want [alice carol]", got)
	}
	_, err = bob.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid}))
	connectErr(t, err, connect.CodePermissionDenied)
	if got := seqs(bob); fmt.Sprint(got) != fmt.Sprint([]uint64{before.GroupSeq, commitSeq}) {
		t.Fatalf("removed bob got %v, want %v", got, []uint64{before.GroupSeq, commitSeq})
	}
	if got := seqs(carol); fmt.Sprint(got) != fmt.Sprint([]uint64{after.GroupSeq}) {
		t.Fatalf("added carol got %v, want %v", got, []uint64{after.GroupSeq})
	}
	// Bob can no longer send.
	_, err = bob.send(privateMessage(t, gid, 1, mls.ContentTypeApplication, 30))
	connectErr(t, err, connect.CodePermissionDenied)
}

func TestKeepAlive(t *testing.T) {
	e := startEnv(t, func(_ *ds.Config, c *server.Config) { c.KeepAlive = 20 * time.Millisecond })
	alice := e.client("alice")
	sub := alice.subscribe()
	sub.waitCaughtUp(t)
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for {
		select {
		case ev := <-sub.events:
			if ka := ev.GetKeepAlive(); ka != nil {
				if ka.ServerTime == nil {
					t.Fatal("keep_alive without server_time")
				}
				return
			}
		case <-timer.C:
			t.Fatal("no keep_alive")
		}
	}
}

// TestStreamsPerClient: a client that opens more subscriptions than
// allowed loses its oldest one; the newer ones keep working.
func TestStreamsPerClient(t *testing.T) {
	e := startEnv(t, func(_ *ds.Config, c *server.Config) { c.MaxStreamsPerClient = 2 })
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("streams")
	alice.createOpaqueGroup(gid, bob)
	subs := make([]*subscription, 3)
	for i := range subs {
		subs[i] = bob.subscribe()
		subs[i].waitCaughtUp(t)
	}
	for range subs[0].events {
	}
	ce := connectErr(t, <-subs[0].done, connect.CodeResourceExhausted)
	if d := detail[mlsdsv1.TooLarge](t, ce); d.Limit != 2 {
		t.Fatalf("limit %d, want 2", d.Limit)
	}
	m := privateMessage(t, gid, 0, mls.ContentTypeApplication, 20)
	alice.mustSend(m)
	for _, s := range subs[1:] {
		if ev := s.nextData(t).GetMessage(); ev == nil || !bytes.Equal(ev.Message, m) {
			t.Fatalf("got %v", ev)
		}
	}
}
