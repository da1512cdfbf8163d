package ds_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// remoteTrees returns the epochs of the remote trees client gets, and the
// group's current epoch.
func remoteTrees(t *testing.T, e *env, client string, gid []byte) (current uint64, epochs []uint64, blobs [][]byte) {
	t.Helper()
	r, err := e.svc.RemoteTrees(bg, client, gid)
	if err != nil {
		t.Fatalf("RemoteTrees(%s): %v", client, err)
	}
	if !bytes.Equal(r.GroupID, gid) {
		t.Errorf("RemoteTrees: group id %x, want %x", r.GroupID, gid)
	}
	for _, tr := range r.Trees {
		epochs = append(epochs, tr.Epoch)
		blobs = append(blobs, tr.Blob)
	}
	return r.Epoch, epochs, blobs
}

func sealedBlob(epoch uint64) []byte {
	return []byte(fmt.Sprintf("sealed tree of epoch %d %x", epoch, random(16)))
}

// TestRemoteTreeAccess: who may upload and fetch an opaque group's remote
// trees, and which uploads are refused.
func TestRemoteTreeAccess(t *testing.T) {
	e := newEnv(t, ds.Config{MaxMessageSize: 4096})
	for _, id := range []string{"a", "b", "outsider"} {
		e.register(id, id)
	}
	gid := []byte("opaque")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}))

	if cur, epochs, _ := remoteTrees(t, e, "a", gid); cur != 0 || len(epochs) != 0 {
		t.Fatalf("fresh group: epoch %d, trees %v; want 0, none", cur, epochs)
	}
	blob0 := sealedBlob(0)
	if err := e.svc.PutRemoteTree(bg, "a", gid, ds.RemoteTree{Epoch: 0, Blob: blob0}); err != nil {
		t.Fatalf("PutRemoteTree: %v", err)
	}
	cur, epochs, blobs := remoteTrees(t, e, "b", gid)
	if cur != 0 || fmt.Sprint(epochs) != "[0]" || !bytes.Equal(blobs[0], blob0) {
		t.Fatalf("after upload: epoch %d, trees %v; want 0, [0] with the uploaded blob", cur, epochs)
	}

	// Non-members may neither upload nor fetch.
	wantIs(t, e.svc.PutRemoteTree(bg, "outsider", gid, ds.RemoteTree{Epoch: 0, Blob: sealedBlob(0)}), ds.ErrNotMember)
	_, err := e.svc.RemoteTrees(bg, "outsider", gid)
	wantIs(t, err, ds.ErrNotMember)
	// Only the current epoch; a blob of a sane size.
	we := wantErr[*ds.WrongEpochError](t, e.svc.PutRemoteTree(bg, "a", gid, ds.RemoteTree{Epoch: 1, Blob: sealedBlob(1)}))
	if we.Expected != 0 || we.Got != 1 {
		t.Errorf("upload for a future epoch: %+v, want Expected 0, Got 1", we)
	}
	wantIs(t, e.svc.PutRemoteTree(bg, "a", gid, ds.RemoteTree{Epoch: 0}), ds.ErrInvalidArgument)
	tl := wantErr[*ds.TooLargeError](t, e.svc.PutRemoteTree(bg, "a", gid, ds.RemoteTree{Epoch: 0, Blob: random(4097)}))
	if tl.Limit != 4096 {
		t.Errorf("TooLargeError.Limit = %d, want 4096", tl.Limit)
	}
	wantIs(t, e.svc.PutRemoteTree(bg, "a", []byte("no such group"), ds.RemoteTree{Epoch: 0, Blob: sealedBlob(0)}), ds.ErrNotMember) // one answer for outsiders
	// Nothing of that changed what is stored.
	if _, _, blobs := remoteTrees(t, e, "a", gid); len(blobs) != 1 || !bytes.Equal(blobs[0], blob0) {
		t.Errorf("refused uploads changed the stored trees")
	}
}

// TestRemoteTreeWithCommit: a commit bundle stores the tree of the epoch it
// starts together with the Commit, or neither.
func TestRemoteTreeWithCommit(t *testing.T) {
	e := newEnv(t, ds.Config{MaxMessageSize: 4096})
	e.register("a", "a")
	e.register("b", "b")
	j := e.register("j", "j")
	kps := e.upload(j, 2, false)
	gid := []byte("opaque")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}))
	blob0 := sealedBlob(0)
	must(0, e.svc.PutRemoteTree(bg, "a", gid, ds.RemoteTree{Epoch: 0, Blob: blob0}))

	// A tree for the wrong epoch, or too large: the whole bundle is
	// refused, the Welcome is not routed and the group stays at epoch 0.
	bad := []ds.RemoteTree{{Epoch: 0, Blob: sealedBlob(0)}, {Epoch: 2, Blob: sealedBlob(2)}, {Epoch: 1, Blob: random(4097)}, {Epoch: 1}}
	for _, rt := range bad {
		_, err := sendBundle(e.svc, "a", ds.CommitBundle{
			Commit: private(t, gid, 0, mls.ContentTypeCommit), Welcome: welcome(t, ref(t, kps[0])), Added: []string{"j"}, RemoteTree: &rt,
		})
		if err == nil {
			t.Fatalf("bundle with remote tree of epoch %d (%d bytes) accepted", rt.Epoch, len(rt.Blob))
		}
	}
	if cur, epochs, _ := remoteTrees(t, e, "a", gid); cur != 0 || fmt.Sprint(epochs) != "[0]" {
		t.Fatalf("after refused bundles: epoch %d, trees %v; want 0, [0]", cur, epochs)
	}
	if ws := pendingWelcomes(t, e, "j"); len(ws) != 0 {
		t.Fatalf("a refused bundle routed %d Welcomes", len(ws))
	}

	blob1 := sealedBlob(1)
	must(sendBundle(e.svc, "a", ds.CommitBundle{
		Commit: private(t, gid, 0, mls.ContentTypeCommit), Welcome: welcome(t, ref(t, kps[0])), Added: []string{"j"},
		RemoteTree: &ds.RemoteTree{Epoch: 1, Blob: blob1},
	}))
	cur, epochs, blobs := remoteTrees(t, e, "j", gid)
	if cur != 1 || fmt.Sprint(epochs) != "[1 0]" || !bytes.Equal(blobs[0], blob1) || !bytes.Equal(blobs[1], blob0) {
		t.Fatalf("after the Commit, the joiner sees epoch %d, trees %v; want 1, [1 0]", cur, epochs)
	}

	// The next Commit drops epoch 0.
	blob2 := sealedBlob(2)
	must(sendBundle(e.svc, "b", ds.CommitBundle{
		Commit: private(t, gid, 1, mls.ContentTypeCommit), RemoteTree: &ds.RemoteTree{Epoch: 2, Blob: blob2},
	}))
	cur, epochs, blobs = remoteTrees(t, e, "a", gid)
	if cur != 2 || fmt.Sprint(epochs) != "[2 1]" || !bytes.Equal(blobs[0], blob2) || !bytes.Equal(blobs[1], blob1) {
		t.Fatalf("after the second Commit: epoch %d, trees %v; want 2, [2 1]", cur, epochs)
	}
	// A Commit without a tree is refused, through Send or in a bundle:
	// members that cannot process it rejoin from its tree.
	_, err := e.svc.Send(bg, "a", private(t, gid, 2, mls.ContentTypeCommit))
	wantIs(t, err, ds.ErrInvalidArgument)
	_, err = e.svc.SendCommitBundle(bg, "a", ds.CommitBundle{Commit: private(t, gid, 2, mls.ContentTypeCommit)})
	wantIs(t, err, ds.ErrInvalidArgument)
	// The next Commit drops epoch 1; a member may upload epoch 3's again.
	must(sendBundle(e.svc, "a", ds.CommitBundle{
		Commit: private(t, gid, 2, mls.ContentTypeCommit), RemoteTree: &ds.RemoteTree{Epoch: 3, Blob: sealedBlob(2)},
	}))
	if cur, epochs, _ := remoteTrees(t, e, "a", gid); cur != 3 || fmt.Sprint(epochs) != "[3 2]" {
		t.Fatalf("after the third Commit: epoch %d, trees %v; want 3, [3 2]", cur, epochs)
	}
	must(0, e.svc.PutRemoteTree(bg, "j", gid, ds.RemoteTree{Epoch: 3, Blob: sealedBlob(3)}))
	if cur, epochs, _ := remoteTrees(t, e, "b", gid); cur != 3 || fmt.Sprint(epochs) != "[3 2]" {
		t.Fatalf("after the upload for epoch 3: epoch %d, trees %v; want 3, [3 2]", cur, epochs)
	}
}

// TestRemoteTreePendingWelcome: a client whose Welcome is pending may fetch
// the trees even when it is not a member (any more); once it acknowledged
// the Welcome, only membership counts.
func TestRemoteTreePendingWelcome(t *testing.T) {
	e := newEnv(t, ds.Config{})
	e.register("a", "a")
	j := e.register("j", "j")
	kp := e.upload(j, 1, false)[0]
	gid := []byte("opaque")
	must(0, e.svc.CreateGroup(bg, "a", ds.CreateGroup{GroupID: gid, Mode: ds.ModeOpaque}))
	r := must(sendBundle(e.svc, "a", ds.CommitBundle{
		Commit: private(t, gid, 0, mls.ContentTypeCommit), Welcome: welcome(t, ref(t, kp)), Added: []string{"j"},
		RemoteTree: &ds.RemoteTree{Epoch: 1, Blob: sealedBlob(1)},
	}))
	must(sendBundle(e.svc, "a", ds.CommitBundle{
		Commit: private(t, gid, 1, mls.ContentTypeCommit), Removed: []string{"j"},
		RemoteTree: &ds.RemoteTree{Epoch: 2, Blob: sealedBlob(2)},
	}))
	if cur, epochs, _ := remoteTrees(t, e, "j", gid); cur != 2 || fmt.Sprint(epochs) != "[2 1]" {
		t.Fatalf("removed joiner with a pending Welcome: epoch %d, trees %v; want 2, [2 1]", cur, epochs)
	}
	// j may not upload: that takes membership.
	wantIs(t, e.svc.PutRemoteTree(bg, "j", gid, ds.RemoteTree{Epoch: 2, Blob: sealedBlob(2)}), ds.ErrNotMember)
	must(0, e.svc.Ack(bg, "j", gid, r.GroupSeq))
	_, err := e.svc.RemoteTrees(bg, "j", gid)
	wantIs(t, err, ds.ErrNotMember)
}

// TestRemoteTreeTransparent: a transparent group's tree is the Delivery
// Service's own; remote trees are refused with a message that says so.
func TestRemoteTreeTransparent(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	kp := e.upload(e.register("j", "j"), 1, false)[0]
	g := e.createGroup(a)
	for name, err := range map[string]error{
		"PutRemoteTree": e.svc.PutRemoteTree(bg, "a", g.id, ds.RemoteTree{Epoch: 0, Blob: sealedBlob(0)}),
		"RemoteTrees":   func() error { _, err := e.svc.RemoteTrees(bg, "a", g.id); return err }(),
		"SendCommitBundle": func() error {
			commit, _ := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kp)}, nil)
			_, err := sendBundle(e.svc, "a", ds.CommitBundle{
				Commit: commit, GroupInfo: commitGI(t, commit), RemoteTree: &ds.RemoteTree{Epoch: 1, Blob: sealedBlob(1)},
			})
			return err
		}(),
	} {
		wantIs(t, err, ds.ErrInvalidArgument)
		if !strings.Contains(err.Error(), "keeps its ratchet tree itself") {
			t.Errorf("%s on a transparent group: %q does not say why", name, err)
		}
	}
	if head, err := e.store.Group(bg, g.id); err != nil || head.Epoch != 0 {
		t.Errorf("the refused bundle moved the group: %+v, %v", head, err)
	}
}
