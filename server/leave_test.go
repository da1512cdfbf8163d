package server_test

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// mlsKeyPackage makes a KeyPackage of m with its private keys, for a
// client-side mls.Group, and publishes it to the server.
func (m *member) mlsKeyPackage() (*mls.KeyPackage, *mls.KeyPackagePrivate) {
	m.t.Helper()
	now := uint64(time.Now().Unix())
	kp, priv, err := mls.NewKeyPackage(suite, []byte(m.id), m.sigPriv, now-3600, now+7*24*3600)
	if err != nil {
		m.t.Fatal(err)
	}
	data := mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp})
	if _, err := m.kps.UploadKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
		KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: data}}})); err != nil {
		m.t.Fatalf("UploadKeyPackages(%s): %v", m.id, err)
	}
	return kp, priv
}

// mlsGroup is a real three-member transparent group (alice, bob, carol)
// at epoch 1: each member holds its mls.Group, as an SDK would.
type mlsGroup struct {
	id                []byte
	alice, bob, carol *member
	ga, gb, gc        *mls.Group
	commitSeq         uint64 // the Commit that added bob and carol
}

func newMLSGroup(t *testing.T, e *testEnv) *mlsGroup {
	t.Helper()
	ctx := context.Background()
	g := &mlsGroup{id: groupID("leave"), alice: e.client("alice"), bob: e.client("bob"), carol: e.client("carol")}
	kpA, privA, err := mls.NewKeyPackage(suite, []byte("alice"), g.alice.sigPriv, 0, 1<<62)
	if err != nil {
		t.Fatal(err)
	}
	if g.ga, err = mls.NewGroup(g.id, kpA, privA); err != nil {
		t.Fatal(err)
	}
	gi, err := g.ga.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := g.ga.Tree().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{GroupId: g.id,
		GroupInfo: mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}), RatchetTree: tree})); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}

	// Alice claims bob's and carol's published KeyPackages and adds them.
	_, privB := g.bob.mlsKeyPackage()
	_, privC := g.carol.mlsKeyPackage()
	var kps []*mls.KeyPackage
	for _, id := range []string{"bob", "carol"} {
		res, err := g.alice.kps.ClaimKeyPackages(ctx, claimReq(id))
		if err != nil {
			t.Fatalf("claim %s: %v", id, err)
		}
		var m mls.MLSMessage
		if err := m.UnmarshalBinary(res.Msg.KeyPackages[0].KeyPackage); err != nil {
			t.Fatal(err)
		}
		kps = append(kps, m.KeyPackage)
	}
	commit, welcome, err := g.ga.Commit(kps, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.commitSeq = g.alice.sendCommit(g.ga, commit, welcome).GroupSeq
	if g.gb, err = mls.JoinGroup(welcome, kps[0], privB, nil, nil); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	if g.gc, err = mls.JoinGroup(welcome, kps[1], privC, nil, nil); err != nil {
		t.Fatalf("carol joins: %v", err)
	}
	g.bob.ack(g.id, g.commitSeq)
	g.carol.ack(g.id, g.commitSeq)
	return g
}

// sendCommit sends commit, made by st, with its Welcome if any and the
// GroupInfo of the epoch it starts, and merges it into st.
func (m *member) sendCommit(st *mls.Group, commit *mls.PublicMessage, welcome *mls.Welcome) *mlsdsv1.Receipt {
	m.t.Helper()
	if err := st.MergePendingCommit(); err != nil {
		m.t.Fatal(err)
	}
	gi, err := st.GroupInfo(false)
	if err != nil {
		m.t.Fatal(err)
	}
	req := &mlsdsv1.SendCommitBundleRequest{
		Commit:    mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: commit}),
		GroupInfo: mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}),
	}
	if welcome != nil {
		req.Welcome = mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: welcome})
	}
	res, err := m.groups.SendCommitBundle(context.Background(), connect.NewRequest(req))
	if err != nil {
		m.t.Fatalf("SendCommitBundle(%s): %v", m.id, err)
	}
	return res.Msg.Receipt
}

func (m *member) leave(groupID, proposal []byte) (*mlsdsv1.LeaveGroupResponse, error) {
	res, err := m.groups.LeaveGroup(context.Background(), connect.NewRequest(&mlsdsv1.LeaveGroupRequest{GroupId: groupID, RemoveProposal: proposal}))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// nextIn returns the next message event of the group, skipping the
// events of other groups and the ones without a message.
func (s *subscription) nextIn(t testing.TB, gid []byte) *mlsdsv1.Envelope {
	t.Helper()
	for {
		if m := s.nextData(t).GetMessage(); m != nil && bytes.Equal(m.GroupId, gid) {
			return m
		}
	}
}

// lastSeqOf returns the GroupSeq of the last message of a page, 0 if none.
func lastSeqOf(page *mlsdsv1.FetchResponse) uint64 {
	if n := len(page.Messages); n > 0 {
		return page.Messages[n-1].GroupSeq
	}
	return 0
}

func TestLeaveGroupTransparent(t *testing.T) {
	// No polling: every delivery below must come from a wake-up, and a
	// stream must not need a poll to learn that its client left.
	e := startEnv(t, func(c *ds.Config, _ *server.Config) { c.PollInterval = time.Hour })
	ctx := context.Background()
	g := newMLSGroup(t, e)
	alice, bob, carol := g.alice, g.bob, g.carol

	// Bob is also in a second group with alice, which he does not leave:
	// its messages are the barrier that shows his stream goes on.
	other := groupID("other")
	alice.createOpaqueGroup(other, bob)

	bobSub, carolSub := bob.subscribe(), carol.subscribe()
	bobSub.waitCaughtUp(t)
	carolSub.waitCaughtUp(t)
	m1 := alice.mustSend(privateMessage(t, g.id, 1, mls.ContentTypeApplication, 50))
	if got := bobSub.nextIn(t, g.id); got.GroupSeq != m1.GroupSeq {
		t.Fatalf("bob got seq %d, want %d", got.GroupSeq, m1.GroupSeq)
	}
	carolSub.nextIn(t, g.id)

	// A Remove Proposal for somebody else, or sent as someone else, is
	// not a way to leave.
	removeCarol, err := g.gb.Propose(&mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: g.gc.Self()}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bob.leave(g.id, mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: removeCarol}))
	connectErr(t, err, connect.CodePermissionDenied)
	removeSelf, err := g.gc.Propose(&mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: g.gc.Self()}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bob.leave(g.id, mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: removeSelf}))
	connectErr(t, err, connect.CodePermissionDenied) // carol's leaf, not bob's
	update, err := g.gb.ProposeUpdate()
	if err != nil {
		t.Fatal(err)
	}
	_, err = bob.leave(g.id, mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: update}))
	ce := connectErr(t, err, connect.CodeInvalidArgument)
	if d := detail[mlsdsv1.InvalidMessage](t, ce); d.RfcSection != "12.1.3" {
		t.Errorf("an Update as remove_proposal: section %q, want 12.1.3", d.RfcSection)
	}
	if f, err := bob.fetch(g.id, m1.GroupSeq+1, 0); err != nil || len(f.Messages) != 0 {
		t.Fatalf("refused leaves stored something: %v, %v", f, err)
	}

	// Bob leaves with his own Remove Proposal.
	prop, err := g.gb.Propose(&mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: g.gb.Self()}})
	if err != nil {
		t.Fatal(err)
	}
	propBytes := mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: prop})
	res, err := bob.leave(g.id, propBytes)
	if err != nil {
		t.Fatalf("LeaveGroup: %v", err)
	}
	propSeq := m1.GroupSeq + 1
	if res.LastSeq != propSeq {
		t.Fatalf("last_seq %d, want %d (the Proposal's)", res.LastSeq, propSeq)
	}

	// The Proposal is in the group's stream, for the others to commit.
	if got := carolSub.nextIn(t, g.id); got.GroupSeq != propSeq || !bytes.Equal(got.Message, propBytes) ||
		got.SenderClientId != "bob" || got.ContentType != mlsdsv1.ContentType_CONTENT_TYPE_PROPOSAL {
		t.Fatalf("carol got %+v, want bob's Proposal at %d", got, propSeq)
	}
	info, err := alice.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: g.id}))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Msg.Proposals) != 1 || !bytes.Equal(info.Msg.Proposals[0], propBytes) {
		t.Errorf("GetGroupInfo lists %d Proposals of the epoch, want bob's", len(info.Msg.Proposals))
	}

	// From now on bob gets nothing of the group, carol everything.
	m2 := alice.mustSend(privateMessage(t, g.id, 1, mls.ContentTypeApplication, 50))
	if got := carolSub.nextIn(t, g.id); got.GroupSeq != m2.GroupSeq {
		t.Fatalf("carol got seq %d, want %d", got.GroupSeq, m2.GroupSeq)
	}
	barrier := alice.mustSend(privateMessage(t, other, 0, mls.ContentTypeApplication, 10))
	if got := bobSub.nextData(t).GetMessage(); got == nil || !bytes.Equal(got.GroupId, other) || got.GroupSeq != barrier.GroupSeq {
		t.Fatalf("bob got %+v, want the message of the other group", got)
	}

	// Bob is out: no sending, no leaving again; Fetch shows his window.
	_, err = bob.send(privateMessage(t, g.id, 1, mls.ContentTypeApplication, 10))
	detail[mlsdsv1.NotMember](t, connectErr(t, err, connect.CodePermissionDenied))
	_, err = bob.leave(g.id, nil)
	detail[mlsdsv1.NotMember](t, connectErr(t, err, connect.CodePermissionDenied))
	page, err := bob.fetch(g.id, 1, 0)
	if err != nil {
		t.Fatalf("Fetch of his old window: %v", err)
	}
	if last := lastSeqOf(page); last != propSeq {
		t.Errorf("bob fetches up to seq %d, want %d", last, propSeq)
	}

	// Alice commits bob's removal by reference (§12.4), as her SDK does
	// on seeing the Proposal; the server's roster and tree lose bob.
	if _, err := g.ga.HandleProposal(prop); err != nil {
		t.Fatalf("alice takes bob's Proposal: %v", err)
	}
	commit, _, err := g.ga.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(commit.Content.Commit.Proposals) != 1 || commit.Content.Commit.Proposals[0].Type != mls.ProposalOrRefTypeReference {
		t.Fatalf("alice's Commit carries %d proposals, want bob's by reference", len(commit.Content.Commit.Proposals))
	}
	cr := alice.sendCommit(g.ga, commit, nil)
	if got := carolSub.nextIn(t, g.id); got.GroupSeq != cr.GroupSeq {
		t.Fatalf("carol got seq %d, want the Commit at %d", got.GroupSeq, cr.GroupSeq)
	}
	roster, err := alice.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: g.id}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(roster.Msg.ClientIds, []string{"alice", "carol"}) {
		t.Errorf("roster after the removal %v, want [alice carol]", roster.Msg.ClientIds)
	}
	info, err = alice.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: g.id}))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := mls.UnmarshalRatchetTree(suite, info.Msg.RatchetTree)
	if err != nil {
		t.Fatal(err)
	}
	if rt.MemberCount() != 2 || info.Msg.Epoch != 2 {
		t.Errorf("tree after the removal: %d members at epoch %d, want 2 at epoch 2", rt.MemberCount(), info.Msg.Epoch)
	}
	for _, ln := range rt.Leaves() {
		if string(ln.Credential.Identity) == "bob" {
			t.Error("bob still holds a leaf")
		}
	}
	// The late removal did not move bob's window.
	page, err = bob.fetch(g.id, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if last := lastSeqOf(page); last != propSeq {
		t.Errorf("after the Commit bob fetches up to %d, want %d", last, propSeq)
	}

	// Nothing of the group reached bob's stream after his Proposal.
	barrier = alice.mustSend(privateMessage(t, other, 0, mls.ContentTypeApplication, 10))
	for {
		m := bobSub.nextData(t).GetMessage()
		if m == nil {
			continue
		}
		if bytes.Equal(m.GroupId, g.id) {
			t.Fatalf("bob's stream delivered seq %d of the group he left at %d", m.GroupSeq, propSeq)
		}
		if m.GroupSeq == barrier.GroupSeq {
			break
		}
	}
}

func TestLeaveGroupOpaque(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	gid := groupID("opaque-leave")
	alice.createOpaqueGroup(gid, bob, carol)
	bobSub := bob.subscribe()
	bobSub.waitCaughtUp(t)
	m1 := alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 10))
	bobSub.nextIn(t, gid)

	// The server cannot check a Proposal in an opaque group.
	_, err := bob.leave(gid, privateMessage(t, gid, 0, mls.ContentTypeProposal, 10))
	connectErr(t, err, connect.CodeInvalidArgument)

	res, err := bob.leave(gid, nil)
	if err != nil {
		t.Fatalf("LeaveGroup: %v", err)
	}
	if res.LastSeq != m1.GroupSeq {
		t.Fatalf("last_seq %d, want %d", res.LastSeq, m1.GroupSeq)
	}
	roster, err := alice.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(roster.Msg.ClientIds, []string{"alice", "carol"}) {
		t.Errorf("roster %v, want [alice carol]", roster.Msg.ClientIds)
	}

	// Removing bob, who left, is accepted; removing a client that never
	// was a member is not.
	bundle := func(removed ...string) error {
		_, err := alice.groups.SendCommitBundle(ctx, connect.NewRequest(opaqueBundle(t, &mlsdsv1.SendCommitBundleRequest{
			Commit: privateMessage(t, gid, 0, mls.ContentTypeCommit, 10), Removed: removed})))
		return err
	}
	connectErr(t, bundle("stranger"), connect.CodeInvalidArgument)
	if err := bundle("bob"); err != nil {
		t.Fatalf("Commit that removes bob after he left: %v", err)
	}
	m3 := alice.mustSend(privateMessage(t, gid, 1, mls.ContentTypeApplication, 10))
	page, err := bob.fetch(gid, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Messages) != 1 || page.Messages[0].GroupSeq != m1.GroupSeq {
		t.Errorf("bob fetches %d messages, want only seq %d", len(page.Messages), m1.GroupSeq)
	}
	if page, err := carol.fetch(gid, 1, 0); err != nil || lastSeqOf(page) != m3.GroupSeq {
		t.Errorf("carol's fetch does not reach seq %d: %v", m3.GroupSeq, err)
	}

	// Outsiders get one answer whether the group exists or not.
	for _, id := range [][]byte{gid, groupID("nope")} {
		_, err := e.client("outsider-"+string(id[:4])).leave(id, nil)
		detail[mlsdsv1.NotMember](t, connectErr(t, err, connect.CodePermissionDenied))
	}
}

// TestRejoinAfterLeave: a client that left, but whose leaf nobody removed
// yet, comes back by a resync external Commit with a join link. It must
// be a member again and receive what is sent after it, not sit in the
// tree without a membership window.
func TestRejoinAfterLeave(t *testing.T) {
	e := startEnv(t)
	g := newMLSGroup(t, e)
	ctx := context.Background()
	if _, err := g.bob.leave(g.id, nil); err != nil {
		t.Fatalf("LeaveGroup: %v", err)
	}
	link, err := g.alice.groups.CreateJoinLink(ctx, connect.NewRequest(&mlsdsv1.CreateJoinLinkRequest{GroupId: g.id}))
	if err != nil {
		t.Fatalf("CreateJoinLink: %v", err)
	}
	res, err := g.bob.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: g.id, JoinToken: link.Msg.JoinToken}))
	if err != nil {
		t.Fatalf("GetGroupInfo with a join link: %v", err)
	}
	var gim mls.MLSMessage
	if err := gim.UnmarshalBinary(res.Msg.GroupInfo); err != nil {
		t.Fatal(err)
	}
	tree, err := mls.UnmarshalRatchetTree(suite, res.Msg.RatchetTree)
	if err != nil {
		t.Fatal(err)
	}
	kp, priv := g.bob.mlsKeyPackage()
	old := g.gb.Self()
	gb, commit, err := mls.JoinExternalWith(gim.GroupInfo, tree, kp, priv, mls.JoinExternalOptions{RemoveLeaf: &old})
	if err != nil {
		t.Fatal(err)
	}
	gi, err := gb.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.bob.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
		Commit:    mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: commit}),
		GroupInfo: mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}),
		JoinToken: link.Msg.JoinToken,
	})); err != nil {
		t.Fatalf("bob's resync after leaving: %v", err)
	}
	roster, err := g.alice.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: g.id}))
	if err != nil || !slices.Contains(roster.Msg.ClientIds, "bob") {
		t.Fatalf("roster after bob's resync: %v, %v; want bob in it", roster.Msg.GetClientIds(), err)
	}
	// Alice catches up to bob's Commit and writes; bob can fetch it.
	page, err := g.alice.fetch(g.id, g.commitSeq+1, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range page.Messages {
		var m mls.MLSMessage
		if err := m.UnmarshalBinary(env.Message); err != nil {
			t.Fatal(err)
		}
		if m.PublicMessage != nil && m.PublicMessage.Content.ContentType == mls.ContentTypeCommit {
			if _, err := g.ga.HandleCommit(m.PublicMessage); err != nil {
				t.Fatalf("alice processes bob's resync: %v", err)
			}
		}
	}
	pm, err := g.ga.Seal([]byte("welcome back"), nil)
	if err != nil {
		t.Fatal(err)
	}
	rc := g.alice.mustSend(mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm}))
	got, err := g.bob.fetch(g.id, rc.GroupSeq, 1)
	if err != nil || len(got.Messages) != 1 {
		t.Fatalf("bob fetches alice's message after his return: %v, %v", got.GetMessages(), err)
	}
	var m mls.MLSMessage
	if err := m.UnmarshalBinary(got.Messages[0].Message); err != nil {
		t.Fatal(err)
	}
	if _, text, err := gb.Open(m.PrivateMessage); err != nil || string(text) != "welcome back" {
		t.Fatalf("bob opens %q, %v", text, err)
	}
}
