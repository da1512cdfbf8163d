package postgres

import (
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/storetest"
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/mls"
)

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// privateMessage returns an MLSMessage holding a PrivateMessage of group id
// at epoch, with random ciphertext (the Delivery Service reads the clear
// header only).
func privateMessage(t *testing.T, id []byte, epoch uint64) []byte {
	t.Helper()
	b, err := (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatPrivateMessage,
		PrivateMessage: &mls.PrivateMessage{GroupID: id, Epoch: epoch, ContentType: mls.ContentTypeApplication,
			EncryptedSenderData: random(32), Ciphertext: random(64)}}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestServicesOnTwoNodes runs two Services (two nodes) on one database, with
// polling practically off: a client subscribed on node B receives, in order
// and exactly once, the messages that another member sends through node A,
// and learns of a group it was added to through node A.
func TestServicesOnTwoNodes(t *testing.T) {
	url := pgtest.NewDatabase(t)
	cfg := ds.Config{RequestsPerSecond: -1, ClaimsPerMinute: -1, ClaimsPerTargetPerMinute: -1, PollInterval: time.Hour}
	nodeA := ds.New(open(t, url, Options{}), cfg)
	storeB := open(t, url, Options{})
	nodeB := ds.New(storeB, cfg)
	if err := storeB.notifier.Ready(ctx()); err != nil {
		t.Fatal(err)
	}
	alice, bob := storetest.NewMember(t, "alice"), storetest.NewMember(t, "bob")
	for _, m := range []*storetest.Member{alice, bob} {
		if err := nodeA.RegisterClient(ctx(), m.Client("")); err != nil {
			t.Fatal(err)
		}
	}

	c, cancel := ctxWithCancel()
	defer cancel()
	events, err := nodeB.Subscribe(c, "bob")
	if err != nil {
		t.Fatal(err)
	}
	var next func(what string) ds.Event
	next = func(what string) ds.Event {
		t.Helper()
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("subscription ended while waiting for %s", what)
			}
			if ev.Err != nil {
				t.Fatalf("subscription failed while waiting for %s: %v", what, ev.Err)
			}
			if ev.KeyPackageLow != nil {
				return next(what) // bob's stock of KeyPackages is not what this test is about
			}
			return ev
		case <-time.After(10 * time.Second):
			t.Fatalf("nothing received on node B while waiting for %s", what)
			return ds.Event{}
		}
	}
	if ev := next("the end of the replay"); !ev.CaughtUp {
		t.Fatalf("first event %+v, want CaughtUp", ev)
	}

	// Bob is added to a group through node A: node B learns of the group by
	// the client topic, then of its messages by the group topic.
	gid := []byte("cross-node group")
	if err := nodeA.CreateGroup(ctx(), "alice", ds.CreateGroup{GroupID: gid, Mode: ds.ModeOpaque, Members: []string{"bob"},
		KeyPackages: storetest.Consent(t, nodeA, bob)}); err != nil {
		t.Fatal(err)
	}
	const n = 20
	var worst time.Duration
	for i := 1; i <= n; i++ {
		sent := time.Now()
		r, err := nodeA.Send(ctx(), "alice", privateMessage(t, gid, 0))
		if err != nil {
			t.Fatal(err)
		}
		ev := next(fmt.Sprintf("message %d", i))
		if d := time.Since(sent); d > worst {
			worst = d
		}
		if ev.Message == nil || ev.Message.GroupSeq != r.GroupSeq || ev.Message.Sender != "alice" {
			t.Fatalf("event %d = %+v, want the message with receipt %+v", i, ev, r)
		}
		if r.GroupSeq != uint64(i) {
			t.Errorf("receipt %d has GroupSeq %d", i, r.GroupSeq)
		}
	}
	t.Logf("slowest send on node A to delivery on node B: %v (of %d)", worst, n)
	select {
	case ev := <-events:
		if ev.Message != nil {
			t.Errorf("extra delivery %+v", ev.Message)
		}
	case <-time.After(200 * time.Millisecond):
	}
}
