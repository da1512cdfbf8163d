package server_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// The link from a group a committed ReInit closed to its successor
// (RFC 9420 §11.2): CreateGroupRequest.predecessor_group_id, served in
// GetGroupInfoResponse.successor_group_id.

// successorOf returns the successor_group_id that m reads for gid.
func (m *member) successorOf(gid []byte) []byte {
	m.t.Helper()
	res, err := m.groups.GetGroupInfo(context.Background(), connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
	if err != nil {
		m.t.Fatalf("GetGroupInfo(%s) by %s: %v", gid, m.id, err)
	}
	return res.Msg.SuccessorGroupId
}

// ownKeyPackage is a KeyPackage of m with its private keys, for a group m
// creates itself.
func (m *member) ownKeyPackage() (*mls.KeyPackage, *mls.KeyPackagePrivate) {
	m.t.Helper()
	now := uint64(time.Now().Unix())
	kp, priv, err := mls.NewKeyPackage(suite, []byte(m.id), m.sigPriv, now-3600, now+7*24*3600)
	if err != nil {
		m.t.Fatal(err)
	}
	return kp, priv
}

// createAtEpoch0 asks to create g (one member, epoch 0) as a transparent
// group with the predecessor pred.
func (m *member) createAtEpoch0(g *mls.Group, pred []byte) error {
	m.t.Helper()
	gi, err := g.GroupInfo(true)
	if err != nil {
		m.t.Fatal(err)
	}
	_, err = m.groups.CreateGroup(context.Background(), connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: g.GroupID(), Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, PredecessorGroupId: pred,
		GroupInfo: mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}),
	}))
	return err
}

// TestSuccessorTransparent: alice and bob share a transparent group. A
// successor is refused while no ReInit closed the group, and for a group
// id the ReInit does not name; a stranger naming the group as predecessor
// gets the answer a missing group gets. After the ReInit Commit, alice
// creates the successor with mls.ReInitGroup from a fresh KeyPackage of
// bob and its Welcome, and both members read the link.
func TestSuccessorTransparent(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	alice, bob, mallory := e.client("alice"), e.client("bob"), e.client("mallory")
	bob.uploadKeyPackages(2, false)

	old := groupID("reinit-old")
	g := alice.fullGroup(old)
	bobKPData, bobKP := alice.claimKP("bob")
	welcome, gi := commitFirst(t, g, bobKP)
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: old, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi,
		KeyPackages: [][]byte{bobKPData}, Welcome: welcome,
	})); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	next := groupID("reinit-new")

	// Not frozen yet.
	kp, priv := alice.ownKeyPackage()
	early, err := mls.NewGroup(next, kp, priv)
	if err != nil {
		t.Fatal(err)
	}
	ce := connectErr(t, alice.createAtEpoch0(early, old), connect.CodeInvalidArgument)
	if d := detail[mlsdsv1.InvalidMessage](t, ce); d.RfcSection != "11.2" {
		t.Fatalf("non-frozen predecessor: section %q (%s), want 11.2", d.RfcSection, ce.Message())
	}

	// A stranger: the same answer for the group as for a missing one.
	kp, priv = mallory.ownKeyPackage()
	mg, err := mls.NewGroup(groupID("mallory"), kp, priv)
	if err != nil {
		t.Fatal(err)
	}
	missing := groupID("missing")
	strange := connectErr(t, mallory.createAtEpoch0(mg, old), connect.CodePermissionDenied)
	absent := connectErr(t, mallory.createAtEpoch0(mg, missing), connect.CodePermissionDenied)
	if a, b := strings.ReplaceAll(strange.Message(), hex.EncodeToString(old), "X"), strings.ReplaceAll(absent.Message(), hex.EncodeToString(missing), "X"); a != b {
		t.Fatalf("a stranger tells an existing predecessor from a missing one:\n%s\n%s", a, b)
	}
	if got := alice.successorOf(old); got != nil {
		t.Fatalf("refused creations linked a successor: %q", got)
	}

	// The ReInit Commit, with the GroupInfo of the frozen epoch.
	ri := &mls.ReInit{GroupID: next, Version: mls.ProtocolVersionMLS10, CipherSuite: suite}
	msg, _, err := g.CommitMessage(mls.CommitOptions{ReInit: ri})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	frozenGI, err := g.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.sendBundle(mlsMessage(t, msg), mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: frozenGI})); err != nil {
		t.Fatalf("ReInit Commit: %v", err)
	}

	// A group the ReInit does not name.
	kp, priv = alice.ownKeyPackage()
	other, err := mls.NewGroup(groupID("not-named"), kp, priv)
	if err != nil {
		t.Fatal(err)
	}
	ce = connectErr(t, alice.createAtEpoch0(other, old), connect.CodeInvalidArgument)
	if d := detail[mlsdsv1.InvalidMessage](t, ce); d.RfcSection != "11.2" {
		t.Fatalf("successor with another id: section %q (%s), want 11.2", d.RfcSection, ce.Message())
	}

	// The successor, at epoch 1, with bob's fresh KeyPackage.
	bobKPData, bobKP = alice.claimKP("bob")
	kp, priv = alice.ownKeyPackage()
	ng, w, err := g.ReInitGroup(kp, priv, []*mls.KeyPackage{bobKP})
	if err != nil {
		t.Fatalf("ReInitGroup: %v", err)
	}
	ngi, err := ng.GroupInfo(true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: next, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, PredecessorGroupId: old,
		GroupInfo:   mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: ngi}),
		KeyPackages: [][]byte{bobKPData},
		Welcome:     mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: w}),
	})); err != nil {
		t.Fatalf("CreateGroup of the successor: %v", err)
	}
	for _, m := range []*member{alice, bob} {
		if got := m.successorOf(old); !bytes.Equal(got, next) {
			t.Fatalf("%s reads successor %q, want %q", m.id, got, next)
		}
	}
	if got := alice.successorOf(next); got != nil {
		t.Fatalf("the successor has a successor: %q", got)
	}
	// The ReInit names one group, which exists now: the same request
	// again is refused and the link stays (a second successor of an
	// opaque group is refused with AlreadyExists: TestSuccessorOpaque).
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: next, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, PredecessorGroupId: old,
		GroupInfo: mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: ngi}), KeyPackages: [][]byte{bobKPData},
	})); err == nil {
		t.Fatal("the successor was created twice")
	}
	if got := bob.successorOf(old); !bytes.Equal(got, next) {
		t.Fatalf("bob reads successor %q after the repeat, want %q", got, next)
	}
}

// TestSuccessorOpaque: for an opaque predecessor the DS checks membership
// and the ReInit group_id that the Commit which closed the group declares
// in its authenticated_data (ds/roster_ad.go): no successor before such a
// Commit, none with another id than the declared one, and none after a
// later Commit that declares no ReInit. The link is stored once, and a
// second successor is refused without creating it; a refused successor
// changes nothing.
func TestSuccessorOpaque(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	alice, bob, mallory := e.client("alice"), e.client("bob"), e.client("mallory")
	old := groupID("opaque-old")
	alice.createOpaqueGroup(old, bob)

	create := func(m *member, gid, pred []byte, other *member) error {
		other.uploadKeyPackages(1, false)
		_, err := m.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
			GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, PredecessorGroupId: pred,
			Members: []string{other.id}, KeyPackages: [][]byte{m.claim(other.id)},
		}))
		return err
	}
	// commit sends an opaque Commit of epoch that declares decl.
	commit := func(m *member, epoch uint64, decl ds.RosterChange) {
		t.Helper()
		msg, err := mls.ParseMLSMessage(privateMessage(t, old, epoch, mls.ContentTypeCommit, 48))
		if err != nil {
			t.Fatal(err)
		}
		msg.PrivateMessage.AuthenticatedData = decl.MarshalDeclaration()
		m.mustSend(mlsMessage(t, msg))
	}
	refused := func(what string, err error, code connect.Code, gid []byte) {
		t.Helper()
		connectErr(t, err, code)
		if code == connect.CodeInvalidArgument && !strings.Contains(err.Error(), "11.2") {
			t.Errorf("%s: %v, want a §11.2 refusal", what, err)
		}
		if got := bob.successorOf(old); got != nil {
			t.Fatalf("%s: bob reads successor %x", what, got)
		}
		_, err = alice.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
		connectErr(t, err, connect.CodePermissionDenied) // not created
	}
	next := groupID("opaque-new")
	refused("stranger", create(mallory, groupID("mallory"), old, bob), connect.CodePermissionDenied, groupID("mallory"))
	refused("no ReInit yet", create(alice, next, old, bob), connect.CodeInvalidArgument, next)

	// A Commit that declares a ReInit of next, then one that declares
	// none (members refuse it: the group is closed): only the group's
	// last Commit counts.
	commit(alice, 0, ds.RosterChange{ReInitGroupID: next})
	commit(bob, 1, ds.RosterChange{})
	refused("after a Commit without ReInit", create(alice, next, old, bob), connect.CodeInvalidArgument, next)

	commit(alice, 2, ds.RosterChange{ReInitGroupID: next})
	other := groupID("opaque-other")
	refused("bob links another id", create(bob, other, old, alice), connect.CodeInvalidArgument, other)
	if err := create(alice, next, old, bob); err != nil {
		t.Fatalf("successor: %v", err)
	}
	if got := bob.successorOf(old); !bytes.Equal(got, next) {
		t.Fatalf("bob reads successor %q, want %q", got, next)
	}
	second := groupID("opaque-second")
	connectErr(t, create(bob, second, old, alice), connect.CodeAlreadyExists)
	_, err := bob.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: second}))
	connectErr(t, err, connect.CodePermissionDenied)
	if got := bob.successorOf(old); !bytes.Equal(got, next) {
		t.Fatalf("after the refused second successor bob reads %q, want %q", got, next)
	}
}
