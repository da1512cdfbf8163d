package server_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// TestTransparentGroup walks a transparent group through its life with
// real MLS objects: creation from a GroupInfo and tree, a Commit bundle
// that adds a claimed KeyPackage, the Welcome reaching the joiner only,
// application messages both ways, and the refusals on the way.
func TestTransparentGroup(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	ctx := context.Background()
	gid := groupID("transparent")

	g0, gi, tree := alice.newTransparentGroup(gid)
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi, RatchetTree: tree})); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	// The same id again is refused.
	_, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{GroupId: gid, GroupInfo: gi, RatchetTree: tree}))
	connectErr(t, err, connect.CodeAlreadyExists)

	info, err := alice.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	if info.Msg.Epoch != 0 || info.Msg.Mode != mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT || !bytes.Equal(info.Msg.RatchetTree, tree) {
		t.Fatalf("GetGroupInfo: epoch %d mode %v, tree equal %v", info.Msg.Epoch, info.Msg.Mode, bytes.Equal(info.Msg.RatchetTree, tree))
	}
	// Without the tree: the same GroupInfo, epoch and tree hash, no tree.
	lean, err := alice.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid, WithoutTree: true}))
	if err != nil {
		t.Fatal(err)
	}
	if lean.Msg.RatchetTree != nil || lean.Msg.Epoch != info.Msg.Epoch || !bytes.Equal(lean.Msg.GroupInfo, info.Msg.GroupInfo) || !bytes.Equal(lean.Msg.TreeHash, info.Msg.TreeHash) {
		t.Fatalf("GetGroupInfo without_tree: tree of %d bytes, epoch %d, same GroupInfo %v", len(lean.Msg.RatchetTree), lean.Msg.Epoch, bytes.Equal(lean.Msg.GroupInfo, info.Msg.GroupInfo))
	}

	// Bob publishes a KeyPackage and listens; alice claims it and adds him.
	bob.uploadKeyPackages(1, false)
	bobSub := bob.subscribe()
	bobSub.waitCaughtUp(t)
	claim, err := alice.kps.ClaimKeyPackages(ctx, claimReq("bob"))
	if err != nil {
		t.Fatal(err)
	}
	var kpMsg mls.MLSMessage
	if err := kpMsg.UnmarshalBinary(claim.Msg.KeyPackages[0].KeyPackage); err != nil {
		t.Fatal(err)
	}
	commit, welcome, gi1, g1 := alice.commitAdd(g0, kpMsg.KeyPackage)

	// Bob is not a member yet and holds no join link: he may not read
	// what an external joiner needs (see TestGetGroupInfoExternalJoin),
	// and gets the answer an unknown group gets.
	_, err = bob.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
	detail[mlsdsv1.NotMember](t, connectErr(t, err, connect.CodePermissionDenied))

	// Someone who is not in the tree cannot commit, even with a valid
	// signature of its own.
	_, err = carol.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: commit, Welcome: welcome, GroupInfo: gi1}))
	connectErr(t, err, connect.CodePermissionDenied)

	bundle := &mlsdsv1.SendCommitBundleRequest{Commit: commit, Welcome: welcome, GroupInfo: gi1}
	res, err := alice.groups.SendCommitBundle(ctx, connect.NewRequest(bundle))
	if err != nil {
		t.Fatalf("SendCommitBundle: %v", err)
	}
	r := res.Msg.Receipt
	if r.GroupSeq != 1 || r.Epoch != 0 || !bytes.Equal(r.GroupId, gid) || r.AcceptedAt == nil {
		t.Fatalf("receipt %+v, want seq 1 epoch 0", r)
	}
	// Idempotency: the same bytes again give the same receipt.
	again, err := alice.groups.SendCommitBundle(ctx, connect.NewRequest(bundle))
	if err != nil {
		t.Fatalf("resubmission: %v", err)
	}
	if a := again.Msg.Receipt; a.GroupSeq != r.GroupSeq || a.Epoch != r.Epoch || !a.AcceptedAt.AsTime().Equal(r.AcceptedAt.AsTime()) {
		t.Fatalf("resubmission receipt %+v, want %+v", a, r)
	}

	// The Welcome reaches bob, naming his KeyPackage.
	ev := bobSub.nextData(t)
	w := ev.GetWelcome()
	if w == nil {
		t.Fatalf("bob got %v, want a welcome", ev)
	}
	if !bytes.Equal(w.Welcome, welcome) || !bytes.Equal(w.KeyPackageRef, claim.Msg.KeyPackages[0].Ref) ||
		!bytes.Equal(w.GroupId, gid) || w.CommitSeq != 1 || w.Epoch != 1 {
		t.Fatalf("welcome event %+v", w)
	}
	bob.ack(gid, w.CommitSeq)

	// A Commit built for epoch 0 loses: the group is at epoch 1 since seq 1.
	stale, _, _, _ := alice.commitAdd(g0, mustKP(t, alice, carol))
	_, err = alice.groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: stale}))
	ce := connectErr(t, err, connect.CodeAborted)
	if d := detail[mlsdsv1.WrongEpoch](t, ce); d.ExpectedEpoch != 1 || d.FetchFromSeq != 1 {
		t.Fatalf("wrong_epoch %+v, want expected 1 from seq 1", d)
	}

	// Application messages, as PrivateMessages of epoch 1, both ways.
	aliceSub := alice.subscribe()
	aliceSub.waitCaughtUp(t) // alice's own Commit is not replayed to her
	fromBob := privateMessage(t, gid, 1, mls.ContentTypeApplication, 100)
	rb := bob.mustSend(fromBob)
	if rb.GroupSeq != 2 || rb.Epoch != 1 {
		t.Fatalf("receipt %+v, want seq 2 epoch 1", rb)
	}
	got := aliceSub.nextData(t).GetMessage()
	if got == nil || !bytes.Equal(got.Message, fromBob) || got.SenderClientId != "bob" || got.GroupSeq != 2 ||
		got.ContentType != mlsdsv1.ContentType_CONTENT_TYPE_APPLICATION {
		t.Fatalf("alice got %+v", got)
	}
	fromAlice := privateMessage(t, gid, 1, mls.ContentTypeApplication, 100)
	alice.mustSend(fromAlice)
	if got := bobSub.nextData(t).GetMessage(); got == nil || !bytes.Equal(got.Message, fromAlice) {
		t.Fatalf("bob got %+v", got)
	}

	// The server's view moved on: epoch 1, two leaves.
	info, err = bob.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := mls.UnmarshalRatchetTree(suite, info.Msg.RatchetTree)
	if err != nil {
		t.Fatal(err)
	}
	if info.Msg.Epoch != 1 || rt.MemberCount() != 2 || !bytes.Equal(rt.TreeHash(), g1.st.Tree().TreeHash()) {
		t.Fatalf("group info: epoch %d, %d members", info.Msg.Epoch, rt.MemberCount())
	}
	if !bytes.Equal(info.Msg.GroupInfo, gi1) {
		t.Fatal("GetGroupInfo does not return the GroupInfo of the last Commit bundle")
	}

	// Fetch includes the caller's own messages, in order.
	page, err := alice.fetch(gid, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Messages) != 3 || page.Messages[0].ContentType != mlsdsv1.ContentType_CONTENT_TYPE_COMMIT || page.NextSeq != 4 {
		t.Fatalf("fetch: %d messages, next %d", len(page.Messages), page.NextSeq)
	}

	// Carol is not a member: she can neither send, fetch, ack, nor read
	// the GroupInfo.
	_, err = carol.send(privateMessage(t, gid, 1, mls.ContentTypeApplication, 10))
	ce = connectErr(t, err, connect.CodePermissionDenied)
	detail[mlsdsv1.NotMember](t, ce)
	_, err = carol.fetch(gid, 1, 0)
	connectErr(t, err, connect.CodePermissionDenied)
	_, err = carol.groups.Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{Cursors: []*mlsdsv1.Cursor{{GroupId: gid, Seq: 1}}}))
	connectErr(t, err, connect.CodePermissionDenied)
	_, err = carol.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
	detail[mlsdsv1.NotMember](t, connectErr(t, err, connect.CodePermissionDenied))
}

// mustKP returns a KeyPackage of m that by claimed, as an adder gets one:
// m publishes a fresh one first, so that there is one to claim. Claimed,
// it is m's consent to be added (and leaves m's stock, so that nobody
// claims it again once a Commit used it).
func mustKP(t testing.TB, by, m *member) *mls.KeyPackage {
	t.Helper()
	data, _ := m.keyPackage()
	if _, err := m.kps.UploadKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
		KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: data}}})); err != nil {
		t.Fatalf("UploadKeyPackages(%s): %v", m.id, err)
	}
	var msg mls.MLSMessage
	if err := msg.UnmarshalBinary(by.claim(m.id)); err != nil || msg.KeyPackage == nil {
		t.Fatalf("the claimed KeyPackage of %s does not parse: %v", m.id, err)
	}
	return msg.KeyPackage
}

func TestSendRefusals(t *testing.T) {
	const maxSize = 4096
	e := startEnv(t, func(c *ds.Config, s *server.Config) {
		c.MaxMessageSize = maxSize
		s.MaxMessageSize = maxSize
	})
	alice := e.client("alice")
	gid := groupID("refusals")
	alice.createOpaqueGroup(gid)

	t.Run("malformed", func(t *testing.T) {
		for _, msg := range [][]byte{nil, {0, 1}, {0, 1, 0, 2, 0xff, 0xff}, bytes.Repeat([]byte{7}, 64)} {
			_, err := alice.send(msg)
			ce := connectErr(t, err, connect.CodeInvalidArgument)
			if d := detail[mlsdsv1.InvalidMessage](t, ce); d.Reason == "" {
				t.Fatal("invalid_message without a reason")
			}
		}
		// A KeyPackage is an MLSMessage, but not one to send to a group.
		kp, _ := alice.keyPackage()
		_, err := alice.send(kp)
		connectErr(t, err, connect.CodeInvalidArgument)
	})
	t.Run("unknown group", func(t *testing.T) {
		// The answer a non-member gets: an outsider cannot tell whether
		// a group exists.
		_, err := alice.send(privateMessage(t, []byte("no-such-group"), 0, mls.ContentTypeApplication, 10))
		detail[mlsdsv1.NotMember](t, connectErr(t, err, connect.CodePermissionDenied))
		_, err = alice.fetch([]byte("no-such-group"), 0, 0)
		detail[mlsdsv1.NotMember](t, connectErr(t, err, connect.CodePermissionDenied))
	})
	t.Run("oversized", func(t *testing.T) {
		// Over the ds bound but within the request limit: a TooLarge detail.
		_, err := alice.send(privateMessage(t, gid, 0, mls.ContentTypeApplication, maxSize))
		ce := connectErr(t, err, connect.CodeResourceExhausted)
		if d := detail[mlsdsv1.TooLarge](t, ce); d.Limit != maxSize {
			t.Fatalf("limit %d, want %d", d.Limit, maxSize)
		}
		// Over the request limit: refused while reading the body.
		_, err = alice.send(privateMessage(t, gid, 0, mls.ContentTypeApplication, 8*maxSize+128<<10))
		connectErr(t, err, connect.CodeResourceExhausted)
		// Still serving.
		alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 100))
	})
}

// TestStaleEpoch: application messages may be up to two epochs old.
func TestStaleEpoch(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("stale")
	alice.createOpaqueGroup(gid, bob)
	for epoch := uint64(0); epoch < 3; epoch++ {
		alice.mustSend(privateMessage(t, gid, epoch, mls.ContentTypeCommit, 50))
	}
	// The group is at epoch 3: epochs 1..3 are accepted, 0 is stale.
	_, err := bob.send(privateMessage(t, gid, 0, mls.ContentTypeApplication, 50))
	ce := connectErr(t, err, connect.CodeFailedPrecondition)
	if d := detail[mlsdsv1.StaleEpoch](t, ce); d.CurrentEpoch != 3 {
		t.Fatalf("stale_epoch names epoch %d, want 3", d.CurrentEpoch)
	}
	bob.mustSend(privateMessage(t, gid, 1, mls.ContentTypeApplication, 50))
	// A Proposal must be for the current epoch; one for a future epoch is
	// refused with wrong_epoch.
	_, err = bob.send(privateMessage(t, gid, 2, mls.ContentTypeProposal, 50))
	ce = connectErr(t, err, connect.CodeAborted)
	if d := detail[mlsdsv1.WrongEpoch](t, ce); d.ExpectedEpoch != 3 || d.FetchFromSeq != 3 {
		t.Fatalf("wrong_epoch %+v, want expected 3 from seq 3", d)
	}
	_, err = bob.send(privateMessage(t, gid, 9, mls.ContentTypeApplication, 50))
	connectErr(t, err, connect.CodeAborted)
}

// TestConcurrentCommits: 20 members commit for the same epoch at once.
// Exactly one wins; the 19 others get wrong_epoch naming the next epoch
// and the winner's position. Each loser then fetches, "rebases" (builds
// its Commit for the expected epoch) and retries until all 20 Commits are
// in one linear history: epochs 0..19 at consecutive sequence numbers.
func TestConcurrentCommits(t *testing.T) {
	e := startEnv(t)
	const n = 20
	members := make([]*member, n)
	for i := range members {
		members[i] = e.client(fmt.Sprintf("m%02d", i))
	}
	gid := groupID("race")
	members[0].createOpaqueGroup(gid, members[1:]...)

	type outcome struct {
		receipt *mlsdsv1.Receipt
		err     error
	}
	first := make([]outcome, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r, err := m.send(privateMessage(t, gid, 0, mls.ContentTypeCommit, 64))
			first[i] = outcome{r, err}
		}()
	}
	close(start)
	wg.Wait()
	var winners int
	var winSeq uint64
	for _, o := range first {
		if o.err == nil {
			winners++
			winSeq = o.receipt.GroupSeq
		}
	}
	if winners != 1 {
		t.Fatalf("%d Commits for epoch 0 accepted, want exactly 1", winners)
	}
	for i, o := range first {
		if o.err == nil {
			continue
		}
		ce := connectErr(t, o.err, connect.CodeAborted)
		d := detail[mlsdsv1.WrongEpoch](t, ce)
		if d.ExpectedEpoch != 1 || d.FetchFromSeq != winSeq {
			t.Fatalf("loser %d: wrong_epoch %+v, want expected 1 from seq %d", i, d, winSeq)
		}
	}

	// The losers rebase and retry, concurrently, until each has landed.
	errs := make(chan error, n)
	for i, m := range members {
		if first[i].err == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := detail[mlsdsv1.WrongEpoch](t, first[i].err.(*connect.Error))
			epoch, from := d.ExpectedEpoch, d.FetchFromSeq
			for attempt := 0; attempt < 100*n; attempt++ {
				// Catch up: the epoch after the last Commit fetched.
				for {
					page, err := m.fetch(gid, from, 100)
					if err != nil {
						errs <- err
						return
					}
					for _, env := range page.Messages {
						if env.ContentType == mlsdsv1.ContentType_CONTENT_TYPE_COMMIT {
							epoch = env.Epoch + 1
						}
					}
					from = page.NextSeq
					if len(page.Messages) < 100 {
						break
					}
				}
				_, err := m.send(privateMessage(t, gid, epoch, mls.ContentTypeCommit, 64))
				if err == nil {
					errs <- nil
					return
				}
				var we *mlsdsv1.WrongEpoch
				if ce, ok := err.(*connect.Error); ok && ce.Code() == connect.CodeAborted {
					for _, dt := range ce.Details() {
						if v, _ := dt.Value(); v != nil {
							we, _ = v.(*mlsdsv1.WrongEpoch)
						}
					}
				}
				if we == nil {
					errs <- err
					return
				}
				if we.ExpectedEpoch <= epoch || we.FetchFromSeq < from {
					errs <- fmt.Errorf("wrong_epoch %+v after the client caught up to epoch %d at seq %d", we, epoch, from)
					return
				}
			}
			errs <- fmt.Errorf("%s never landed its Commit", m.id)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	// One linear history: 20 Commits, epochs 0..19, seq 1..20, one per member.
	page, err := members[0].fetch(gid, 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Messages) != n {
		t.Fatalf("group holds %d messages, want %d", len(page.Messages), n)
	}
	senders := map[string]bool{}
	for i, env := range page.Messages {
		if env.GroupSeq != uint64(i+1) || env.Epoch != uint64(i) || env.ContentType != mlsdsv1.ContentType_CONTENT_TYPE_COMMIT {
			t.Fatalf("message %d: seq %d epoch %d type %v", i, env.GroupSeq, env.Epoch, env.ContentType)
		}
		senders[env.SenderClientId] = true
	}
	if len(senders) != n {
		t.Fatalf("%d distinct committers, want %d", len(senders), n)
	}
}

func TestRequestRateLimit(t *testing.T) {
	e := startEnv(t, func(c *ds.Config, _ *server.Config) {
		c.RequestsPerSecond = 0.01
		c.RequestBurst = 3
	})
	alice := e.client("alice")
	bob := e.client("bob")
	var err error
	for i := 0; i < 4 && err == nil; i++ {
		_, err = alice.kps.CountKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.CountKeyPackagesRequest{}))
	}
	ce := connectErr(t, err, connect.CodeResourceExhausted)
	if d := detail[mlsdsv1.RateLimited](t, ce); d.RetryAfter.AsDuration() <= 0 {
		t.Fatalf("retry_after %v", d.RetryAfter.AsDuration())
	}
	// The limit is per client: bob is not affected.
	bob.count()
}

// TestTransparentCommitRace: five members of a transparent group race real
// Commits (each adds a new client) for the same epoch. One wins; each
// loser is told the epoch to build on, fetches the Commits it missed,
// applies them to its copy of the public group state, rebuilds its Commit
// and retries, until all five are in the group's history.
func TestTransparentCommitRace(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	names := []string{"alice", "bob", "carol", "dave", "erin"}
	ms := make([]*member, len(names))
	for i, n := range names {
		ms[i] = e.client(n)
	}
	gid := groupID("race-transparent")
	g0, gi, tree := ms[0].newTransparentGroup(gid)
	if _, err := ms[0].groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: gid, GroupInfo: gi, RatchetTree: tree})); err != nil {
		t.Fatal(err)
	}
	var kps []*mls.KeyPackage
	for _, m := range ms[1:] {
		kps = append(kps, mustKP(t, ms[0], m))
	}
	commit, _, gi1, _ := ms[0].commitAdd(g0, kps...)
	if _, err := ms[0].groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: commit, GroupInfo: gi1})); err != nil {
		t.Fatal(err)
	}

	// Every member starts from the server's GroupInfo and tree.
	states := make([]*tgroup, len(ms))
	for i, m := range ms {
		info, err := m.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
		if err != nil {
			t.Fatal(err)
		}
		msg, err := mls.ParseMLSMessage(info.Msg.GroupInfo)
		if err != nil {
			t.Fatal(err)
		}
		rt, err := mls.UnmarshalRatchetTree(suite, info.Msg.RatchetTree)
		if err != nil {
			t.Fatal(err)
		}
		st, err := mls.NewPublicGroupState(msg.GroupInfo, rt)
		if err != nil {
			t.Fatal(err)
		}
		states[i] = &tgroup{st: st}
		states[i].leaf = leafOf(t, states[i], m.id)
	}

	joiners := make([]*member, len(ms))
	for i := range joiners {
		joiners[i] = e.client(fmt.Sprintf("joiner%d", i))
	}
	joinerKPs := make([]*mls.KeyPackage, len(joiners))
	for i, j := range joiners {
		joinerKPs[i] = mustKP(t, ms[i], j)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(ms))
	lost := make([]bool, len(ms))
	start := make(chan struct{})
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			kp := joinerKPs[i]
			g := states[i]
			pos := uint64(1) // the last message applied: the Commit that added everyone
			for attempt := 0; attempt < 50; attempt++ {
				c, _, gi, _ := m.commitAdd(g, kp)
				_, err := m.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: c, GroupInfo: gi}))
				if err == nil {
					return
				}
				ce, ok := err.(*connect.Error)
				if !ok || ce.Code() != connect.CodeAborted {
					errs[i] = err
					return
				}
				lost[i] = true
				var we *mlsdsv1.WrongEpoch
				for _, d := range ce.Details() {
					if v, _ := d.Value(); v != nil {
						we, _ = v.(*mlsdsv1.WrongEpoch)
					}
				}
				if we == nil || we.ExpectedEpoch <= g.st.Epoch() {
					errs[i] = fmt.Errorf("%s: wrong_epoch %v at epoch %d", m.id, we, g.st.Epoch())
					return
				}
				// Catch up: apply every Commit after the last one applied.
				// (fetch_from_seq names the Commit that started the
				// expected epoch; a client further behind starts earlier.)
				if we.FetchFromSeq <= pos {
					errs[i] = fmt.Errorf("%s: fetch_from_seq %d is not after seq %d already applied", m.id, we.FetchFromSeq, pos)
					return
				}
				page, err := m.fetch(gid, pos+1, 100)
				if err != nil {
					errs[i] = err
					return
				}
				for _, env := range page.Messages {
					if env.ContentType != mlsdsv1.ContentType_CONTENT_TYPE_COMMIT {
						continue
					}
					msg, err := mls.ParseMLSMessage(env.Message)
					if err != nil {
						errs[i] = err
						return
					}
					next, _, err := g.st.HandleCommit(msg.PublicMessage)
					if err != nil {
						errs[i] = fmt.Errorf("%s applying seq %d: %v", m.id, env.GroupSeq, err)
						return
					}
					g = &tgroup{st: next, leaf: g.leaf}
				}
				if n := len(page.Messages); n > 0 {
					pos = page.Messages[n-1].GroupSeq
				}
			}
			errs[i] = fmt.Errorf("%s never landed its Commit", m.id)
		}()
	}
	close(start)
	wg.Wait()
	losers := 0
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		if lost[i] {
			losers++
		}
	}
	if losers < len(ms)-1 {
		t.Fatalf("%d members lost a race, want at least %d (one Commit per epoch)", losers, len(ms)-1)
	}
	info, err := ms[0].groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := mls.UnmarshalRatchetTree(suite, info.Msg.RatchetTree)
	if err != nil {
		t.Fatal(err)
	}
	if info.Msg.Epoch != 6 || rt.MemberCount() != 10 {
		t.Fatalf("after the race: epoch %d with %d members, want 6 and 10", info.Msg.Epoch, rt.MemberCount())
	}
	page, err := ms[0].fetch(gid, 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i, env := range page.Messages {
		if env.GroupSeq != uint64(i+1) || env.Epoch != uint64(i) {
			t.Fatalf("history entry %d: seq %d epoch %d", i, env.GroupSeq, env.Epoch)
		}
	}
}
