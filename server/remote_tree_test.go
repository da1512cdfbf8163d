package server_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// The blobs here are random bytes: the server stores them as given. The
// real encryption, and a joiner that uses it, are tested in package client
// (TestRemoteTreeThroughServer).

func (m *member) putRemoteTree(gid []byte, epoch uint64, blob []byte) error {
	_, err := m.groups.PutRemoteTree(context.Background(), connect.NewRequest(&mlsdsv1.PutRemoteTreeRequest{
		GroupId: gid, RemoteTree: &mlsdsv1.RemoteTree{Epoch: epoch, Blob: blob}}))
	return err
}

func (m *member) getRemoteTree(gid []byte) (*mlsdsv1.GetRemoteTreeResponse, error) {
	res, err := m.groups.GetRemoteTree(context.Background(), connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: gid}))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// wantRemoteTrees checks what m gets: the current epoch and the blobs of
// the given epochs, newest first.
func wantRemoteTrees(t *testing.T, m *member, gid []byte, current uint64, blobs map[uint64][]byte, epochs ...uint64) {
	t.Helper()
	res, err := m.getRemoteTree(gid)
	if err != nil {
		t.Fatalf("GetRemoteTree(%s): %v", m.id, err)
	}
	if !bytes.Equal(res.GroupId, gid) || res.Epoch != current {
		t.Errorf("GetRemoteTree(%s): group %q epoch %d, want %q epoch %d", m.id, res.GroupId, res.Epoch, gid, current)
	}
	var got []uint64
	for _, rt := range res.RemoteTrees {
		got = append(got, rt.Epoch)
		if !bytes.Equal(rt.Blob, blobs[rt.Epoch]) {
			t.Errorf("GetRemoteTree(%s): the blob of epoch %d is not the uploaded one", m.id, rt.Epoch)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(epochs) {
		t.Fatalf("GetRemoteTree(%s): epochs %v, want %v", m.id, got, epochs)
	}
}

// welcomeTo is a Welcome naming the KeyPackage refs; the server only
// routes it by them.
func welcomeTo(t *testing.T, refs ...[]byte) []byte {
	w := &mls.Welcome{CipherSuite: suite, EncryptedGroupInfo: randBytes(64)}
	for _, r := range refs {
		w.Secrets = append(w.Secrets, mls.EncryptedGroupSecrets{NewMember: r,
			EncryptedGroupSecrets: mls.HPKECiphertext{KEMOutput: randBytes(32), Ciphertext: randBytes(48)}})
	}
	return mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: w})
}

func TestRemoteTreeRPCs(t *testing.T) {
	e := startEnv(t, func(c *ds.Config, _ *server.Config) { c.MaxMessageSize = 8 << 10 })
	alice, bob, carol, joiner := e.client("alice"), e.client("bob"), e.client("carol"), e.client("joiner")
	refs := joiner.uploadKeyPackages(1, false)
	gid := groupID("remote")
	alice.createOpaqueGroup(gid, bob)
	ctx := context.Background()
	blobs := map[uint64][]byte{0: randBytes(300), 1: randBytes(300), 2: randBytes(300)}

	wantRemoteTrees(t, bob, gid, 0, blobs)
	if err := alice.putRemoteTree(gid, 0, blobs[0]); err != nil {
		t.Fatalf("PutRemoteTree: %v", err)
	}
	wantRemoteTrees(t, bob, gid, 0, blobs, 0)

	// Refusals, each with its code and detail.
	ce := connectErr(t, carol.putRemoteTree(gid, 0, randBytes(10)), connect.CodePermissionDenied)
	if d := detail[mlsdsv1.NotMember](t, ce); !bytes.Equal(d.GroupId, gid) {
		t.Errorf("NotMember detail names group %q", d.GroupId)
	}
	_, err := carol.getRemoteTree(gid)
	connectErr(t, err, connect.CodePermissionDenied)
	ce = connectErr(t, alice.putRemoteTree(gid, 3, randBytes(10)), connect.CodeAborted)
	if d := detail[mlsdsv1.WrongEpoch](t, ce); d.ExpectedEpoch != 0 || d.FetchFromSeq != 1 {
		t.Errorf("WrongEpoch detail %v, want expected 0, fetch from 1", d)
	}
	ce = connectErr(t, alice.putRemoteTree(gid, 0, randBytes(8<<10+1)), connect.CodeResourceExhausted)
	if d := detail[mlsdsv1.TooLarge](t, ce); d.Limit != 8<<10 {
		t.Errorf("TooLarge detail %v, want limit %d", d, 8<<10)
	}
	connectErr(t, alice.putRemoteTree(gid, 0, nil), connect.CodeInvalidArgument)
	_, err = alice.groups.PutRemoteTree(ctx, connect.NewRequest(&mlsdsv1.PutRemoteTreeRequest{GroupId: gid}))
	connectErr(t, err, connect.CodeInvalidArgument)
	connectErr(t, alice.putRemoteTree(nil, 0, randBytes(10)), connect.CodeInvalidArgument)
	// An unknown group gets the answer a non-member gets: an outsider
	// cannot tell whether a group exists.
	ce = connectErr(t, alice.putRemoteTree([]byte("no such group"), 0, randBytes(10)), connect.CodePermissionDenied)
	detail[mlsdsv1.NotMember](t, ce)

	// A bundle whose tree is not for the epoch the Commit starts is refused
	// as a whole.
	bundle := &mlsdsv1.SendCommitBundleRequest{
		Commit:     privateMessage(t, gid, 0, mls.ContentTypeCommit, 60),
		Welcome:    welcomeTo(t, refs[0]),
		Added:      []string{"joiner"},
		RemoteTree: &mlsdsv1.RemoteTree{Epoch: 0, Blob: blobs[1]},
	}
	bundle = opaqueBundle(t, bundle)
	_, err = alice.groups.SendCommitBundle(ctx, connect.NewRequest(bundle))
	connectErr(t, err, connect.CodeInvalidArgument)
	wantRemoteTrees(t, alice, gid, 0, blobs, 0)

	// The bundle stores the new epoch's tree with the Commit; the joiner
	// gets both trees.
	bundle.RemoteTree.Epoch = 1
	if _, err := alice.groups.SendCommitBundle(ctx, connect.NewRequest(bundle)); err != nil {
		t.Fatalf("SendCommitBundle: %v", err)
	}
	wantRemoteTrees(t, joiner, gid, 1, blobs, 1, 0)
	// The next Commit drops epoch 0.
	if _, err := bob.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
		Commit:     privateMessage(t, gid, 1, mls.ContentTypeCommit, 60),
		RemoteTree: &mlsdsv1.RemoteTree{Epoch: 2, Blob: blobs[2]},
	})); err != nil {
		t.Fatalf("SendCommitBundle: %v", err)
	}
	wantRemoteTrees(t, alice, gid, 2, blobs, 2, 1)
	// An upload for the epoch that just ended is too late.
	ce = connectErr(t, joiner.putRemoteTree(gid, 1, randBytes(10)), connect.CodeAborted)
	if d := detail[mlsdsv1.WrongEpoch](t, ce); d.ExpectedEpoch != 2 {
		t.Errorf("WrongEpoch detail %v, want expected 2", d)
	}
}

func TestRemoteTreeTransparentGroup(t *testing.T) {
	e := startEnv(t)
	alice := e.client("alice")
	gid := groupID("transparent")
	_, gi, tree := alice.newTransparentGroup(gid)
	ctx := context.Background()
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi, RatchetTree: tree})); err != nil {
		t.Fatal(err)
	}
	ce := connectErr(t, alice.putRemoteTree(gid, 0, randBytes(10)), connect.CodeInvalidArgument)
	if !strings.Contains(ce.Message(), "keeps its ratchet tree itself") {
		t.Errorf("PutRemoteTree on a transparent group: %q does not say why", ce.Message())
	}
	_, err := alice.getRemoteTree(gid)
	connectErr(t, err, connect.CodeInvalidArgument)
}
