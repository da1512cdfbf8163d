package storetest

import (
	"bytes"
	"errors"
	"testing"

	"github.com/mlsds/mlsds/ds"
)

// testSuccessor: CreateGroup with a Predecessor links the two groups in
// its transaction; a group has one successor, a second creation naming
// the same predecessor fails with ErrAlreadyExists and creates nothing;
// deleting the predecessor, or the successor, deletes the link.
func testSuccessor(t *testing.T, s ds.Store) {
	newGroup(t, s, "old", 3, "alice", "bob")
	if got, err := s.Successor(ctx(), []byte("old")); err != nil || got != nil {
		t.Fatalf("Successor before any: %x, %v; want none", got, err)
	}
	if got, err := s.Successor(ctx(), []byte("nope")); err != nil || got != nil {
		t.Fatalf("Successor of an unknown group: %x, %v; want none", got, err)
	}
	next := ds.GroupRecord{ID: []byte("new"), Mode: ds.ModeOpaque, CipherSuite: suite, Creator: "alice", CreatedAt: t0, Predecessor: []byte("old")}
	if err := s.CreateGroup(ctx(), next, []string{"alice", "bob"}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Successor(ctx(), []byte("old")); err != nil || !bytes.Equal(got, []byte("new")) {
		t.Fatalf("Successor(old) = %q, %v; want new", got, err)
	}
	if got, err := s.Successor(ctx(), []byte("new")); err != nil || got != nil {
		t.Fatalf("Successor(new) = %q, %v; want none", got, err)
	}

	again := next
	again.ID = []byte("newer")
	if err := s.CreateGroup(ctx(), again, []string{"bob"}); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Fatalf("second successor: %v, want ErrAlreadyExists", err)
	}
	if _, err := s.Group(ctx(), []byte("newer")); !errors.Is(err, ds.ErrNotFound) {
		t.Fatalf("the refused successor was created: %v", err)
	}
	if got, _ := s.Successor(ctx(), []byte("old")); !bytes.Equal(got, []byte("new")) {
		t.Fatalf("Successor(old) = %q after the refused one, want new", got)
	}

	for _, c := range []string{"alice", "bob"} {
		if _, err := s.Leave(ctx(), []byte("old"), c); err != nil {
			t.Fatal(err)
		}
	}
	if done, err := s.DeleteGroupIfEmpty(ctx(), []byte("old"), 10); err != nil || !done {
		t.Fatalf("DeleteGroupIfEmpty(old): %v, %v", done, err)
	}
	if got, err := s.Successor(ctx(), []byte("old")); err != nil || got != nil {
		t.Fatalf("Successor of a deleted group: %q, %v; want none", got, err)
	}

	// Deleting a successor deletes the link that names it: the frozen
	// group no longer points at an id anyone could now take.
	newGroup(t, s, "old2", 3, "alice")
	next2 := ds.GroupRecord{ID: []byte("new2"), Mode: ds.ModeOpaque, CipherSuite: suite, Creator: "alice", CreatedAt: t0, Predecessor: []byte("old2")}
	if err := s.CreateGroup(ctx(), next2, []string{"alice"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Leave(ctx(), []byte("new2"), "alice"); err != nil {
		t.Fatal(err)
	}
	if done, err := s.DeleteGroupIfEmpty(ctx(), []byte("new2"), 10); err != nil || !done {
		t.Fatalf("DeleteGroupIfEmpty(new2): %v, %v", done, err)
	}
	if got, err := s.Successor(ctx(), []byte("old2")); err != nil || got != nil {
		t.Fatalf("Successor of old2 after its successor was deleted: %q, %v; want none", got, err)
	}
}
