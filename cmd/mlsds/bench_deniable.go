package main

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/client"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/internal/loadgen"
)

// `mlsds bench --mode deniable` puts deniable groups (the SDK's
// GroupOptions.Deniable) next to opaque ones on one server, in one run:
// the same number of groups and members, every member an SDK client, the
// senders sending application messages for --duration in each mode in
// turn (opaque first). It reports accepted messages/s and deliveries/s of
// each mode, and what the membership MAC check of a deniable call costs
// the server per request.

// benchModes are the values of --mode.
const benchModeDeniable = "deniable"

// modeResult is what one mode's run measured.
type modeResult struct {
	Mode               string  `json:"mode"`
	Groups             int     `json:"groups"`
	Members            int     `json:"members"`
	Senders            int     `json:"senders_per_group"`
	Accepted           int64   `json:"accepted_app_messages"`
	AcceptedPerSec     float64 `json:"accepted_per_sec"`
	SendP50Ms          float64 `json:"send_p50_ms"`
	SendP99Ms          float64 `json:"send_p99_ms"`
	SendMeanMs         float64 `json:"send_mean_ms"`
	Deliveries         int64   `json:"deliveries"`
	ExpectedDeliveries int64   `json:"expected_deliveries"`
	DeliveriesPerSec   float64 `json:"deliveries_per_sec"`
	Undecryptable      int64   `json:"undecryptable"`
	Errors             int64   `json:"errors"`
	FirstError         string  `json:"first_error,omitempty"`
	// MembershipMACs counts the calls the clients signed with a
	// membership key (deniable mode only).
	MembershipMACs int64 `json:"membership_macs"`
}

// modeReport is the JSON line of --mode deniable --json.
type modeReport struct {
	Modes []modeResult `json:"modes"`
	// DeniableVsOpaque is the ratio of their accepted messages/s.
	DeniableVsOpaque float64 `json:"deniable_vs_opaque_accepted"`
	// MACVerifyNs is the server's membership check of one Send request
	// of MACBodyBytes (hash of the body, header, transcript, HMAC,
	// constant-time compare), measured in this process; MACSignNs the
	// client's signing of it.
	MACVerifyNs  float64 `json:"mac_verify_ns"`
	MACSignNs    float64 `json:"mac_sign_ns"`
	MACBodyBytes int     `json:"mac_body_bytes"`
}

// runBenchMode runs `mlsds bench --mode ...`.
func runBenchMode(ctx context.Context, f *benchFlags, stdout, stderr io.Writer) int {
	if f.mode != benchModeDeniable {
		fmt.Fprintf(stderr, "mlsds bench: --mode %q: the only mode is %q (the other scenarios run without --mode)\n", f.mode, benchModeDeniable)
		return 2
	}
	if f.groups < 1 || f.members < 2 || f.senders < 0 || f.senders > f.members || f.duration <= 0 {
		fmt.Fprintln(stderr, "mlsds bench --mode deniable: want --groups >= 1, --members >= 2, 0 <= --senders <= --members and a positive --duration")
		return 2
	}
	url := f.target
	if url == "" {
		srv, err := startBenchServer(ctx, f)
		if err != nil {
			fmt.Fprintf(stderr, "mlsds bench: %v\n", err)
			return 1
		}
		defer srv.stop()
		url = srv.url
	}
	rep := modeReport{}
	for _, mode := range []string{"opaque", benchModeDeniable} {
		fmt.Fprintf(stderr, "%s groups: setting up %d groups of %d members...\n", mode, f.groups, f.members)
		r, err := runGroupMode(ctx, f, url, mode, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "mlsds bench: %s groups: %v\n", mode, err)
			return 1
		}
		rep.Modes = append(rep.Modes, r)
	}
	if o := rep.Modes[0].AcceptedPerSec; o > 0 {
		rep.DeniableVsOpaque = rep.Modes[1].AcceptedPerSec / o
	}
	rep.MACBodyBytes = int(f.size) + 100
	rep.MACVerifyNs, rep.MACSignNs = measureMAC(rep.MACBodyBytes)
	writeModeReport(stdout, f, &rep)
	if f.jsonOut {
		b, err := json.Marshal(rep)
		if err != nil {
			fmt.Fprintf(stderr, "mlsds bench: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s\n", b)
	}
	if rep.Modes[0].Errors+rep.Modes[1].Errors > 0 {
		return 1
	}
	return 0
}

func writeModeReport(w io.Writer, f *benchFlags, rep *modeReport) {
	m := rep.Modes[1]
	fmt.Fprintf(w, "mlsds bench --mode deniable: %d groups of %d members (%d sending), %d-byte messages, %s per mode, SDK clients\n\n",
		m.Groups, m.Members, m.Senders, int(f.size), f.duration)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\taccepted\taccepted/s\tsend p50 ms\tsend p99 ms\tdeliveries/s\tmissing\terrors\t")
	for _, r := range rep.Modes {
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.2f\t%.2f\t%.0f\t%d\t%d\t\n", r.Mode, r.Accepted, r.AcceptedPerSec, r.SendP50Ms, r.SendP99Ms,
			r.DeliveriesPerSec, r.ExpectedDeliveries-r.Deliveries, r.Errors)
	}
	tw.Flush()
	fmt.Fprintf(w, "\ndeniable/opaque accepted messages/s: %.2f\n", rep.DeniableVsOpaque)
	share := ""
	if m.SendMeanMs > 0 {
		share = fmt.Sprintf(", %.3f%% of the mean deniable Send (%.2f ms)", rep.MACVerifyNs/(m.SendMeanMs*1e4), m.SendMeanMs)
	}
	fmt.Fprintf(w, "membership MAC check per request (server, a %d-byte Send body): %.2f µs%s; signing it (client): %.2f µs; the clients signed %d calls\n",
		rep.MACBodyBytes, rep.MACVerifyNs/1e3, share, rep.MACSignNs/1e3, m.MembershipMACs)
	for _, r := range rep.Modes {
		if r.FirstError != "" {
			fmt.Fprintf(w, "%s: first error: %s\n", r.Mode, r.FirstError)
		}
	}
}

// benchClient is one SDK client of the run, with its event counts.
type benchClient struct {
	c          *client.Client
	deliveries atomic.Int64
	undecrypt  atomic.Int64
	joined     chan []byte // group ids joined
	done       chan struct{}
	firstErr   atomic.Pointer[error] // of the first EventUndecryptable or EventRefused
}

func openBenchClient(ctx context.Context, url, id string) (*benchClient, error) {
	c, err := client.Open(ctx, client.Config{Server: url, ClientID: id, KeyPackages: 1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return nil, err
	}
	b := &benchClient{c: c, joined: make(chan []byte, 4), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		for e := range c.Events() {
			switch e.Kind {
			case client.EventMessage:
				b.deliveries.Add(1)
			case client.EventUndecryptable, client.EventRefused:
				b.undecrypt.Add(1)
				if e.Err != nil {
					b.firstErr.CompareAndSwap(nil, &e.Err)
				}
			case client.EventJoined:
				select {
				case b.joined <- e.GroupID:
				default:
				}
			}
		}
	}()
	return b, nil
}

func (b *benchClient) close() {
	b.c.Close()
	<-b.done
}

// runGroupMode builds --groups groups of --members SDK clients in mode
// (opaque or deniable), loads them for --duration and waits up to
// --drain for the deliveries.
func runGroupMode(ctx context.Context, f *benchFlags, url, mode string, progress io.Writer) (modeResult, error) {
	senders := f.senders
	if senders == 0 {
		senders = f.members
	}
	r := modeResult{Mode: mode, Groups: f.groups, Members: f.members, Senders: senders}
	run := make([]byte, 4)
	rand.Read(run)
	tag := hex.EncodeToString(run)

	// Clients, --workers at a time.
	clients := make([][]*benchClient, f.groups)
	var all []*benchClient
	defer func() {
		var wg sync.WaitGroup
		for _, c := range all {
			wg.Add(1)
			go func() { defer wg.Done(); c.close() }()
		}
		wg.Wait()
	}()
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, max(f.workers, 1))
	var wg sync.WaitGroup
	for gi := range f.groups {
		clients[gi] = make([]*benchClient, f.members)
		for mi := range f.members {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c, err := openBenchClient(ctx, url, fmt.Sprintf("bench-%s-%s-g%d-m%d", mode, tag, gi, mi))
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					return
				}
				clients[gi][mi] = c
				all = append(all, c)
			}()
		}
	}
	wg.Wait()
	if firstErr != nil {
		return r, fmt.Errorf("opening the clients: %w", firstErr)
	}

	// Groups: the first member creates one and adds the others with one
	// Commit; the others join from its Welcome.
	groups := make([][]byte, f.groups)
	errs := make(chan error, f.groups)
	for gi := range f.groups {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errs <- func() error {
				cs := clients[gi]
				g, err := cs[0].c.CreateGroup(ctx, client.GroupOptions{Opaque: mode == "opaque", Deniable: mode == benchModeDeniable})
				if err != nil {
					return err
				}
				var ids []string
				for _, c := range cs[1:] {
					ids = append(ids, c.c.ID())
				}
				if err := g.Add(ctx, ids...); err != nil {
					return err
				}
				groups[gi] = g.ID()
				for _, c := range cs[1:] {
					select {
					case <-c.joined:
					case <-time.After(2 * time.Minute):
						why := ""
						if err := c.firstErr.Load(); err != nil {
							why = ": " + (*err).Error()
						}
						return fmt.Errorf("%s did not join within 2 minutes%s", c.c.ID(), why)
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				return nil
			}()
		}()
	}
	for range f.groups {
		if err := <-errs; err != nil {
			return r, fmt.Errorf("building the groups: %w", err)
		}
	}
	fmt.Fprintf(progress, "%s groups: sending for %s...\n", mode, f.duration)

	// Load: every sender sends as fast as it may (or at its share of
	// --rate) until the deadline.
	payload := make([]byte, int(f.size))
	rand.Read(payload)
	var hist loadgen.Histogram
	var accepted, errCount atomic.Int64
	perGroup := make([]atomic.Int64, f.groups)
	var interval time.Duration
	if f.rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(f.groups*senders) / f.rate)
	}
	start := time.Now()
	deadline := start.Add(f.duration)
	lctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	for gi := range f.groups {
		for mi := range senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g := clients[gi][mi].c.Group(groups[gi])
				next := time.Now()
				for lctx.Err() == nil {
					if interval > 0 {
						if d := time.Until(next); d > 0 {
							select {
							case <-time.After(d):
							case <-lctx.Done():
								return
							}
						}
						next = next.Add(interval)
					}
					// A Send is not cut off at the deadline: one the
					// server accepted is counted.
					t0 := time.Now()
					_, err := g.Send(ctx, payload)
					if err != nil {
						if ctx.Err() != nil {
							return
						}
						errCount.Add(1)
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
						continue
					}
					hist.Observe(time.Since(t0))
					accepted.Add(1)
					perGroup[gi].Add(1)
				}
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start)

	// Drain: every member but the sender gets each message.
	var expected int64
	for gi := range f.groups {
		expected += perGroup[gi].Load() * int64(f.members-1)
	}
	delivered := func() int64 {
		var n int64
		for _, c := range all {
			n += c.deliveries.Load()
		}
		return n
	}
	drainEnd := time.Now().Add(f.drain)
	for delivered() < expected && time.Now().Before(drainEnd) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	deliveredAt := time.Since(start)

	r.Accepted = accepted.Load()
	r.AcceptedPerSec = float64(r.Accepted) / elapsed.Seconds()
	r.SendP50Ms = float64(hist.Quantile(0.5)) / 1e6
	r.SendP99Ms = float64(hist.Quantile(0.99)) / 1e6
	r.SendMeanMs = float64(hist.Mean()) / 1e6
	r.Deliveries = delivered()
	r.ExpectedDeliveries = expected
	r.DeliveriesPerSec = float64(r.Deliveries) / deliveredAt.Seconds()
	r.Errors = errCount.Load()
	if firstErr != nil {
		r.FirstError = firstErr.Error()
	}
	for _, c := range all {
		r.Undecryptable += c.undecrypt.Load()
		r.MembershipMACs += c.c.MembershipMACs()
	}
	return r, nil
}

// measureMAC returns what checking and making the membership proof of
// one Send request with a bodySize-byte message costs, in nanoseconds:
// the work of ds.MembershipMAC and its helpers on each side (see
// BenchmarkMembershipMAC in ds/membership_bench_test.go).
func measureMAC(bodySize int) (verifyNs, signNs float64) {
	const procedure = "/mlsds.v1.GroupService/Send"
	key := make([]byte, ds.MembershipKeySize)
	rand.Read(key)
	gid := make([]byte, 16)
	rand.Read(gid)
	msg := make([]byte, bodySize)
	rand.Read(msg)
	req := &mlsdsv1.SendRequest{Message: msg}
	sign := func() string {
		body, _ := proto.MarshalOptions{Deterministic: true}.Marshal(req)
		sum := sha256.Sum256(body)
		ts := uint64(time.Now().UnixMilli())
		nonce := ds.NewMembershipNonce()
		return ds.FormatMembershipHeader(7, ts, nonce, ds.MembershipMAC(key, ds.MembershipTranscript(procedure, gid, 7, ts, nonce, sum[:])))
	}
	header := sign()
	verify := func() bool {
		body, _ := proto.MarshalOptions{Deterministic: true}.Marshal(req)
		sum := sha256.Sum256(body)
		e, ms, n, mac, err := ds.ParseMembershipHeader(header)
		return err == nil && hmac.Equal(ds.MembershipMAC(key, ds.MembershipTranscript(procedure, gid, e, ms, n, sum[:])), mac)
	}
	timeIt := func(f func()) float64 {
		n := 0
		t0 := time.Now()
		for time.Since(t0) < 200*time.Millisecond {
			for range 100 {
				f()
			}
			n += 100
		}
		return float64(time.Since(t0).Nanoseconds()) / float64(n)
	}
	ok := true
	verifyNs = timeIt(func() { ok = verify() && ok })
	signNs = timeIt(func() { sign() })
	if !ok {
		return 0, 0
	}
	return verifyNs, signNs
}

// benchServer is the `mlsds serve` child of --mode runs.
type benchServer struct {
	cmd     *exec.Cmd
	url     string
	dataDir string
	exit    chan error
}

// startBenchServer starts this binary's `mlsds serve` on loopback with a
// fresh data directory and the limits off, as the other scenarios do.
func startBenchServer(ctx context.Context, f *benchFlags) (*benchServer, error) {
	dataDir, err := os.MkdirTemp(f.tempDir, "mlsds-bench-")
	if err != nil {
		return nil, err
	}
	exe, prefix, err := benchServerCommand()
	if err != nil {
		os.RemoveAll(dataDir)
		return nil, fmt.Errorf("finding this binary to start the server: %w", err)
	}
	args := append(append([]string(nil), prefix...), "serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "info",
		"--data-dir", dataDir, "--rate-limit", "-1", "--claim-rate", "-1", "--claimer-rate", "-1", "--auth-rate-limit", "-1",
		"--max-bytes-per-day", "0", "--max-groups-per-day", "0", "--shutdown-timeout", "5s")
	if f.store != "" {
		args = append(args, "--store", f.store)
	}
	args = append(args, strings.Fields(f.serverFlags)...)
	cmd := exec.Command(exe, args...)
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		os.RemoveAll(dataDir)
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dataDir)
		return nil, fmt.Errorf("starting %s serve: %w", exe, err)
	}
	s := &benchServer{cmd: cmd, dataDir: dataDir, exit: make(chan error, 1)}
	addr := make(chan string, 1)
	var lastLines []string
	var linesMu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "mlsds serving" {
				select {
				case addr <- line.Addr:
				default:
				}
			}
			linesMu.Lock()
			lastLines = append(lastLines, sc.Text())
			if len(lastLines) > 10 {
				lastLines = lastLines[1:]
			}
			linesMu.Unlock()
		}
		io.Copy(io.Discard, stderr)
		s.exit <- cmd.Wait()
	}()
	select {
	case a := <-addr:
		s.url = "http://" + a
		return s, nil
	case err := <-s.exit:
		os.RemoveAll(dataDir)
		linesMu.Lock()
		defer linesMu.Unlock()
		return nil, fmt.Errorf("the server exited on start (%v): %s", err, strings.Join(lastLines, "\n"))
	case <-ctx.Done():
		cmd.Process.Kill()
		<-s.exit
		os.RemoveAll(dataDir)
		return nil, ctx.Err()
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-s.exit
		os.RemoveAll(dataDir)
		return nil, errors.New("the server did not report its address within 2 minutes")
	}
}

// stop ends the server with SIGTERM (SIGKILL after 15s) and deletes its
// data.
func (s *benchServer) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exit:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-s.exit
	}
	os.RemoveAll(s.dataDir)
}
