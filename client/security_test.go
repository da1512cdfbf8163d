package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/mls"
)

// The SDK's side of "whom the DS trusts": members check credentials
// themselves, recover from Commits they cannot process, and leave at once.

// refuseIdentity is an application's own Authentication Service that
// refuses one identity.
type refuseIdentity struct {
	id    string
	calls atomic.Int64
}

func (r *refuseIdentity) ValidateCredential(ctx context.Context, groupID []byte, leaf mls.LeafIndex, cred mls.Credential, signatureKey []byte) error {
	r.calls.Add(1)
	if string(cred.Identity) == r.id {
		return errors.New("test: the application does not trust " + r.id)
	}
	return nil
}

func withValidator(v CredentialValidator) func(*Config) {
	return func(c *Config) { c.CredentialValidator = v }
}

// refusal returns the *CredentialError of an EventRefused.
func refusal(t *testing.T, ev Event) *CredentialError {
	t.Helper()
	var ce *CredentialError
	if ev.Kind != EventRefused || !errors.As(ev.Err, &ce) {
		t.Fatalf("want an EventRefused with a *CredentialError, got %v", describe([]Event{ev}))
	}
	return ce
}

// TestRefuseCommitWithUnboundLeaf: bob's Authentication Service refuses
// dave. When alice adds dave, bob refuses the Commit (EventRefused naming
// the leaf, the identity and the rule), keeps his state as it was, and
// does not rejoin into a tree that holds dave; carol, with the default
// check, takes dave in. Once dave is removed, bob can rejoin.
func TestRefuseCommitWithUnboundLeaf(t *testing.T) {
	e := startEnv(t)
	v := &refuseIdentity{id: "dave"}
	alice, carol, dave := e.client("alice"), e.client("carol"), e.client("dave")
	bob := e.open("bob", t.TempDir(), withValidator(v))
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	if v.calls.Load() == 0 {
		t.Error("bob's validator was not asked about the Welcome's tree")
	}
	bg := bob.Group(gid)
	authBefore := bg.EpochAuthenticator()

	if err := g.Add(ctx, "dave"); err != nil {
		t.Fatalf("Add dave: %v", err)
	}
	i := bob.waitFor("EventRefused", 0, kind(EventRefused, gid))
	ev := bob.snapshot()[i]
	ce := refusal(t, ev)
	if ce.Identity != "dave" || ce.Leaf != 3 || !strings.Contains(ce.Rule, "5.3.1") || !bytes.Equal(ce.GroupID, gid) {
		t.Errorf("refusal names leaf %d %q, rule %q, group %x", ce.Leaf, ce.Identity, ce.Rule, ce.GroupID)
	}
	if ev.Sender != "alice" || !slices.Equal(ev.Members, []string{"dave"}) {
		t.Errorf("EventRefused: sender %q, members %v", ev.Sender, ev.Members)
	}
	if !bg.Broken() || bg.Epoch() != 1 || !bytes.Equal(bg.EpochAuthenticator(), authBefore) ||
		!slices.Equal(bg.Members(), []string{"alice", "bob", "carol"}) {
		t.Errorf("bob's state after the refusal: broken %v, epoch %d, members %v", bg.Broken(), bg.Epoch(), bg.Members())
	}
	waitEpoch(t, carol, gid, 2)
	if got := carol.Group(gid).Members(); !slices.Equal(got, []string{"alice", "bob", "carol", "dave"}) {
		t.Errorf("carol's members: %v", got)
	}
	dave.waitFor("EventJoined", 0, kind(EventJoined, gid))

	// A later message reaches bob's broken group: still no rejoin.
	if _, err := carol.Group(gid).Send(ctx, []byte("bob cannot read this")); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("carol's message, undecryptable", i+1, kind(EventUndecryptable, gid))
	if slices.ContainsFunc(bob.snapshot(), kind(EventRejoined, gid)) {
		t.Error("bob rejoined a group whose tree holds the leaf he refused")
	}
	var rce *CredentialError
	if err := bg.Rejoin(ctx); !errors.As(err, &rce) || rce.Identity != "dave" {
		t.Errorf("Rejoin while dave is in the tree: %v; want a *CredentialError naming dave", err)
	}

	// Without dave, bob may rejoin.
	if err := g.Remove(ctx, "dave"); err != nil {
		t.Fatal(err)
	}
	if err := bg.Rejoin(ctx); err != nil {
		t.Fatalf("Rejoin once dave is gone: %v", err)
	}
	// Bob's resync may be followed by a Commit of whoever's turn it is
	// (pending proposals, a stale leaf): wait until all three agree.
	waitEpoch(t, alice, gid, 4)
	waitEpoch(t, carol, gid, 4)
	waitEpoch(t, bob, gid, 4)
	for _, c := range []*tclient{alice, bob, carol} {
		waitEpoch(t, c, gid, max(alice.Group(gid).Epoch(), bob.Group(gid).Epoch(), carol.Group(gid).Epoch()))
	}
	sameEpoch(t, gid, alice, bob, carol)
	exchange(t, gid, 1, "without-dave", alice, bob, carol)
}

// TestRefuseWelcomeWithUnboundLeaf: erin's Authentication Service refuses
// dave, who is in the group erin is added to: erin refuses the Welcome
// (no group state), leaves the group on the server with a Remove
// proposal, and alice commits erin's removal.
func TestRefuseWelcomeWithUnboundLeaf(t *testing.T) {
	e := startEnv(t)
	alice, dave := e.client("alice"), e.client("dave")
	erin := e.open("erin", t.TempDir(), withValidator(&refuseIdentity{id: "dave"}))
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	if err := g.Add(ctx, "dave"); err != nil {
		t.Fatal(err)
	}
	dave.waitFor("EventJoined", 0, kind(EventJoined, gid))
	if err := g.Add(ctx, "erin"); err != nil {
		t.Fatal(err)
	}
	i := erin.waitFor("EventRefused", 0, kind(EventRefused, gid))
	if ce := refusal(t, erin.snapshot()[i]); ce.Identity != "dave" || ce.Leaf != 1 {
		t.Errorf("erin's refusal names leaf %d %q", ce.Leaf, ce.Identity)
	}
	if erin.Group(gid) != nil {
		t.Error("erin holds the group of a refused Welcome")
	}
	alice.waitFor("erin removed", 0, func(e Event) bool {
		return e.Kind == EventMembersRemoved && bytes.Equal(e.GroupID, gid) && slices.Equal(e.Members, []string{"erin"})
	})
	waitRoster(t, alice, gid, []string{"alice", "dave"})
	if slices.ContainsFunc(erin.snapshot(), kind(EventJoined, gid)) {
		t.Error("erin joined")
	}
}

// TestDefaultValidatorDirectory: the default check accepts a leaf whose
// signature key the directory binds to its client id, and refuses one
// that claims "bob" with a key bob never registered, or a client id the
// directory does not know.
func TestDefaultValidatorDirectory(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	ctx := ctxT(t)
	now := uint64(time.Now().Unix())
	// tree makes a group of alice (her real key) and a leaf of identity id
	// signed with sig, and returns its ratchet tree.
	tree := func(id string, sig []byte) *mls.RatchetTree {
		t.Helper()
		kpA, privA, err := mls.NewKeyPackage(alice.cs, []byte("alice"), alice.sig, now-60, now+3600)
		if err != nil {
			t.Fatal(err)
		}
		st, err := mls.NewGroup([]byte("crafted"), kpA, privA)
		if err != nil {
			t.Fatal(err)
		}
		kp, _, err := mls.NewKeyPackage(alice.cs, []byte(id), sig, now-60, now+3600)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := st.Commit([]*mls.KeyPackage{kp}, nil); err != nil {
			t.Fatal(err)
		}
		if err := st.MergePendingCommit(); err != nil {
			t.Fatal(err)
		}
		return st.Tree()
	}
	// One batched GetClientKeys call for both leaves, then the cache.
	calls := &countKeys{AccountServiceClient: alice.rpc.account}
	alice.rpc.account = calls
	good := tree("bob", bob.sig)
	for range 2 {
		if err := alice.validateTree(ctx, []byte("crafted"), good); err != nil {
			t.Errorf("a tree of alice and bob with their registered keys: %v", err)
		}
	}
	if n := calls.n.Load(); n != 1 {
		t.Errorf("validating a tree of two bound leaves twice took %d GetClientKeys calls, want 1", n)
	}
	forged, _, err := alice.cs.GenerateSignatureKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"bob", "nobody"} {
		err := alice.validateTree(ctx, []byte("crafted"), tree(id, forged))
		var ce *CredentialError
		if !errors.As(err, &ce) || !errors.Is(err, ErrCredentialUnbound) || ce.Identity != id || ce.Leaf != 1 {
			t.Errorf("a leaf of %q with a key the directory does not hold: %v; want a *CredentialError for leaf 1 wrapping ErrCredentialUnbound", id, err)
		}
	}
}

// countKeys counts GetClientKeys calls.
type countKeys struct {
	mlsdsv1connect.AccountServiceClient
	n atomic.Int64
}

func (c *countKeys) GetClientKeys(ctx context.Context, req *connect.Request[mlsdsv1.GetClientKeysRequest]) (*connect.Response[mlsdsv1.GetClientKeysResponse], error) {
	c.n.Add(1)
	return c.AccountServiceClient.GetClientKeys(ctx, req)
}

// waitRoster waits until the server's roster of gid, as c reads it, is
// want.
func waitRoster(t *testing.T, c *tclient, gid []byte, want []string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := c.rpc.groups.GetRoster(ctxT(t), connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid}))
		if err == nil && slices.Equal(res.Msg.ClientIds, want) {
			return
		}
		if time.Now().After(deadline) {
			var got []string
			if err == nil {
				got = res.Msg.ClientIds
			}
			t.Fatalf("the server's roster is %v (%v), want %v", got, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRecoverFromBadCommit: mallory, a member, sends a Commit the server
// cannot tell from a good one — a resync external Commit whose
// confirmation_tag is random bytes, with a GroupInfo she signs that
// carries the same tag. Alice and bob cannot process it; both rejoin on
// their own from the GroupInfo the server serves (racing each other for
// the epoch), report EventRejoined, end up in the same epoch and exchange
// messages without losing one.
func TestRecoverFromBadCommit(t *testing.T) {
	e := startEnv(t)
	alice, bob, mallory := e.client("alice"), e.client("bob"), e.client("mallory")
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	if err := g.Add(ctx, "bob", "mallory"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, gid))
	mallory.waitFor("EventJoined", 0, kind(EventJoined, gid))
	exchange(t, gid, 1, "before", alice, bob, mallory)

	mg := mallory.Group(gid)
	mg.mu.Lock()
	gi, err := mg.st.GroupInfo(true)
	self := mg.st.Self()
	mg.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	now := uint64(time.Now().Unix())
	kp, priv, err := mls.NewKeyPackage(mallory.cs, []byte("mallory"), mallory.sig, now-60, now+3600)
	if err != nil {
		t.Fatal(err)
	}
	st, commit, err := mls.JoinExternalWith(gi, nil, kp, priv, mls.JoinExternalOptions{RemoveLeaf: &self})
	if err != nil {
		t.Fatal(err)
	}
	tag := make([]byte, len(commit.Auth.ConfirmationTag))
	rand.Read(tag)
	commit.Auth.ConfirmationTag = tag
	ngi, err := st.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	ngi.ConfirmationTag = tag
	if err := ngi.Sign(mallory.sig); err != nil {
		t.Fatal(err)
	}
	wire, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: commit})
	if err != nil {
		t.Fatal(err)
	}
	giWire, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: ngi})
	if err != nil {
		t.Fatal(err)
	}
	// Mallory's own client stays out of it.
	mallory.Close()
	if _, err := mallory.rpc.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: wire, GroupInfo: giWire})); err != nil {
		t.Fatalf("the server refused mallory's Commit: %v", err)
	}

	for _, c := range []*tclient{alice, bob} {
		u := c.waitFor("EventUndecryptable of mallory's Commit", 0, kind(EventUndecryptable, gid))
		r := c.waitFor("EventRejoined", u+1, kind(EventRejoined, gid))
		if ev := c.snapshot()[r]; ev.Err == nil || !slices.Contains(ev.Members, c.ID()) {
			t.Errorf("%s: EventRejoined without a reason or without itself: %v", c.ID(), describe([]Event{ev}))
		}
	}
	// Both rejoined; whoever lost the race made its Commit again, so they
	// meet in one epoch.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ga, gb := alice.Group(gid), bob.Group(gid)
		if !ga.Broken() && !gb.Broken() && ga.Epoch() == gb.Epoch() && bytes.Equal(ga.EpochAuthenticator(), gb.EpochAuthenticator()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice (epoch %d, broken %v) and bob (epoch %d, broken %v) do not meet", ga.Epoch(), ga.Broken(), gb.Epoch(), gb.Broken())
		}
		time.Sleep(10 * time.Millisecond)
	}
	from := map[string]int{"alice": len(alice.snapshot()), "bob": len(bob.snapshot())}
	exchange(t, gid, 5, "after", alice, bob)
	for _, c := range []*tclient{alice, bob} {
		for _, ev := range c.snapshot()[from[c.ID()]:] {
			if ev.Kind == EventUndecryptable || ev.Kind == EventRejoined {
				t.Errorf("%s after the rejoin: %v", c.ID(), describe([]Event{ev}))
			}
		}
	}
}

// TestLeave: bob leaves; the server stops delivering the group to him at
// once (no event of it after EventLeft), alice commits his removal, and
// the server's roster lacks him.
func TestLeave(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	bg := bob.Group(gid)
	if err := bg.Leave(ctx); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	left := bob.waitFor("EventLeft", 0, kind(EventLeft, gid))
	if !bg.Removed() {
		t.Error("Removed is false after Leave")
	}
	if _, err := bg.Send(ctx, []byte("x")); err != ErrRemoved {
		t.Errorf("Send after Leave: %v, want ErrRemoved", err)
	}
	if err := bg.Leave(ctx); err != ErrRemoved {
		t.Errorf("Leave again: %v, want ErrRemoved", err)
	}
	bg.mu.Lock()
	processed := bg.processed
	bg.mu.Unlock()
	for _, c := range []*tclient{alice, carol} {
		i := c.waitFor("bob removed", 0, func(e Event) bool {
			return e.Kind == EventMembersRemoved && bytes.Equal(e.GroupID, gid) && slices.Equal(e.Members, []string{"bob"})
		})
		if s := c.snapshot()[i].Sender; s != "alice" {
			t.Errorf("bob's removal was committed by %q, want alice", s)
		}
	}
	waitRoster(t, alice, gid, []string{"alice", "carol"})
	waitEpoch(t, carol, gid, 2)
	exchange(t, gid, 2, "without-bob", alice, carol)
	if err := g.Update(ctx); err != nil {
		t.Fatal(err)
	}
	waitEpoch(t, carol, gid, 3)
	if err := bob.Sync(ctx); err != nil {
		t.Errorf("Sync: %v", err)
	}
	for _, ev := range bob.snapshot()[left+1:] {
		if bytes.Equal(ev.GroupID, gid) {
			t.Errorf("bob got an event after EventLeft: %v", describe([]Event{ev}))
		}
	}
	bg.mu.Lock()
	if bg.processed != processed {
		t.Errorf("bob processed the group up to %d after leaving at %d", bg.processed, processed)
	}
	bg.mu.Unlock()
}

// TestLeaveGroupWithoutState: bob loses his state of a group; when its
// messages reach him he leaves it on the server instead of downloading
// it, and after the next Commit alice (the designated committer) commits
// the removal of bob, whom the server's roster no longer lists.
func TestLeaveGroupWithoutState(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	bob.mu.Lock()
	delete(bob.groups, string(gid))
	bob.mu.Unlock()
	if _, err := carol.Group(gid).Send(ctx, []byte("for a client without state")); err != nil {
		t.Fatal(err)
	}
	waitRoster(t, alice, gid, []string{"alice", "carol"})
	if err := carol.Group(gid).Update(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*tclient{alice, carol} {
		c.waitFor("bob removed", 0, func(e Event) bool {
			return e.Kind == EventMembersRemoved && bytes.Equal(e.GroupID, gid) && slices.Equal(e.Members, []string{"bob"})
		})
	}
	waitEpoch(t, carol, gid, 3)
	sameEpoch(t, gid, alice, carol)
	exchange(t, gid, 1, "without-bob", alice, carol)
}
