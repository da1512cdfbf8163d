package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/client"
	"github.com/mlsds/mlsds/mls"
)

// Creating a group from what an MLS library exports after its first
// Commit: the GroupInfo and tree of epoch 1, the KeyPackages of the
// members that Commit added, and its Welcome (CreateGroupRequest.welcome).

// fullGroup makes m's real MLS group (mls.Group, with its secrets) at
// epoch 0.
func (m *member) fullGroup(groupID []byte) *mls.Group {
	m.t.Helper()
	now := uint64(time.Now().Unix())
	kp, priv, err := mls.NewKeyPackage(suite, []byte(m.id), m.sigPriv, now-3600, now+7*24*3600)
	if err != nil {
		m.t.Fatal(err)
	}
	g, err := mls.NewGroup(groupID, kp, priv)
	if err != nil {
		m.t.Fatal(err)
	}
	return g
}

// claimKP claims a KeyPackage of id and returns it as the DS handed it out
// and decoded.
func (m *member) claimKP(id string) ([]byte, *mls.KeyPackage) {
	m.t.Helper()
	data := m.claim(id)
	msg, err := mls.ParseMLSMessage(data)
	if err != nil || msg.KeyPackage == nil {
		m.t.Fatalf("the claimed KeyPackage of %s does not parse: %v", id, err)
	}
	return data, msg.KeyPackage
}

// commitFirst has g commit the Adds of kps and merges the Commit, as a
// library does before it can export anything: it returns the Welcome
// (MLSMessage) and the GroupInfo of the new epoch with the ratchet_tree
// extension (MLSMessage).
func commitFirst(t testing.TB, g *mls.Group, kps ...*mls.KeyPackage) (welcome, groupInfo []byte) {
	t.Helper()
	_, w, err := g.Commit(kps, nil)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := g.MergePendingCommit(); err != nil {
		t.Fatalf("MergePendingCommit: %v", err)
	}
	gi, err := g.GroupInfo(true)
	if err != nil {
		t.Fatalf("GroupInfo: %v", err)
	}
	return mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: w}),
		mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
}

// TestCreateGroupWithWelcome: alice's library commits the Add of bob (a
// client of the Go SDK) before the group exists on the DS, and creates it
// there at epoch 1 with that Commit's Welcome. Bob's SDK joins from the
// WelcomeEvent the DS routes to it (commit_seq 0), and the two talk both
// ways.
func TestCreateGroupWithWelcome(t *testing.T) {
	e := startEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	alice := e.client("alice")
	bob, err := client.Open(ctx, client.Config{
		Server: e.url, StatePath: filepath.Join(t.TempDir(), "bob.db"), ClientID: "bob", KeyPackages: 2,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("client.Open(bob): %v", err)
	}
	defer bob.Close()

	gid := groupID("created-at-epoch-1")
	g := alice.fullGroup(gid)
	bobKPData, bobKP := alice.claimKP("bob")
	welcome, gi := commitFirst(t, g, bobKP)
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi,
		KeyPackages: [][]byte{bobKPData}, Welcome: welcome,
	})); err != nil {
		t.Fatalf("CreateGroup at epoch 1 with the Welcome: %v", err)
	}

	joined := nextSDKEvent(t, bob, client.EventJoined)
	if !bytes.Equal(joined.GroupID, gid) || joined.Epoch != 1 || joined.Seq != 0 || !slices.Equal(joined.Members, []string{"alice", "bob"}) {
		t.Fatalf("bob's EventJoined: group %q epoch %d seq %d members %q; want %q, 1, 0, [alice bob]",
			joined.GroupID, joined.Epoch, joined.Seq, joined.Members, gid)
	}
	grp := bob.Group(gid)
	if grp == nil {
		t.Fatal("bob's SDK holds no state of the group it joined")
	}
	if got, want := grp.EpochAuthenticator(), g.EpochAuthenticator(); !bytes.Equal(got, want) {
		t.Fatalf("bob's epoch_authenticator %x, alice's %x: not the same group", got, want)
	}

	// bob's SDK acknowledges the group at seq 0, which marks the Welcome
	// delivered: a new subscription of bob's no longer carries it.
	token, _, err := bob.SessionToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	delivery := mlsdsv1connect.NewDeliveryServiceClient(e.http, e.url, e.opts...)
	welcomeAgain := func() bool {
		sctx, stop := context.WithTimeout(ctx, 10*time.Second)
		defer stop()
		req := connect.NewRequest(&mlsdsv1.SubscribeRequest{})
		req.Header().Set("Authorization", "Bearer "+token)
		stream, err := delivery.Subscribe(sctx, req)
		if err != nil {
			t.Fatalf("bob's Subscribe: %v", err)
		}
		defer stream.Close()
		for stream.Receive() {
			ev := stream.Msg()
			if w := ev.GetWelcome(); w != nil && bytes.Equal(w.GroupId, gid) {
				return true
			}
			if ev.GetCaughtUp() != nil {
				return false
			}
		}
		t.Fatalf("bob's stream ended before caught_up: %v", stream.Err())
		return false
	}
	for deadline := time.Now().Add(20 * time.Second); welcomeAgain(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the creation Welcome is still pending for bob after his SDK joined: it never acknowledged seq 0")
		}
	}

	// alice -> bob: the group's first message, seq 1.
	pm, err := g.Seal([]byte("hello bob"), nil)
	if err != nil {
		t.Fatal(err)
	}
	r := alice.mustSend(mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm}))
	if r.GroupSeq != 1 {
		t.Errorf("the first message got seq %d, want 1", r.GroupSeq)
	}
	if ev := nextSDKEvent(t, bob, client.EventMessage); ev.Sender != "alice" || string(ev.Data) != "hello bob" || ev.Seq != 1 {
		t.Errorf("bob got %q from %q at seq %d, want \"hello bob\" from alice at 1", ev.Data, ev.Sender, ev.Seq)
	}

	// bob -> alice.
	if _, err := grp.Send(ctx, []byte("hello alice")); err != nil {
		t.Fatalf("bob's Send: %v", err)
	}
	res, err := alice.groups.Fetch(ctx, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid, FromSeq: 2, Limit: 10}))
	if err != nil {
		t.Fatalf("alice's Fetch: %v", err)
	}
	if len(res.Msg.Messages) != 1 {
		t.Fatalf("alice fetched %d messages after hers, want bob's one", len(res.Msg.Messages))
	}
	m, err := mls.ParseMLSMessage(res.Msg.Messages[0].Message)
	if err != nil || m.PrivateMessage == nil {
		t.Fatalf("bob's message does not parse as a PrivateMessage: %v", err)
	}
	sender, data, err := g.Open(m.PrivateMessage)
	if err != nil {
		t.Fatalf("alice cannot open bob's message: %v", err)
	}
	if ln := g.Tree().Leaf(sender); string(data) != "hello alice" || ln == nil || string(ln.Credential.Identity) != "bob" {
		t.Errorf("alice opened %q from leaf %d, want \"hello alice\" from bob's leaf", data, sender)
	}
}

// nextSDKEvent reads c's next event, which must be of kind k (a hang fails
// after a generous timeout, which is no speed check).
func nextSDKEvent(t *testing.T, c *client.Client, k client.EventKind) client.Event {
	t.Helper()
	select {
	case ev, ok := <-c.Events():
		if !ok {
			t.Fatalf("the SDK's Events closed while waiting for %v", k)
		}
		if ev.Kind != k {
			t.Fatalf("the SDK reports %v (group %q, epoch %d, error %v); want %v", ev.Kind, ev.GroupID, ev.Epoch, ev.Err, k)
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatalf("no %v event within 30s", k)
	}
	return client.Event{}
}

// TestCreateGroupWelcomeRefused: a CreateGroup whose Welcome does not go
// to exactly the members whose KeyPackages come with it, or is no Welcome
// at all, is refused with InvalidArgument and the rule broken, and
// changes nothing: afterwards the same group id, KeyPackage and Welcome
// make the group, and bob gets that one Welcome only.
func TestCreateGroupWelcomeRefused(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	bob.uploadKeyPackages(1, false)
	carol.uploadKeyPackages(1, false)

	gid := groupID("welcome-refused")
	g := alice.fullGroup(gid)
	bobKPData, bobKP := alice.claimKP("bob")
	carolKPData, carolKP := alice.claimKP("carol")
	welcome, gi := commitFirst(t, g, bobKP)
	carolRef, err := carolKP.Ref()
	if err != nil {
		t.Fatal(err)
	}

	// edited returns the good Welcome changed by edit.
	edited := func(edit func(w *mls.Welcome)) []byte {
		t.Helper()
		m, err := mls.ParseMLSMessage(welcome)
		if err != nil {
			t.Fatal(err)
		}
		edit(m.Welcome)
		return mlsMessage(t, m)
	}
	otherSuite := mls.MLS_128_DHKEMP256_AES128GCM_SHA256_P256

	cases := []struct {
		name    string
		welcome []byte
		kps     [][]byte
		check   func(testing.TB, *connect.Error)
	}{
		{"names a KeyPackage not in key_packages", edited(func(w *mls.Welcome) {
			w.Secrets = append(w.Secrets, mls.EncryptedGroupSecrets{NewMember: carolRef, EncryptedGroupSecrets: w.Secrets[0].EncryptedGroupSecrets})
		}), nil, wantInvalid("12.4.3.1", "which is none of key_packages")},
		{"misses bob's KeyPackage", edited(func(w *mls.Welcome) {
			w.Secrets = w.Secrets[:0]
		}), nil, wantInvalid("12.4.3.1", "no secrets for key_packages[0]")},
		{"names bob's KeyPackage twice", edited(func(w *mls.Welcome) {
			w.Secrets = append(w.Secrets, w.Secrets[0])
		}), nil, wantInvalid("12.4.3.1", "twice")},
		{"another cipher suite", edited(func(w *mls.Welcome) {
			w.CipherSuite = otherSuite
		}), nil, wantInvalid("12.4.3.1", "cipher suite")},
		{"a KeyPackage of no leaf in key_packages", edited(func(w *mls.Welcome) {
			w.Secrets = append(w.Secrets, mls.EncryptedGroupSecrets{NewMember: carolRef, EncryptedGroupSecrets: w.Secrets[0].EncryptedGroupSecrets})
		}), [][]byte{bobKPData, carolKPData}, func(t testing.TB, ce *connect.Error) {
			wantMessage(t, ce, "key_packages[1]", "KeyPackage of no leaf")
		}},
		// An MLSMessage header for a Welcome (mls10, wire format 3), then
		// bytes that are no Welcome.
		{"garbage", append([]byte{0, 1, 0, 3}, bytes.Repeat([]byte{0xee}, 64)...), nil, func(t testing.TB, ce *connect.Error) {
			t.Helper()
			if d := detail[mlsdsv1.InvalidMessage](t, ce); d.Reason == "" {
				t.Fatalf("invalid_message without a reason: %+v", d)
			}
		}},
		{"a KeyPackage, not a Welcome", bobKPData, nil, wantInvalid("6", "Welcome")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kps := tc.kps
			if kps == nil {
				kps = [][]byte{bobKPData}
			}
			_, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
				GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi,
				KeyPackages: kps, Welcome: tc.welcome,
			}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("CreateGroup: %v, want invalid_argument", err)
			}
			var ce *connect.Error
			if !errors.As(err, &ce) {
				t.Fatalf("not a Connect error: %v", err)
			}
			tc.check(t, ce)
			t.Logf("refused: %s", ce.Message())
		})
	}

	// An opaque group's Welcome is held to its key_packages too.
	_, err = alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: groupID("welcome-refused-opaque"), Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE,
		Members: []string{"bob"}, KeyPackages: [][]byte{bobKPData},
		Welcome: edited(func(w *mls.Welcome) { w.Secrets[0].NewMember = carolRef }),
	}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("opaque CreateGroup with a Welcome to carol: %v, want invalid_argument", err)
	}

	// Nothing of the refusals was kept: the group id is free, bob's
	// KeyPackage unused, and bob's only Welcome is the one of the group
	// made now.
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi,
		KeyPackages: [][]byte{bobKPData}, Welcome: welcome,
	})); err != nil {
		t.Fatalf("CreateGroup after the refusals: %v", err)
	}
	// Pending Welcomes come before the caught_up marker.
	sub := bob.subscribe()
	var welcomes []*mlsdsv1.WelcomeEvent
	for ev := sub.nextData(t); ev.GetCaughtUp() == nil; ev = sub.nextData(t) {
		if w := ev.GetWelcome(); w != nil {
			welcomes = append(welcomes, w)
		}
	}
	bobRef, _ := bobKP.Ref()
	if len(welcomes) != 1 {
		t.Fatalf("bob got %d Welcomes, want 1", len(welcomes))
	}
	if w := welcomes[0]; !bytes.Equal(w.GroupId, gid) || w.CommitSeq != 0 || w.Epoch != 1 ||
		!bytes.Equal(w.KeyPackageRef, bobRef) || !bytes.Equal(w.Welcome, welcome) {
		t.Errorf("bob's WelcomeEvent: group %q commit_seq %d epoch %d ref %x; want %q, 0, 1, %x, the Welcome as sent",
			w.GroupId, w.CommitSeq, w.Epoch, w.KeyPackageRef, gid, bobRef)
	}
	// Acknowledging the group at the WelcomeEvent's commit_seq, 0,
	// delivers the Welcome: a new stream does not bring it again.
	sub.close()
	if _, err := bob.groups.Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{Cursors: []*mlsdsv1.Cursor{{GroupId: gid, Seq: 0}}})); err != nil {
		t.Fatalf("Ack at 0: %v", err)
	}
	sub = bob.subscribe()
	for ev := sub.nextData(t); ev.GetCaughtUp() == nil; ev = sub.nextData(t) {
		if ev.GetWelcome() != nil {
			t.Errorf("bob got the Welcome again after acknowledging it")
		}
	}
	// carol, whom the refused Welcomes named, got nothing.
	csub := carol.subscribe()
	for ev := csub.nextData(t); ev.GetCaughtUp() == nil; ev = csub.nextData(t) {
		if ev.GetWelcome() != nil {
			t.Errorf("carol got a Welcome of group %q", ev.GetWelcome().GroupId)
		}
	}
}

// FuzzCreateGroupWelcome creates opaque groups of alice and bob from
// random and mutated Welcomes (CreateGroupRequest.welcome) and
// predecessor ids. Bob consents with a last-resort KeyPackage, so that
// every input reaches the Welcome's checks. Invariants: no panic, no
// internal error; a refused group does not exist afterwards (its id is
// still free); an accepted Welcome parses and names exactly bob's
// KeyPackage.
func FuzzCreateGroupWelcome(f *testing.F) {
	e := fuzzEnv(f)
	ctx := context.Background()
	alice, bob := e.client("alice"), e.client("bob")
	bob.uploadKeyPackages(0, true)
	bobKPData, bobKP := alice.claimKP("bob")
	bobRef, err := bobKP.Ref()
	if err != nil {
		f.Fatal(err)
	}
	welcome, _ := commitFirst(f, alice.fullGroup([]byte("fuzz welcome")), bobKP)
	pred := groupID("fuzz predecessor")
	alice.createOpaqueGroup(pred, bob)
	f.Add(welcome, []byte(nil))
	f.Add(welcome, pred)
	f.Add(welcome[:len(welcome)/2], []byte(nil))
	f.Add([]byte(nil), pred)
	f.Add([]byte{0, 1, 0, 3}, []byte("no such group"))
	n := 0
	f.Fuzz(func(t *testing.T, welcome, pred []byte) {
		n++
		gid := []byte(fmt.Sprintf("fuzz-welcome-%d-%d", os.Getpid(), n))
		_, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
			GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, Members: []string{"bob"},
			KeyPackages: [][]byte{bobKPData}, Welcome: welcome, PredecessorGroupId: pred}))
		_, gerr := alice.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
		if err != nil {
			checkRefusal(t, err)
			if connect.CodeOf(gerr) != connect.CodePermissionDenied {
				t.Fatalf("CreateGroup refused (%v) but GetGroupInfo says %v", err, gerr)
			}
			return
		}
		if gerr != nil {
			t.Fatalf("created, but GetGroupInfo: %v", gerr)
		}
		if len(welcome) == 0 {
			return
		}
		m, err := mls.ParseMLSMessage(welcome)
		if err != nil || m.Welcome == nil {
			t.Fatalf("a Welcome that does not parse was accepted: %v", err)
		}
		if j := m.Welcome.Joiners(); len(j) != 1 || !bytes.Equal(j[0], bobRef) {
			t.Fatalf("the accepted Welcome names %x, not exactly bob's KeyPackage %x", j, bobRef)
		}
	})
}
