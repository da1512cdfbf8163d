package tsmls

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/client"
	"github.com/mlsds/mlsds/ds"
)

// The tests in this file put a client of the mlsds Go SDK (package client)
// in the same group as ts-mls clients, through one Delivery Service: the
// ts-mls clients run in sdk.mjs under Node, which the test drives over a
// line protocol on its stdin and stdout (one command, one answer), and the
// Go client runs here, observed through its Events. Every handshake of
// either side is a PublicMessage the DS validates (transparent mode), and
// every Commit comes with the GroupInfo of the epoch it starts; a client
// that joins by external Commit while not a member uses a join link that
// a member made.
// After each step the members compare epochs, epoch_authenticators and
// rosters (the Go SDK exports no other secret; the ts-mls members compare
// an exported secret among themselves), and the DS's tree is compared
// with ts-mls's.
//
// What the tests work around:
//   - ts-mls 1.6.4 writes the external_pub GroupInfo extension as the bare
//     key, without the opaque<V> length prefix §12.4.3.2 asks for, and
//     reads it so (fixed upstream in ts-mls PR 449; TestTSMLSExternalPubBug
//     pins it down): tsmls.mjs re-signs ts-mls's GroupInfos with the
//     prefixed key (Client.groupInfo), and hands joinGroupExternal the
//     unprefixed key of a conforming GroupInfo (readableExternalPub), such
//     as the Go SDK's.
//   - ts-mls's default KeyPackage lifetime (0 to 2^63-1) is longer than
//     mlsds accepts (§7.2 leaves the bound to the application; mlsds
//     caps it at 90 days): its KeyPackages are made with one week.
//   - ts-mls's Welcomes carry no ratchet_tree extension unless asked to
//     (allowed by §12.4.3.3), and its handshakes are PrivateMessages
//     unless asked otherwise: sdk.mjs asks for PublicMessages always, and
//     for the extension in the Welcome to the Go client; ts-mls joiners of
//     a ts-mls group take the tree the DS serves.

const (
	gopher = "go-gopher"

	// nodeCallTimeout bounds one command to sdk.mjs; eventTimeout bounds
	// the wait for one event of the Go client. A hang fails the test
	// with what was awaited.
	nodeCallTimeout = time.Minute
	eventTimeout    = 30 * time.Second
)

// tsState is what sdk.mjs reports of a ts-mls member.
type tsState struct {
	GroupID            []byte   `json:"groupId"`
	CommitSeq          uint64   `json:"commitSeq"`
	Seq                uint64   `json:"seq"`
	Epoch              uint64   `json:"epoch"`
	EpochAuthenticator []byte   `json:"epochAuthenticator"`
	Exported           []byte   `json:"exported"`
	TreeHash           []byte   `json:"treeHash"`
	Members            []string `json:"members"`
	Leaves             map[string]struct {
		HPKEKey      []byte `json:"hpkeKey"`
		SignatureKey []byte `json:"signatureKey"`
		Source       string `json:"source"` // leaf_node_source: key_package, commit or update
	} `json:"leaves"`
	Removed bool `json:"removed"`
}

// tsMessage is an application message a ts-mls member decrypted.
type tsMessage struct {
	From string `json:"from"`
	Text string `json:"text"`
}

// tsSynced is a ts-mls member's state after a sync, with the application
// messages it decrypted.
type tsSynced struct {
	Messages []tsMessage `json:"messages"`
	tsState
}

// TestTSMLSGoSDKJoins: ts-mls clients create the group and add the Go SDK
// client, which then takes part as a full member (messages both ways, its
// own and their Commits, a restart in between) until a ts-mls member
// removes it; it comes back by external Commit with a join link and
// leaves.
func TestTSMLSGoSDKJoins(t *testing.T) {
	dir := nodeSetup(t)
	url, svc := startServer(t)
	d := startDriver(t, dir, url)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	d.call("register", map[string]any{"ids": []string{alice, bob, carol}}, nil)
	g := openSDK(t, ctx, url)

	// Epoch 0: alice creates the group; epoch 1: she adds bob.
	var created tsState
	d.call("create", map[string]any{"by": alice}, &created)
	groupID := created.GroupID
	d.call("add", map[string]any{"by": alice, "ids": []string{bob}}, nil)
	d.call("join", map[string]any{"id": bob, "dsTree": true}, nil)

	// Epoch 2: alice claims one of the KeyPackages the Go client
	// published when it opened and adds it; the Go client joins from the
	// Welcome the DS routes to it, with the tree in its ratchet_tree
	// extension.
	var added tsState
	d.call("add", map[string]any{"by": alice, "ids": []string{gopher}, "ratchetTree": true}, &added)
	joined := g.expect(client.EventJoined)[0]
	if !bytes.Equal(joined.GroupID, groupID) || joined.Epoch != 2 || joined.Seq != added.Seq {
		t.Errorf("EventJoined for group %q epoch %d seq %d; want %q, 2, %d", joined.GroupID, joined.Epoch, joined.Seq, groupID, added.Seq)
	}
	if want := []string{alice, bob, gopher}; !slices.Equal(joined.Members, want) {
		t.Errorf("EventJoined roster %q, want %q", joined.Members, want)
	}
	grp := g.c.Group(groupID)
	if grp == nil {
		t.Fatal("the Go client has no state of the group it joined")
	}
	agree(t, "after the Go client joined", grp, d.sync(alice, bob))

	// ts-mls -> Go: the Go client decrypts alice's and bob's messages.
	d.call("send", map[string]any{"by": alice, "text": "hello from " + alice}, nil)
	d.call("send", map[string]any{"by": bob, "text": "hello from " + bob}, nil)
	for i, ev := range g.expect(client.EventMessage, client.EventMessage) {
		from := []string{alice, bob}[i]
		if ev.Sender != from || string(ev.Data) != "hello from "+from {
			t.Errorf("Go client got %q from %q, want %q from %q", ev.Data, ev.Sender, "hello from "+from, from)
		}
	}
	// Go -> ts-mls: alice and bob decrypt the Go client's message.
	if _, err := grp.Send(ctx, []byte("hello from "+gopher)); err != nil {
		t.Fatalf("Send: %v", err)
	}
	s := d.sync(alice, bob)
	wantMsgs(t, alice, s[alice].Messages, bob, gopher)
	wantMsgs(t, bob, s[bob].Messages, alice, gopher)

	// Epoch 3: the Go client commits an UpdatePath; the DS validates it
	// and applies it to its tree, which then equals ts-mls's after alice
	// and bob process it. In their trees the Go client's leaf has a new
	// encryption key, from a Commit.
	before := s[alice].Leaves[gopher]
	if before.Source != "key_package" {
		t.Errorf("the Go client's leaf in alice's tree comes from %q, want key_package", before.Source)
	}
	if err := grp.Update(ctx); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if ev := g.expect(client.EventEpoch)[0]; ev.Epoch != 3 || ev.Sender != gopher {
		t.Errorf("after its Update the Go client reports epoch %d by %q, want 3 by %q", ev.Epoch, ev.Sender, gopher)
	}
	s = d.sync(alice, bob)
	agree(t, "after the Go client's update", grp, s)
	if after := s[alice].Leaves[gopher]; after.Source != "commit" || bytes.Equal(after.HPKEKey, before.HPKEKey) {
		t.Errorf("after the Go client's update its leaf in alice's tree comes from %q, key changed: %v; want from a commit, with a new key",
			after.Source, !bytes.Equal(after.HPKEKey, before.HPKEKey))
	}
	d.call("check", map[string]any{"id": bob, "what": "after the Go client's update"}, nil)

	// Epoch 4: bob's UpdatePath Commit; the Go client follows.
	d.call("update", map[string]any{"by": bob}, nil)
	if ev := g.expect(client.EventEpoch)[0]; ev.Epoch != 4 || ev.Sender != bob {
		t.Errorf("after bob's update the Go client reports epoch %d by %q, want 4 by %q", ev.Epoch, ev.Sender, bob)
	}
	agree(t, "after bob's update", grp, d.sync(alice, bob))

	// A handshake the DS cannot read is refused: bob's Commit sent as a
	// PrivateMessage (in a bundle with a good GroupInfo of the new epoch,
	// so that the wire format is the only fault). Nothing changes (the
	// next events below are for epoch 5).
	var refusal struct {
		Code    string
		Details []string
		Message string
		Invalid *struct{ Reason, RFCSection string }
	}
	d.call("privateCommit", map[string]any{"by": bob}, &refusal)
	if refusal.Code != "invalid_argument" || !slices.Contains(refusal.Details, "mlsds.v1.InvalidMessage") {
		t.Errorf("bob's PrivateMessage Commit refused with %+v, want invalid_argument with InvalidMessage", refusal)
	} else if refusal.Invalid == nil || !strings.Contains(refusal.Invalid.Reason, "PublicMessage") {
		t.Errorf("bob's PrivateMessage Commit refused for %+v, want the rule that handshakes be PublicMessages", refusal.Invalid)
	} else {
		t.Logf("PrivateMessage Commit refused: %s (%+v)", refusal.Message, refusal.Invalid)
	}

	// Epoch 5: alice adds carol; the Go client sees her added.
	d.call("add", map[string]any{"by": alice, "ids": []string{carol}}, nil)
	d.call("join", map[string]any{"id": carol, "dsTree": true}, nil)
	evs := g.expect(client.EventMembersAdded, client.EventEpoch)
	if !slices.Equal(evs[0].Members, []string{carol}) || evs[0].Sender != alice || evs[1].Epoch != 5 {
		t.Errorf("after alice added carol the Go client reports %q added by %q, epoch %d", evs[0].Members, evs[0].Sender, evs[1].Epoch)
	}
	agree(t, "after carol joined", grp, d.sync(alice, bob, carol))

	// Epoch 6: while the Go client is closed, alice sends a message and
	// removes bob. Opened again from its state file, the Go client takes
	// in both: it decrypts the message, sees bob removed; bob sees
	// himself removed.
	g.close()
	d.call("send", map[string]any{"by": alice, "text": "while you were away"}, nil)
	d.call("remove", map[string]any{"by": alice, "ids": []string{bob}}, nil)
	g.open(ctx)
	if grp = g.c.Group(groupID); grp == nil {
		t.Fatal("the Go client opened again has no state of the group")
	}
	evs = g.expect(client.EventMessage, client.EventMembersRemoved, client.EventEpoch)
	if evs[0].Sender != alice || string(evs[0].Data) != "while you were away" {
		t.Errorf("Go client got %q from %q after it opened again", evs[0].Data, evs[0].Sender)
	}
	if !slices.Equal(evs[1].Members, []string{bob}) || evs[2].Epoch != 6 {
		t.Errorf("after alice removed bob the Go client reports %q removed, epoch %d", evs[1].Members, evs[2].Epoch)
	}
	s = d.sync(bob, carol)
	if !s[bob].Removed {
		t.Errorf("bob (ts-mls) does not see himself removed")
	}
	agree(t, "after bob's removal", grp, map[string]tsSynced{carol: s[carol]})

	// Messages both ways in the new epoch.
	d.call("send", map[string]any{"by": carol, "text": "hello from " + carol}, nil)
	if ev := g.expect(client.EventMessage)[0]; ev.Sender != carol || string(ev.Data) != "hello from "+carol {
		t.Errorf("Go client got %q from %q", ev.Data, ev.Sender)
	}
	if _, err := grp.Send(ctx, []byte("after bob left")); err != nil {
		t.Fatalf("Send: %v", err)
	}
	s = d.sync(alice, carol)
	if got := s[alice].Messages; len(got) != 2 || got[1] != (tsMessage{gopher, "after bob left"}) {
		t.Errorf("alice decrypted %+v, want carol's message then the Go client's", got)
	}
	if got := s[carol].Messages; len(got) != 1 || got[0] != (tsMessage{gopher, "after bob left"}) {
		t.Errorf("carol decrypted %+v, want the Go client's message", got)
	}
	agree(t, "at the end", grp, s)
	if !bytes.Equal(s[alice].Exported, s[carol].Exported) {
		t.Errorf("alice and carol (ts-mls) export different secrets")
	}
	// The DS's own view of the group agrees with ts-mls's GroupContext.
	dsAgrees(t, svc, groupID, s[alice])

	// Epoch 7: alice removes the Go client, which gets EventRemoved and
	// can send no more.
	d.call("remove", map[string]any{"by": alice, "ids": []string{gopher}}, nil)
	if ev := g.expect(client.EventRemoved)[0]; ev.Sender != alice || !slices.Contains(ev.Members, gopher) {
		t.Errorf("EventRemoved by %q with roster %q", ev.Sender, ev.Members)
	}
	if _, err := grp.Send(ctx, []byte("still here?")); !errors.Is(err, client.ErrRemoved) {
		t.Errorf("Send after the removal: %v, want ErrRemoved", err)
	}
	s = d.sync(carol)
	if s[carol].Epoch != 7 || !slices.Equal(s[carol].Members, []string{alice, carol}) {
		t.Errorf("carol at epoch %d with %q, want 7 with [alice carol]", s[carol].Epoch, s[carol].Members)
	}
	var roster struct{ ClientIDs []string }
	d.call("roster", map[string]any{"id": alice}, &roster)
	if want := []string{alice, carol}; !slices.Equal(slices.Sorted(slices.Values(roster.ClientIDs)), want) {
		t.Errorf("DS roster %q, want %q", roster.ClientIDs, want)
	}
	dsAgrees(t, svc, groupID, s[carol])

	// Epoch 8: the Go client comes back by external Commit (§12.4.3.2),
	// and alice and carol process that Commit. No longer a member, it
	// needs a join link: alice makes one, and the Go client joins with it
	// from the GroupInfo alice signed with her last Commit and the tree,
	// both as the DS serves them.
	var link struct{ JoinToken string }
	d.call("joinLink", map[string]any{"by": alice}, &link)
	grp, err := g.c.JoinWithLink(ctx, client.JoinLink{GroupID: groupID, Token: link.JoinToken})
	if err != nil {
		t.Fatalf("JoinWithLink: %v", err)
	}
	if ev := g.expect(client.EventJoined)[0]; ev.Epoch != 8 || !slices.Contains(ev.Members, gopher) {
		t.Errorf("EventJoined after the external Commit: epoch %d, roster %q", ev.Epoch, ev.Members)
	}
	if _, err := grp.Send(ctx, []byte("hello from "+gopher)); err != nil {
		t.Fatalf("Send after the external join: %v", err)
	}
	s = d.sync(alice, carol)
	wantMsgs(t, alice, s[alice].Messages, gopher)
	wantMsgs(t, carol, s[carol].Messages, gopher)
	agree(t, "after the Go client's external Commit", grp, s)
	dsAgrees(t, svc, groupID, s[alice])
	// The Go client is the group's only subscriber (the ts-mls clients do
	// not subscribe), the case of TestStreamAfterRejoin: its stream
	// brings carol's message.
	d.call("send", map[string]any{"by": carol, "text": "welcome back"}, nil)
	if ev := g.expect(client.EventMessage)[0]; ev.Sender != carol || string(ev.Data) != "welcome back" {
		t.Errorf("Go client got %q from %q after its external Commit", ev.Data, ev.Sender)
	}

	// Epoch 9: the Go client leaves: its Remove proposal, which alice
	// commits by reference.
	if err := grp.Leave(ctx); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	// Leave is immediate: the Go client stops at once (EventLeft), and
	// alice commits its Remove proposal.
	g.expect(client.EventLeft)
	d.call("commit", map[string]any{"by": alice}, nil)
	s = d.sync(carol)
	if s[carol].Epoch != 9 || !slices.Equal(s[carol].Members, []string{alice, carol}) {
		t.Errorf("carol at epoch %d with %q, want 9 with [alice carol]", s[carol].Epoch, s[carol].Members)
	}
	dsAgrees(t, svc, groupID, s[carol])
}

// TestTSMLSGoSDKCreates: the Go SDK client creates the group and adds
// ts-mls clients; they race it for an epoch, one leaves by a proposal
// that the Go client commits, the Go client removes the other; then a
// ts-mls client joins by external Commit, and another is added by its
// proposal, committed by the Go client.
func TestTSMLSGoSDKCreates(t *testing.T) {
	dir := nodeSetup(t)
	url, svc := startServer(t)
	d := startDriver(t, dir, url)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const erin, frank = "tsmls-erin", "tsmls-frank"
	d.call("register", map[string]any{"ids": []string{carol, dave, erin, frank}}, nil)
	g := openSDK(t, ctx, url)

	// Epoch 1: the Go client creates the group and adds carol and dave
	// with one Commit; carol joins from the ratchet_tree extension of the
	// Go client's Welcome, dave from the tree the DS serves.
	grp, err := g.c.CreateGroup(ctx, client.GroupOptions{})
	if err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	groupID := grp.ID()
	if err := grp.Add(ctx, carol, dave); err != nil {
		t.Fatalf("Add: %v", err)
	}
	evs := g.expect(client.EventMembersAdded, client.EventEpoch)
	if !slices.Equal(evs[0].Members, []string{carol, dave}) || evs[1].Epoch != 1 {
		t.Errorf("after its Add the Go client reports %q added, epoch %d", evs[0].Members, evs[1].Epoch)
	}
	var jc, jd tsState
	d.call("join", map[string]any{"id": carol, "dsTree": false}, &jc)
	d.call("join", map[string]any{"id": dave, "dsTree": true}, &jd)
	if !bytes.Equal(jc.GroupID, groupID) || !bytes.Equal(jd.GroupID, groupID) {
		t.Fatalf("ts-mls joined groups %q and %q, want %q", jc.GroupID, jd.GroupID, groupID)
	}
	agree(t, "after carol and dave joined", grp, map[string]tsSynced{carol: {tsState: jc}, dave: {tsState: jd}})

	// Messages both ways.
	if _, err := grp.Send(ctx, []byte("hello from "+gopher)); err != nil {
		t.Fatalf("Send: %v", err)
	}
	d.call("send", map[string]any{"by": carol, "text": "hello from " + carol}, nil)
	d.call("send", map[string]any{"by": dave, "text": "hello from " + dave}, nil)
	for i, ev := range g.expect(client.EventMessage, client.EventMessage) {
		from := []string{carol, dave}[i]
		if ev.Sender != from || string(ev.Data) != "hello from "+from {
			t.Errorf("Go client got %q from %q, want %q from %q", ev.Data, ev.Sender, "hello from "+from, from)
		}
	}
	s := d.sync(carol, dave)
	wantMsgs(t, carol, s[carol].Messages, gopher, dave)
	wantMsgs(t, dave, s[dave].Messages, gopher, carol)

	// Epoch 2: carol's UpdatePath Commit; epoch 3: the Go client's.
	d.call("update", map[string]any{"by": carol}, nil)
	if ev := g.expect(client.EventEpoch)[0]; ev.Epoch != 2 || ev.Sender != carol {
		t.Errorf("after carol's update the Go client reports epoch %d by %q", ev.Epoch, ev.Sender)
	}
	agree(t, "after carol's update", grp, d.sync(carol, dave))
	if err := grp.Update(ctx); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if ev := g.expect(client.EventEpoch)[0]; ev.Epoch != 3 {
		t.Errorf("after its update the Go client reports epoch %d", ev.Epoch)
	}
	s = d.sync(carol, dave)
	agree(t, "after the Go client's update", grp, s)
	d.call("check", map[string]any{"id": dave, "what": "after the Go client's update"}, nil)
	dsAgrees(t, svc, groupID, s[dave])

	// Epochs 4 and 5: carol and the Go client race for epoch 4. carol
	// makes her Commit first but the Go client's gets there first; the
	// DS refuses carol's as being for a past epoch, and carol, having
	// taken in the Go client's Commit, commits again.
	d.call("prepareUpdate", map[string]any{"by": carol}, nil)
	if err := grp.Update(ctx); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if ev := g.expect(client.EventEpoch)[0]; ev.Epoch != 4 {
		t.Errorf("after its second update the Go client reports epoch %d", ev.Epoch)
	}
	var stale struct {
		Refusal struct {
			Code       string
			Details    []string
			WrongEpoch struct {
				ExpectedEpoch string
			}
		}
		Epoch uint64
	}
	d.call("sendStale", map[string]any{"by": carol}, &stale)
	if stale.Refusal.Code != "aborted" || !slices.Contains(stale.Refusal.Details, "mlsds.v1.WrongEpoch") || stale.Refusal.WrongEpoch.ExpectedEpoch != "4" {
		t.Errorf("carol's stale Commit refused with %+v, want aborted with WrongEpoch{expected_epoch: 4}", stale.Refusal)
	}
	if ev := g.expect(client.EventEpoch)[0]; ev.Epoch != 5 || ev.Sender != carol || stale.Epoch != 5 {
		t.Errorf("after carol's rebased update the Go client reports epoch %d by %q (carol at %d)", ev.Epoch, ev.Sender, stale.Epoch)
	}
	agree(t, "after the race", grp, d.sync(carol, dave))

	// Epoch 6: dave proposes his own removal; the Go client, the member
	// with the lowest leaf, commits it by reference on its own.
	d.call("leave", map[string]any{"by": dave}, nil)
	evs = g.expect(client.EventMembersRemoved, client.EventEpoch)
	if !slices.Equal(evs[0].Members, []string{dave}) || evs[0].Sender != gopher || evs[1].Epoch != 6 {
		t.Errorf("after dave's Remove proposal the Go client reports %q removed by %q, epoch %d", evs[0].Members, evs[0].Sender, evs[1].Epoch)
	}
	s = d.sync(carol, dave)
	if !s[dave].Removed {
		t.Errorf("dave (ts-mls) does not see himself removed")
	}
	agree(t, "after dave left", grp, map[string]tsSynced{carol: s[carol]})

	// Epoch 7: the Go client removes carol, who sees herself removed.
	if err := grp.Remove(ctx, carol); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	evs = g.expect(client.EventMembersRemoved, client.EventEpoch)
	if !slices.Equal(evs[0].Members, []string{carol}) || evs[1].Epoch != 7 {
		t.Errorf("after its Remove the Go client reports %q removed, epoch %d", evs[0].Members, evs[1].Epoch)
	}
	if s = d.sync(carol); !s[carol].Removed {
		t.Errorf("carol (ts-mls) does not see herself removed")
	}
	if got := grp.Members(); !slices.Equal(got, []string{gopher}) {
		t.Errorf("Go client's roster at the end %q", got)
	}

	// Epoch 8: erin (ts-mls) joins by external Commit from a GroupInfo
	// the Go client signed, with the token of a join link the Go client
	// made (the DS takes external Commits from non-members only with
	// one); the Go client processes it.
	gi, err := grp.GroupInfo()
	if err != nil {
		t.Fatalf("GroupInfo: %v", err)
	}
	link, err := grp.CreateJoinLink(ctx, time.Hour)
	if err != nil {
		t.Fatalf("CreateJoinLink: %v", err)
	}
	var je tsState
	d.call("joinExternal", map[string]any{"id": erin, "groupInfo": gi, "joinToken": link.Token}, &je)
	evs = g.expect(client.EventMembersAdded, client.EventEpoch)
	if !slices.Equal(evs[0].Members, []string{erin}) || evs[0].Sender != erin || evs[1].Epoch != 8 {
		t.Errorf("after erin's external Commit the Go client reports %q added by %q, epoch %d", evs[0].Members, evs[0].Sender, evs[1].Epoch)
	}
	agree(t, "after erin's external Commit", grp, map[string]tsSynced{erin: {tsState: je}})
	d.call("send", map[string]any{"by": erin, "text": "hello from " + erin}, nil)
	if ev := g.expect(client.EventMessage)[0]; ev.Sender != erin || string(ev.Data) != "hello from "+erin {
		t.Errorf("Go client got %q from %q", ev.Data, ev.Sender)
	}
	if _, err := grp.Send(ctx, []byte("hello from "+gopher)); err != nil {
		t.Fatalf("Send: %v", err)
	}
	s = d.sync(erin)
	wantMsgs(t, erin, s[erin].Messages, gopher)
	agree(t, "after erin joined", grp, s)

	// Epoch 9: erin proposes adding frank; the Go client commits the
	// proposal by reference on its own, with a Welcome from which frank
	// joins.
	d.call("proposeAdd", map[string]any{"by": erin, "id": frank}, nil)
	evs = g.expect(client.EventMembersAdded, client.EventEpoch)
	if !slices.Equal(evs[0].Members, []string{frank}) || evs[0].Sender != gopher || evs[1].Epoch != 9 {
		t.Errorf("after erin's Add proposal the Go client reports %q added by %q, epoch %d", evs[0].Members, evs[0].Sender, evs[1].Epoch)
	}
	var jf tsState
	d.call("join", map[string]any{"id": frank, "dsTree": false}, &jf)
	d.call("send", map[string]any{"by": frank, "text": "hello from " + frank}, nil)
	if ev := g.expect(client.EventMessage)[0]; ev.Sender != frank || string(ev.Data) != "hello from "+frank {
		t.Errorf("Go client got %q from %q", ev.Data, ev.Sender)
	}
	s = d.sync(erin, frank)
	wantMsgs(t, erin, s[erin].Messages, frank)
	agree(t, "at the end", grp, s)
	if !bytes.Equal(s[erin].Exported, s[frank].Exported) {
		t.Errorf("erin and frank (ts-mls) export different secrets")
	}
	dsAgrees(t, svc, groupID, s[erin])
}

// agree checks that the Go client's group and the ts-mls members in s
// are in the same epoch, with the same epoch_authenticator (RFC 9420
// §8.7: equal only if their key schedules, and so their views of the
// group, agree) and the same roster.
func agree(t *testing.T, what string, grp *client.Group, s map[string]tsSynced) {
	t.Helper()
	epoch, auth, roster := grp.Epoch(), grp.EpochAuthenticator(), grp.Members()
	if len(auth) == 0 {
		t.Errorf("%s: the Go client has no epoch authenticator", what)
	}
	for _, id := range slices.Sorted(maps.Keys(s)) {
		st := s[id]
		if st.Removed {
			t.Errorf("%s: %s (ts-mls) was removed", what, id)
			continue
		}
		if st.Epoch != epoch {
			t.Errorf("%s: %s (ts-mls) at epoch %d, the Go client at %d", what, id, st.Epoch, epoch)
		} else if !bytes.Equal(st.EpochAuthenticator, auth) {
			t.Errorf("%s: %s (ts-mls) has epoch_authenticator %x, the Go client %x", what, id, st.EpochAuthenticator, auth)
		}
		if !slices.Equal(st.Members, roster) {
			t.Errorf("%s: %s (ts-mls) has members %q, the Go client %q", what, id, st.Members, roster)
		}
	}
}

// wantMsgs checks that member me (ts-mls) decrypted "hello from X" from
// each of from, in order.
func wantMsgs(t *testing.T, me string, got []tsMessage, from ...string) {
	t.Helper()
	var want []tsMessage
	for _, f := range from {
		want = append(want, tsMessage{f, "hello from " + f})
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s (ts-mls) decrypted %+v, want %+v", me, got, want)
	}
}

// dsAgrees checks the DS's epoch and tree hash of the group against a
// ts-mls member's GroupContext.
func dsAgrees(t *testing.T, svc *ds.Service, groupID []byte, st tsSynced) {
	t.Helper()
	if len(st.Members) == 0 {
		t.Fatal("dsAgrees: no member state")
	}
	tree, err := svc.RatchetTree(context.Background(), st.Members[0], groupID)
	if err != nil {
		t.Fatalf("RatchetTree: %v", err)
	}
	if tree.Epoch != st.Epoch || !bytes.Equal(tree.TreeHash, st.TreeHash) {
		t.Errorf("DS at epoch %d with tree hash %x; ts-mls at epoch %d with %x", tree.Epoch, tree.TreeHash, st.Epoch, st.TreeHash)
	}
}

// sdkClient is the Go SDK client of a test with its events.
type sdkClient struct {
	t   *testing.T
	cfg client.Config
	c   *client.Client
}

// openSDK opens the Go SDK client gopher against the server at url, with
// its state in a temporary directory. Opening registers it and publishes
// its KeyPackages.
func openSDK(t *testing.T, ctx context.Context, url string) *sdkClient {
	t.Helper()
	logs := &lockedBuffer{}
	g := &sdkClient{t: t, cfg: client.Config{
		Server:      url,
		StatePath:   filepath.Join(t.TempDir(), gopher+".db"),
		ClientID:    gopher,
		KeyPackages: 2,
		Logger:      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}}
	g.open(ctx)
	t.Cleanup(func() {
		g.c.Close()
		if t.Failed() {
			t.Logf("Go client log:\n%s", logs.String())
		}
	})
	return g
}

func (g *sdkClient) open(ctx context.Context) {
	g.t.Helper()
	c, err := client.Open(ctx, g.cfg)
	if err != nil {
		g.t.Fatalf("client.Open: %v", err)
	}
	g.c = c
}

// close closes the Go client and checks that no event was left unread.
func (g *sdkClient) close() {
	g.t.Helper()
	if err := g.c.Close(); err != nil {
		g.t.Fatalf("Close: %v", err)
	}
	for ev := range g.c.Events() {
		g.t.Errorf("event left at Close: %s (epoch %d, seq %d)", ev.Kind, ev.Epoch, ev.Seq)
	}
}

// expect reads the Go client's next events and checks their kinds.
func (g *sdkClient) expect(kinds ...client.EventKind) []client.Event {
	g.t.Helper()
	var out []client.Event
	timer := time.NewTimer(eventTimeout)
	defer timer.Stop()
	for _, k := range kinds {
		select {
		case ev, ok := <-g.c.Events():
			if !ok {
				g.t.Fatalf("the Go client's Events closed while waiting for %v", k)
			}
			if ev.Kind != k {
				g.t.Fatalf("the Go client reports %s (epoch %d, seq %d, sender %q, members %q, error %v); want %v",
					ev.Kind, ev.Epoch, ev.Seq, ev.Sender, ev.Members, ev.Err, k)
			}
			out = append(out, ev)
		case <-timer.C:
			g.t.Fatalf("no %v event of the Go client within %v (after %d of %v)", k, eventTimeout, len(out), kinds)
		}
	}
	return out
}

// driver runs sdk.mjs and speaks its line protocol.
type driver struct {
	t      *testing.T
	stdin  io.WriteCloser
	lines  chan string
	next   int
	stderr *lockedBuffer
}

func startDriver(t *testing.T, dir, url string) *driver {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "node", "sdk.mjs", url)
	cmd.Dir = dir
	d := &driver{t: t, lines: make(chan string, 16), stderr: &lockedBuffer{}}
	cmd.Stderr = d.stderr
	var err error
	if d.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting node sdk.mjs: %v", err)
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(d.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			d.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		// Closing stdin ends the script; kill it if it does not end.
		d.stdin.Close()
		go func() {
			for range d.lines {
			}
		}()
		select {
		case <-readDone:
		case <-time.After(10 * time.Second):
			cancel()
			<-readDone
		}
		err := cmd.Wait()
		cancel()
		if err != nil {
			t.Errorf("node sdk.mjs: %v", err)
		}
		t.Logf("node stderr:\n%s", d.stderr.String())
	})
	return d
}

// call runs one command of sdk.mjs and decodes its result into out (if
// not nil); a failed command or no answer within nodeCallTimeout fails
// the test.
func (d *driver) call(op string, args any, out any) {
	d.t.Helper()
	d.next++
	id := d.next
	line, err := json.Marshal(map[string]any{"id": id, "op": op, "args": args})
	if err != nil {
		d.t.Fatal(err)
	}
	if _, err := d.stdin.Write(append(line, '\n')); err != nil {
		d.t.Fatalf("ts-mls %s: writing to node: %v", op, err)
	}
	timer := time.NewTimer(nodeCallTimeout)
	defer timer.Stop()
	select {
	case l, ok := <-d.lines:
		if !ok {
			d.t.Fatalf("ts-mls %s %s: node exited without answering", op, line)
		}
		var r struct {
			ID       int             `json:"id"`
			OK       bool            `json:"ok"`
			Error    string          `json:"error"`
			RPCError json.RawMessage `json:"rpcError"`
			Result   json.RawMessage `json:"result"`
		}
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			d.t.Fatalf("ts-mls %s: answer %q: %v", op, l, err)
		}
		if r.ID != id {
			d.t.Fatalf("ts-mls %s: answer to command %d, want %d", op, r.ID, id)
		}
		if !r.OK {
			d.t.Fatalf("ts-mls %s %s failed: %s\nrpc error: %s", op, line, r.Error, r.RPCError)
		}
		if out != nil {
			if err := json.Unmarshal(r.Result, out); err != nil {
				d.t.Fatalf("ts-mls %s: result %s: %v", op, r.Result, err)
			}
		}
	case <-timer.C:
		d.t.Fatalf("ts-mls %s %s: no answer within %v", op, line, nodeCallTimeout)
	}
}

// sync has the ts-mls members ids process everything new.
func (d *driver) sync(ids ...string) map[string]tsSynced {
	d.t.Helper()
	out := map[string]tsSynced{}
	d.call("sync", map[string]any{"ids": ids}, &out)
	return out
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
