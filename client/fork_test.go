package client

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/mls"
)

// Forks after a Commit in a transparent group (fork.go). The real server
// checks every GroupInfo against the Commit it accepts, so the GroupInfo it
// serves is the one of the accepted Commit; a client can only be told of
// another one by a faulty or lying server. The tests put bob behind an
// HTTP reverse proxy that changes the server's GetGroupInfo answers for
// one group; alice talks to the server directly.

// tamperProxy is a reverse proxy in front of the test server that passes
// every call through (unary and streaming, h2c on both sides) and lets a
// test see and change the GetGroupInfo answers for one group. The client
// speaks the Connect protocol with the protobuf codec (rpc.go sets no
// other), so a unary call is a POST of an application/proto body and its
// answer an application/proto body, gzip-compressed if the server chose.
type tamperProxy struct {
	url string

	mu       sync.Mutex
	gid      []byte
	tamper   func(*mlsdsv1.GetGroupInfoResponse) bool // reports whether it changed the answer
	seen     []uint64                                 // epochs of the answers for gid
	changed  []uint64                                 // epochs of the answers it changed
	problems []string                                 // what the proxy could not read
}

type proxyGroupKey struct{}

func startTamperProxy(t *testing.T, backend string) *tamperProxy {
	t.Helper()
	target, err := url.Parse(backend)
	if err != nil {
		t.Fatal(err)
	}
	p := &tamperProxy{}
	tr := &http.Transport{}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	rp := &httputil.ReverseProxy{
		Rewrite:        func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport:      tr,
		FlushInterval:  -1, // the Subscribe stream's events go on at once
		ModifyResponse: p.modify,
		ErrorLog:       log.New(io.Discard, "", 0),
	}
	srv := &http.Server{Handler: p.handler(rp), Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.url = "http://" + ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		tr.CloseIdleConnections()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, s := range p.problems {
			t.Errorf("proxy: %s", s)
		}
	})
	return p
}

// watch makes the proxy record (and tamper, if set, change) the
// GetGroupInfo answers for group gid.
func (p *tamperProxy) watch(gid []byte, tamper func(*mlsdsv1.GetGroupInfoResponse) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gid, p.tamper = gid, tamper
}

func (p *tamperProxy) problem(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.problems = append(p.problems, fmt.Sprintf(format, args...))
}

func (p *tamperProxy) epochs() (seen, changed []uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.seen), slices.Clone(p.changed)
}

// waitSeen waits until the proxy has passed an answer for the watched
// group at epoch.
func (p *tamperProxy) waitSeen(t *testing.T, epoch uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		seen, _ := p.epochs()
		if slices.Contains(seen, epoch) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no GetGroupInfo answer of epoch %d went through the proxy within 30s (answers of epochs %v)", epoch, seen)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// handler reads the group id of a GetGroupInfo request, for modify, and
// passes every request on.
func (p *tamperProxy) handler(rp *httputil.ReverseProxy) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != mlsdsv1connect.GroupServiceGetGroupInfoProcedure {
			rp.ServeHTTP(w, r)
			return
		}
		if ct := r.Header.Get("Content-Type"); r.Method != http.MethodPost || ct != "application/proto" {
			p.problem("GetGroupInfo request: %s with Content-Type %q, want a POST of application/proto", r.Method, ct)
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		raw, err := decodeBody(r.Header.Get("Content-Encoding"), body)
		var req mlsdsv1.GetGroupInfoRequest
		if err == nil {
			err = proto.Unmarshal(raw, &req)
		}
		if err != nil {
			p.problem("GetGroupInfo request: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), proxyGroupKey{}, req.GroupId)))
	})
}

// modify records, and may change, a GetGroupInfo answer for the watched
// group.
func (p *tamperProxy) modify(resp *http.Response) error {
	gid, _ := resp.Request.Context().Value(proxyGroupKey{}).([]byte)
	p.mu.Lock()
	watched := gid != nil && bytes.Equal(gid, p.gid)
	p.mu.Unlock()
	if !watched || resp.StatusCode != http.StatusOK {
		return nil
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/proto" {
		p.problem("GetGroupInfo answer with Content-Type %q, want application/proto", ct)
	}
	raw, err := decodeBody(resp.Header.Get("Content-Encoding"), body)
	var res mlsdsv1.GetGroupInfoResponse
	if err == nil {
		err = proto.Unmarshal(raw, &res)
	}
	if err != nil {
		p.problem("GetGroupInfo answer: %v", err)
		return err
	}
	p.mu.Lock()
	p.seen = append(p.seen, res.Epoch)
	epoch := res.Epoch
	changed := p.tamper != nil && p.tamper(&res)
	if changed {
		p.changed = append(p.changed, epoch)
	}
	p.mu.Unlock()
	if changed {
		if raw, err = proto.Marshal(&res); err != nil {
			return err
		}
	}
	// The answer goes on uncompressed.
	resp.Header.Del("Content-Encoding")
	resp.Header.Set("Content-Length", strconv.Itoa(len(raw)))
	resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(raw)), int64(len(raw))
	return nil
}

func decodeBody(encoding string, body []byte) ([]byte, error) {
	switch encoding {
	case "", "identity":
		return body, nil
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		return io.ReadAll(zr)
	}
	return nil, fmt.Errorf("unexpected Content-Encoding %q", encoding)
}

// forkGroup makes a transparent group of alice (creator), bob (behind the
// proxy) and mallory, with the proxy watching it, and returns it with
// mallory's state, her client closed.
func forkGroup(t *testing.T) (e *testEnv, p *tamperProxy, alice, bob, mallory *tclient, gid []byte, mst *mls.Group) {
	t.Helper()
	e = startEnv(t)
	p = startTamperProxy(t, e.url)
	alice = e.client("alice")
	bob = e.open("bob", t.TempDir(), func(c *Config) { c.Server = p.url })
	mallory = e.client("mallory")
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gid = g.ID()
	p.watch(gid, nil)
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
	return e, p, alice, bob, mallory, gid, mst
}

// forkCommit makes an Update Commit of mallory (a path, no proposals) from
// a copy of mst and returns the state it leads to.
func forkCommit(t *testing.T, mst *mls.Group) (*mls.Group, *mls.MLSMessage) {
	t.Helper()
	st, err := cloneState(mst)
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := st.CommitMessage(mls.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	return st, msg
}

// sendForkCommit sends mallory's Commit msg with st's GroupInfo, as the
// SDK does.
func sendForkCommit(t *testing.T, mallory *tclient, st *mls.Group, msg *mls.MLSMessage) {
	t.Helper()
	gi, err := st.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	wire, _ := mlsMessage(msg)
	giWire, _ := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
	if _, err := mallory.rpc.groups.SendCommitBundle(ctxT(t), connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: wire, GroupInfo: giWire})); err != nil {
		t.Fatalf("the server refused mallory's Commit: %v", err)
	}
}

// Mallory's valid Update Commit is accepted with its GroupInfo; the proxy
// then answers bob's GetGroupInfo of the new epoch once with a GroupInfo of
// another group state (the fork differs in what each case names). Bob
// reports EventForked for that epoch and rejoins (EventRejoined) from the
// GroupInfo the server serves; alice, who is not behind the proxy, sees no
// fork, and both meet in one epoch and talk on.
func TestForkAfterCommitTransparent(t *testing.T) {
	cases := []struct {
		name string
		// forged returns the GroupInfo (and tree) the proxy serves in
		// place of real's.
		forged func(t *testing.T, mallory *tclient, mst, real *mls.Group) (*mls.GroupInfo, *mls.RatchetTree)
	}{
		{"another Commit of the epoch", func(t *testing.T, _ *tclient, mst, _ *mls.Group) (*mls.GroupInfo, *mls.RatchetTree) {
			other, _ := forkCommit(t, mst)
			gi, err := other.GroupInfo(false)
			if err != nil {
				t.Fatal(err)
			}
			return gi, other.Tree()
		}},
		{"confirmed transcript hash changed, re-signed", func(t *testing.T, mallory *tclient, _, real *mls.Group) (*mls.GroupInfo, *mls.RatchetTree) {
			return resigned(t, mallory, real, func(gc *mls.GroupContext) { gc.ConfirmedTranscriptHash[0] ^= 1 }), real.Tree()
		}},
		{"tree hash changed, re-signed", func(t *testing.T, mallory *tclient, _, real *mls.Group) (*mls.GroupInfo, *mls.RatchetTree) {
			return resigned(t, mallory, real, func(gc *mls.GroupContext) { gc.TreeHash[0] ^= 1 }), real.Tree()
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, p, alice, bob, mallory, gid, mst := forkGroup(t)
			real, msg := forkCommit(t, mst)
			gi, tree := tc.forged(t, mallory, mst, real)
			giWire, _ := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
			treeWire, err := tree.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			target, done := real.Epoch(), false
			p.watch(gid, func(res *mlsdsv1.GetGroupInfoResponse) bool {
				if done || res.Epoch != target {
					return false
				}
				done = true
				res.GroupInfo, res.RatchetTree = giWire, treeWire
				return true
			})
			sendForkCommit(t, mallory, real, msg)

			f := bob.waitFor("EventForked", 0, kind(EventForked, gid))
			if ev := bob.snapshot()[f]; !errors.Is(ev.Err, ErrForked) || ev.Epoch != target {
				t.Errorf("bob: EventForked: %v", describe([]Event{ev}))
			}
			bob.waitFor("EventRejoined", f+1, kind(EventRejoined, gid))
			if _, changed := p.epochs(); !slices.Equal(changed, []uint64{target}) {
				t.Errorf("the proxy changed answers of epochs %v, want just %d", changed, target)
			}
			waitEpoch(t, alice, gid, target+1)
			meet(t, gid, alice, bob)
			exchange(t, gid, 2, "after", alice, bob)
			for _, k := range []EventKind{EventForked, EventRejoined} {
				if hasEvent(alice, gid, k) {
					t.Errorf("alice, who is not behind the proxy, reported %v: %s", k, describe(alice.snapshot()))
				}
			}
		})
	}
}

// The control: through the same proxy, untouched, bob joins and follows
// mallory's Commit. The fork checks of the join and of the Commit go
// through the proxy and find nothing: no EventForked, no rejoin.
func TestForkCheckThroughProxyUntouched(t *testing.T) {
	_, p, alice, bob, mallory, gid, mst := forkGroup(t)
	joined := bob.snapshot()[bob.waitFor("EventJoined", 0, kind(EventJoined, gid))].Epoch
	p.waitSeen(t, joined) // checkJoinedFork (guard.go)
	real, msg := forkCommit(t, mst)
	sendForkCommit(t, mallory, real, msg)
	waitEpoch(t, bob, gid, real.Epoch())
	p.waitSeen(t, real.Epoch()) // maybeCheckFork (fork.go)
	exchange(t, gid, 2, "after", alice, bob)
	for _, c := range []*tclient{alice, bob} {
		for _, k := range []EventKind{EventForked, EventRejoined} {
			if hasEvent(c, gid, k) {
				t.Errorf("%s reported %v: %s", c.ID(), k, describe(c.snapshot()))
			}
		}
	}
	if got := sameEpoch(t, gid, alice, bob); got != real.Epoch() {
		t.Errorf("alice and bob are at epoch %d, want %d (mallory's Commit, no rejoin)", got, real.Epoch())
	}
	if _, changed := p.epochs(); len(changed) != 0 {
		t.Errorf("the proxy changed answers of epochs %v", changed)
	}
}

// resigned returns real's GroupInfo with its GroupContext changed by f and
// signed again by mallory (its signer), so that only the changed hash
// tells it from the real one.
func resigned(t *testing.T, mallory *tclient, real *mls.Group, f func(*mls.GroupContext)) *mls.GroupInfo {
	t.Helper()
	gi, err := real.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	gc := gi.GroupContext
	gc.TreeHash, gc.ConfirmedTranscriptHash = bytes.Clone(gc.TreeHash), bytes.Clone(gc.ConfirmedTranscriptHash)
	f(&gc)
	gi.GroupContext = gc
	if err := gi.Sign(mallory.sig); err != nil {
		t.Fatal(err)
	}
	leaf := real.Tree().Leaf(gi.Signer)
	if leaf == nil {
		t.Fatal("no leaf of the GroupInfo's signer")
	}
	if err := gi.VerifySignature(leaf.SignatureKey); err != nil {
		t.Fatalf("the re-signed GroupInfo does not verify with mallory's leaf key: %v", err)
	}
	return gi
}

// meet waits until the clients' groups are unbroken, in one epoch, with
// one epoch authenticator.
func meet(t *testing.T, gid []byte, clients ...*tclient) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		g0 := clients[0].Group(gid)
		ok := !g0.Broken()
		for _, c := range clients[1:] {
			g := c.Group(gid)
			ok = ok && !g.Broken() && g.Epoch() == g0.Epoch() && bytes.Equal(g.EpochAuthenticator(), g0.EpochAuthenticator())
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the clients do not meet in one epoch within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A server that keeps lying: every GetGroupInfo answer of the new epoch
// bob gets is the GroupInfo of mallory's other Commit. Bob reports
// EventForked and tries to rejoin from what he is served; that rejoin
// cannot succeed (the server takes no Commit on a fork it did not accept),
// so bob stays out, broken, and joins no fork: the group at the server
// does not move and alice, not behind the proxy, talks on. Once the proxy
// stops lying, bob's Rejoin brings him back.
func TestForkAfterCommitTransparentLyingServer(t *testing.T) {
	_, p, alice, bob, mallory, gid, mst := forkGroup(t)
	real, msg := forkCommit(t, mst)
	other, _ := forkCommit(t, mst)
	ogi, err := other.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	giWire, _ := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: ogi})
	treeWire, err := other.Tree().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	target := real.Epoch()
	p.watch(gid, func(res *mlsdsv1.GetGroupInfoResponse) bool {
		if res.Epoch != target {
			return false
		}
		res.GroupInfo, res.RatchetTree = giWire, treeWire
		return true
	})
	sendForkCommit(t, mallory, real, msg)
	f := bob.waitFor("EventForked", 0, kind(EventForked, gid))
	if ev := bob.snapshot()[f]; !errors.Is(ev.Err, ErrForked) || ev.Epoch != target {
		t.Errorf("bob: EventForked: %v", describe([]Event{ev}))
	}
	bg := bob.Group(gid)
	deadline := time.Now().Add(30 * time.Second)
	for {
		bg.mu.Lock()
		failures := bg.rejoinFailures
		bg.mu.Unlock()
		if failures > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob's rejoin from the forked GroupInfo did not fail within 30s; events: %s", describe(bob.snapshot()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !bg.Broken() || hasEvent(bob, gid, EventRejoined) {
		t.Fatalf("bob joined the fork: broken %v; events: %s", bg.Broken(), describe(bob.snapshot()))
	}
	ctx := ctxT(t)
	res, err := alice.rpc.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.Epoch != target {
		t.Fatalf("the server's group is at epoch %d, want %d (a Commit on the fork was accepted)", res.Msg.Epoch, target)
	}
	waitEpoch(t, alice, gid, target)
	if ag := alice.Group(gid); ag.Broken() || ag.Epoch() != target || hasEvent(alice, gid, EventForked) {
		t.Fatalf("alice, not behind the proxy: broken %v at epoch %d; events: %s", ag.Broken(), ag.Epoch(), describe(alice.snapshot()))
	}
	if _, err := alice.Group(gid).Send(ctx, []byte("while bob is out")); err != nil {
		t.Fatalf("alice: Send: %v", err)
	}

	p.watch(gid, nil)
	if err := bg.Rejoin(ctx); err != nil {
		t.Fatalf("bob: Rejoin once the server tells the truth: %v", err)
	}
	meet(t, gid, alice, bob)
	exchange(t, gid, 2, "after", alice, bob)
}
