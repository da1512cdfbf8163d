package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// wireLog records, for every call a client makes, the procedure, whether
// it carried a session (Authorization) or a membership proof, and the
// body of unary calls.
type wireLog struct {
	next http.RoundTripper
	mu   sync.Mutex
	logs []wireCall
}

type wireCall struct {
	procedure          string
	session, proof     bool
	body               []byte // unary calls only
	membershipHeaderOK bool
}

func (w *wireLog) RoundTrip(r *http.Request) (*http.Response, error) {
	c := wireCall{procedure: r.URL.Path, session: r.Header.Get("Authorization") != "", proof: r.Header.Get(ds.MembershipHeader) != ""}
	if c.proof {
		_, _, _, _, err := ds.ParseMembershipHeader(r.Header.Get(ds.MembershipHeader))
		c.membershipHeaderOK = err == nil
	}
	if r.Header.Get("Content-Type") == "application/proto" && r.Body != nil {
		b, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return nil, err
		}
		c.body = b
		r.Body = io.NopCloser(bytes.NewReader(b))
	}
	w.mu.Lock()
	w.logs = append(w.logs, c)
	w.mu.Unlock()
	return w.next.RoundTrip(r)
}

func (w *wireLog) calls() []wireCall {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.logs)
}

// withWireLog makes a client's calls go through w.
func withWireLog(e *testEnv, w *wireLog) func(*Config) {
	w.next = httpClientFor(e.url).Transport
	return func(c *Config) { c.HTTPClient = &http.Client{Transport: w} }
}

// groupCalls are the calls that act on one group.
var groupCalls = []string{"Send", "SendCommitBundle", "Fetch", "GetRemoteTree", "PutRemoteTree", "GetGroupInfo", "SubscribeGroup"}

// checkUnlinked checks that no call in w linked the client to group gid:
// the group calls carried a membership proof and no session, and no call
// with a session named the group, but the CreateGroup of its creator.
func checkUnlinked(t *testing.T, who string, w *wireLog, gid []byte) {
	t.Helper()
	proofs := 0
	for _, c := range w.calls() {
		name := c.procedure[strings.LastIndex(c.procedure, "/")+1:]
		if c.proof {
			proofs++
			if c.session || !c.membershipHeaderOK || !slices.Contains(groupCalls, name) {
				t.Errorf("%s: %s carried a membership proof (well-formed %v) and a session %v", who, c.procedure, c.membershipHeaderOK, c.session)
			}
			continue
		}
		if c.session && name != "CreateGroup" && bytes.Contains(c.body, gid) {
			t.Errorf("%s: %s named the deniable group with the client's session", who, c.procedure)
		}
	}
	if proofs == 0 {
		t.Errorf("%s made no call with a membership proof", who)
	}
}

// TestDeniableGroupLife runs a deniable group through a life: created,
// bob and carol added by Welcomes that name no group, messages every way,
// an Update, carol removed (her client reports it and reads nothing more;
// with her last key the server still shows her the later ciphertexts,
// which she cannot open), carol added again, an Update proposal, bob
// leaving. None of the clients' calls links a client to the group.
func TestDeniableGroupLife(t *testing.T) {
	e := startEnv(t)
	logs := map[string]*wireLog{}
	open := func(id string) *tclient {
		logs[id] = &wireLog{}
		return e.open(id, t.TempDir(), withWireLog(e, logs[id]))
	}
	alice, bob, carol := open("alice"), open("bob"), open("carol")
	g := group3(t, e, GroupOptions{Deniable: true}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	exchange(t, gid, 3, "hello", alice, bob, carol)

	// What needs the server's view of the group fails before it leaves.
	if _, err := g.CreateJoinLink(ctx, time.Hour); !errors.Is(err, ErrDeniable) {
		t.Errorf("CreateJoinLink: %v, want ErrDeniable", err)
	}
	if _, err := alice.rpc.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid})); !errors.Is(err, ErrDeniable) {
		t.Errorf("GetRoster: %v, want ErrDeniable", err)
	}

	if err := bob.Group(gid).Update(ctx); err != nil {
		t.Fatalf("Update: %v", err)
	}
	for _, c := range []*tclient{alice, carol} {
		waitEpoch(t, c, gid, 2)
	}
	sameEpoch(t, gid, alice, bob, carol)
	exchange(t, gid, 2, "after-update", alice, bob, carol)

	// carol is removed: her client says so, and reads nothing after.
	if err := alice.Group(gid).Remove(ctx, "carol"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	carol.waitFor("EventRemoved", 0, kind(EventRemoved, gid))
	i := bob.waitFor("carol removed", 0, func(e Event) bool {
		return e.Kind == EventMembersRemoved && slices.Equal(e.Members, []string{"carol"})
	})
	// The envelopes name no sender; the SDK names the committer from the
	// Commit itself.
	if s := bob.snapshot()[i].Sender; s != "alice" {
		t.Errorf("carol's removal was committed by %q, want alice", s)
	}
	cg := carol.Group(gid)
	if _, err := cg.Send(ctx, []byte("x")); !errors.Is(err, ErrRemoved) {
		t.Errorf("Send after removal: %v, want ErrRemoved", err)
	}
	exchange(t, gid, 2, "without-carol", alice, bob)
	evs := carol.snapshot()
	removedAt := slices.IndexFunc(evs, kind(EventRemoved, gid))
	for _, ev := range evs[removedAt+1:] {
		if bytes.Equal(ev.GroupID, gid) {
			t.Errorf("carol got an event after EventRemoved: %v", describe([]Event{ev}))
		}
	}
	// Her client no longer follows the group.
	waitUntil(t, "carol's group stream to stop", func() bool {
		carol.den.mu.Lock()
		defer carol.den.mu.Unlock()
		return carol.den.streams[cg] == nil
	})
	// She still holds the key of her last epoch, and with it the server
	// shows her the later ciphertexts (until that key expires): their
	// sizes and times, no sender, nothing she can open.
	a, err := cg.newestAuth()
	if err != nil {
		t.Fatal(err)
	}
	carolEpoch := cg.Epoch()
	if a.epoch != carolEpoch {
		t.Errorf("carol's newest key is of epoch %d, her state of %d", a.epoch, carolEpoch)
	}
	res, err := carol.den.groups.Fetch(withMembership(ctx, a), connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid, FromSeq: 1, Limit: 500}))
	if err != nil {
		t.Fatalf("Fetch with carol's last key: %v", err)
	}
	later := 0
	for _, env := range res.Msg.Messages {
		if env.SenderClientId != "" {
			t.Errorf("seq %d names its sender %q", env.GroupSeq, env.SenderClientId)
		}
		if env.Epoch <= carolEpoch || env.ContentType != mlsdsv1.ContentType_CONTENT_TYPE_APPLICATION {
			continue
		}
		later++
		m, err := mls.ParseMLSMessage(env.Message)
		if err != nil || m.PrivateMessage == nil {
			t.Fatalf("seq %d is not a PrivateMessage: %v", env.GroupSeq, err)
		}
		cg.mu.Lock()
		_, _, err = cg.st.Open(m.PrivateMessage)
		cg.mu.Unlock()
		if err == nil {
			t.Errorf("carol opened seq %d, sent after her removal", env.GroupSeq)
		}
	}
	if later != 4 {
		t.Errorf("carol's last key shows %d application messages of later epochs, want the 4 sent", later)
	}

	// carol is added again: a new Welcome, a new state.
	if err := alice.Group(gid).Add(ctx, "carol"); err != nil {
		t.Fatalf("Add again: %v", err)
	}
	carol.waitFor("EventJoined again", removedAt+1, kind(EventJoined, gid))
	if carol.Group(gid) == cg || carol.Group(gid).Removed() {
		t.Fatal("carol's group was not replaced by the one of the new Welcome")
	}
	if from := carol.joinTree.Load(); from == nil || *from != treeFromRemoteTree {
		t.Errorf("carol took the tree from %v, want the remote tree", from)
	}
	exchange(t, gid, 2, "carol-back", alice, bob, carol)
	sameEpoch(t, gid, alice, bob, carol)

	// bob proposes an Update (encrypted, as every handshake of the
	// group); alice's client commits it.
	ep := alice.Group(gid).Epoch()
	if _, err := bob.Group(gid).ProposeUpdate(ctx); err != nil {
		t.Fatalf("ProposeUpdate: %v", err)
	}
	alice.waitFor("bob's Update committed", 0, func(e Event) bool {
		return e.Kind == EventMembersUpdated && slices.Equal(e.Members, []string{"bob"})
	})
	waitEpoch(t, bob, gid, ep+1)
	waitEpoch(t, carol, gid, ep+1)
	sameEpoch(t, gid, alice, bob, carol)

	// bob leaves: his client drops the group at once and stops following
	// it; alice's commits his Remove proposal.
	bg := bob.Group(gid)
	if err := bg.Leave(ctx); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	bob.waitFor("EventLeft", 0, kind(EventLeft, gid))
	alice.waitFor("bob removed", 0, func(e Event) bool {
		return e.Kind == EventMembersRemoved && slices.Equal(e.Members, []string{"bob"})
	})
	waitUntil(t, "bob's group stream to stop", func() bool {
		bob.den.mu.Lock()
		defer bob.den.mu.Unlock()
		return bob.den.streams[bg] == nil
	})
	if got := alice.Group(gid).Members(); !slices.Equal(got, []string{"alice", "carol"}) {
		t.Errorf("alice's members after bob left: %v", got)
	}
	exchange(t, gid, 2, "without-bob", alice, carol)
	for _, c := range []*tclient{alice, bob, carol} {
		c.noUndecryptable()
	}
	for id, w := range logs {
		checkUnlinked(t, id, w, gid)
	}
}

// TestDeniableCatchUpAfterRestart: bob stops while the group goes on for
// several Commits and messages; opened again from his state file, he
// proves membership with the newest key he kept (of an epoch the group
// left), and processes what he missed, each message once.
func TestDeniableCatchUpAfterRestart(t *testing.T) {
	e := startEnv(t)
	dir := t.TempDir()
	alice, bob, carol := e.client("alice"), e.open("bob", dir), e.client("carol")
	g := group3(t, e, GroupOptions{Deniable: true}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	exchange(t, gid, 2, "before", alice, bob, carol)
	bobEpoch := bob.Group(gid).Epoch()
	bob.Close()
	seen := bob.snapshot()

	var want []string
	for i := range 3 {
		c := []*tclient{alice, carol}[i%2]
		if err := c.Group(gid).Update(ctx); err != nil {
			t.Fatalf("Update %d: %v", i, err)
		}
		msg := fmt.Sprintf("missed-%d", i)
		if _, err := c.Group(gid).Send(ctx, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		want = append(want, c.ID()+":"+msg)
	}
	if got := alice.Group(gid).Epoch(); got != bobEpoch+3 {
		t.Fatalf("the group is at epoch %d, want %d", got, bobEpoch+3)
	}

	// The state file holds bob's keys; the newest is of the epoch he left
	// the group in.
	db, err := openStore(ctx, bob.path)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := db.deniableStates(ctx)
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	d := stored[string(gid)]
	if d == nil {
		t.Fatal("bob's state file holds no deniable state of the group")
	}
	if k, ok := d.newest(); !ok || k.epoch != bobEpoch {
		t.Fatalf("bob's newest stored key: epoch %d (%v), want %d", k.epoch, ok, bobEpoch)
	}

	bob2 := e.open("bob", dir, func(c *Config) { c.ClientID = "" })
	got := bob2.waitMessages(gid, len(want))
	if !slices.Equal(got, want) {
		t.Errorf("after the restart bob got %v, want %v", got, want)
	}
	for _, ev := range bob2.snapshot() {
		for _, old := range seen {
			if ev.Seq == old.Seq && bytes.Equal(ev.GroupID, old.GroupID) && ev.Kind == old.Kind {
				t.Errorf("event delivered twice across the restart: %v", describe([]Event{ev}))
			}
		}
	}
	waitEpoch(t, bob2, gid, bobEpoch+3)
	sameEpoch(t, gid, alice, bob2, carol)
	// He keeps the key he had and that of the epoch he is in now.
	for _, ep := range []uint64{bobEpoch, bobEpoch + 3} {
		if _, ok := bob2.Group(gid).den.keyOf(ep); !ok {
			t.Errorf("bob keeps no key of epoch %d", ep)
		}
	}
	exchange(t, gid, 2, "after-restart", alice, bob2, carol)
	for _, c := range []*tclient{alice, bob2, carol} {
		c.noUndecryptable()
	}
}

// TestDeniableStateEncoding: the stored deniable state reads back as
// written, keeps at most keptMembershipKeys keys (the newest), and a
// state of an unknown format is refused.
func TestDeniableStateEncoding(t *testing.T) {
	d := &deniableState{welcomeRef: []byte("ref")}
	for ep := uint64(0); ep < keptMembershipKeys+3; ep++ {
		d.add(ep, bytes.Repeat([]byte{byte(ep)}, ds.MembershipKeySize))
	}
	d.noteSent([]byte("one"))
	d.noteSent([]byte("two"))
	got, err := unmarshalDeniableState(d.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.keys) != keptMembershipKeys {
		t.Fatalf("%d keys kept, want %d", len(got.keys), keptMembershipKeys)
	}
	if k, _ := got.newest(); k.epoch != keptMembershipKeys+2 {
		t.Errorf("newest key of epoch %d", k.epoch)
	}
	if _, ok := got.keyOf(2); ok {
		t.Error("the key of epoch 2 was kept past the bound")
	}
	if key, ok := got.keyOf(5); !ok || !bytes.Equal(key, bytes.Repeat([]byte{5}, ds.MembershipKeySize)) {
		t.Errorf("key of epoch 5: %x, %v", key, ok)
	}
	if !got.wasSent([]byte("two")) || got.wasSent([]byte("three")) || !bytes.Equal(got.welcomeRef, []byte("ref")) {
		t.Error("the sent hashes or the Welcome ref did not survive")
	}
	bad := d.marshal()
	bad[0] = 99
	if _, err := unmarshalDeniableState(bad); err == nil {
		t.Error("a state of format 99 was read")
	}
	if _, err := unmarshalDeniableState(d.marshal()[:10]); err == nil {
		t.Error("a truncated state was read")
	}
}

// TestMessageGroupEpoch reads the clear header of real messages.
func TestMessageGroupEpoch(t *testing.T) {
	cs := mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	sig, _, err := cs.GenerateSignatureKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	kp, priv, err := mls.NewKeyPackage(cs, []byte("alice"), sig, 0, 1<<62)
	if err != nil {
		t.Fatal(err)
	}
	st, err := mls.NewGroup([]byte("the group id"), kp, priv)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := st.Seal([]byte("hi"), nil)
	if err != nil {
		t.Fatal(err)
	}
	wire, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm})
	if err != nil {
		t.Fatal(err)
	}
	id, epoch, ok := messageGroupEpoch(wire)
	if !ok || string(id) != "the group id" || epoch != 0 || !isPrivateMessage(wire) {
		t.Errorf("messageGroupEpoch: %q %d %v", id, epoch, ok)
	}
	// version, wire_format, group_id<V> (1-byte length), epoch.
	for n := range 2 + 2 + 1 + len("the group id") + 8 {
		if _, _, ok := messageGroupEpoch(wire[:n]); ok {
			t.Errorf("a %d-byte prefix read as a header", n)
		}
	}
}

// waitUntil polls f until it holds, failing after a generous timeout (a
// hang, not a speed check).
func waitUntil(t *testing.T, what string, f func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for !f() {
		if sleep(ctx, 10*time.Millisecond) != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestDeniableManyJoiners: the joiners of one Welcome all fetch the same
// remote tree with the same key at once, requests the server would refuse
// as replays if their MACs were equal; every joiner gets in.
func TestDeniableManyJoiners(t *testing.T) {
	e := startEnv(t)
	ctx := ctxT(t)
	alice := e.client("alice")
	var joiners []*tclient
	var ids []string
	for i := range 6 {
		c := e.client(fmt.Sprintf("joiner-%d", i))
		joiners = append(joiners, c)
		ids = append(ids, c.ID())
	}
	g, err := alice.CreateGroup(ctx, GroupOptions{Deniable: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, ids...); err != nil {
		t.Fatal(err)
	}
	for _, c := range joiners {
		c.waitFor("EventJoined", 0, kind(EventJoined, g.ID()))
		c.noUndecryptable()
	}
	exchange(t, g.ID(), 1, "all", append([]*tclient{alice}, joiners...)...)
}

// TestSessionlessTransport: the calls without a session go on connections
// of their own (a clone of the default transport), so that none carries
// both the session and a membership proof; a custom RoundTripper is used
// as it is.
func TestSessionlessTransport(t *testing.T) {
	hc := httpClientFor("http://127.0.0.1:1")
	got := sessionlessHTTPClient(hc)
	tr, ok := got.Transport.(*http.Transport)
	if !ok || tr == hc.Transport || got == hc {
		t.Fatalf("the session-less client shares the session's transport (%T)", got.Transport)
	}
	if tr.Protocols == nil || !tr.Protocols.UnencryptedHTTP2() {
		t.Error("the clone lost the h2c setting")
	}
	custom := &http.Client{Transport: &wireLog{}}
	if sessionlessHTTPClient(custom) != custom {
		t.Error("a custom RoundTripper was replaced")
	}
}

// TestDeniableStreamReconnects: the server restarts (its replay cache and
// streams gone); the members' group streams reconnect with their keys
// and carry on, through Commits made meanwhile.
func TestDeniableStreamReconnects(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	g := group3(t, e, GroupOptions{Deniable: true}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	exchange(t, gid, 1, "before", alice, bob, carol)
	e.restart()
	for range 2 {
		if err := alice.Group(gid).Update(ctx); err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	waitEpoch(t, bob, gid, 3)
	waitEpoch(t, carol, gid, 3)
	sameEpoch(t, gid, alice, bob, carol)
	exchange(t, gid, 2, "after", alice, bob, carol)
	for _, c := range []*tclient{alice, bob, carol} {
		c.noUndecryptable()
	}
}

// TestDeniableOwnMessageAfterRestart: the group's stream brings a
// client's own application messages back (the server does not know who
// sent what). One sent while the client's position was behind, by a
// client that then stopped, is still known for its own after a restart
// (its hash is in the state): no undecryptable message.
func TestDeniableOwnMessageAfterRestart(t *testing.T) {
	e := startEnv(t)
	dir := t.TempDir()
	ctx := ctxT(t)
	alice, bob := e.open("alice", dir), e.client("bob")
	g, err := alice.CreateGroup(ctx, GroupOptions{Deniable: true})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, gid))
	exchange(t, gid, 1, "first", alice, bob)
	alice.Close()

	if _, err := bob.Group(gid).Send(ctx, []byte("while-away")); err != nil {
		t.Fatal(err)
	}
	// Without its stream, alice's position stays before bob's message
	// when she sends.
	offline := e.open("alice", dir, func(c *Config) { c.ClientID, c.Offline = "", true })
	if _, err := offline.Group(gid).Send(ctx, []byte("sent-behind")); err != nil {
		t.Fatal(err)
	}
	offline.Close()

	alice2 := e.open("alice", dir, func(c *Config) { c.ClientID = "" })
	if got := alice2.waitMessages(gid, 1); !slices.Equal(got, []string{"bob:while-away"}) {
		t.Errorf("alice got %v", got)
	}
	bob.waitMessages(gid, 2)
	exchange(t, gid, 1, "after", alice2, bob)
	if got := alice2.messages(gid); !slices.Equal(got, []string{"bob:while-away", "bob:after-0"}) {
		t.Errorf("alice's messages after the restart: %v", got)
	}
	alice2.noUndecryptable()
}
