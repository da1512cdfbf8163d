package storetest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// The ack batch cases check ds.BatchAcker: in one batch every Ack gets what
// Store.Ack would have given it, and a refused one changes nothing. Engines
// without it skip them.

func acker(t *testing.T, s ds.Store) ds.BatchAcker {
	t.Helper()
	b, ok := s.(ds.BatchAcker)
	if !ok {
		t.Skip("the engine does not implement ds.BatchAcker")
	}
	return b
}

// ackMany runs a batch and checks the shape of the answer.
func ackMany(t *testing.T, b ds.BatchAcker, ps ...ds.AckParams) []error {
	t.Helper()
	errs := b.AckMany(ctx(), ps)
	if len(errs) != len(ps) {
		t.Fatalf("AckMany of %d acks: %d errors", len(ps), len(errs))
	}
	return errs
}

func ackOf(client, group string, seq uint64) ds.AckParams {
	return ds.AckParams{ClientID: client, GroupID: []byte(group), Seq: seq}
}

// acked returns the client's cursors by group.
func acked(t *testing.T, s ds.Store, client string) map[string]uint64 {
	t.Helper()
	cur, err := s.Cursors(ctx(), client)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]uint64)
	for _, c := range cur {
		m[string(c.GroupID)] = c.Acked
	}
	return m
}

func testAckBatch(t *testing.T, s ds.Store) {
	b := acker(t, s)
	newGroup(t, s, "g", 0, "a", "b", "c")
	newGroup(t, s, "h", 0, "b")
	for i := 0; i < 5; i++ {
		mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "a", fmt.Sprint(i)))
	}
	if err := s.Ack(ctx(), "c", []byte("g"), 4); err != nil {
		t.Fatal(err)
	}

	errs := ackMany(t, b,
		ackOf("a", "g", 2),
		ackOf("x", "g", 1),    // never a member
		ackOf("a", "nope", 1), // no such group
		ackOf("b", "g", 1),
		ackOf("a", "g", 4), // the same cursor again, further
		ackOf("b", "h", 0),
		ackOf("c", "g", 1),     // behind the stored cursor
		ackOf("a", "g", 3),     // behind the batch's own earlier Ack
		ackOf("b", "g", 1<<63), // does not fit: fails alone
		ackOf("a\x00", "g", 1),
	)
	for i, want := range []error{nil, ds.ErrNotMember, ds.ErrNotMember, nil, nil, nil, nil, nil, errAny, ds.ErrNotMember} {
		switch {
		case want == nil && errs[i] != nil:
			t.Errorf("ack %d: %v, want success", i, errs[i])
		case want == errAny && errs[i] == nil:
			t.Errorf("ack %d: succeeded, want an error", i)
		case want != nil && want != errAny && !errors.Is(errs[i], want):
			t.Errorf("ack %d: %v, want %v", i, errs[i], want)
		}
	}
	if got := acked(t, s, "a"); got["g"] != 4 {
		t.Errorf("a's cursor in g = %d, want 4 (the highest of its Acks)", got["g"])
	}
	if got := acked(t, s, "b"); got["g"] != 1 || got["h"] != 0 {
		t.Errorf("b's cursors = %v, want g:1 (the refused Ack changed nothing), h:0", got)
	}
	if got := acked(t, s, "c"); got["g"] != 4 {
		t.Errorf("c's cursor in g = %d, want 4 (never backwards)", got["g"])
	}
	if got := acked(t, s, "x"); len(got) != 0 {
		t.Errorf("a non-member got cursors: %v", got)
	}

	// A batch of refusals only, and one of the same cursor many times.
	errs = ackMany(t, b, ackOf("x", "g", 1), ackOf("y", "h", 1))
	for i, err := range errs {
		if !errors.Is(err, ds.ErrNotMember) {
			t.Errorf("refusal %d: %v, want ErrNotMember", i, err)
		}
	}
	var same []ds.AckParams
	for _, seq := range []uint64{5, 1, 3, 5, 2} {
		same = append(same, ackOf("b", "g", seq))
	}
	for i, err := range ackMany(t, b, same...) {
		if err != nil {
			t.Errorf("repeated ack %d: %v", i, err)
		}
	}
	if got := acked(t, s, "b"); got["g"] != 5 {
		t.Errorf("b's cursor in g after repeated Acks = %d, want 5", got["g"])
	}
	// A removed member keeps its cursor and may still ack in a batch.
	c := msg("g", 0, mls.ContentTypeCommit, "b", "remove a")
	c.Removed = []string{"a"}
	mustAccept(t, s, c)
	for i, err := range ackMany(t, b, ackOf("a", "g", 6), ackOf("b", "g", 6)) {
		if err != nil {
			t.Errorf("ack %d after a's removal: %v", i, err)
		}
	}
	if got := acked(t, s, "a"); got["g"] != 6 {
		t.Errorf("removed a's cursor = %d, want 6", got["g"])
	}
}

// errAny stands for "some error" in a table of wanted errors.
var errAny = errors.New("any error")

func testAckBatchWelcomes(t *testing.T, s ds.Store) {
	b := acker(t, s)
	for _, j := range []string{"j1", "j2", "j3"} {
		mustClient(t, s, j, j)
	}
	k1, k2, k3, k4 := kp("j1", false), kp("j2", false), kp("j3", false), kp("j1", false)
	mustAddKPs(t, s, k1, k4)
	mustAddKPs(t, s, k2)
	mustAddKPs(t, s, k3)
	newGroup(t, s, "g", 0, "a")
	newGroup(t, s, "h", 0, "a")
	mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "a", "before"))
	c := msg("g", 0, mls.ContentTypeCommit, "a", "add j1 j2 j3")
	c.Added = []string{"j1", "j2", "j3"}
	c.Welcome = []byte("welcome g")
	c.WelcomeTo = []ds.WelcomeRoute{{ClientID: "j1", KeyPackageRef: k1.Ref}, {ClientID: "j2", KeyPackageRef: k2.Ref}, {ClientID: "j3", KeyPackageRef: k3.Ref}}
	c.ConsumeKeyPackages = [][]byte{k1.Ref, k2.Ref, k3.Ref}
	r := mustAccept(t, s, c)
	ch := msg("h", 0, mls.ContentTypeCommit, "a", "add j1")
	ch.Added = []string{"j1"}
	ch.Welcome = []byte("welcome h")
	ch.WelcomeTo = []ds.WelcomeRoute{{ClientID: "j1", KeyPackageRef: k4.Ref}}
	ch.ConsumeKeyPackages = [][]byte{k4.Ref}
	rh := mustAccept(t, s, ch)

	errs := ackMany(t, b,
		ackOf("j2", "g", r.GroupSeq-1), // before the Commit: the Welcome stays pending
		ackOf("j1", "g", r.GroupSeq),   // delivers j1's Welcome of g, not that of h
		ackOf("x", "g", r.GroupSeq),
		ackOf("j3", "g", r.GroupSeq-1),
		ackOf("j3", "g", r.GroupSeq+1), // a later Ack of the same cursor delivers it
	)
	for i, err := range errs {
		if want := i != 2; want != (err == nil) {
			t.Errorf("ack %d: %v", i, err)
		}
	}
	pending := func(client string) []string {
		ws, err := s.PendingWelcomes(ctx(), client)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, w := range ws {
			out = append(out, string(w.Data))
		}
		return out
	}
	if got := pending("j1"); fmt.Sprint(got) != "[welcome h]" {
		t.Errorf("j1's pending Welcomes = %v, want [welcome h]", got)
	}
	if got := pending("j2"); fmt.Sprint(got) != "[welcome g]" {
		t.Errorf("j2's pending Welcomes = %v, want [welcome g] (acked before the Commit)", got)
	}
	if got := pending("j3"); len(got) != 0 {
		t.Errorf("j3's pending Welcomes = %v, want none", got)
	}
	// Acknowledging h delivers the last one; an Ack again changes nothing.
	for i, err := range ackMany(t, b, ackOf("j1", "h", rh.GroupSeq), ackOf("j1", "g", r.GroupSeq)) {
		if err != nil {
			t.Errorf("ack %d: %v", i, err)
		}
	}
	if got := pending("j1"); len(got) != 0 {
		t.Errorf("j1's pending Welcomes = %v, want none", got)
	}
}

func testAckBatchCheckHead(t *testing.T, s ds.Store) {
	b := acker(t, s)
	newGroup(t, s, "g", 0, "a", "b")
	for i := 0; i < 5; i++ {
		mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "a", fmt.Sprint(i)))
	}
	checked := func(client, group string, seq uint64) ds.AckParams {
		p := ackOf(client, group, seq)
		p.CheckHead = true
		return p
	}
	errs := ackMany(t, b,
		checked("a", "g", 3),
		checked("a", "g", 9),     // beyond the head: refused alone
		checked("a", "nope", 1),  // no such group
		checked("x", "g", 2),     // within the head, never a member
		checked("x", "g", 6),     // the head is checked first
		checked("b", "g", 1<<63), // does not fit, so beyond any head
		checked("b", "g", 5),     // the head itself
		checked("a\x00", "g", 7), // a client that cannot exist, beyond the head
		checked("a\x00", "nope", 1),
		ackOf("b", "nope", 7), // unchecked: not a member of what does not exist
	)
	wantBeyond := func(i int, seq uint64) {
		t.Helper()
		var e *ds.AckBeyondHeadError
		if !errors.As(errs[i], &e) || !errors.Is(errs[i], ds.ErrInvalidArgument) || e.Seq != seq || e.LastSeq != 5 {
			t.Errorf("ack %d: %v, want an AckBeyondHeadError of %d after 5", i, errs[i], seq)
		}
	}
	for _, i := range []int{0, 6} {
		if errs[i] != nil {
			t.Errorf("ack %d: %v, want success", i, errs[i])
		}
	}
	wantBeyond(1, 9)
	wantBeyond(4, 6)
	wantBeyond(5, 1<<63)
	wantBeyond(7, 7)
	for _, i := range []int{2, 8} {
		if !errors.Is(errs[i], ds.ErrNotFound) {
			t.Errorf("ack %d: %v, want ErrNotFound", i, errs[i])
		}
	}
	for _, i := range []int{3, 9} {
		if !errors.Is(errs[i], ds.ErrNotMember) {
			t.Errorf("ack %d: %v, want ErrNotMember", i, errs[i])
		}
	}
	if got := acked(t, s, "a"); got["g"] != 3 {
		t.Errorf("a's cursor = %d, want 3 (its Ack beyond the head changed nothing)", got["g"])
	}
	if got := acked(t, s, "b"); got["g"] != 5 {
		t.Errorf("b's cursor = %d, want 5", got["g"])
	}
	// One checked Ack alone takes the same rules.
	if errs := ackMany(t, b, checked("a", "g", 6)); !errors.Is(errs[0], ds.ErrInvalidArgument) {
		t.Errorf("a lone Ack beyond the head: %v, want ErrInvalidArgument", errs[0])
	}
	if errs := ackMany(t, b, checked("a", "g", 4)); errs[0] != nil {
		t.Errorf("a lone Ack: %v", errs[0])
	}
	if got := acked(t, s, "a"); got["g"] != 4 {
		t.Errorf("a's cursor = %d, want 4", got["g"])
	}
}
