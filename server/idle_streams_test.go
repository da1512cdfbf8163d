package server_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
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

// Resource bounds of idle Subscribe streams (issue 7).
//
// The test opens N Subscribe streams of N distinct clients, waits until
// every one has had its caught_up event, and then leaves them idle. It
// measures what the process holds before and after: heap in use, goroutine
// stacks and goroutines. Client and server run in the same process, so the
// raw figures include the client's side of each stream too; a heap profile
// taken at a sampling rate of one byte splits them into server, client and
// other.
//
// By default N is 1,000 (200 with -short). The 10,000-stream run of the
// issue takes about half a minute on an idle two-core machine (minutes on
// a loaded one), measures the idle CPU too, and is opt-in:
//
//	MLSDS_IDLE_STREAMS=10000 go test ./server -run TestIdleStreams -v -timeout 30m
//
// MLSDS_IDLE_DEBUG=1 also logs the most common goroutine stacks and the
// largest live heap allocation sites.
//
// BenchmarkIdleStreams runs the same measurement and reports the figures
// as metrics (N from the same variable, default 1,000).

// maxServerBytesPerIdleStream bounds the server's memory for one idle
// stream: the live heap its code allocated plus its share of goroutine
// stacks. An idle stream costs the server one goroutine (the HTTP/2
// handler's; an idle subscription has none) and its stack, an HTTP/2
// stream, a Connect call and the subscription's small state: about
// 20 KiB. 32 KiB leaves room; a stream that kept what it sent, grew per
// event or held a goroutine and an event buffer of its own would go over
// it. maxBytesPerIdleStream bounds both sides together, as the process
// measures them without the profile's attribution.
const (
	maxServerBytesPerIdleStream = 32 << 10
	maxBytesPerIdleStream       = 80 << 10
)

// idleStreamsN is the number of streams of the test and the benchmark.
func idleStreamsN(tb testing.TB) int {
	if s := os.Getenv("MLSDS_IDLE_STREAMS"); s != "" && !testing.Short() {
		n, err := strconv.Atoi(s)
		if err != nil || n < 10 {
			tb.Fatalf("MLSDS_IDLE_STREAMS=%q: want a number of streams, at least 10", s)
		}
		return n
	}
	if testing.Short() {
		return 200
	}
	return 1000
}

type idleStreamsResult struct {
	n                int
	heapPerStream    float64 // HeapInuse growth / n, whole process
	stackPerStream   float64 // StackInuse growth / n, whole process
	serverPerStream  float64 // live heap allocated by the server's code / n (profile)
	clientPerStream  float64 // live heap allocated by the client's code / n (profile)
	otherPerStream   float64 // live heap not attributed / n (profile)
	goroutinesPer    float64 // goroutine growth / n, whole process
	serverGoroutines float64 // goroutines running server code / n
	setup, open      time.Duration
	idleCPU          float64 // CPU seconds per second with all streams idle (opt-in run only)
}

// serverBytes estimates the server's cost of one stream: the heap its code
// holds, plus the stacks of its goroutines, taken as the server's share of
// all goroutines times the average stack (the runtime does not report
// stack sizes by goroutine).
func (r idleStreamsResult) serverBytes() float64 {
	if r.goroutinesPer <= 0 {
		return r.serverPerStream
	}
	return r.serverPerStream + r.stackPerStream*r.serverGoroutines/r.goroutinesPer
}

func TestIdleStreams(t *testing.T) {
	r := runIdleStreams(t, idleStreamsN(t))
	t.Logf("%d idle streams: server about %.0f B/stream; %.0f B/stream heap + %.0f B/stream stacks (whole process); "+
		"heap by origin: server %.0f B, client %.0f B, other %.0f B per stream; "+
		"%.2f goroutines/stream (%.2f of them the server's); setup %v, opening %v",
		r.n, r.serverBytes(), r.heapPerStream, r.stackPerStream, r.serverPerStream, r.clientPerStream, r.otherPerStream,
		r.goroutinesPer, r.serverGoroutines, r.setup.Round(time.Millisecond), r.open.Round(time.Millisecond))
	if r.idleCPU > 0 {
		t.Logf("idle: the process used %.2f CPU seconds per second with the %d streams idle (each subscription polls the store every 5s)", r.idleCPU, r.n)
	}
}

func BenchmarkIdleStreams(b *testing.B) {
	n := idleStreamsN(b)
	var r idleStreamsResult
	for b.Loop() {
		r = runIdleStreams(b, n)
	}
	b.ReportMetric(float64(n), "streams")
	b.ReportMetric(r.heapPerStream+r.stackPerStream, "B/stream")
	b.ReportMetric(r.serverBytes(), "server-B/stream")
	b.ReportMetric(r.goroutinesPer, "goroutines/stream")
	b.ReportMetric(r.serverGoroutines, "server-goroutines/stream")
}

// idleStream is the client's end of one stream. Nobody reads it once it
// has caught up: an idle client costs no goroutine of its own.
type idleStream struct {
	stream *connect.ServerStreamForClient[mlsdsv1.SubscribeResponse]
	cancel context.CancelFunc
}

func runIdleStreams(tb testing.TB, n int) idleStreamsResult {
	tb.Helper()
	res := idleStreamsResult{n: n}
	start := time.Now()
	e := startEnv(tb, func(d *ds.Config, s *server.Config) {
		d.PollInterval = 5 * time.Second // the production default, not the harness's 1s
		s.AuthRatePerSecond = -1         // no per-IP limit on registration and login
		s.KeepAlive = 30 * time.Second
	})
	// Streams go over as many HTTP/2 connections as the server's limit of
	// concurrent streams per connection (250) requires: the transport
	// dials another connection when one is full.

	members := make([]*member, n)
	for i := range members {
		members[i] = e.newMember(fmt.Sprintf("idle%05d", i))
	}
	idleParallel(tb, n, 4*runtime.GOMAXPROCS(0), func(i int) error {
		m := members[i]
		if _, err := m.auth.RegisterClient(context.Background(), connect.NewRequest(m.registerReq(""))); err != nil {
			return fmt.Errorf("RegisterClient(%s): %w", m.id, err)
		}
		tok, err := m.tryLogin()
		if err != nil {
			return fmt.Errorf("login(%s): %w", m.id, err)
		}
		m.token = tok
		return nil
	})
	// A group of a few of the idle clients, to check that a message still
	// gets through.
	gid := groupID("idle")
	sender, receivers := members[0], members[1:min(5, n)]
	sender.createOpaqueGroup(gid, receivers...)
	res.setup = time.Since(start)

	oldRate := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	defer func() { runtime.MemProfileRate = oldRate }()
	before := idleSnapshot()

	start = time.Now()
	streams := make([]idleStream, n)
	idleParallel(tb, n, 32, func(i int) error {
		m := members[i]
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := m.delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
		if err != nil {
			cancel()
			return fmt.Errorf("Subscribe(%s): %w", m.id, err)
		}
		streams[i] = idleStream{stream, cancel}
		for stream.Receive() {
			if stream.Msg().GetCaughtUp() != nil {
				return nil
			}
		}
		return fmt.Errorf("stream of %s ended before caught_up: %v", m.id, stream.Err())
	})
	res.open = time.Since(start)
	closeAll := func() {
		for _, s := range streams {
			if s.cancel != nil {
				s.cancel()
				s.stream.Close()
			}
		}
	}
	defer closeAll()

	after := idleSnapshot()
	if os.Getenv("MLSDS_IDLE_DEBUG") != "" {
		tb.Logf("goroutines:\n%s", idleTopStacks(6))
		tb.Logf("heap sites:\n%s", idleTopHeap(25))
	}
	fn := float64(n)
	res.heapPerStream = float64(int64(after.mem.HeapInuse)-int64(before.mem.HeapInuse)) / fn
	res.stackPerStream = float64(int64(after.mem.StackInuse)-int64(before.mem.StackInuse)) / fn
	res.serverPerStream = float64(after.heap["server"]-before.heap["server"]) / fn
	res.clientPerStream = float64(after.heap["client"]-before.heap["client"]) / fn
	res.otherPerStream = float64(after.heap["other"]-before.heap["other"]) / fn
	res.goroutinesPer = float64(after.goroutines-before.goroutines) / fn
	res.serverGoroutines = float64(after.serverGoroutines-before.serverGoroutines) / fn
	runtime.MemProfileRate = oldRate

	// What idle streams cost in CPU: the process's CPU time over one poll
	// interval, in which every subscription re-reads the store once. Only
	// in the opt-in run, as it takes a few seconds.
	if os.Getenv("MLSDS_IDLE_STREAMS") != "" {
		var r0, r1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
		t0 := time.Now()
		time.Sleep(5 * time.Second)
		syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		cpu := time.Duration(r1.Utime.Nano()+r1.Stime.Nano()-r0.Utime.Nano()-r0.Stime.Nano()) * time.Nanosecond
		res.idleCPU = cpu.Seconds() / time.Since(t0).Seconds()
	}

	if per := res.heapPerStream + res.stackPerStream; per > maxBytesPerIdleStream {
		tb.Errorf("an idle stream costs the process %.0f bytes (heap %.0f + stacks %.0f, client and server), want at most %d",
			per, res.heapPerStream, res.stackPerStream, maxBytesPerIdleStream)
	}
	if per := res.serverBytes(); per > maxServerBytesPerIdleStream {
		tb.Errorf("an idle stream costs the server %.0f bytes (heap %.0f + its share of stacks), want at most %d",
			per, res.serverPerStream, maxServerBytesPerIdleStream)
	}

	// A message to the group reaches an idle member.
	receipt := sender.mustSend(privateMessage(tb, gid, 0, mls.ContentTypeApplication, 100))
	if len(receivers) > 0 {
		s := streams[1].stream
		got := make(chan error, 1)
		go func() {
			for s.Receive() {
				if env := s.Msg().GetMessage(); env != nil {
					if string(env.GroupId) != string(gid) || env.GroupSeq != receipt.GroupSeq {
						got <- fmt.Errorf("got message %x/%d, want %x/%d", env.GroupId, env.GroupSeq, gid, receipt.GroupSeq)
					} else {
						got <- nil
					}
					return
				}
			}
			got <- fmt.Errorf("stream ended: %v", s.Err())
		}()
		select {
		case err := <-got:
			if err != nil {
				tb.Errorf("idle member %s: %v", receivers[0].id, err)
			}
		case <-time.After(30 * time.Second): // a hang, not a speed check
			tb.Errorf("idle member %s got no message within 30s", receivers[0].id)
			streams[1].cancel()
			<-got
		}
	}

	// Closing every stream gives back their goroutines.
	// The client's connections close once idle (the resets of the streams
	// may still be on their way), taking the connections' goroutines on
	// both sides with them.
	closeAll()
	const slack = 20
	deadline := time.Now().Add(30 * time.Second)
	var g int
	for {
		e.http.CloseIdleConnections()
		g = runtime.NumGoroutine()
		if g <= before.goroutines+slack || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if g > before.goroutines+slack {
		tb.Errorf("%d goroutines 30s after closing %d streams, %d before opening them: streams leak goroutines\n%s",
			g, n, before.goroutines, idleTopStacks(5))
	}
	return res
}

// parallel runs fn(0..n-1) on workers goroutines and fails tb with the
// first error.
func idleParallel(tb testing.TB, n, workers int, fn func(i int) error) {
	tb.Helper()
	var next atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n)) // stop the others
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		tb.Fatal(first)
	}
}

type idleMemSnapshot struct {
	mem              runtime.MemStats
	heap             map[string]int64 // live heap bytes by origin
	goroutines       int
	serverGoroutines int
}

// snapshot measures the process after two garbage collections (the heap
// profile describes the heap as of the last completed one).
func idleSnapshot() idleMemSnapshot {
	runtime.GC()
	runtime.GC()
	var s idleMemSnapshot
	runtime.ReadMemStats(&s.mem)
	s.goroutines = runtime.NumGoroutine()
	s.heap = idleHeapByOrigin()
	s.serverGoroutines = idleServerGoroutines()
	return s
}

// origin says whose code allocated or runs in a stack: the test's client
// side (the generated clients, the HTTP/2 client transport, the test
// itself) or the server side (our server and ds packages, Connect's
// handlers, the HTTP server).
func idleOrigin(funcs []string) string {
	for _, f := range funcs {
		switch {
		case strings.Contains(f, "server_test."),
			strings.Contains(f, "http2ClientConn"),
			strings.Contains(f, "http2clientStream"),
			strings.Contains(f, "http2Transport"),
			strings.Contains(f, "net/http.(*Transport)"),
			strings.Contains(f, "net/http.(*persistConn)"),
			strings.Contains(f, "connect.(*Client"),
			strings.Contains(f, "connect.(*duplexHTTPCall)"),
			strings.Contains(f, "ForClient"):
			return "client"
		}
	}
	for _, f := range funcs {
		switch {
		case strings.Contains(f, "github.com/mlsds/mlsds/server."),
			strings.Contains(f, "github.com/mlsds/mlsds/ds."),
			strings.Contains(f, "http2serverConn"),
			strings.Contains(f, "http2responseWriter"),
			strings.Contains(f, "net/http.(*conn)"),
			strings.Contains(f, "net/http.(*Server)"),
			strings.Contains(f, "connect.(*Handler)"),
			strings.Contains(f, "HandlerConn"):
			return "server"
		}
	}
	return "other"
}

func idleStackFuncs(pcs []uintptr) []string {
	var out []string
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		out = append(out, f.Function)
		if !more {
			return out
		}
	}
}

func idleHeapByOrigin() map[string]int64 {
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, false)
	for {
		recs = make([]runtime.MemProfileRecord, n+100)
		var ok bool
		n, ok = runtime.MemProfile(recs, false)
		if ok {
			recs = recs[:n]
			break
		}
	}
	out := map[string]int64{}
	for i := range recs {
		out[idleOrigin(idleStackFuncs(recs[i].Stack()))] += recs[i].InUseBytes()
	}
	return out
}

func idleGoroutineStacks() [][]string {
	var recs []runtime.StackRecord
	n, _ := runtime.GoroutineProfile(nil)
	for {
		recs = make([]runtime.StackRecord, n+100)
		var ok bool
		n, ok = runtime.GoroutineProfile(recs)
		if ok {
			recs = recs[:n]
			break
		}
	}
	out := make([][]string, len(recs))
	for i := range recs {
		out[i] = idleStackFuncs(recs[i].Stack())
	}
	return out
}

func idleServerGoroutines() int {
	c := 0
	for _, s := range idleGoroutineStacks() {
		if idleOrigin(s) == "server" {
			c++
		}
	}
	return c
}

// topStacks describes the most common goroutine stacks, for a leak report.
func idleTopStacks(k int) string {
	count := map[string]int{}
	for _, s := range idleGoroutineStacks() {
		count[strings.Join(s, " < ")]++
	}
	var b strings.Builder
	for range k {
		best, bc := "", 0
		for s, c := range count {
			if c > bc {
				best, bc = s, c
			}
		}
		if bc == 0 {
			break
		}
		fmt.Fprintf(&b, "%d × %s\n", bc, best)
		delete(count, best)
	}
	return b.String()
}

// idleTopHeap describes the largest live heap allocation sites, for
// MLSDS_IDLE_DEBUG.
func idleTopHeap(k int) string {
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, false)
	for {
		recs = make([]runtime.MemProfileRecord, n+100)
		var ok bool
		n, ok = runtime.MemProfile(recs, false)
		if ok {
			recs = recs[:n]
			break
		}
	}
	by := map[string]int64{}
	for i := range recs {
		fs := idleStackFuncs(recs[i].Stack())
		if len(fs) > 4 {
			fs = fs[:4]
		}
		by[idleOrigin(idleStackFuncs(recs[i].Stack()))+": "+strings.Join(fs, " < ")] += recs[i].InUseBytes()
	}
	var b strings.Builder
	for range k {
		best, bc := "", int64(0)
		for s, c := range by {
			if c > bc {
				best, bc = s, c
			}
		}
		if bc == 0 {
			break
		}
		fmt.Fprintf(&b, "%d B %s\n", bc, best)
		delete(by, best)
	}
	return b.String()
}
