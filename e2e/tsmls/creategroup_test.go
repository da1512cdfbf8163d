package tsmls

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mlsds/mlsds/client"
)

// TestTSMLSCreatesWithWelcome: ts-mls creates the group the way a library
// that cannot export the GroupInfo of epoch 0 must: it makes the group
// alone, adds a KeyPackage of the Go SDK client (claimed from the DS) in
// its first Commit, which it never sends, and calls CreateGroup with the
// GroupInfo and tree of epoch 1, that KeyPackage and the Commit's Welcome.
// The Go client joins from the WelcomeEvent the DS routes to it (commit
// seq 0), and they talk both ways and follow each other's Commits.
func TestTSMLSCreatesWithWelcome(t *testing.T) {
	dir := nodeSetup(t)
	url, svc := startServer(t)
	d := startDriver(t, dir, url)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	d.call("register", map[string]any{"ids": []string{alice}}, nil)
	g := openSDK(t, ctx, url)

	var created tsState
	d.call("createWithWelcome", map[string]any{"by": alice, "ids": []string{gopher}}, &created)
	if created.Epoch != 1 || !slices.Equal(created.Members, []string{alice, gopher}) {
		t.Fatalf("ts-mls created the group at epoch %d with %q; want epoch 1 with alice and the Go client", created.Epoch, created.Members)
	}
	joined := g.expect(client.EventJoined)[0]
	if !bytes.Equal(joined.GroupID, created.GroupID) || joined.Epoch != 1 || joined.Seq != 0 {
		t.Errorf("EventJoined for group %q epoch %d seq %d; want %q, 1, 0", joined.GroupID, joined.Epoch, joined.Seq, created.GroupID)
	}
	if want := []string{alice, gopher}; !slices.Equal(joined.Members, want) {
		t.Errorf("EventJoined roster %q, want %q", joined.Members, want)
	}
	grp := g.c.Group(created.GroupID)
	if grp == nil {
		t.Fatal("the Go client has no state of the group it joined")
	}
	agree(t, "after the Go client joined", grp, map[string]tsSynced{alice: {tsState: created}})

	// ts-mls -> Go: the group's first message.
	d.call("send", map[string]any{"by": alice, "text": "hello from " + alice}, nil)
	if ev := g.expect(client.EventMessage)[0]; ev.Sender != alice || string(ev.Data) != "hello from "+alice || ev.Seq != 1 {
		t.Errorf("Go client got %q from %q at seq %d, want %q from %q at seq 1", ev.Data, ev.Sender, ev.Seq, "hello from "+alice, alice)
	}
	// Go -> ts-mls.
	if _, err := grp.Send(ctx, []byte("hello from "+gopher)); err != nil {
		t.Fatalf("Send: %v", err)
	}
	s := d.sync(alice)
	wantMsgs(t, alice, s[alice].Messages, gopher)

	// Epoch 2: the Go client's UpdatePath Commit; epoch 3: alice's.
	if err := grp.Update(ctx); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if ev := g.expect(client.EventEpoch)[0]; ev.Epoch != 2 {
		t.Errorf("after its update the Go client reports epoch %d, want 2", ev.Epoch)
	}
	agree(t, "after the Go client's update", grp, d.sync(alice))
	d.call("update", map[string]any{"by": alice}, nil)
	if ev := g.expect(client.EventEpoch)[0]; ev.Epoch != 3 || ev.Sender != alice {
		t.Errorf("after alice's update the Go client reports epoch %d by %q, want 3 by %q", ev.Epoch, ev.Sender, alice)
	}
	s = d.sync(alice)
	agree(t, "after alice's update", grp, s)
	dsAgrees(t, svc, created.GroupID, s[alice])
}

// TestTSMLSKeyPerKeyPackage: a ts-mls client makes a new signature key
// for each KeyPackage, as ts-mls's generateKeyPackage does. It registers
// with a KeyPackage as its proof of possession; a KeyPackage with a key
// it has not added is refused with how to add it; it adds each key with
// AccountService.AddSignatureKey, proving possession with the KeyPackage
// itself, and publishes the KeyPackages. The Go SDK client adds it with
// one of them, and it joins and talks; its Commit, signed with the added
// key, is accepted too.
func TestTSMLSKeyPerKeyPackage(t *testing.T) {
	dir := nodeSetup(t)
	url, svc := startServer(t)
	d := startDriver(t, dir, url)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const keyed = "tsmls-keyed"
	var reg map[string]struct {
		RegisteredKey []byte   `json:"registeredKey"`
		AddedKeys     [][]byte `json:"addedKeys"`
		Refusal       struct{ Code, Message string }
	}
	d.call("registerKeyPerKeyPackage", map[string]any{"ids": []string{keyed}, "n": 2}, &reg)
	r := reg[keyed]
	if r.Refusal.Code != "permission_denied" || !strings.Contains(r.Refusal.Message, "AddSignatureKey") {
		t.Errorf("a KeyPackage with a key not added was refused with %+v; want permission_denied saying to use AddSignatureKey", r.Refusal)
	}
	if len(r.AddedKeys) != 2 || bytes.Equal(r.AddedKeys[0], r.AddedKeys[1]) || bytes.Equal(r.AddedKeys[0], r.RegisteredKey) {
		t.Fatalf("ts-mls made keys %x for its KeyPackages (registered %x); want two new ones", r.AddedKeys, r.RegisteredKey)
	}
	ks, err := svc.ClientKeys(ctx, keyed, []string{keyed})
	if err != nil || len(ks) != 1 {
		t.Fatalf("ClientKeys: %v, %v", ks, err)
	}
	if want := append([][]byte{r.RegisteredKey}, r.AddedKeys...); !slices.EqualFunc(ks[0].SignatureKeys, want, bytes.Equal) {
		t.Errorf("the DS holds keys %x for %s; want the registered one, then the two added", ks[0].SignatureKeys, keyed)
	}

	g := openSDK(t, ctx, url)
	grp, err := g.c.CreateGroup(ctx, client.GroupOptions{})
	if err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	if err := grp.Add(ctx, keyed); err != nil {
		t.Fatalf("Add(%s): %v", keyed, err)
	}
	if evs := g.expect(client.EventMembersAdded, client.EventEpoch); !slices.Equal(evs[0].Members, []string{keyed}) || evs[1].Epoch != 1 {
		t.Errorf("after its Add the Go client reports %q added, epoch %d", evs[0].Members, evs[1].Epoch)
	}
	var joined tsState
	d.call("join", map[string]any{"id": keyed, "dsTree": true}, &joined)
	if !bytes.Equal(joined.GroupID, grp.ID()) {
		t.Fatalf("%s joined group %q, want %q", keyed, joined.GroupID, grp.ID())
	}
	agree(t, "after the ts-mls client joined", grp, map[string]tsSynced{keyed: {tsState: joined}})
	leafKey := joined.Leaves[keyed].SignatureKey
	if !slices.ContainsFunc(r.AddedKeys, func(k []byte) bool { return bytes.Equal(k, leafKey) }) {
		t.Errorf("the ts-mls client's leaf carries key %x, none of its added keys %x", leafKey, r.AddedKeys)
	}

	// Messages both ways.
	d.call("send", map[string]any{"by": keyed, "text": "hello from " + keyed}, nil)
	if ev := g.expect(client.EventMessage)[0]; ev.Sender != keyed || string(ev.Data) != "hello from "+keyed {
		t.Errorf("Go client got %q from %q, want %q from %q", ev.Data, ev.Sender, "hello from "+keyed, keyed)
	}
	if _, err := grp.Send(ctx, []byte("hello from "+gopher)); err != nil {
		t.Fatalf("Send: %v", err)
	}
	s := d.sync(keyed)
	wantMsgs(t, keyed, s[keyed].Messages, gopher)

	// Epoch 2: the ts-mls client's UpdatePath Commit, signed with its
	// added key, which the DS and the Go client accept.
	d.call("update", map[string]any{"by": keyed}, nil)
	if ev := g.expect(client.EventEpoch)[0]; ev.Epoch != 2 || ev.Sender != keyed {
		t.Errorf("after the ts-mls client's update the Go client reports epoch %d by %q, want 2 by %q", ev.Epoch, ev.Sender, keyed)
	}
	s = d.sync(keyed)
	agree(t, "after the ts-mls client's update", grp, s)
	dsAgrees(t, svc, grp.ID(), s[keyed])
}
