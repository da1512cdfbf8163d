package client

import (
	"bytes"
	"crypto/rand"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// Attacks 3 and 4 of the malicious-member issue against opaque groups,
// through a real server: mallory, a member, sends a Commit the others
// cannot process, or one whose roster declaration lies. The honest SDK
// clients report it (naming mallory), rejoin on their own, and talk on.

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// epochMembershipKey digs the membership key of st's epoch out of its saved
// state (mls keeps it unexported): in the saved epoch secrets it comes
// two fields before the epoch_authenticator. It checks the key by
// protecting a Commit of st again.
func epochMembershipKey(t *testing.T, st *mls.Group) []byte {
	t.Helper()
	saved, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	ea := st.EpochAuthenticator()
	n := len(ea)
	i := bytes.Index(saved, ea)
	if i < 2*(n+1) {
		t.Fatal("no epoch_authenticator in the saved state")
	}
	mk := saved[i-2*(n+1) : i-n-2]
	trial, err := cloneState(st)
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := trial.CommitMessage(mls.CommitOptions{WireFormat: mls.WireFormatPublicMessage})
	if err != nil {
		t.Fatal(err)
	}
	pm := msg.PublicMessage
	gc := st.GroupContext()
	again, err := mls.ProtectPublic(&mls.AuthenticatedContent{WireFormat: mls.WireFormatPublicMessage, Content: pm.Content, Auth: pm.Auth}, mk, &gc)
	if err != nil || !bytes.Equal(again.MembershipTag, pm.MembershipTag) {
		t.Fatalf("the membership key found in the saved state is not the epoch's (%v)", err)
	}
	return bytes.Clone(mk)
}

// forgedCommit makes an Update Commit of mallory (state mst) that declares
// decl, lets mutate change it, and signs and protects it again as
// mallory's. It returns the Commit and the blob mallory's own state would
// send with it (sealed under the new epoch and mst's).
func forgedCommit(t *testing.T, mallory *tclient, mst *mls.Group, decl ds.RosterChange, mutate func(*mls.AuthenticatedContent)) (wire, blob []byte) {
	t.Helper()
	mk := epochMembershipKey(t, mst)
	st, err := cloneState(mst)
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := st.CommitMessage(mls.CommitOptions{WireFormat: mls.WireFormatPublicMessage, AuthenticatedData: marshalDeclaration(decl)})
	if err != nil {
		t.Fatal(err)
	}
	_, blob, err = SealPendingRemoteTree(st)
	if err != nil {
		t.Fatal(err)
	}
	pm := msg.PublicMessage
	if mutate != nil {
		ac := &mls.AuthenticatedContent{WireFormat: mls.WireFormatPublicMessage, Content: pm.Content, Auth: pm.Auth}
		mutate(ac)
		gc := mst.GroupContext()
		if err := ac.Sign(mallory.cs, mallory.sig, &gc); err != nil {
			t.Fatal(err)
		}
		if pm, err = mls.ProtectPublic(ac, mk, &gc); err != nil {
			t.Fatal(err)
		}
	}
	wire, err = mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})
	if err != nil {
		t.Fatal(err)
	}
	return wire, blob
}

// sendOpaqueCommit sends mallory's Commit of epoch with blob as the remote
// tree of the next epoch (and a Welcome, if not nil).
func sendOpaqueCommit(t *testing.T, mallory *tclient, wire []byte, epoch uint64, blob, welcome []byte) {
	t.Helper()
	if _, err := mallory.rpc.groups.SendCommitBundle(ctxT(t), connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
		Commit: wire, Welcome: welcome, RemoteTree: &mlsdsv1.RemoteTree{Epoch: epoch + 1, Blob: blob}})); err != nil {
		t.Fatalf("the server refused mallory's Commit: %v", err)
	}
}

// recovered waits until each of clients reported mallory's Commit (an
// EventUndecryptable naming mallory) and rejoined (EventRejoined), and
// until they all meet in one epoch; then they exchange messages. It
// returns the EventUndecryptable of each.
func recovered(t *testing.T, gid []byte, clients ...*tclient) map[string]Event {
	t.Helper()
	start := time.Now()
	out := map[string]Event{}
	for _, c := range clients {
		u := c.waitFor("EventUndecryptable of mallory's Commit", 0, func(e Event) bool {
			return e.Kind == EventUndecryptable && bytes.Equal(e.GroupID, gid) && e.Sender == "mallory"
		})
		out[c.ID()] = c.snapshot()[u]
		r := c.waitFor("EventRejoined", u+1, kind(EventRejoined, gid))
		if ev := c.snapshot()[r]; ev.Err == nil || !slices.Contains(ev.Members, c.ID()) {
			t.Errorf("%s: EventRejoined without a reason or without itself: %v", c.ID(), describe([]Event{ev}))
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		meet := true
		g0 := clients[0].Group(gid)
		for _, c := range clients {
			g := c.Group(gid)
			if g.Broken() || g.Epoch() != g0.Epoch() || !bytes.Equal(g.EpochAuthenticator(), g0.EpochAuthenticator()) {
				meet = false
			}
		}
		if meet {
			t.Logf("the honest members met in epoch %d %v after the attack", g0.Epoch(), time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			for _, c := range clients {
				t.Logf("%s: epoch %d, broken %v; events: %s", c.ID(), c.Group(gid).Epoch(), c.Group(gid).Broken(), describe(c.snapshot()))
			}
			t.Fatal("the honest members do not meet in one epoch")
		}
		time.Sleep(10 * time.Millisecond)
	}
	from := map[string]int{}
	for _, c := range clients {
		from[c.ID()] = len(c.snapshot())
	}
	exchange(t, gid, 3, "after", clients...)
	for _, c := range clients {
		for _, ev := range c.snapshot()[from[c.ID()]:] {
			if ev.Kind == EventUndecryptable || ev.Kind == EventRejoined {
				t.Errorf("%s after recovering: %v", c.ID(), describe([]Event{ev}))
			}
		}
	}
	return out
}

// opaqueWithMallory is withMallory for an opaque group, after a first
// exchange.
func opaqueWithMallory(t *testing.T) (e *testEnv, alice, bob, mallory *tclient, gid []byte, mst *mls.Group) {
	e = startEnv(t)
	alice, bob, mallory, gid, mst = withMalloryIn(t, e, GroupOptions{Opaque: true})
	exchange(t, gid, 1, "before", alice, bob)
	return e, alice, bob, mallory, gid, mst
}

// Attack 3, a bad confirmation tag: mallory's blob is the one of her own
// state; the honest members rejoin from it.
func TestOpaqueRecoverBadConfirmationTag(t *testing.T) {
	_, alice, bob, mallory, gid, mst := opaqueWithMallory(t)
	wire, blob := forgedCommit(t, mallory, mst, ds.RosterChange{}, func(ac *mls.AuthenticatedContent) {
		ac.Auth.ConfirmationTag = randomBytes(len(ac.Auth.ConfirmationTag))
	})
	sendOpaqueCommit(t, mallory, wire, mst.Epoch(), blob, nil)
	recovered(t, gid, alice, bob)
}

// Attack 3, a garbage path, with a garbage blob: the first honest member
// to recover rejoins from its own state, the other one follows it.
func TestOpaqueRecoverGarbagePath(t *testing.T) {
	_, alice, bob, mallory, gid, mst := opaqueWithMallory(t)
	wire, _ := forgedCommit(t, mallory, mst, ds.RosterChange{}, func(ac *mls.AuthenticatedContent) {
		for i := range ac.Content.Commit.Path.Nodes {
			for j := range ac.Content.Commit.Path.Nodes[i].EncryptedPathSecret {
				ct := &ac.Content.Commit.Path.Nodes[i].EncryptedPathSecret[j]
				ct.Ciphertext = randomBytes(len(ct.Ciphertext))
			}
		}
	})
	sendOpaqueCommit(t, mallory, wire, mst.Epoch(), randomBytes(200), nil)
	recovered(t, gid, alice, bob)
}

// Attack 3, a Commit that removes its committer and says so: the server
// drops mallory from its roster; the honest members refuse the Commit and
// their resync restores her, as the tree still holds her.
func TestOpaqueRecoverRemoveCommitter(t *testing.T) {
	e, alice, bob, mallory, gid, mst := opaqueWithMallory(t)
	wire, blob := forgedCommit(t, mallory, mst, ds.RosterChange{Removed: []string{"mallory"}}, func(ac *mls.AuthenticatedContent) {
		c := ac.Content.Commit
		c.Proposals = append(c.Proposals, mls.ProposalOrRef{Type: mls.ProposalOrRefTypeProposal,
			Proposal: &mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: mst.Self()}}})
	})
	// alice and bob are away while the server takes the Commit, so that
	// their recovery (within milliseconds) cannot restore mallory before
	// the check below.
	alice.Close()
	bob.Close()
	sendOpaqueCommit(t, mallory, wire, mst.Epoch(), blob, nil)
	if _, err := mallory.rpc.groups.GetRemoteTree(ctxT(t), connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: gid})); errorDetail[*mlsdsv1.NotMember](err) == nil {
		t.Fatalf("mallory after her Commit that removes her: %v, want not a member", err)
	}
	alice = e.open("alice", filepath.Dir(alice.path))
	bob = e.open("bob", filepath.Dir(bob.path))
	recovered(t, gid, alice, bob)
	for _, c := range []*tclient{alice, bob} {
		if got := c.Group(gid).Members(); !slices.Contains(got, "mallory") {
			t.Errorf("%s's members: %v", c.ID(), got)
		}
	}
	// The roster follows the tree again.
	if _, err := mallory.rpc.groups.GetRemoteTree(ctxT(t), connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: gid})); err != nil {
		t.Errorf("mallory is not restored to the roster: %v", err)
	}
}

// Attack 3, an Add whose KeyPackage has mallory's own signature key.
func TestOpaqueRecoverDuplicateSignatureKey(t *testing.T) {
	_, alice, bob, mallory, gid, mst := opaqueWithMallory(t)
	now := uint64(time.Now().Unix())
	kp, _, err := mls.NewKeyPackage(mallory.cs, []byte("mallory2"), mallory.sig, now-60, now+3600)
	if err != nil {
		t.Fatal(err)
	}
	wire, _ := forgedCommit(t, mallory, mst, ds.RosterChange{}, func(ac *mls.AuthenticatedContent) {
		c := ac.Content.Commit
		c.Proposals = append(c.Proposals, mls.ProposalOrRef{Type: mls.ProposalOrRefTypeProposal,
			Proposal: &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}}})
	})
	sendOpaqueCommit(t, mallory, wire, mst.Epoch(), randomBytes(300), nil)
	recovered(t, gid, alice, bob)
	for _, c := range []*tclient{alice, bob} {
		if got := c.Group(gid).Members(); slices.Contains(got, "mallory2") {
			t.Errorf("%s's members: %v", c.ID(), got)
		}
	}
}

// Attack 3, content that does not decode: a PrivateMessage Commit of
// random bytes.
func TestOpaqueRecoverUndecodableContent(t *testing.T) {
	_, alice, bob, mallory, gid, mst := opaqueWithMallory(t)
	wire, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
		GroupID: gid, Epoch: mst.Epoch(), ContentType: mls.ContentTypeCommit,
		EncryptedSenderData: randomBytes(40), Ciphertext: randomBytes(300)}})
	if err != nil {
		t.Fatal(err)
	}
	sendOpaqueCommit(t, mallory, wire, mst.Epoch(), randomBytes(300), nil)
	recovered(t, gid, alice, bob)
}

// Attack 4: a valid Update Commit whose declaration says it removes bob
// and adds eve (with a Welcome for eve from another Commit). The server
// stops delivering to bob (EventDropped) and lets eve in; alice and bob
// refuse the Commit (ErrRosterMismatch); alice's resync restores bob and
// evicts eve; bob rejoins; eve can no longer read the group.
func TestOpaqueRosterLie(t *testing.T) {
	e, alice, bob, mallory, gid, mst := opaqueWithMallory(t)
	eve := e.client("eve")
	eve.Close()
	res, err := mallory.rpc.kps.ClaimKeyPackages(ctxT(t), connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
		Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: "eve"}, CipherSuite: uint32(mallory.cs)}))
	if err != nil {
		t.Fatal(err)
	}
	kp, err := claimedKeyPackage("eve", res.Msg.KeyPackages[0].KeyPackage)
	if err != nil {
		t.Fatal(err)
	}
	other, err := cloneState(mst)
	if err != nil {
		t.Fatal(err)
	}
	_, w, err := other.CommitMessage(mls.CommitOptions{Adds: []*mls.KeyPackage{kp}})
	if err != nil {
		t.Fatal(err)
	}
	wWire, _ := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: w})
	wire, blob := forgedCommit(t, mallory, mst, ds.RosterChange{Added: []string{"eve"}, Removed: []string{"bob"}}, nil)
	sendOpaqueCommit(t, mallory, wire, mst.Epoch(), blob, wWire)

	d := bob.waitFor("EventDropped", 0, kind(EventDropped, gid))
	if ev := bob.snapshot()[d]; !errors.Is(ev.Err, ErrDropped) {
		t.Errorf("bob's EventDropped: %v", describe([]Event{ev}))
	}
	und := recovered(t, gid, alice, bob)
	for id, ev := range und {
		if !errors.Is(ev.Err, ErrRosterMismatch) {
			t.Errorf("%s refused mallory's Commit for another reason: %v", id, ev.Err)
		}
	}
	for _, c := range []*tclient{alice, bob} {
		if got := c.Group(gid).Members(); !slices.Equal(got, []string{"alice", "bob", "mallory"}) {
			t.Errorf("%s's members: %v", c.ID(), got)
		}
	}
	// Eve was let in by mallory's Commit and evicted by the first resync:
	// she gets nothing after it (the exchange of recovered).
	var evicted uint64
	for _, c := range []*tclient{alice, bob} {
		for _, ev := range c.snapshot() {
			if ev.Kind == EventRejoined && bytes.Equal(ev.GroupID, gid) && (evicted == 0 || ev.Seq < evicted) {
				evicted = ev.Seq
			}
		}
	}
	fr, err := eve.rpc.groups.Fetch(ctxT(t), connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid, FromSeq: 1, Limit: 1000}))
	switch {
	case errorDetail[*mlsdsv1.NotMember](err) != nil:
	case err != nil:
		t.Errorf("eve's Fetch: %v", err)
	default:
		for _, m := range fr.Msg.Messages {
			if m.GroupSeq > evicted {
				t.Errorf("eve fetched message %d, after the resync %d that evicted her", m.GroupSeq, evicted)
			}
		}
		if len(fr.Msg.Messages) == 0 {
			t.Error("eve fetched nothing: mallory's Commit did not let her in, so this test shows nothing")
		}
	}
}

// A Commit that lies about the roster is refused by the server when the
// bundle's lists disagree with the declaration, and when the bundle
// names roster changes without a declaration; nothing is stored.
func TestOpaqueRosterBundleMustMatchDeclaration(t *testing.T) {
	_, alice, bob, mallory, gid, mst := opaqueWithMallory(t)
	ctx := ctxT(t)
	for name, c := range map[string]struct {
		decl              ds.RosterChange
		added, removed    []string
		withoutRemoteTree bool
	}{
		"lists without a declaration":   {removed: []string{"bob"}},
		"lists other than declared":     {decl: ds.RosterChange{Removed: []string{"alice"}}, removed: []string{"bob"}},
		"declared, without remote tree": {decl: ds.RosterChange{Removed: []string{"bob"}}, withoutRemoteTree: true},
	} {
		wire, blob := forgedCommit(t, mallory, mst, c.decl, nil)
		req := &mlsdsv1.SendCommitBundleRequest{Commit: wire, Added: c.added, Removed: c.removed}
		if !c.withoutRemoteTree {
			req.RemoteTree = &mlsdsv1.RemoteTree{Epoch: mst.Epoch() + 1, Blob: blob}
		}
		if _, err := mallory.rpc.groups.SendCommitBundle(ctx, connect.NewRequest(req)); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	// Nothing changed: bob is delivered and the group goes on.
	exchange(t, gid, 2, "still", alice, bob)
	if alice.Group(gid).Epoch() != mst.Epoch() {
		t.Errorf("the group moved to epoch %d", alice.Group(gid).Epoch())
	}
}

// Attack 9 through a real server: mallory sends messages 1000 generations
// ahead on her leaf whose signature does not verify. Bob refuses each
// (EventUndecryptable) and his saved state does not grow with the
// skipped keys.
func TestMaliciousSkippedKeysBadSignature(t *testing.T) {
	e := startEnv(t)
	alice, bob, mallory, gid, mst := withMallory(t, e)
	exchange(t, gid, 1, "before", alice, bob)
	size := func() int {
		g := bob.Group(gid)
		g.mu.Lock()
		defer g.mu.Unlock()
		b, err := g.st.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return len(b)
	}
	before := size()
	// Mallory's state with another signature key: what she seals then
	// carries a signature that her leaf's key does not verify.
	saved, err := mst.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	_, otherPriv, err := mallory.cs.GenerateSignatureKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	if len(otherPriv) != len(mallory.sig) || bytes.Count(saved, mallory.sig) != 1 {
		t.Fatal("mallory's signature key is not once in her saved state")
	}
	forged, err := mls.UnmarshalGroup(bytes.Replace(saved, mallory.sig, otherPriv, 1))
	if err != nil {
		t.Fatal(err)
	}
	const sent = 5
	from := len(bob.snapshot())
	for range sent {
		var pm *mls.PrivateMessage
		for range 1001 {
			if pm, err = forged.Seal([]byte("skip"), nil); err != nil {
				t.Fatal(err)
			}
		}
		wire, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm})
		if err != nil {
			t.Fatal(err)
		}
		rawSend(t, mallory, wire)
	}
	bob.waitFor("mallory's messages refused", from, func(Event) bool {
		n := 0
		for _, ev := range bob.events[from:] {
			if ev.Kind == EventUndecryptable && bytes.Equal(ev.GroupID, gid) && ev.Sender == "mallory" {
				n++
			}
		}
		return n >= sent
	})
	exchange(t, gid, 2, "after", alice, bob)
	after := size()
	t.Logf("bob's state: %d bytes before, %d after %d messages 1000 generations ahead", before, after, sent)
	if after > before+2048 {
		t.Errorf("bob's state grew from %d to %d bytes", before, after)
	}
	for _, m := range bob.messages(gid) {
		if m == "mallory:skip" {
			t.Error("bob shows a message whose signature does not verify")
		}
	}
}

// Forks after a Commit (opaque): mallory's valid Update Commit goes with a
// remote tree that holds the GroupInfo of another Commit of hers, sealed
// under the key of the epoch the real one starts. Alice and bob process
// the Commit, find that the server's GroupInfo of the epoch is not theirs
// (EventForked), rejoin (EventRejoined), meet in one epoch and talk on.
func TestOpaqueForkAfterCommit(t *testing.T) {
	_, alice, bob, mallory, gid, mst := opaqueWithMallory(t)
	real, err := cloneState(mst)
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := real.CommitMessage(mls.CommitOptions{WireFormat: mls.WireFormatPublicMessage})
	if err != nil {
		t.Fatal(err)
	}
	if err := real.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	other, err := cloneState(mst)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.CommitMessage(mls.CommitOptions{WireFormat: mls.WireFormatPublicMessage}); err != nil {
		t.Fatal(err)
	}
	if err := other.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	ogi, err := other.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	key, err := epochKey(real)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := sealRemoteTree(mallory.cs, gid, real.Epoch(), ogi, other.Tree(), []EpochKey{key})
	if err != nil {
		t.Fatal(err)
	}
	wire, err := mlsMessage(msg)
	if err != nil {
		t.Fatal(err)
	}
	sendOpaqueCommit(t, mallory, wire, mst.Epoch(), blob, nil)
	for _, c := range []*tclient{alice, bob} {
		f := c.waitFor("EventForked", 0, kind(EventForked, gid))
		if ev := c.snapshot()[f]; !errors.Is(ev.Err, ErrForked) || ev.Epoch != real.Epoch() {
			t.Errorf("%s: EventForked: %v", c.ID(), describe([]Event{ev}))
		}
		c.waitFor("EventRejoined", f+1, kind(EventRejoined, gid))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ga, gb := alice.Group(gid), bob.Group(gid)
		if !ga.Broken() && !gb.Broken() && ga.Epoch() == gb.Epoch() && bytes.Equal(ga.EpochAuthenticator(), gb.EpochAuthenticator()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice (epoch %d) and bob (epoch %d) do not meet", ga.Epoch(), gb.Epoch())
		}
		time.Sleep(10 * time.Millisecond)
	}
	exchange(t, gid, 2, "after", alice, bob)
}

// Attack 4 while the member who would restore bob is away: bob refuses
// mallory's lying Commit, finds himself dropped (EventDropped; Send and
// Sync return ErrDropped) and keeps trying; once alice is back she refuses
// the Commit too, her resync restores bob, and bob rejoins on his own.
func TestOpaqueRosterDroppedMemberRestored(t *testing.T) {
	e, alice, bob, mallory, gid, mst := opaqueWithMallory(t)
	aliceDir := filepath.Dir(alice.path)
	alice.Close()
	wire, blob := forgedCommit(t, mallory, mst, ds.RosterChange{Removed: []string{"bob"}}, nil)
	sendOpaqueCommit(t, mallory, wire, mst.Epoch(), blob, nil)

	u := bob.waitFor("EventUndecryptable of mallory's Commit", 0, kind(EventUndecryptable, gid))
	if ev := bob.snapshot()[u]; ev.Sender != "mallory" || !errors.Is(ev.Err, ErrRosterMismatch) {
		t.Errorf("bob's EventUndecryptable: %v", describe([]Event{ev}))
	}
	d := bob.waitFor("EventDropped", u+1, kind(EventDropped, gid))
	if ev := bob.snapshot()[d]; !errors.Is(ev.Err, ErrDropped) {
		t.Errorf("bob's EventDropped: %v", describe([]Event{ev}))
	}
	bg := bob.Group(gid)
	if _, err := bg.Send(ctxT(t), []byte("anyone?")); !errors.Is(err, ErrDropped) {
		t.Errorf("bob's Send while dropped: %v, want ErrDropped", err)
	}
	if err := bg.Sync(ctxT(t)); !errors.Is(err, ErrDropped) {
		t.Errorf("bob's Sync while dropped: %v, want ErrDropped", err)
	}

	alice = e.open("alice", aliceDir)
	recovered(t, gid, alice, bob)
	if n := len(slices.DeleteFunc(bob.snapshot(), func(ev Event) bool { return ev.Kind != EventDropped })); n != 1 {
		t.Errorf("bob got %d EventDropped, want 1", n)
	}
}
