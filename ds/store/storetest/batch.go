package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// The batch cases check ds.BatchAccepter: in one batch every message gets
// what AcceptMessage would have given it at its place in the order, and a
// refused message leaves no trace. Engines without batches skip them.

func batcher(t *testing.T, s ds.Store) ds.BatchAccepter {
	t.Helper()
	b, ok := s.(ds.BatchAccepter)
	if !ok {
		t.Skip("the engine does not implement ds.BatchAccepter")
	}
	return b
}

// acceptBatch runs a batch and checks the shape of the answer.
func acceptBatch(t *testing.T, b ds.BatchAccepter, ps ...ds.AcceptParams) ([]ds.AcceptResult, []error) {
	t.Helper()
	res, errs := b.AcceptMessages(ctx(), ps)
	if len(res) != len(ps) || len(errs) != len(ps) {
		t.Fatalf("AcceptMessages of %d messages: %d results, %d errors", len(ps), len(res), len(errs))
	}
	return res, errs
}

func member(p ds.AcceptParams) ds.AcceptParams {
	p.RequireMember = true
	return p
}

func wantAccepted(t *testing.T, what string, r ds.AcceptResult, err error, seq, epoch uint64) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v, want accepted with seq %d", what, err, seq)
		return
	}
	if r.Duplicate || r.GroupSeq != seq || r.Epoch != epoch || !r.AcceptedAt.Equal(t0) {
		t.Errorf("%s: %+v, want a new message with seq %d, epoch %d, accepted at t0", what, r, seq, epoch)
	}
}

func wantDuplicate(t *testing.T, what string, r ds.AcceptResult, err error, first ds.Receipt) {
	t.Helper()
	if err != nil || !r.Duplicate || r.GroupSeq != first.GroupSeq || r.Epoch != first.Epoch ||
		!bytes.Equal(r.GroupID, first.GroupID) || !r.AcceptedAt.Equal(first.AcceptedAt) {
		t.Errorf("%s: %+v, %v; want the first receipt %+v as a duplicate", what, r, err, first)
	}
}

func testBatchMixed(t *testing.T, s ds.Store) {
	b := batcher(t, s)
	newGroup(t, s, "g", 5, "a", "b")
	newGroup(t, s, "h", 0, "a")
	old := mustAccept(t, s, msg("g", 5, mls.ContentTypeApplication, "a", "old"))

	conflict := msg("g", 5, mls.ContentTypeProposal, "a", "proposal")
	conflict.StateVersion, conflict.NewState = 7, []byte("state-x")
	res, errs := acceptBatch(t, b,
		member(msg("g", 5, mls.ContentTypeApplication, "a", "m1")), // 0
		member(msg("g", 5, mls.ContentTypeApplication, "x", "m2")), // 1: not a member
		msg("g", 6, mls.ContentTypeApplication, "a", "future"),     // 2
		msg("g", 2, mls.ContentTypeApplication, "a", "stale"),      // 3
		msg("nope", 0, mls.ContentTypeApplication, "a", "m"),       // 4
		member(msg("h", 0, mls.ContentTypeApplication, "a", "m3")), // 5
		member(msg("g", 4, mls.ContentTypeApplication, "b", "m4")), // 6
		conflict, // 7
		member(msg("g", 5, mls.ContentTypeApplication, "a", "old")), // 8: stored before
		member(msg("g", 5, mls.ContentTypeApplication, "a", "m1")),  // 9: earlier in the batch
	)
	wantAccepted(t, "m1", res[0], errs[0], 2, 5)
	if !errors.Is(errs[1], ds.ErrNotMember) {
		t.Errorf("non-member in a batch: %v, want ErrNotMember", errs[1])
	}
	wantWrongEpoch(t, errs[2], 5, 1)
	var se *ds.StaleEpochError
	if !errors.As(errs[3], &se) || se.Current != 5 {
		t.Errorf("stale message in a batch: %v, want StaleEpochError{Current: 5}", errs[3])
	}
	if !errors.Is(errs[4], ds.ErrNotFound) {
		t.Errorf("unknown group in a batch: %v, want ErrNotFound", errs[4])
	}
	wantAccepted(t, "m3 (other group)", res[5], errs[5], 1, 0)
	wantAccepted(t, "m4", res[6], errs[6], 3, 4)
	if !errors.Is(errs[7], ds.ErrStateConflict) {
		t.Errorf("state conflict in a batch: %v, want ErrStateConflict", errs[7])
	}
	wantDuplicate(t, "resubmission of a stored message", res[8], errs[8], old)
	wantDuplicate(t, "resubmission within the batch", res[9], errs[9], res[0].Receipt)

	// The refused messages left no trace; sequence numbers have no gap.
	if got := visible(t, s, "g", "a"); fmt.Sprint(got) != "[1 2 3]" {
		t.Errorf("messages of g = %v, want [1 2 3]", got)
	}
	head, _ := s.GroupState(ctx(), []byte("g"))
	if head.LastSeq != 3 || head.Epoch != 5 || head.StateVersion != 0 || string(head.State) != "state-0" {
		t.Errorf("g after the batch: %+v", head)
	}
	if head, _ := s.Group(ctx(), []byte("h")); head.LastSeq != 1 {
		t.Errorf("h after the batch: last seq %d, want 1", head.LastSeq)
	}
	// The next message follows on.
	if r := mustAccept(t, s, msg("g", 5, mls.ContentTypeApplication, "b", "after")); r.GroupSeq != 4 {
		t.Errorf("message after the batch got seq %d, want 4", r.GroupSeq)
	}
}

func testBatchCommits(t *testing.T, s ds.Store) {
	b := batcher(t, s)
	newGroup(t, s, "g", 0, "a", "b")
	res, errs := acceptBatch(t, b,
		msg("g", 0, mls.ContentTypeCommit, "a", "c1"),      // 0: wins epoch 0
		msg("g", 0, mls.ContentTypeApplication, "b", "m"),  // 1: one epoch old
		msg("g", 0, mls.ContentTypeCommit, "b", "c2"),      // 2: loses epoch 0
		msg("g", 1, mls.ContentTypeCommit, "b", "c3"),      // 3: wins epoch 1
		msg("g", 2, mls.ContentTypeApplication, "a", "m2"), // 4
		msg("g", 1, mls.ContentTypeCommit, "a", "c4"),      // 5: loses epoch 1
	)
	wantAccepted(t, "c1", res[0], errs[0], 1, 0)
	wantAccepted(t, "app after c1", res[1], errs[1], 2, 0)
	wantWrongEpoch(t, errs[2], 1, 1)
	wantAccepted(t, "c3", res[3], errs[3], 3, 1)
	wantAccepted(t, "app of epoch 2", res[4], errs[4], 4, 2)
	wantWrongEpoch(t, errs[5], 2, 3)
	head, _ := s.Group(ctx(), []byte("g"))
	if head.Epoch != 2 || head.EpochStartSeq != 3 || head.LastSeq != 4 {
		t.Errorf("after the batch: epoch %d, start %d, last %d; want 2, 3, 4", head.Epoch, head.EpochStartSeq, head.LastSeq)
	}
}

func testBatchMembership(t *testing.T, s ds.Store) {
	b := batcher(t, s)
	newGroup(t, s, "g", 0, "a", "b", "c")
	c := msg("g", 0, mls.ContentTypeCommit, "a", "remove b, add d")
	c.Removed, c.Added = []string{"b"}, []string{"d"}
	res, errs := acceptBatch(t, b,
		member(msg("g", 0, mls.ContentTypeApplication, "b", "before")), // 0
		member(msg("g", 0, mls.ContentTypeApplication, "d", "early")),  // 1: not yet a member
		c, // 2
		member(msg("g", 1, mls.ContentTypeApplication, "b", "after")), // 3: no longer a member
		member(msg("g", 1, mls.ContentTypeApplication, "d", "hello")), // 4
		member(msg("g", 1, mls.ContentTypeApplication, "c", "hi")),    // 5
	)
	wantAccepted(t, "b before its removal", res[0], errs[0], 1, 0)
	if !errors.Is(errs[1], ds.ErrNotMember) {
		t.Errorf("d before being added: %v, want ErrNotMember", errs[1])
	}
	wantAccepted(t, "the Commit", res[2], errs[2], 2, 0)
	if !errors.Is(errs[3], ds.ErrNotMember) {
		t.Errorf("b after its removal: %v, want ErrNotMember", errs[3])
	}
	wantAccepted(t, "d after being added", res[4], errs[4], 3, 1)
	wantAccepted(t, "c", res[5], errs[5], 4, 1)
	if m, _ := s.Members(ctx(), []byte("g")); fmt.Sprint(m) != "[a c d]" {
		t.Errorf("members after the batch: %v, want [a c d]", m)
	}
	if got := visible(t, s, "g", "b"); fmt.Sprint(got) != "[1 2]" {
		t.Errorf("b sees %v, want [1 2]", got)
	}
	if got := visible(t, s, "g", "d"); fmt.Sprint(got) != "[3 4]" {
		t.Errorf("d sees %v, want [3 4]", got)
	}
}

func testBatchWelcome(t *testing.T, s ds.Store) {
	b := batcher(t, s)
	mustClient(t, s, "j1", "j1")
	mustClient(t, s, "j2", "j2")
	k1, k2 := kp("j1", false), kp("j2", false)
	mustAddKPs(t, s, k1)
	mustAddKPs(t, s, k2)
	newGroup(t, s, "g", 0, "a")

	c1 := msg("g", 0, mls.ContentTypeCommit, "a", "add j1")
	c1.Added = []string{"j1"}
	c1.Welcome = []byte("welcome j1")
	c1.WelcomeTo = []ds.WelcomeRoute{{ClientID: "j1", KeyPackageRef: k1.Ref}}
	c1.ConsumeKeyPackages = [][]byte{k1.Ref}
	c2 := msg("g", 0, mls.ContentTypeCommit, "a", "add j2")
	c2.Added = []string{"j2"}
	c2.Welcome = []byte("welcome j2")
	c2.WelcomeTo = []ds.WelcomeRoute{{ClientID: "j2", KeyPackageRef: k2.Ref}}
	c2.ConsumeKeyPackages = [][]byte{k2.Ref}
	res, errs := acceptBatch(t, b,
		member(msg("g", 0, mls.ContentTypeApplication, "a", "x")),
		c1,
		c2, // loses the epoch: its Welcome must go nowhere
		member(msg("g", 1, mls.ContentTypeApplication, "j1", "joined")),
	)
	wantAccepted(t, "app", res[0], errs[0], 1, 0)
	wantAccepted(t, "c1", res[1], errs[1], 2, 0)
	wantWrongEpoch(t, errs[2], 1, 2)
	wantAccepted(t, "j1's first message", res[3], errs[3], 3, 1)

	ws, err := s.PendingWelcomes(ctx(), "j1")
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].CommitSeq != 2 || ws[0].Epoch != 1 || string(ws[0].Data) != "welcome j1" ||
		!bytes.Equal(ws[0].KeyPackageRef, k1.Ref) {
		t.Errorf("j1's Welcomes = %+v", ws)
	}
	if ws, _ := s.PendingWelcomes(ctx(), "j2"); len(ws) != 0 {
		t.Errorf("the refused Commit's Welcome was routed: %+v", ws)
	}
	got, _ := s.KeyPackagesByRef(ctx(), [][]byte{k1.Ref, k2.Ref})
	for _, g := range got {
		if want := bytes.Equal(g.Ref, k1.Ref); g.Consumed() != want {
			t.Errorf("KeyPackage of %s consumed = %v, want %v", g.ClientID, g.Consumed(), want)
		}
	}
	if m, _ := s.Members(ctx(), []byte("g")); fmt.Sprint(m) != "[a j1]" {
		t.Errorf("members = %v, want [a j1]", m)
	}
}

// PoisonSender is the sender whose message an armed store lets into a
// batch's transaction but not through its commit (see BatchCommitFailure).
const PoisonSender = "poison"

// BatchCommitFailure checks that a batch whose transaction cannot commit
// hands out no receipt and stores nothing: every message fails, also those
// that were applied without error before the commit. arm must make the
// store's commits fail whenever the transaction stored a message from
// PoisonSender (an engine does it with a deferred constraint); the insert
// itself must succeed. open must return a new, empty store; the test
// closes it.
func BatchCommitFailure(t *testing.T, open func(t *testing.T) ds.Store, arm func(t *testing.T, s ds.Store)) {
	s := open(t)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	b := batcher(t, s)
	newGroup(t, s, "g", 0, "a", PoisonSender)
	arm(t, s)
	c := msg("g", 0, mls.ContentTypeCommit, "a", "c")
	c.Added = []string{"j"}
	res, errs := acceptBatch(t, b,
		member(msg("g", 0, mls.ContentTypeApplication, "a", "m1")),
		c,
		member(msg("g", 1, mls.ContentTypeApplication, PoisonSender, "p")),
		member(msg("g", 1, mls.ContentTypeApplication, "a", "m2")),
	)
	for i := range res {
		if errs[i] == nil {
			t.Errorf("message %d of a batch that did not commit: receipt %+v, want an error", i, res[i])
		}
	}
	if got := visible(t, s, "g", "a"); len(got) != 0 {
		t.Errorf("messages of a batch that did not commit are visible: %v", got)
	}
	head, err := s.Group(ctx(), []byte("g"))
	if err != nil || head.LastSeq != 0 || head.Epoch != 0 {
		t.Errorf("group after a batch that did not commit: %+v, %v", head, err)
	}
	if m, _ := s.Members(ctx(), []byte("g")); fmt.Sprint(m) != "[a "+PoisonSender+"]" {
		t.Errorf("members after a batch that did not commit: %v", m)
	}
	// The store goes on working: the same messages without the poison.
	res, errs = acceptBatch(t, b,
		member(msg("g", 0, mls.ContentTypeApplication, "a", "m1")),
		c,
		member(msg("g", 1, mls.ContentTypeApplication, "a", "m2")),
	)
	wantAccepted(t, "m1 again", res[0], errs[0], 1, 0)
	wantAccepted(t, "the Commit again", res[1], errs[1], 2, 0)
	wantAccepted(t, "m2 again", res[2], errs[2], 3, 1)
}
