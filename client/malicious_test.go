package client

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// A malicious member against honest SDK clients, through a real server:
// mallory joins as an ordinary SDK client; the test then takes a copy of
// her MLS state, closes her client (so that nothing honest runs on her
// behalf) and crafts her messages with the mls package.

// withMallory makes a group of alice (creator), bob and mallory and returns
// it with mallory's state, her client closed.
func withMallory(t *testing.T, e *testEnv, cfg ...func(*Config)) (alice, bob, mallory *tclient, gid []byte, mst *mls.Group) {
	t.Helper()
	return withMalloryIn(t, e, GroupOptions{}, cfg...)
}

// withMalloryIn is withMallory for a group made with opts.
func withMalloryIn(t *testing.T, e *testEnv, opts GroupOptions, cfg ...func(*Config)) (alice, bob, mallory *tclient, gid []byte, mst *mls.Group) {
	t.Helper()
	alice, bob, mallory = e.open("alice", t.TempDir(), cfg...), e.open("bob", t.TempDir(), cfg...), e.client("mallory")
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	gid = g.ID()
	if err := g.Add(ctx, "bob", "mallory"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, gid))
	mallory.waitFor("EventJoined", 0, kind(EventJoined, gid))
	mallory.Close()
	mg := mallory.Group(gid)
	mg.mu.Lock()
	mst, err = cloneState(mg.st)
	mg.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	return alice, bob, mallory, gid, mst
}

// send sends a message as c, its client closed or not.
func rawSend(t *testing.T, c *tclient, wire []byte) {
	t.Helper()
	if _, err := c.rpc.groups.Send(ctxT(t), connect.NewRequest(&mlsdsv1.SendRequest{Message: wire})); err != nil {
		t.Fatalf("the server refused %s's message: %v", c.ID(), err)
	}
}

// propose sends p as a proposal of st's member.
func rawPropose(t *testing.T, c *tclient, st *mls.Group, p *mls.Proposal) {
	t.Helper()
	pm, err := st.Propose(p)
	if err != nil {
		t.Fatal(err)
	}
	wire, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})
	if err != nil {
		t.Fatal(err)
	}
	rawSend(t, c, wire)
}

// publish uploads kp as c's KeyPackage.
func publish(t *testing.T, c *tclient, kp *mls.KeyPackage) {
	t.Helper()
	data, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.rpc.kps.UploadKeyPackages(ctxT(t), connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
		KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: data}}})); err != nil {
		t.Fatalf("uploading %s's KeyPackage: %v", c.ID(), err)
	}
}

// waitPending waits until c holds n pending proposals in gid.
func waitPending(t *testing.T, c *tclient, gid []byte, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		g := c.Group(gid)
		g.mu.Lock()
		got := len(g.proposals)
		g.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d pending proposals, want %d", c.ID(), got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hasEvent(c *tclient, gid []byte, k EventKind, members ...string) bool {
	return slices.ContainsFunc(c.snapshot(), func(e Event) bool {
		return e.Kind == k && bytes.Equal(e.GroupID, gid) && (members == nil || slices.Equal(e.Members, members))
	})
}

// Attack 1: mallory proposes her own re-add; alice's Remove of mallory
// leaves it out. Both honest members see mallory removed, never added, and
// talk on without her.
func TestMaliciousReAddOnRemove(t *testing.T) {
	e := startEnv(t)
	alice, bob, mallory, gid, mst := withMallory(t, e)
	now := uint64(time.Now().Unix())
	kp, _, err := mls.NewKeyPackage(mallory.cs, []byte("mallory"), mallory.sig, now-60, now+3600)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, mallory, kp)
	rawPropose(t, mallory, mst, &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}})
	waitPending(t, alice, gid, 1)
	waitPending(t, bob, gid, 1)
	if err := alice.Group(gid).Remove(ctxT(t), "mallory"); err != nil {
		t.Fatalf("Remove(mallory): %v", err)
	}
	for _, c := range []*tclient{alice, bob} {
		c.waitFor("mallory removed", 0, func(e Event) bool {
			return e.Kind == EventMembersRemoved && bytes.Equal(e.GroupID, gid) && slices.Equal(e.Members, []string{"mallory"})
		})
		if hasEvent(c, gid, EventMembersAdded, "mallory") {
			t.Errorf("%s: mallory was added back", c.ID())
		}
		waitEpoch(t, c, gid, 2)
		if got := c.Group(gid).Members(); !slices.Equal(got, []string{"alice", "bob"}) {
			t.Errorf("%s's members: %v", c.ID(), got)
		}
	}
	exchange(t, gid, 2, "without-mallory", alice, bob)
}

// Attack 2: an Add whose KeyPackage copies bob's encryption_key. The
// designated committer leaves it out; Update and Remove(mallory) work.
func TestMaliciousDuplicateEncryptionKey(t *testing.T) {
	e := startEnv(t)
	alice, bob, mallory, gid, mst := withMallory(t, e)
	m2 := e.client("mallory2") // a client of mallory's
	m2.Close()
	now := uint64(time.Now().Unix())
	kp, _, err := mls.NewKeyPackage(m2.cs, []byte("mallory2"), m2.sig, now-60, now+3600)
	if err != nil {
		t.Fatal(err)
	}
	bobLeaf := mst.Tree().Leaf(1)
	kp.LeafNode.EncryptionKey = bytes.Clone(bobLeaf.EncryptionKey)
	if err := kp.LeafNode.Sign(m2.cs, m2.sig, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := kp.Sign(m2.sig); err != nil {
		t.Fatal(err)
	}
	publish(t, m2, kp)
	from := len(alice.snapshot())
	rawPropose(t, mallory, mst, &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}})
	// Alice (the designated committer) commits without it.
	alice.waitFor("epoch 2", from, func(e Event) bool { return e.Kind == EventEpoch && bytes.Equal(e.GroupID, gid) && e.Epoch == 2 })
	ctx := ctxT(t)
	if err := bob.Group(gid).Update(ctx); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if err := alice.Group(gid).Remove(ctx, "mallory"); err != nil {
		t.Fatalf("Remove(mallory): %v", err)
	}
	waitEpoch(t, bob, gid, 4)
	for _, c := range []*tclient{alice, bob} {
		if hasEvent(c, gid, EventMembersAdded, "mallory2") {
			t.Errorf("%s: mallory2 was added", c.ID())
		}
	}
	exchange(t, gid, 2, "after", alice, bob)
}

// Attack 5: mallory sends alice's signed content, encrypted for alice's
// leaf at a fresh generation. Bob refuses it (EventMisattributed naming
// mallory as the server's sender and alice as the signer) and shows no
// message from alice; alice's real messages arrive.
func TestMaliciousMisattributed(t *testing.T) {
	e := startEnv(t)
	alice, bob, mallory, gid, _ := withMallory(t, e)
	// What mallory can do with the epoch's secrets, here with a copy of
	// alice's state: alice's signed content at a generation ahead.
	ag := alice.Group(gid)
	ag.mu.Lock()
	copyA, err := cloneState(ag.st)
	ag.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	var pm *mls.PrivateMessage
	for range 3 {
		if pm, err = copyA.Seal([]byte("transfer 100 to mallory"), nil); err != nil {
			t.Fatal(err)
		}
	}
	wire, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm})
	if err != nil {
		t.Fatal(err)
	}
	rawSend(t, mallory, wire)
	i := bob.waitFor("EventMisattributed", 0, kind(EventMisattributed, gid))
	ev := bob.snapshot()[i]
	if ev.Sender != "mallory" || !slices.Equal(ev.Members, []string{"alice"}) || !errors.Is(ev.Err, ErrMisattributed) {
		t.Errorf("EventMisattributed: %v", describe([]Event{ev}))
	}
	exchange(t, gid, 2, "real", alice, bob)
	for _, m := range bob.messages(gid) {
		if m == "alice:transfer 100 to mallory" {
			t.Error("bob shows mallory's replay as alice's message")
		}
	}
}

// Attack 8: mallory's ReInit proposal is never committed on its own; the
// group goes on. When mallory commits a ReInit herself, the members get
// EventReInit naming the successor, and sending fails with ErrGroupReInit.
func TestMaliciousReInit(t *testing.T) {
	e := startEnv(t)
	alice, bob, mallory, gid, mst := withMallory(t, e)
	ri := &mls.ReInit{GroupID: []byte("successor"), Version: mls.ProtocolVersionMLS10, CipherSuite: mallory.cs}
	rawPropose(t, mallory, mst, &mls.Proposal{ProposalType: mls.ProposalTypeReInit, ReInit: ri})
	waitPending(t, alice, gid, 1)
	exchange(t, gid, 2, "still-open", alice, bob)
	if alice.Group(gid).Epoch() != 1 {
		t.Fatalf("alice committed something: epoch %d", alice.Group(gid).Epoch())
	}
	// Mallory commits a ReInit by value.
	st, err := cloneState(mst)
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := st.CommitMessage(mls.CommitOptions{ReInit: ri, Include: func(*mls.PendingProposal) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	gi, err := st.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	wire, _ := mlsMessage(msg)
	giWire, _ := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
	if _, err := mallory.rpc.groups.SendCommitBundle(ctxT(t), connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: wire, GroupInfo: giWire})); err != nil {
		t.Fatalf("the server refused mallory's ReInit Commit: %v", err)
	}
	for _, c := range []*tclient{alice, bob} {
		i := c.waitFor("EventReInit", 0, kind(EventReInit, gid))
		ev := c.snapshot()[i]
		if ev.ReInit == nil || string(ev.ReInit.GroupID) != "successor" || ev.ReInit.CipherSuite != mallory.cs || ev.ReInit.Version != mls.ProtocolVersionMLS10 {
			t.Errorf("%s: EventReInit names %+v", c.ID(), ev.ReInit)
		}
		if _, err := c.Group(gid).Send(ctxT(t), []byte("x")); !errors.Is(err, ErrGroupReInit) {
			t.Errorf("%s: Send after the ReInit: %v, want ErrGroupReInit", c.ID(), err)
		}
	}
}

// Attack 7: mallory, the designated committer (leaf 0), never commits and
// floods proposals. Proposals past the bounds are dropped unseen
// (EventProposalDropped); bob's Update proposal is committed by alice once
// mallory's turn has passed.
func TestMaliciousProposalFloodAndSilentCommitter(t *testing.T) {
	e := startEnv(t)
	cfg := func(c *Config) {
		c.MaxPendingProposals, c.MaxPendingProposalBytes, c.CommitterTimeout = 4, 16<<10, 500*time.Millisecond
	}
	mallory := e.client("mallory")
	alice, bob := e.open("alice", t.TempDir(), cfg), e.open("bob", t.TempDir(), cfg)
	ctx := ctxT(t)
	g, err := mallory.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	if err := g.Add(ctx, "alice", "bob"); err != nil {
		t.Fatal(err)
	}
	alice.waitFor("EventJoined", 0, kind(EventJoined, gid))
	bob.waitFor("EventJoined", 0, kind(EventJoined, gid))
	g.mu.Lock()
	mst, err := cloneState(g.st)
	g.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	mallory.Close()
	for i := range 6 {
		id := bytes.Repeat([]byte{byte(i)}, 8<<10)
		nonce := make([]byte, mallory.cs.HashSize())
		nonce[0] = byte(i)
		rawPropose(t, mallory, mst, &mls.Proposal{ProposalType: mls.ProposalTypePSK, PreSharedKey: &mls.PreSharedKey{
			PSK: mls.PreSharedKeyID{PSKType: mls.PSKTypeExternal, PSKID: id, PSKNonce: nonce}}})
	}
	for _, c := range []*tclient{alice, bob} {
		c.waitFor("EventProposalDropped", 0, kind(EventProposalDropped, gid))
		g := c.Group(gid)
		g.mu.Lock()
		n, size := len(g.proposals), 0
		for _, b := range g.proposals {
			size += len(b)
		}
		g.mu.Unlock()
		if n > 4 || size > 16<<10 {
			t.Errorf("%s keeps %d proposals of %d bytes, over its bounds", c.ID(), n, size)
		}
	}
	// Mallory never commits: alice, next in leaf order, does.
	if _, err := bob.Group(gid).ProposeUpdate(ctx); err != nil && !errors.Is(err, ErrProposalDropped) {
		t.Logf("ProposeUpdate: %v", err)
	}
	waitEpoch(t, bob, gid, 2)
	waitEpoch(t, alice, gid, 2)
	exchange(t, gid, 2, "after", alice, bob)
}

// Attack 6: mallory's Add Commit of carol goes with a Welcome made from
// another Commit. Carol finds that the group of her Welcome is not the one
// the server serves (EventForked), joins the served one by external Commit
// instead (EventJoined), and talks with alice and bob.
func TestMaliciousForkedWelcome(t *testing.T) {
	e := startEnv(t)
	alice, bob, mallory, gid, mst := withMallory(t, e)
	carol := e.client("carol")
	ctx := ctxT(t)
	res, err := mallory.rpc.kps.ClaimKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
		Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: "carol"}, CipherSuite: uint32(mallory.cs)}))
	if err != nil {
		t.Fatal(err)
	}
	kp, err := claimedKeyPackage("carol", res.Msg.KeyPackages[0].KeyPackage)
	if err != nil {
		t.Fatal(err)
	}
	commitWith := func() (*mls.Group, *mls.MLSMessage, *mls.Welcome) {
		st, err := cloneState(mst)
		if err != nil {
			t.Fatal(err)
		}
		msg, w, err := st.CommitMessage(mls.CommitOptions{Adds: []*mls.KeyPackage{kp}})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.MergePendingCommit(); err != nil {
			t.Fatal(err)
		}
		return st, msg, w
	}
	st1, real, _ := commitWith()
	_, _, forged := commitWith()
	gi, err := st1.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	wire, _ := mlsMessage(real)
	wWire, _ := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: forged})
	giWire, _ := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
	if _, err := mallory.rpc.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: wire, Welcome: wWire, GroupInfo: giWire})); err != nil {
		t.Fatalf("the server refused mallory's bundle: %v", err)
	}
	f := carol.waitFor("EventForked", 0, kind(EventForked, gid))
	if ev := carol.snapshot()[f]; !errors.Is(ev.Err, ErrForked) {
		t.Errorf("EventForked: %v", describe([]Event{ev}))
	}
	carol.waitFor("EventJoined", f+1, kind(EventJoined, gid))
	for _, c := range []*tclient{alice, bob} {
		c.waitFor("carol's resync", 0, func(e Event) bool {
			return e.Kind == EventMembersUpdated && bytes.Equal(e.GroupID, gid) && slices.Equal(e.Members, []string{"carol"})
		})
	}
	waitEpoch(t, alice, gid, 3)
	waitEpoch(t, bob, gid, 3)
	sameEpoch(t, gid, alice, bob, carol)
	exchange(t, gid, 2, "with-carol", alice, bob, carol)
}
