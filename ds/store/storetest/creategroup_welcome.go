package storetest

import (
	"bytes"
	"errors"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// testCreateGroupWelcome: a group created with a Welcome (a creator whose
// MLS library exports only the GroupInfo after its first Commit) stores
// the Welcome at CommitSeq 0 with its routes, in the transaction that
// stores the group: each joiner finds it pending, with the group's epoch;
// acknowledging the group at 0 or later delivers it; pruning deletes it
// once delivered; and a creation that fails stores no Welcome and routes
// none.
func testCreateGroupWelcome(t *testing.T, s ds.Store) {
	mustClient(t, s, "a", "a")
	mustClient(t, s, "j1", "j1")
	mustClient(t, s, "j2", "j2")
	k1, k2 := kp("j1", false), kp("j2", true)
	mustAddKPs(t, s, k1)
	mustAddKPs(t, s, k2)

	pending := func(client string) []ds.WelcomeEvent {
		t.Helper()
		ws, err := s.PendingWelcomes(ctx(), client)
		if err != nil {
			t.Fatalf("PendingWelcomes(%s): %v", client, err)
		}
		return ws
	}

	g := ds.GroupRecord{
		ID: []byte("g"), Mode: ds.ModeTransparent, CipherSuite: suite, Creator: "a", CreatedAt: t0,
		Epoch: 1, State: []byte("state-1"), GroupInfo: []byte("gi-1"),
		ConsumeKeyPackages: [][]byte{k1.Ref}, // k2 is last-resort
		Welcome:            []byte("creation welcome"),
		WelcomeTo:          []ds.WelcomeRoute{{ClientID: "j1", KeyPackageRef: k1.Ref}, {ClientID: "j2", KeyPackageRef: k2.Ref}},
	}
	if err := s.CreateGroup(ctx(), g, []string{"a", "j1", "j2"}); err != nil {
		t.Fatalf("CreateGroup with a Welcome: %v", err)
	}
	for _, j := range []struct {
		id  string
		ref []byte
	}{{"j1", k1.Ref}, {"j2", k2.Ref}} {
		ws := pending(j.id)
		if len(ws) != 1 {
			t.Fatalf("PendingWelcomes(%s) = %d Welcomes, want 1", j.id, len(ws))
		}
		w := ws[0]
		if !bytes.Equal(w.GroupID, g.ID) || w.CommitSeq != 0 || w.Epoch != 1 || !bytes.Equal(w.KeyPackageRef, j.ref) ||
			string(w.Data) != "creation welcome" || !w.AcceptedAt.Equal(t0) {
			t.Errorf("Welcome for %s = %+v; want group g, CommitSeq 0, epoch 1, its KeyPackage, the Welcome's bytes, accepted at creation", j.id, w)
		}
	}
	if ws := pending("a"); len(ws) != 0 {
		t.Errorf("the creator has %d Welcomes pending, want none", len(ws))
	}
	// The group itself is as without a Welcome: no message, the joiners'
	// windows start at 1.
	head, err := s.Group(ctx(), g.ID)
	if err != nil {
		t.Fatal(err)
	}
	if head.LastSeq != 0 || head.EpochStartSeq != 1 || head.Epoch != 1 {
		t.Errorf("group head %+v; want no message, epoch 1 starting at seq 1", head)
	}
	if ws, err := s.Memberships(ctx(), g.ID, "j1"); err != nil || len(ws) != 1 || ws[0].FromSeq != 1 || !ws[0].Open() {
		t.Errorf("j1's memberships %+v, %v; want one open window from seq 1", ws, err)
	}
	if rs, err := s.KeyPackagesByRef(ctx(), [][]byte{k1.Ref, k2.Ref}); err != nil || len(rs) != 2 {
		t.Fatalf("KeyPackagesByRef: %v, %v", rs, err)
	} else {
		for _, r := range rs {
			if r.Consumed() == r.LastResort {
				t.Errorf("KeyPackage of %s (last resort %v) consumed = %v", r.ClientID, r.LastResort, r.Consumed())
			}
		}
	}

	// A failed creation stores nothing of its Welcome: a taken group id,
	// and a KeyPackage used already.
	dup := g
	dup.ConsumeKeyPackages, dup.Welcome = nil, []byte("second welcome")
	if err := s.CreateGroup(ctx(), dup, []string{"a", "j1", "j2"}); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Fatalf("CreateGroup of a taken id: %v, want ErrAlreadyExists", err)
	}
	used := g
	used.ID, used.Welcome = []byte("g2"), []byte("welcome of g2")
	if err := s.CreateGroup(ctx(), used, []string{"a", "j1", "j2"}); !errors.Is(err, ds.ErrKeyPackageUsed) {
		t.Fatalf("CreateGroup with a used KeyPackage: %v, want ErrKeyPackageUsed", err)
	}
	if _, err := s.Group(ctx(), []byte("g2")); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("the failed creation left group g2: %v", err)
	}
	for _, j := range []string{"j1", "j2"} {
		if ws := pending(j); len(ws) != 1 || string(ws[0].Data) != "creation welcome" {
			t.Errorf("after the failed creations %s has pending %+v; want only the first Welcome", j, ws)
		}
	}

	// Acknowledging the group delivers the Welcome: j1 at the first
	// message, j2 at 0, the WelcomeEvent's CommitSeq, before any.
	if err := s.Ack(ctx(), "j2", g.ID, 0); err != nil {
		t.Fatalf("Ack(j2, 0): %v", err)
	}
	if ws := pending("j2"); len(ws) != 0 {
		t.Errorf("j2's Welcome still pending after Ack at 0: %+v", ws)
	}
	if ws := pending("j1"); len(ws) != 1 {
		t.Fatalf("j2's Ack delivered j1's Welcome: %d pending", len(ws))
	}
	r := mustAccept(t, s, msg("g", 1, mls.ContentTypeApplication, "a", "hello"))
	if r.GroupSeq != 1 {
		t.Fatalf("the first message got seq %d, want 1", r.GroupSeq)
	}
	if err := s.Ack(ctx(), "j1", g.ID, r.GroupSeq); err != nil {
		t.Fatalf("Ack(j1): %v", err)
	}
	if ws := pending("j1"); len(ws) != 0 {
		t.Errorf("j1's Welcome still pending after Ack: %+v", ws)
	}

	// Delivered, the Welcome and its routes go with pruning; the message
	// stays.
	res, err := s.PruneKeyPackages(ctx(), ds.PruneParams{Now: t0, Limit: 100})
	if err != nil {
		t.Fatalf("PruneKeyPackages: %v", err)
	}
	if res.Welcomes != 1 {
		t.Errorf("PruneKeyPackages deleted %d Welcomes, want the delivered creation Welcome", res.Welcomes)
	}
	if envs, err := s.Messages(ctx(), ds.MessageQuery{GroupID: g.ID, ClientID: "j1", FromSeq: 1, Limit: 10}); err != nil || len(envs) != 1 {
		t.Errorf("j1's messages after pruning: %d, %v; want the one message", len(envs), err)
	}
}
