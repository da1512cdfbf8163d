package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// testRemoteTrees runs the conformance cases of the remote-tree methods as
// subtests on one store; each case uses groups of its own.
func testRemoteTrees(t *testing.T, s ds.Store) {
	for _, tc := range []struct {
		name string
		f    func(t *testing.T, s ds.Store)
	}{
		{"Put", testRemoteTreePut},
		{"WithCommit", testRemoteTreeWithCommit},
		{"CommitRefused", testRemoteTreeCommitRefused},
		{"PutRacesCommit", testRemoteTreePutRacesCommit},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.f(t, s) })
	}
}

func blobOf(group string, epoch uint64, text string) []byte {
	return []byte(fmt.Sprintf("sealed tree of %s at epoch %d (%s)", group, epoch, text))
}

func putTree(s ds.Store, group, sender string, epoch uint64, text string) error {
	return s.PutRemoteTree(ctx(), ds.RemoteTreePut{
		GroupID: []byte(group), Sender: sender, At: t0,
		Tree: ds.RemoteTree{Epoch: epoch, Blob: blobOf(group, epoch, text)},
	})
}

// wantTrees checks the group's current epoch and its remote trees: one per
// entry of texts, for epochs (newest first), with the blob blobOf(text).
func wantTrees(t *testing.T, s ds.Store, group string, current uint64, epochs []uint64, texts []string) {
	t.Helper()
	epoch, trees, err := s.RemoteTrees(ctx(), []byte(group))
	if err != nil {
		t.Fatalf("RemoteTrees(%s): %v", group, err)
	}
	if epoch != current {
		t.Errorf("RemoteTrees(%s): current epoch %d, want %d", group, epoch, current)
	}
	var got []uint64
	for _, tr := range trees {
		got = append(got, tr.Epoch)
	}
	if fmt.Sprint(got) != fmt.Sprint(epochs) {
		t.Fatalf("RemoteTrees(%s): epochs %v, want %v (newest first)", group, got, epochs)
	}
	for i, tr := range trees {
		if want := blobOf(group, epochs[i], texts[i]); !bytes.Equal(tr.Blob, want) {
			t.Errorf("RemoteTrees(%s): blob of epoch %d = %q, want %q", group, tr.Epoch, tr.Blob, want)
		}
	}
}

func testRemoteTreePut(t *testing.T, s ds.Store) {
	newGroup(t, s, "put-g", 5, "a", "b")
	newGroup(t, s, "put-h", 5, "a")
	wantTrees(t, s, "put-g", 5, nil, nil)

	if err := putTree(s, "put-g", "a", 5, "first"); err != nil {
		t.Fatalf("PutRemoteTree: %v", err)
	}
	wantTrees(t, s, "put-g", 5, []uint64{5}, []string{"first"})
	// Another upload for the same epoch replaces the first.
	if err := putTree(s, "put-g", "b", 5, "second"); err != nil {
		t.Fatalf("PutRemoteTree again: %v", err)
	}
	wantTrees(t, s, "put-g", 5, []uint64{5}, []string{"second"})
	// Groups do not share trees.
	wantTrees(t, s, "put-h", 5, nil, nil)

	// Only members, only the current epoch, only known groups.
	if err := putTree(s, "put-g", "mallory", 5, "x"); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("PutRemoteTree by a non-member: %v, want ErrNotMember", err)
	}
	err := putTree(s, "put-g", "a", 6, "future")
	wantWrongEpoch(t, err, 5, 1)
	err = putTree(s, "put-g", "a", 4, "past")
	wantWrongEpoch(t, err, 5, 1)
	if err := putTree(s, "put-nope", "a", 0, "x"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("PutRemoteTree of an unknown group: %v, want ErrNotFound", err)
	}
	if _, _, err := s.RemoteTrees(ctx(), []byte("put-nope")); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("RemoteTrees of an unknown group: %v, want ErrNotFound", err)
	}
	wantTrees(t, s, "put-g", 5, []uint64{5}, []string{"second"})

	// A removed member may no longer upload.
	c := msg("put-g", 5, mls.ContentTypeCommit, "a", "remove b")
	c.Removed = []string{"b"}
	mustAccept(t, s, c)
	if err := putTree(s, "put-g", "b", 6, "x"); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("PutRemoteTree by a removed member: %v, want ErrNotMember", err)
	}
}

func testRemoteTreeWithCommit(t *testing.T, s ds.Store) {
	newGroup(t, s, "commit-g", 0, "a", "b")
	if err := putTree(s, "commit-g", "a", 0, "e0"); err != nil {
		t.Fatal(err)
	}
	// A Commit stores the tree of the epoch it starts.
	c := msg("commit-g", 0, mls.ContentTypeCommit, "a", "c0")
	c.RemoteTree = &ds.RemoteTree{Epoch: 1, Blob: blobOf("commit-g", 1, "e1")}
	r := mustAccept(t, s, c)
	wantTrees(t, s, "commit-g", 1, []uint64{1, 0}, []string{"e1", "e0"})
	// Sending the same Commit again changes nothing.
	dup := c
	dup.RemoteTree = &ds.RemoteTree{Epoch: 1, Blob: blobOf("commit-g", 1, "other")}
	res, err := s.AcceptMessage(ctx(), dup)
	if err != nil || !res.Duplicate || res.GroupSeq != r.GroupSeq {
		t.Fatalf("duplicate Commit: %+v, %v; want the first receipt", res, err)
	}
	wantTrees(t, s, "commit-g", 1, []uint64{1, 0}, []string{"e1", "e0"})

	// Messages that are not Commits leave the trees alone.
	mustAccept(t, s, msg("commit-g", 1, mls.ContentTypeApplication, "b", "hello"))
	wantTrees(t, s, "commit-g", 1, []uint64{1, 0}, []string{"e1", "e0"})

	// A Commit without a tree: epoch 2 has none yet, epoch 0 is gone.
	mustAccept(t, s, msg("commit-g", 1, mls.ContentTypeCommit, "b", "c1"))
	wantTrees(t, s, "commit-g", 2, []uint64{1}, []string{"e1"})
	if err := putTree(s, "commit-g", "b", 2, "e2"); err != nil {
		t.Fatal(err)
	}
	wantTrees(t, s, "commit-g", 2, []uint64{2, 1}, []string{"e2", "e1"})
	c = msg("commit-g", 2, mls.ContentTypeCommit, "a", "c2")
	c.RemoteTree = &ds.RemoteTree{Epoch: 3, Blob: blobOf("commit-g", 3, "e3")}
	mustAccept(t, s, c)
	wantTrees(t, s, "commit-g", 3, []uint64{3, 2}, []string{"e3", "e2"})
	// Two Commits without a tree leave none of the epochs kept.
	mustAccept(t, s, msg("commit-g", 3, mls.ContentTypeCommit, "a", "c3"))
	mustAccept(t, s, msg("commit-g", 4, mls.ContentTypeCommit, "a", "c4"))
	wantTrees(t, s, "commit-g", 5, nil, nil)
}

func testRemoteTreeCommitRefused(t *testing.T, s ds.Store) {
	newGroup(t, s, "refused-g", 0, "a", "b")
	if err := putTree(s, "refused-g", "a", 0, "e0"); err != nil {
		t.Fatal(err)
	}
	// A tree for another epoch than the one the Commit starts: the whole
	// Commit is refused.
	c := msg("refused-g", 0, mls.ContentTypeCommit, "a", "c0")
	c.RemoteTree = &ds.RemoteTree{Epoch: 0, Blob: blobOf("refused-g", 0, "wrong")}
	if _, err := s.AcceptMessage(ctx(), c); !errors.Is(err, ds.ErrInvalidArgument) {
		t.Fatalf("Commit with the tree of its own epoch: %v, want ErrInvalidArgument", err)
	}
	head, err := s.Group(ctx(), []byte("refused-g"))
	if err != nil || head.Epoch != 0 || head.LastSeq != 0 {
		t.Fatalf("after a refused Commit: %+v, %v; want epoch 0 and no message", head, err)
	}
	wantTrees(t, s, "refused-g", 0, []uint64{0}, []string{"e0"})

	// A Commit that loses the epoch stores no tree.
	mustAccept(t, s, msg("refused-g", 0, mls.ContentTypeCommit, "b", "winner"))
	c = msg("refused-g", 0, mls.ContentTypeCommit, "a", "loser")
	c.RemoteTree = &ds.RemoteTree{Epoch: 1, Blob: blobOf("refused-g", 1, "loser")}
	_, err = s.AcceptMessage(ctx(), c)
	wantWrongEpoch(t, err, 1, 1)
	// Nor does one from a non-member.
	c = msg("refused-g", 1, mls.ContentTypeCommit, "mallory", "c")
	c.RequireMember = true
	c.RemoteTree = &ds.RemoteTree{Epoch: 2, Blob: blobOf("refused-g", 2, "mallory")}
	if _, err := s.AcceptMessage(ctx(), c); !errors.Is(err, ds.ErrNotMember) {
		t.Fatalf("Commit of a non-member: %v, want ErrNotMember", err)
	}
	wantTrees(t, s, "refused-g", 1, []uint64{0}, []string{"e0"})
}

// testRemoteTreePutRacesCommit uploads trees for epoch 0 while a Commit
// moves the group to epoch 1: every upload either lands before the Commit
// (and its tree is then the previous epoch's) or fails with a
// WrongEpochError; none lands as a tree of epoch 1.
func testRemoteTreePutRacesCommit(t *testing.T, s ds.Store) {
	newGroup(t, s, "race-g", 0, "a", "b")
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = putTree(s, "race-g", "b", 0, "racer")
		}()
	}
	c := msg("race-g", 0, mls.ContentTypeCommit, "a", "c0")
	c.RemoteTree = &ds.RemoteTree{Epoch: 1, Blob: blobOf("race-g", 1, "commit")}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := s.AcceptMessage(ctx(), c); err != nil {
			t.Errorf("Commit: %v", err)
		}
	}()
	wg.Wait()
	stored := 0
	for _, err := range errs {
		var we *ds.WrongEpochError
		switch {
		case err == nil:
			stored++
		case errors.As(err, &we) && we.Expected == 1:
		default:
			t.Errorf("PutRemoteTree racing a Commit: %v, want success or WrongEpochError{Expected: 1}", err)
		}
	}
	if stored > 0 {
		wantTrees(t, s, "race-g", 1, []uint64{1, 0}, []string{"commit", "racer"})
	} else {
		wantTrees(t, s, "race-g", 1, []uint64{1}, []string{"commit"})
	}
}
