package client

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// callCounter counts a client's RPCs by method name.
type callCounter struct {
	mu sync.Mutex
	n  map[string]int
	rt http.RoundTripper
}

func (c *callCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.n[path.Base(r.URL.Path)]++
	c.mu.Unlock()
	return c.rt.RoundTrip(r)
}

// install makes cfg's client count its calls in c.
func (c *callCounter) install(cfg *Config) {
	c.n = map[string]int{}
	c.rt = httpClientFor(cfg.Server).Transport
	cfg.HTTPClient = &http.Client{Transport: c}
}

func (c *callCounter) get(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[method]
}

// treeSwapper is a transport that replaces the ratchet tree in the
// server's GetRatchetTree answers by tree: a server that lies.
type treeSwapper struct {
	rt   http.RoundTripper
	tree []byte
}

func (s *treeSwapper) install(cfg *Config) {
	s.rt = httpClientFor(cfg.Server).Transport
	cfg.HTTPClient = &http.Client{Transport: s}
}

func (s *treeSwapper) RoundTrip(r *http.Request) (*http.Response, error) {
	res, err := s.rt.RoundTrip(r)
	if err != nil || path.Base(r.URL.Path) != "GetRatchetTree" || res.StatusCode != http.StatusOK {
		return res, err
	}
	var body io.Reader = res.Body
	if res.Header.Get("Content-Encoding") == "gzip" {
		if body, err = gzip.NewReader(res.Body); err != nil {
			return nil, err
		}
	}
	data, err := io.ReadAll(body)
	res.Body.Close()
	if err != nil {
		return nil, err
	}
	var msg mlsdsv1.GetRatchetTreeResponse
	if err := proto.Unmarshal(data, &msg); err != nil {
		return nil, err
	}
	msg.RatchetTree = s.tree
	if data, err = proto.Marshal(&msg); err != nil {
		return nil, err
	}
	res.Header.Del("Content-Encoding")
	res.Header.Set("Content-Length", strconv.Itoa(len(data)))
	res.ContentLength = int64(len(data))
	res.Body = io.NopCloser(bytes.NewReader(data))
	return res, nil
}

// stateOf returns the encodings of the ratchet tree and GroupContext of g's
// current epoch.
func stateOf(t *testing.T, g *Group) (tree, gc []byte) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	tree, err := g.st.Tree().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx := g.st.GroupContext()
	if gc, err = ctx.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	return tree, gc
}

func joinTreeOf(c *tclient) string {
	if p := c.joinTree.Load(); p != nil {
		return *p
	}
	return ""
}

func remoteTrees(t *testing.T, c *tclient, gid []byte) *mlsdsv1.GetRemoteTreeResponse {
	t.Helper()
	res, err := c.rpc.groups.GetRemoteTree(ctxT(t), connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: gid}))
	if err != nil {
		t.Fatalf("GetRemoteTree: %v", err)
	}
	return res.Msg
}

// checkRemoteTree checks that the server serves the remote trees of
// epochs want (newest first) and that the first one opens, with the key
// of member g's current epoch, into g's tree.
func checkRemoteTree(t *testing.T, c *tclient, g *Group, want ...uint64) {
	t.Helper()
	res := remoteTrees(t, c, g.ID())
	var got []uint64
	for _, rt := range res.RemoteTrees {
		got = append(got, rt.Epoch)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the server holds remote trees of epochs %v, want %v", got, want)
	}
	g.mu.Lock()
	key, err := RemoteTreeKey(g.st)
	cs, epoch := g.st.GroupContext().CipherSuite, g.st.Epoch()
	g.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	_, tree, err := OpenRemoteTree(cs, key, g.ID(), epoch, res.RemoteTrees[0].Blob)
	if err != nil {
		t.Fatalf("the remote tree of epoch %d does not open: %v", epoch, err)
	}
	mine, _ := stateOf(t, g)
	if enc, _ := tree.MarshalBinary(); !bytes.Equal(enc, mine) {
		t.Errorf("the remote tree of epoch %d is not the members' tree", epoch)
	}
}

// TestOpaqueRemoteTree: an opaque group keeps its GroupInfo and tree on
// the server only encrypted. CreateGroup uploads epoch 0's; each Commit
// carries the next epoch's; Welcomes leave the tree out and the joiners
// take it from the server, decrypted with the key their Welcome gives.
func TestOpaqueRemoteTree(t *testing.T) {
	e := startEnv(t)
	var calls callCounter
	alice, bob, carol := e.client("alice"), e.open("bob", t.TempDir(), calls.install), e.client("carol")
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{Opaque: true})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	secrets := map[string][]byte{}
	record := func(epoch int) {
		tree, gc := stateOf(t, g)
		secrets[fmt.Sprintf("tree of epoch %d", epoch)] = tree
		secrets[fmt.Sprintf("GroupContext of epoch %d", epoch)] = gc
	}
	record(0)
	checkRemoteTree(t, alice, g, 0)

	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, gid))
	if src := joinTreeOf(bob); src != treeFromRemoteTree {
		t.Errorf("bob took the tree from %q, want the remote tree (the Welcome should carry none)", src)
	}
	if bg := bob.Group(gid); !bg.opaque {
		t.Error("bob's state says the group is transparent")
	}
	record(1)
	checkRemoteTree(t, alice, g, 1, 0)

	// A member that joined by Welcome commits in turn: carol joins from
	// the tree bob's Commit uploaded.
	if err := bob.Group(gid).Add(ctx, "carol"); err != nil {
		t.Fatal(err)
	}
	carol.waitFor("EventJoined", 0, kind(EventJoined, gid))
	if src := joinTreeOf(carol); src != treeFromRemoteTree {
		t.Errorf("carol took the tree from %q, want the remote tree", src)
	}
	waitEpoch(t, alice, gid, 2)
	record(2)
	checkRemoteTree(t, alice, g, 2, 1)
	if err := carol.Group(gid).Update(ctx); err != nil {
		t.Fatal(err)
	}
	waitEpoch(t, alice, gid, 3)
	record(3)
	checkRemoteTree(t, alice, g, 3, 2)

	exchange(t, gid, 2, "opaque", alice, bob, carol)
	sameEpoch(t, gid, alice, bob, carol)
	for _, c := range []*tclient{alice, bob, carol} {
		c.noUndecryptable()
	}
	if n := calls.get("GetGroupInfo"); n != 0 {
		t.Errorf("bob called GetGroupInfo %d times to join", n)
	}

	// The server never saw a GroupInfo or a tree in the clear.
	files, _ := filepath.Glob(e.dbPath + "*")
	last := remoteTrees(t, alice, gid).RemoteTrees[0].Blob
	found := false // control: the search finds what the server stored
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		found = found || bytes.Contains(data, last)
		for name, s := range secrets {
			if bytes.Contains(data, s) {
				t.Errorf("server file %s holds the %s in the clear", filepath.Base(f), name)
			}
		}
	}
	if !found {
		t.Errorf("the last remote tree is in none of the server files %v; the search proves nothing", files)
	}
}

// TestWelcomeTreeAndMode: a joiner learns the group's mode without
// downloading its GroupInfo and tree, and takes the tree from the Welcome
// when it carries one, else from the server: GetRatchetTree in a
// transparent group (checked against the Welcome's tree hash), the
// remote tree in an opaque one.
func TestWelcomeTreeAndMode(t *testing.T) {
	e := startEnv(t)
	var calls callCounter
	alice, tina := e.client("alice"), e.client("tina")
	tina.testWelcomeWithoutTree = true
	bob := e.open("bob", t.TempDir(), calls.install)
	carol := e.client("carol")
	ctx := ctxT(t)

	var tinas []byte // tina's group with bob
	for _, c := range []struct {
		name   string
		by     *tclient
		opaque bool
		from   string
	}{
		{"transparent, tree in the Welcome", alice, false, treeFromWelcome},
		{"transparent, no tree in the Welcome", tina, false, treeFromRatchetTree},
		{"opaque", alice, true, treeFromRemoteTree},
	} {
		g, err := c.by.CreateGroup(ctx, GroupOptions{Opaque: c.opaque})
		if err != nil {
			t.Fatal(err)
		}
		before := len(bob.snapshot())
		if err := g.Add(ctx, "bob"); err != nil {
			t.Fatal(err)
		}
		bob.waitFor("EventJoined", before, kind(EventJoined, g.ID()))
		if src := joinTreeOf(bob); src != c.from {
			t.Errorf("%s: bob took the tree from %q, want %q", c.name, src, c.from)
		}
		if bg := bob.Group(g.ID()); bg.opaque != c.opaque {
			t.Errorf("%s: bob's state says opaque = %v", c.name, bg.opaque)
		}
		exchange(t, g.ID(), 1, "hi", c.by, bob)
		if c.by == tina {
			tinas = g.ID()
		}
	}
	// One fork check per transparent Welcome (guard.go's checkJoinedFork).
	if n := calls.get("GetGroupInfo"); n != 2 {
		t.Errorf("bob called GetGroupInfo %d times for 2 transparent Welcomes, want 2", n)
	}
	if n := calls.get("GetRemoteTree"); n != 3 {
		t.Errorf("bob called GetRemoteTree %d times for 3 Welcomes, want 3 (one mode probe each)", n)
	}
	if n := calls.get("GetRatchetTree"); n != 1 {
		t.Errorf("bob called GetRatchetTree %d times, want 1 (for the Welcome without the tree)", n)
	}

	// A server that answers GetRatchetTree with another tree of the same
	// epoch (here: of tina's group with bob, so that the GroupInfo's
	// signature still verifies with tina's leaf): mls.JoinGroup finds
	// that its hash is not the Welcome's and the join fails.
	other, _ := stateOf(t, bob.Group(tinas))
	swap := &treeSwapper{tree: other}
	eve := e.open("eve", t.TempDir(), swap.install)
	lied, err := tina.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := lied.Add(ctx, "eve"); err != nil {
		t.Fatal(err)
	}
	i := eve.waitFor("EventUndecryptable", 0, kind(EventUndecryptable, lied.ID()))
	var ve *mls.ValidationError
	if ev := eve.snapshot()[i]; !errors.As(ev.Err, &ve) || ve.Section != "12.4.3.1" || !strings.Contains(ev.Err.Error(), "tree_hash") {
		t.Errorf("the join with a foreign tree failed with %v; want the tree_hash check of §12.4.3.1", ev.Err)
	}
	if eve.Group(lied.ID()) != nil {
		t.Error("eve joined with a tree that is not the group's")
	}

	// A transparent Welcome without the tree whose epoch the group left
	// before the joiner got to it: the server's tree is of a later epoch,
	// and the join fails rather than taking it.
	g, err := tina.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	hook := func() {
		select {
		case <-release:
		case <-carol.ctx.Done():
		}
	}
	carol.testHookStream.Store(&hook)
	if err := g.Add(ctx, "carol"); err != nil {
		t.Fatal(err)
	}
	if err := g.Update(ctx); err != nil {
		t.Fatal(err)
	}
	close(release)
	i = carol.waitFor("EventUndecryptable", 0, kind(EventUndecryptable, g.ID()))
	if ev := carol.snapshot()[i]; !strings.Contains(ev.Err.Error(), "epoch") {
		t.Errorf("the failed join says %v; want it to name the epochs", ev.Err)
	}
	if carol.Group(g.ID()) != nil {
		t.Error("carol has a state of the group after a failed join")
	}
}

// TestRejoin: a member whose state is broken rejoins with a resync
// external Commit that removes its old leaf: in a transparent group from
// the server's GroupInfo (Rejoin), in an opaque one from a GroupInfo
// another member gives (JoinExternalWith). The server accepts it (one
// leaf per client holds), the roster stays the same, and the Group works
// again. A client that lost its state of the group joins the same way.
func TestRejoin(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	bg := bob.Group(gid)
	// Bob's client would rejoin on its own (TestRecoverFromBadCommit): hold
	// that back, to rejoin by hand.
	bg.mu.Lock()
	bg.rejoinFailures = maxAutoRejoins
	bg.mu.Unlock()
	if _, err := bob.JoinExternal(ctx, gid); err == nil || !strings.Contains(err.Error(), "Rejoin") {
		t.Errorf("JoinExternal of a member: %v; want an error that points to Rejoin", err)
	}
	// Break bob's state: a Commit of his that he does not keep.
	bg.mu.Lock()
	p, err := bg.makeCommit(ctx, intent{update: true}, nil)
	if err == nil {
		_, err = bob.rpc.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: p.wire, GroupInfo: p.groupInfo}))
	}
	bg.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := bg.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	i := bob.waitFor("EventUndecryptable", 0, kind(EventUndecryptable, gid))
	if _, err := bg.Send(ctx, []byte("x")); err != ErrGroupBroken {
		t.Fatalf("Send in a broken group: %v, want ErrGroupBroken", err)
	}
	waitEpoch(t, alice, gid, 2)
	if _, err := g.Send(ctx, []byte("unreadable for bob")); err != nil {
		t.Fatal(err)
	}

	if err := bg.Rejoin(ctx); err != nil {
		t.Fatalf("Rejoin: %v", err)
	}
	j := bob.waitFor("EventJoined after the rejoin", i+1, kind(EventJoined, gid))
	if ev := bob.snapshot()[j]; ev.Epoch != 3 || !slices.Equal(ev.Members, []string{"alice", "bob", "carol"}) {
		t.Errorf("bob rejoined epoch %d with members %v", ev.Epoch, ev.Members)
	}
	if bob.Group(gid) != bg {
		t.Error("Rejoin replaced the Group")
	}
	for _, c := range []*tclient{alice, carol} {
		waitEpoch(t, c, gid, 3)
		if got := c.Group(gid).Members(); !slices.Equal(got, []string{"alice", "bob", "carol"}) {
			t.Errorf("%s's members after bob rejoined: %v", c.ID(), got)
		}
		for _, ev := range c.snapshot() {
			if (ev.Kind == EventMembersAdded || ev.Kind == EventMembersRemoved) && slices.Contains(ev.Members, "bob") && ev.Epoch >= 2 {
				t.Errorf("%s: the rejoin showed as %v", c.ID(), describe([]Event{ev}))
			}
		}
	}
	roster, err := alice.rpc.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(roster.Msg.ClientIds, []string{"alice", "bob", "carol"}) {
		t.Errorf("the server's roster after the rejoin: %v", roster.Msg.ClientIds)
	}
	sameEpoch(t, gid, alice, bob, carol)
	exchange(t, gid, 2, "rejoined", alice, bob, carol)
	alice.noUndecryptable()
	carol.noUndecryptable()

	// A client that lost its state of the group (here: dropped from its
	// state file) joins by JoinExternal; the Commit takes out its old
	// leaf, else the server would refuse a second leaf of the client.
	bob.mu.Lock()
	delete(bob.groups, string(gid))
	bob.mu.Unlock()
	if _, err := bob.db.db.ExecContext(ctx, `DELETE FROM groups WHERE id = ?`, gid); err != nil {
		t.Fatal(err)
	}
	ng, err := bob.JoinExternal(ctx, gid)
	if err != nil {
		t.Fatalf("JoinExternal of a client whose leaf is in the tree: %v", err)
	}
	if got := ng.Members(); !slices.Equal(got, []string{"alice", "bob", "carol"}) {
		t.Errorf("bob's members after joining again: %v", got)
	}
	for _, c := range []*tclient{alice, carol} {
		waitEpoch(t, c, gid, 4)
	}
	sameEpoch(t, gid, alice, bob, carol)
	exchange(t, gid, 1, "joined-again", alice, bob, carol)

	// In an opaque group the server has no GroupInfo in the clear: Rejoin
	// says so; a broken member rejoins on its own from the remote tree its
	// own Commit left (opaque_recovery.go), and the server gets the new
	// epoch's tree encrypted.
	og := group3(t, e, GroupOptions{Opaque: true}, alice, bob, carol)
	ogid := og.ID()
	bog := bob.Group(ogid)
	bog.mu.Lock()
	p, err = bog.makeCommit(ctx, intent{update: true}, nil)
	if err == nil {
		_, err = bob.rpc.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: p.wire, RemoteTree: p.remoteTree}))
	}
	bog.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := bog.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	i = bob.waitFor("EventUndecryptable", 0, kind(EventUndecryptable, ogid))
	bob.waitFor("EventRejoined", i+1, kind(EventRejoined, ogid))
	if err := bog.Rejoin(ctx); err == nil || !strings.Contains(err.Error(), "JoinExternalWith") {
		t.Errorf("Rejoin of an opaque group: %v; want an error that points to JoinExternalWith", err)
	}
	for _, c := range []*tclient{alice, carol} {
		waitEpoch(t, c, ogid, 3)
	}
	checkRemoteTree(t, alice, og, 3, 2)
	roster, err = alice.rpc.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: ogid}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(roster.Msg.ClientIds, []string{"alice", "bob", "carol"}) {
		t.Errorf("the server's roster after the opaque rejoin: %v", roster.Msg.ClientIds)
	}
	sameEpoch(t, ogid, alice, bob, carol)
	exchange(t, ogid, 2, "opaque-rejoined", alice, bob, carol)
}

// TestStateWritesBatched: a page of fetched messages is written to the
// state file in one transaction; a write that fails delivers none of the
// page's events, and after a restart each of them comes exactly once.
func TestStateWritesBatched(t *testing.T) {
	e := startEnv(t)
	dir := t.TempDir()
	alice, bob := e.client("alice"), e.open("bob", dir)
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, gid))
	release := make(chan struct{})
	hook := func() {
		select {
		case <-release:
		case <-bob.ctx.Done():
		}
	}
	bob.testHookStream.Store(&hook)
	defer close(release)
	var want []string
	send := func(n int) {
		for range n {
			m := fmt.Sprintf("m%d", len(want))
			if _, err := g.Send(ctx, []byte(m)); err != nil {
				t.Fatal(err)
			}
			want = append(want, "alice:"+m)
		}
	}
	send(20)
	before := bob.db.groupWrites.Load()
	if err := bob.Group(gid).Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if n := bob.db.groupWrites.Load() - before; n != 1 {
		t.Errorf("20 fetched messages took %d state writes, want 1", n)
	}
	if got := bob.waitMessages(gid, 20); !slices.Equal(got, want) {
		t.Fatalf("bob got %v", got)
	}

	// The write of the next page fails: no event, and the state file
	// stays at the last written position.
	send(5)
	bob.db.testFailPuts.Store(true)
	if err := bob.Group(gid).Sync(ctx); err == nil {
		t.Fatal("Sync succeeded while state writes fail")
	}
	if got := bob.messages(gid); len(got) != 20 {
		t.Fatalf("bob got the events of messages whose state was not written: %v", got[20:])
	}
	seen := bob.snapshot()
	bob.Close()
	bob2 := e.open("bob", dir)
	if got := bob2.waitMessages(gid, 5); !slices.Equal(got, want[20:]) {
		t.Errorf("after the restart bob got %v, want %v", got, want[20:])
	}
	for _, ev := range bob2.snapshot() {
		for _, old := range seen {
			if ev.Seq == old.Seq && bytes.Equal(ev.GroupID, old.GroupID) && ev.Kind == old.Kind {
				t.Errorf("event delivered twice across the restart: %v", describe([]Event{ev}))
			}
		}
	}
	sameEpoch(t, gid, alice, bob2)
}

// TestStreamWritesBatched: messages that pile up on the stream while the
// client is busy are processed as one batch, with one state write, and
// each arrives once and in order.
func TestStreamWritesBatched(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, gid))
	// Hold the processing of bob's next stream event.
	release, held := make(chan struct{}), make(chan struct{}, 1)
	var once sync.Once
	hook := func() {
		once.Do(func() {
			held <- struct{}{}
			select {
			case <-release:
			case <-bob.ctx.Done():
			}
		})
	}
	bob.testHookStream.Store(&hook)
	const n = 20
	received := bob.streamReceived.Load()
	var want []string
	for i := range n {
		m := fmt.Sprintf("m%d", i)
		if _, err := g.Send(ctx, []byte(m)); err != nil {
			t.Fatal(err)
		}
		want = append(want, "alice:"+m)
	}
	<-held
	// Wait (a hang guard, not a timing check) until the stream brought
	// all the messages in, behind the held event.
	for range 3000 {
		if bob.streamReceived.Load()-received >= n {
			break
		}
		sleep(ctx, 10*time.Millisecond)
	}
	if got := bob.streamReceived.Load() - received; got < n {
		t.Fatalf("only %d stream events arrived for %d messages", got, n)
	}
	before := bob.db.groupWrites.Load()
	close(release)
	if got := bob.waitMessages(gid, n); !slices.Equal(got, want) {
		t.Fatalf("bob got %v, want %v", got, want)
	}
	if w := bob.db.groupWrites.Load() - before; w > 3 {
		t.Errorf("%d messages from the stream took %d state writes; want them batched (at most 3)", n, w)
	}
	bob.noUndecryptable()
}

// TestPrivateHandshakes: in an opaque group, Commits and proposals that a
// member sends as PrivateMessages (§6.3) are processed like plain ones.
func TestPrivateHandshakes(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol, dave := e.client("alice"), e.client("bob"), e.client("carol"), e.client("dave")
	g := group3(t, e, GroupOptions{Opaque: true}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	g.mu.Lock()
	err := g.st.SetHandshakeWireFormat(mls.WireFormatPrivateMessage)
	g.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	// alice's Commits are encrypted.
	if err := g.Update(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, "dave"); err != nil {
		t.Fatal(err)
	}
	dave.waitFor("EventJoined", 0, kind(EventJoined, gid))
	for _, c := range []*tclient{bob, carol} {
		c.waitFor("dave added", 0, func(e Event) bool {
			return e.Kind == EventMembersAdded && slices.Equal(e.Members, []string{"dave"})
		})
	}
	res, err := alice.rpc.groups.Fetch(ctx, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid, FromSeq: 1}))
	if err != nil {
		t.Fatal(err)
	}
	private := 0
	for _, env := range res.Msg.Messages {
		if m, err := mls.ParseMLSMessage(env.Message); err == nil && m.PrivateMessage != nil && m.PrivateMessage.ContentType == mls.ContentTypeCommit {
			private++
		}
	}
	if private != 2 {
		t.Fatalf("%d Commits went out as PrivateMessages, want 2", private)
	}

	// bob proposes carol's removal encrypted; alice, the first member,
	// commits it (encrypted too).
	bg := bob.Group(gid)
	bg.mu.Lock()
	err = bg.st.SetHandshakeWireFormat(mls.WireFormatPrivateMessage)
	var m *mls.MLSMessage
	if err == nil {
		m, _, err = bg.st.ProposeMessage(&mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: 2}})
	}
	var wire []byte
	if err == nil {
		wire, err = mlsMessage(m)
	}
	if err == nil {
		err = bg.persist(nil)
	}
	bg.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.rpc.groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: wire})); err != nil {
		t.Fatal(err)
	}
	carol.waitFor("EventRemoved", 0, kind(EventRemoved, gid))
	for _, c := range []*tclient{alice, bob, dave} {
		c.waitFor("carol removed", 0, func(e Event) bool {
			return e.Kind == EventMembersRemoved && slices.Equal(e.Members, []string{"carol"})
		})
	}
	all := []*tclient{alice, bob, dave}
	sameEpoch(t, gid, all...)
	exchange(t, gid, 2, "private", all...)
	for _, c := range append(all, carol) {
		c.noUndecryptable()
	}
}

// TestOwnMessagesNotFetched: the stream leaves out a client's own
// messages, so each one it sends behind messages it has not processed yet
// leaves a hole in what it receives. The client steps over its own
// messages instead of fetching the hole back from the server.
func TestOwnMessagesNotFetched(t *testing.T) {
	e := startEnv(t)
	var calls callCounter
	alice := e.client("alice")
	bob := e.open("bob", t.TempDir(), calls.install)
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, gid))
	// After joining, the client fetches once what followed its Welcome;
	// count from after that.
	for deadline := time.Now().Add(10 * time.Second); calls.get("Fetch") == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("bob never caught up after joining")
		}
	}
	bob.Group(gid).Sync(ctx)
	fetches := calls.get("Fetch")

	const rounds = 5
	for i := range rounds {
		// Hold bob's stream so that alice's message is ahead of him when
		// he sends.
		release := make(chan struct{})
		hook := func() { <-release }
		bob.testHookStream.Store(&hook)
		if _, err := g.Send(ctx, []byte(fmt.Sprintf("a%d", i))); err != nil {
			t.Fatal(err)
		}
		if _, err := bob.Group(gid).Send(ctx, []byte(fmt.Sprintf("b%d", i))); err != nil {
			t.Fatal(err)
		}
		if _, err := g.Send(ctx, []byte(fmt.Sprintf("c%d", i))); err != nil {
			t.Fatal(err)
		}
		bob.testHookStream.Store(nil)
		close(release)
		bob.waitMessages(gid, 2*(i+1))
	}
	if got, want := bob.messages(gid), []string{"alice:a0", "alice:c0", "alice:a1", "alice:c1", "alice:a2", "alice:c2", "alice:a3", "alice:c3", "alice:a4", "alice:c4"}; !slices.Equal(got, want) {
		t.Errorf("bob received %v, want %v", got, want)
	}
	alice.waitMessages(gid, rounds)
	if n := calls.get("Fetch") - fetches; n != 0 {
		t.Errorf("bob fetched %d times to step over his own messages, want 0", n)
	}
}

// TestInMemoryStateNotEncoded: a client without a state file keeps its
// groups in memory only, so it never encodes them into its (in-memory)
// database; it still joins, sends and receives, and drops the keys of the
// KeyPackage its Welcome used.
func TestInMemoryStateNotEncoded(t *testing.T) {
	e := startEnv(t)
	alice := e.open("alice", "", func(c *Config) { c.StatePath = "" })
	bob := e.open("bob", "", func(c *Config) { c.StatePath = "" })
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, g.ID()))
	exchange(t, g.ID(), 10, "m", alice, bob)
	for _, c := range []*tclient{alice, bob} {
		if n := c.db.groupWrites.Load(); n != 0 {
			t.Errorf("%s wrote its group state %d times into an in-memory database", c.ID(), n)
		}
	}
	var left int
	if err := bob.db.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM key_packages WHERE last_resort = 0").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if want := 5 - 1 + 1; left != want { // 5 published, 1 used, 1 published again
		t.Errorf("bob holds the keys of %d KeyPackages, want %d", left, want)
	}
}
