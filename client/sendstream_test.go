package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// The tests of the Client's SendStream (sendstream.go), against the real
// server.

// pairGroup makes a group of alice with bob in it.
func pairGroup(t *testing.T, alice, bob *tclient) *Group {
	t.Helper()
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, bob.ID()); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("EventJoined", 0, kind(EventJoined, g.ID()))
	return g
}

// appLog returns the GroupSeqs of the application messages the server
// keeps for gid, and the messages at them.
func appLog(t *testing.T, c *tclient, gid []byte) ([]uint64, [][]byte) {
	t.Helper()
	var seqs []uint64
	var msgs [][]byte
	from := uint64(0)
	for {
		res, err := c.rpc.groups.Fetch(ctxT(t), connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid, FromSeq: from}))
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		for _, env := range res.Msg.Messages {
			if env.ContentType == mlsdsv1.ContentType_CONTENT_TYPE_APPLICATION {
				seqs = append(seqs, env.GroupSeq)
				msgs = append(msgs, env.Message)
			}
		}
		if len(res.Msg.Messages) == 0 || res.Msg.NextSeq <= from {
			return seqs, msgs
		}
		from = res.Msg.NextSeq
	}
}

// sendReaders counts the goroutines of send streams that are running.
func sendReaders() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("client.(*sendConn).read"))
}

// waitNoSendReaders fails unless the send streams' goroutines end soon
// (they end on Close; the wait is for the scheduler, not a speed check).
func waitNoSendReaders(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); sendReaders() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d send stream reader(s) still running after Close", sendReaders())
		}
	}
}

// TestSendStreamCarriesSends: a Client's application messages and
// proposals go over one SendStream, not as Send calls, arrive in order,
// and Close ends the stream's goroutine.
func TestSendStreamCarriesSends(t *testing.T) {
	e := startEnv(t)
	var calls callCounter
	alice, bob := e.open("alice", t.TempDir(), calls.install), e.client("bob")
	g := pairGroup(t, alice, bob)
	ctx := ctxT(t)
	var want []string
	var last uint64
	for i := range 20 {
		m := fmt.Sprintf("m%d", i)
		rc, err := g.Send(ctx, []byte(m))
		if err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
		if rc.Seq <= last {
			t.Errorf("Send %d: receipt seq %d after %d", i, rc.Seq, last)
		}
		last = rc.Seq
		want = append(want, "alice:"+m)
	}
	if _, err := g.ProposeUpdate(ctx); err != nil {
		t.Fatalf("ProposeUpdate: %v", err)
	}
	if got := bob.waitMessages(g.ID(), 20); !slices.Equal(got, want) {
		t.Errorf("bob got %v, want %v", got, want)
	}
	if n := calls.get("Send"); n != 0 {
		t.Errorf("%d unary Send calls; want all sends on the stream", n)
	}
	if n := calls.get("SendStream"); n != 1 {
		t.Errorf("%d SendStream calls; want 1 for all the sends", n)
	}
	if n := alice.rpc.sends.opened.Load(); n != 1 {
		t.Errorf("%d send streams opened, want 1", n)
	}
	if sendReaders() == 0 {
		t.Errorf("no send stream reader is running while the client is open")
	}
	alice.Close()
	bob.Close()
	waitNoSendReaders(t)
}

// TestSendStreamConcurrent: many goroutines send through one Client in
// several groups at once; each message gets its receipt and is in its
// group's log once, each goroutine's messages in their order, all over
// one stream.
func TestSendStreamConcurrent(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	const groups, perGroup, each = 3, 3, 15
	var gs []*Group
	for range groups {
		gs = append(gs, pairGroup(t, alice, bob))
	}
	ctx := ctxT(t)
	type sent struct {
		seq uint64
		msg string
	}
	results := make([][]sent, groups*perGroup)
	var wg sync.WaitGroup
	for i := range groups * perGroup {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := gs[i%groups]
			for j := range each {
				m := fmt.Sprintf("w%d-%d", i, j)
				rc, err := g.Send(ctx, []byte(m))
				if err != nil {
					t.Errorf("goroutine %d, message %d: %v", i, j, err)
					return
				}
				results[i] = append(results[i], sent{rc.Seq, m})
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for gi, g := range gs {
		seqs, _ := appLog(t, alice, g.ID())
		var receipts []uint64
		for i := gi; i < groups*perGroup; i += groups {
			for j := 1; j < len(results[i]); j++ {
				if results[i][j].seq <= results[i][j-1].seq {
					t.Errorf("group %d, goroutine %d: message %d got seq %d after %d", gi, i, j, results[i][j].seq, results[i][j-1].seq)
				}
			}
			for _, s := range results[i] {
				receipts = append(receipts, s.seq)
			}
		}
		slices.Sort(receipts)
		if !slices.Equal(seqs, receipts) {
			t.Errorf("group %d: the server's log has application messages at %v, the receipts say %v", gi, seqs, receipts)
		}
		// bob gets each goroutine's messages once, in its order.
		got := bob.waitMessages(g.ID(), perGroup*each)
		for i := gi; i < groups*perGroup; i += groups {
			var mine, want []string
			for _, m := range got {
				if strings.HasPrefix(m, fmt.Sprintf("alice:w%d-", i)) {
					mine = append(mine, m)
				}
			}
			for _, s := range results[i] {
				want = append(want, "alice:"+s.msg)
			}
			if !slices.Equal(mine, want) {
				t.Errorf("bob got %v from goroutine %d, want %v", mine, i, want)
			}
		}
	}
	if n := alice.rpc.sends.opened.Load(); n != 1 {
		t.Errorf("%d send streams opened, want 1", n)
	}
}

// TestSendStreamRefusals: what the server refuses on the stream comes back
// as the error a unary Send gets for it: code, message and details, so
// that WrongEpoch still means "rebase".
func TestSendStreamRefusals(t *testing.T) {
	e := startEnv(t)
	var calls callCounter
	alice, bob := e.open("alice", t.TempDir(), calls.install), e.client("bob")
	mallory := e.client("mallory")
	g := pairGroup(t, alice, bob)
	ctx := ctxT(t)

	// An Update proposal of epoch 1 (made on a copy of the state), sent
	// once the group is in epoch 2; and a message of epoch 2.
	g.mu.Lock()
	b, err := g.st.MarshalBinary()
	g.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	st, err := mls.UnmarshalGroup(b)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := st.ProposeUpdate()
	if err != nil {
		t.Fatal(err)
	}
	old, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Update(ctx); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	sealed, err := g.st.Seal([]byte("current"), nil)
	g.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	current, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: sealed})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		c     *tclient
		msg   []byte
		check func(error) bool
	}{
		{"old epoch", alice, old, epochConflict},
		{"not a member", mallory, current, func(error) bool { return true }},
		{"garbage", alice, []byte("not an MLSMessage"), func(error) bool { return true }},
	}
	for _, tc := range cases {
		before := tc.c.rpc.sends.opened.Load()
		_, serr := tc.c.rpc.groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: tc.msg}))
		_, uerr := tc.c.rpc.sends.gs.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: tc.msg}))
		if serr == nil || uerr == nil {
			t.Errorf("%s: stream: %v, unary: %v; want refusals", tc.name, serr, uerr)
			continue
		}
		if tc.c.rpc.sends.opened.Load() == 0 || tc.c.rpc.sends.useUnary() {
			t.Errorf("%s: the stream was not used (opened %d, before %d)", tc.name, tc.c.rpc.sends.opened.Load(), before)
		}
		var sce, uce *connect.Error
		if !errors.As(serr, &sce) || !errors.As(uerr, &uce) {
			t.Errorf("%s: stream %T %v, unary %T %v; want *connect.Error both", tc.name, serr, serr, uerr, uerr)
			continue
		}
		if sce.Code() != uce.Code() || sce.Message() != uce.Message() {
			t.Errorf("%s: stream %q, unary %q", tc.name, serr, uerr)
		}
		if !tc.check(serr) || tc.check(serr) != tc.check(uerr) {
			t.Errorf("%s: the stream's error %v does not classify as the unary one %v", tc.name, serr, uerr)
		}
		if epochConflict(serr) != epochConflict(uerr) || transient(serr) != transient(uerr) {
			t.Errorf("%s: epochConflict/transient differ: stream %v, unary %v", tc.name, serr, uerr)
		}
		var st, ut []string
		for _, d := range sce.Details() {
			st = append(st, d.Type())
		}
		for _, d := range uce.Details() {
			ut = append(ut, d.Type())
		}
		if !slices.Equal(st, ut) {
			t.Errorf("%s: details %v on the stream, %v by unary Send", tc.name, st, ut)
		}
	}
	// The refusals did not break the stream.
	if _, err := g.Send(ctx, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if n := calls.get("SendStream"); n != 1 {
		t.Errorf("alice opened %d SendStreams; the refusals should not end hers", n)
	}
}

// cutProxy is a TCP proxy in front of the server that, once armed, cuts
// each connection after a random number of bytes in one direction or the
// other, so that calls break in the middle: messages sent and never
// answered, answers lost on the way.
type cutProxy struct {
	addr   string
	armed  atomic.Bool
	cuts   atomic.Int64
	min    int
	spread int
}

func startCutProxy(t *testing.T, backend string, min, spread int) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{addr: ln.Addr().String(), min: min, spread: spread}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", backend)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			budget := p.min + rand.IntN(p.spread)
			up := rand.IntN(2) == 0
			if !up {
				budget /= 4 // answers are smaller than messages
			}
			var once sync.Once
			cut := func(counted bool) {
				once.Do(func() {
					if counted {
						p.cuts.Add(1)
					}
					in.Close()
					out.Close()
				})
			}
			pipe := func(dst, src net.Conn, limited bool) {
				defer wg.Done()
				buf := make([]byte, 4096)
				used := 0
				for {
					n, err := src.Read(buf)
					if n > 0 && limited && p.armed.Load() {
						if used+n >= budget {
							dst.Write(buf[:budget-used])
							cut(true)
							return
						}
						used += n
					}
					if n > 0 {
						if _, werr := dst.Write(buf[:n]); werr != nil {
							cut(false)
							return
						}
					}
					if err != nil {
						cut(false)
						return
					}
				}
			}
			wg.Add(2)
			go pipe(out, in, up)
			go pipe(in, out, !up)
		}
	}()
	return p
}

// TestSendStreamCut: connections that break in the middle of the stream
// lose no message and duplicate none: every message is in the group's
// log once, in the order sent, and the receipts name them.
func TestSendStreamCut(t *testing.T) {
	e := startEnv(t)
	p := startCutProxy(t, e.addr, 1500, 3000)
	alice := e.open("alice", t.TempDir(), func(c *Config) { c.Server = "http://" + p.addr })
	bob := e.client("bob")
	g := pairGroup(t, alice, bob)
	ctx := ctxT(t)
	p.armed.Store(true)
	const n = 150
	var receipts []uint64
	var want []string
	for i := range n {
		m := fmt.Sprintf("m%d", i)
		rc, err := g.Send(ctx, []byte(m))
		if err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
		receipts = append(receipts, rc.Seq)
		want = append(want, "alice:"+m)
	}
	if !slices.IsSorted(receipts) {
		t.Errorf("receipts out of order: %v", receipts)
	}
	seqs, msgs := appLog(t, bob, g.ID())
	if !slices.Equal(seqs, receipts) {
		t.Errorf("the server's log has application messages at %v, the receipts say %v", seqs, receipts)
	}
	for i := 1; i < len(msgs); i++ {
		if bytes.Equal(msgs[i], msgs[i-1]) {
			t.Errorf("the message at %d is in the log twice", seqs[i])
		}
	}
	if got := bob.waitMessages(g.ID(), n); !slices.Equal(got, want) {
		t.Errorf("bob got %v", got)
	}
	bob.noUndecryptable()
	t.Logf("%d connections cut, %d send streams opened", p.cuts.Load(), alice.rpc.sends.opened.Load())
	if p.cuts.Load() < 3 || alice.rpc.sends.opened.Load() < 3 {
		t.Errorf("%d cuts, %d send streams: the test did not break streams in the middle", p.cuts.Load(), alice.rpc.sends.opened.Load())
	}
	if alice.rpc.sends.useUnary() {
		t.Errorf("the broken streams made alice give up on SendStream")
	}
}

// frontProxy is an h2c reverse proxy in front of the server that answers
// 404 for SendStream: an older server, or a front that does not route it.
func startFrontProxy(t *testing.T, backend string) string {
	t.Helper()
	target, err := url.Parse(backend)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	rp := &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport:     tr,
		FlushInterval: -1,
		ErrorLog:      log.New(io.Discard, "", 0),
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/SendStream") {
			http.NotFound(w, r)
			return
		}
		rp.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: h, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		tr.CloseIdleConnections()
	})
	return "http://" + ln.Addr().String()
}

// TestSendStreamFallback: where SendStream is not there (a front that
// answers 404, which Connect reads as Unimplemented) or cannot be (an
// HTTP/1.1 client), the Client tries it once and sends by unary Send from
// then on, starting with the message the stream did not take.
func TestSendStreamFallback(t *testing.T) {
	e := startEnv(t)
	front := startFrontProxy(t, e.url)
	for _, tc := range []struct {
		name  string
		front bool
	}{
		{"404 front", true},
		{"HTTP/1.1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls callCounter
			id := strings.NewReplacer(" ", "-", "/", "").Replace(strings.ToLower(tc.name))
			alice := e.open("alice-"+id, t.TempDir(), func(c *Config) {
				if tc.front {
					c.Server = front
				}
				calls.install(c)
				if !tc.front {
					calls.rt = &http.Transport{} // HTTP/1.1 only
				}
			})
			bob := e.client("bob-" + id)
			g := pairGroup(t, alice, bob)
			ctx := ctxT(t)
			var want []string
			for i := range 5 {
				m := fmt.Sprintf("m%d", i)
				if _, err := g.Send(ctx, []byte(m)); err != nil {
					t.Fatalf("Send %d: %v", i, err)
				}
				want = append(want, alice.ID()+":"+m)
			}
			if got := bob.waitMessages(g.ID(), 5); !slices.Equal(got, want) {
				t.Errorf("bob got %v, want %v", got, want)
			}
			if n := calls.get("SendStream"); n != 1 {
				t.Errorf("SendStream tried %d times, want once", n)
			}
			if n := calls.get("Send"); n != 5 {
				t.Errorf("%d unary Sends, want 5", n)
			}
			if !alice.rpc.sends.useUnary() {
				t.Errorf("the client did not switch to unary Send")
			}
		})
	}
}

// TestSendStreamSessionRenewal: with a short session, the client renews
// its token while it sends; the stream is opened again with the new token
// (or ends when the old one expires) and no message is lost or fails.
func TestSendStreamSessionRenewal(t *testing.T) {
	e := startEnv(t, func(_ *ds.Config, s *server.Config) { s.SessionTTL = 2 * time.Second })
	alice, bob := e.client("alice"), e.client("bob")
	g := pairGroup(t, alice, bob)
	ctx := ctxT(t)
	logins := alice.rpc.loginCount()
	var want []string
	for i := 0; i < 60; i++ {
		m := fmt.Sprintf("m%d", i)
		if _, err := g.Send(ctx, []byte(m)); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
		want = append(want, "alice:"+m)
		time.Sleep(100 * time.Millisecond) // 6s of sending with a 2s session
	}
	if got := bob.waitMessages(g.ID(), len(want)); !slices.Equal(got, want) {
		t.Errorf("bob got %v", got)
	}
	if n := alice.rpc.loginCount() - logins; n < 2 {
		t.Errorf("alice logged in %d times over 6s with 2s sessions", n)
	}
	if n := alice.rpc.sends.opened.Load(); n < 2 {
		t.Errorf("%d send streams over 6s with 2s sessions; want one per session", n)
	}
	// A token the server refuses: the stream ends, the client logs in
	// again and the message goes on a new stream.
	alice.rpc.tokMu.Lock()
	alice.rpc.token, alice.rpc.expires = "v1.bogus", time.Now().Add(time.Hour)
	alice.rpc.tokMu.Unlock()
	if _, err := g.Send(ctx, []byte("bogus")); err != nil {
		t.Fatalf("Send with a refused token: %v", err)
	}
	if alice.rpc.sends.useUnary() {
		t.Errorf("the ended sessions made alice give up on SendStream")
	}
}

// TestSendStreamCallerGivesUp: a caller whose context ends stops waiting;
// the others on the same stream get their answers.
func TestSendStreamCallerGivesUp(t *testing.T) {
	e := startEnv(t)
	var calls callCounter
	alice, bob := e.open("alice", t.TempDir(), calls.install), e.client("bob")
	g1, g2 := pairGroup(t, alice, bob), pairGroup(t, alice, bob)
	ctx := ctxT(t)
	if _, err := g1.Send(ctx, []byte("warm")); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := g1.Send(short, []byte("never")); !errors.Is(err, context.Canceled) {
		t.Errorf("Send with an ended context: %v, want context.Canceled", err)
	}
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(3)
		c2, cancel2 := context.WithCancel(ctx)
		go func() {
			defer wg.Done()
			g1.Send(c2, []byte(fmt.Sprintf("maybe%d", i))) // either way
		}()
		go func() {
			defer wg.Done()
			cancel2()
		}()
		go func() {
			defer wg.Done()
			if _, err := g2.Send(ctx, []byte(fmt.Sprintf("sure%d", i))); err != nil {
				t.Errorf("Send %d next to one that gave up: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if got := bob.waitMessages(g2.ID(), 10); len(got) != 10 {
		t.Errorf("bob got %v in group 2", got)
	}
	if n := calls.get("Send"); n != 0 || calls.get("SendStream") == 0 {
		t.Errorf("%d unary Sends, %d SendStreams; want the sends on streams", n, calls.get("SendStream"))
	}
}

// TestEnvelopeReader: a stream's request body, written as Connect writes
// it (each envelope as its prefix, then the rest), reads back one whole
// envelope per Read, so that each message leaves in one HTTP/2 frame; and
// the bytes are the same.
func TestEnvelopeReader(t *testing.T) {
	pr, pw := io.Pipe()
	sizes := []int{0, 1, 300, 70_000, 5, 250}
	var want bytes.Buffer
	go func() {
		for i, n := range sizes {
			prefix := []byte{0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
			data := bytes.Repeat([]byte{byte('a' + i)}, n)
			pw.Write(prefix)
			pw.Write(data)
		}
		pw.Close()
	}()
	for i, n := range sizes {
		prefix := []byte{0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
		want.Write(prefix)
		want.Write(bytes.Repeat([]byte{byte('a' + i)}, n))
	}
	r := &envelopeReader{r: pr}
	var got bytes.Buffer
	buf := make([]byte, 32<<10)
	var reads []int
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if n > 0 {
			reads = append(reads, n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("read %d bytes, not the %d written", got.Len(), want.Len())
	}
	// Each small envelope in one Read; the large one fills the buffer.
	wantReads := []int{5, 6, 305, 32 << 10, 32 << 10, 70_005 - 64<<10, 10, 255}
	if !slices.Equal(reads, wantReads) {
		t.Errorf("reads of %v bytes, want %v", reads, wantReads)
	}
}

// TestSendOneStateWrite: a Send writes the group's state once, before the
// message leaves (a restart must not seal again with the same key and
// nonce); the position past the message waits for the next write. A
// client that stops in between fetches its own message again, passes over
// it without an event, and goes on sending.
func TestSendOneStateWrite(t *testing.T) {
	e := startEnv(t)
	dir := t.TempDir()
	alice, bob := e.open("alice", dir), e.client("bob")
	g := pairGroup(t, alice, bob)
	ctx := ctxT(t)
	gid := g.ID()
	before := alice.db.groupWrites.Load()
	const n = 10
	for i := range n {
		if _, err := g.Send(ctx, []byte(fmt.Sprintf("m%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if w := alice.db.groupWrites.Load() - before; w != n {
		t.Errorf("%d Sends made %d state writes, want %d (one each, before the message leaves)", n, w, n)
	}
	bob.waitMessages(gid, n)
	alice.Close()

	alice2 := e.open("alice", dir)
	if err := alice2.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	g2 := alice2.Group(gid)
	if err := g2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ev := range alice2.snapshot() {
		if ev.Kind == EventMessage || ev.Kind == EventUndecryptable {
			t.Errorf("after the restart alice got %v", describe([]Event{ev}))
		}
	}
	if _, err := g2.Send(ctx, []byte("after")); err != nil {
		t.Fatal(err)
	}
	want := []string{}
	for i := range n {
		want = append(want, fmt.Sprintf("alice:m%d", i))
	}
	want = append(want, "alice:after")
	if got := bob.waitMessages(gid, n+1); !slices.Equal(got, want) {
		t.Errorf("bob got %v", got)
	}
	bob.noUndecryptable()
}

// BenchmarkSendPath compares a Client's Sends over its SendStream with
// unary Send calls, through a real server on loopback (in this process),
// in-memory client state: one goroutine sending, and 8 goroutines in 8
// groups of one Client. cpu-us/op is the process's CPU time (client and server) per
// message, from getrusage.
func BenchmarkSendPath(b *testing.B) {
	for _, path := range []string{"stream", "unary"} {
		for _, par := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/senders=%d", path, par), func(b *testing.B) {
				e := startEnv(b)
				ctx := context.Background()
				open := func(id string) *Client {
					c, err := Open(ctx, Config{Server: e.url, ClientID: id, Logger: quiet, KeyPackages: par + 1})
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { c.Close() })
					go func() {
						for range c.Events() {
						}
					}()
					return c
				}
				alice := open("alice")
				open("bob")
				if path == "unary" {
					alice.rpc.sends.mu.Lock()
					alice.rpc.sends.unary = true
					alice.rpc.sends.mu.Unlock()
				}
				var gs []*Group
				for range par {
					g, err := alice.CreateGroup(ctx, GroupOptions{})
					if err != nil {
						b.Fatal(err)
					}
					if err := g.Add(ctx, "bob"); err != nil {
						b.Fatal(err)
					}
					gs = append(gs, g)
				}
				msg := make([]byte, 100)
				var left atomic.Int64
				left.Store(int64(b.N))
				cpu0 := processCPU()
				b.ResetTimer()
				var wg sync.WaitGroup
				for _, g := range gs {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for left.Add(-1) >= 0 {
							if _, err := g.Send(ctx, msg); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
			})
		}
	}
}

// processCPU is the CPU time the process used so far, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
