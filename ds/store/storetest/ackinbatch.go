package storetest

import (
	"errors"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// testAckInBatch checks ds.AcceptMessagesAndAcks: the messages get what
// AcceptMessages gives them, and the Acks what AckMany gives them as if it
// ran right after, in the same transaction, so that an Ack may refer to a
// message (or a Commit's new member) of the same batch. Engines without it
// skip the case.
func testAckInBatch(t *testing.T, s ds.Store) {
	b, ok := s.(ds.AckingAccepter)
	if !ok {
		t.Skip("the engine does not implement ds.AckingAccepter")
	}
	mustClient(t, s, "j", "j")
	k := kp("j", false)
	mustAddKPs(t, s, k)
	newGroup(t, s, "g", 0, "a", "b")
	newGroup(t, s, "h", 0, "a")
	mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "a", "first")) // seq 1

	outsider := msg("g", 0, mls.ContentTypeApplication, "x", "outsider")
	outsider.RequireMember = true
	add := msg("g", 0, mls.ContentTypeCommit, "a", "add j")
	add.Added = []string{"j"}
	add.Welcome = []byte("welcome j")
	add.WelcomeTo = []ds.WelcomeRoute{{ClientID: "j", KeyPackageRef: k.Ref}}
	add.ConsumeKeyPackages = [][]byte{k.Ref}
	ps := []ds.AcceptParams{
		msg("g", 0, mls.ContentTypeApplication, "a", "second"), // seq 2
		outsider, // refused, changes nothing
		add,      // seq 3
		msg("g", 0, mls.ContentTypeApplication, "a", "first"), // duplicate of seq 1
	}
	acks := []ds.AckParams{
		{ClientID: "b", GroupID: []byte("g"), Seq: 3, CheckHead: true}, // within the head only with the batch's messages
		{ClientID: "j", GroupID: []byte("g"), Seq: 3, CheckHead: true}, // a member by the batch's Commit: delivers its Welcome
		{ClientID: "a", GroupID: []byte("g"), Seq: 4, CheckHead: true}, // beyond the head
		{ClientID: "x", GroupID: []byte("g"), Seq: 1, CheckHead: true}, // never a member
		{ClientID: "a", GroupID: []byte("nope"), Seq: 1, CheckHead: true},
		{ClientID: "a", GroupID: []byte("h"), Seq: 0, CheckHead: true},
	}
	res, errs, ackErrs := b.AcceptMessagesAndAcks(ctx(), ps, acks)
	if len(res) != len(ps) || len(errs) != len(ps) || len(ackErrs) != len(acks) {
		t.Fatalf("%d messages and %d acks: %d results, %d errors, %d ack errors", len(ps), len(acks), len(res), len(errs), len(ackErrs))
	}
	for i, want := range []uint64{2, 0, 3, 1} {
		switch {
		case i == 1:
			if !errors.Is(errs[i], ds.ErrNotMember) {
				t.Errorf("message %d: %v, want ErrNotMember", i, errs[i])
			}
		case errs[i] != nil:
			t.Errorf("message %d: %v", i, errs[i])
		case res[i].GroupSeq != want || res[i].Duplicate != (i == 3):
			t.Errorf("message %d: seq %d duplicate %v, want seq %d duplicate %v", i, res[i].GroupSeq, res[i].Duplicate, want, i == 3)
		}
	}
	var beyond *ds.AckBeyondHeadError
	for i, check := range []func(error) bool{
		func(err error) bool { return err == nil },
		func(err error) bool { return err == nil },
		func(err error) bool { return errors.As(err, &beyond) && beyond.Seq == 4 && beyond.LastSeq == 3 },
		func(err error) bool { return errors.Is(err, ds.ErrNotMember) },
		func(err error) bool { return errors.Is(err, ds.ErrNotFound) },
		func(err error) bool { return err == nil },
	} {
		if !check(ackErrs[i]) {
			t.Errorf("ack %d (%+v): %v", i, acks[i], ackErrs[i])
		}
	}
	if got := acked(t, s, "b"); got["g"] != 3 {
		t.Errorf("b's cursor in g = %d, want 3", got["g"])
	}
	if got := acked(t, s, "a"); got["g"] != 0 {
		t.Errorf("a's cursor in g = %d, want 0 (the refused Ack changed nothing)", got["g"])
	}
	if ws, err := s.PendingWelcomes(ctx(), "j"); err != nil || len(ws) != 0 {
		t.Errorf("j's pending Welcomes after its Ack in the batch: %d, %v; want none", len(ws), err)
	}
	if got := acked(t, s, "x"); len(got) != 0 {
		t.Errorf("a non-member got cursors: %v", got)
	}
	ms, err := s.Messages(ctx(), ds.MessageQuery{GroupID: []byte("g"), ClientID: "a", FromSeq: 1, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 {
		t.Errorf("g holds %d messages, want 3", len(ms))
	}

	// Either side may be empty.
	res, errs, ackErrs = b.AcceptMessagesAndAcks(ctx(), nil, []ds.AckParams{{ClientID: "a", GroupID: []byte("g"), Seq: 3, CheckHead: true}})
	if len(res) != 0 || len(errs) != 0 || len(ackErrs) != 1 || ackErrs[0] != nil {
		t.Errorf("acks only: %v %v %v", res, errs, ackErrs)
	}
	res, errs, ackErrs = b.AcceptMessagesAndAcks(ctx(), []ds.AcceptParams{msg("g", 1, mls.ContentTypeApplication, "a", "third")}, nil)
	if len(res) != 1 || len(errs) != 1 || errs[0] != nil || res[0].GroupSeq != 4 || len(ackErrs) != 0 {
		t.Errorf("messages only: %v %v %v", res, errs, ackErrs)
	}
	if got := acked(t, s, "a"); got["g"] != 3 {
		t.Errorf("a's cursor in g = %d, want 3", got["g"])
	}
}
