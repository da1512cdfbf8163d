package ds_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
)

// BenchmarkFanout measures delivery: groups of members that all subscribe
// to the Service, and a few senders per group that publish application
// messages through Service.Send as fast as they can (or at a fixed total
// rate). b.N is the number of messages; each is delivered to every member
// but its sender.
//
// Metrics: deliveries/s (all deliveries over the time from the first send
// to the last receive), msgs/s accepted, and the latency from acceptance
// (Envelope.AcceptedAt) to the subscriber's receive, p50 and p99 in
// milliseconds; send-p99-ms is the 99th percentile of Send's own duration
// (validation, the store's commit), a part of that latency. SQLite in
// b.TempDir().
//
//	go test ./ds -run '^$' -bench Fanout -benchtime 5000x
func BenchmarkFanout(b *testing.B) {
	for _, c := range []fanoutCase{
		{groups: 1, members: 100, senders: 4},
		{groups: 10, members: 100, senders: 2},
		{groups: 1, members: 100, senders: 4, rate: 1000},
	} {
		b.Run(c.name(), func(b *testing.B) { runFanout(b, c) })
	}
}

type fanoutCase struct {
	groups, members int
	senders         int     // per group
	rate            float64 // messages per second in all, 0: as fast as possible
}

func (c fanoutCase) name() string {
	s := fmt.Sprintf("groups=%d/members=%d", c.groups, c.members)
	if c.rate > 0 {
		s += fmt.Sprintf("/rate=%g", c.rate)
	}
	return s
}

// privateTB is private for a benchmark.
func privateTB(tb testing.TB, id []byte, epoch uint64, ct mls.ContentType, body int) []byte {
	m := &mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
		GroupID: id, Epoch: epoch, ContentType: ct, EncryptedSenderData: random(32), Ciphertext: random(body),
	}}
	data, err := m.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// latencies collects receive latencies of one subscriber.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// percentile returns the p-th percentile (0..1) of all.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return sorted[i]
}

func runFanout(b *testing.B, c fanoutCase) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "ds.db"), sqlite.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	svc := ds.New(st, ds.Config{RequestsPerSecond: -1, ClaimsPerMinute: -1, ClaimsPerTargetPerMinute: -1})

	type grp struct {
		id      []byte
		members []string
	}
	groups := make([]grp, c.groups)
	var subs []string
	for gi := range groups {
		g := &groups[gi]
		g.id = fmt.Appendf(nil, "bench-group-%d", gi)
		var consent [][]byte // a published KeyPackage of each member but the creator
		for i := range c.members {
			id := fmt.Sprintf("g%d-m%03d", gi, i)
			priv, pub, err := suite.GenerateSignatureKeyPair()
			if err != nil {
				b.Fatal(err)
			}
			if err := svc.RegisterClient(ctx, ds.Client{ID: id, UserID: id, CipherSuite: suite, SignatureKey: pub}); err != nil {
				b.Fatal(err)
			}
			g.members = append(g.members, id)
			if i > 0 {
				m := &member{id: id, sigPriv: priv, sigPub: pub}
				_, data := m.keyPackage(b, time.Now())
				if _, err := svc.UploadKeyPackages(ctx, id, []ds.KeyPackageUpload{{Data: data}}); err != nil {
					b.Fatal(err)
				}
				consent = append(consent, data)
			}
		}
		if err := svc.CreateGroup(ctx, g.members[0], ds.CreateGroup{GroupID: g.id, Mode: ds.ModeOpaque, Members: g.members[1:], KeyPackages: consent}); err != nil {
			b.Fatal(err)
		}
		subs = append(subs, g.members...)
	}

	// Every member subscribes and counts what it receives.
	// b.N messages spread evenly over the groups (rounded up).
	perGroup := (b.N + c.groups - 1) / c.groups
	want := int64(perGroup*c.groups) * int64(c.members-1)
	var delivered atomic.Int64
	done := make(chan struct{})
	var doneOnce sync.Once
	lats := make([]latencies, len(subs))
	var wg sync.WaitGroup
	for i, id := range subs {
		ch, err := svc.Subscribe(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		for ev := range ch { // replay: nothing but the CaughtUp marker (and maybe a low stock)
			if ev.Err != nil {
				b.Fatal(ev.Err)
			}
			if ev.CaughtUp {
				break
			}
		}
		lats[i].d = make([]time.Duration, 0, perGroup*c.groups)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range ch {
				if ev.Err != nil {
					b.Error(ev.Err)
					return
				}
				if ev.Message == nil {
					continue
				}
				lats[i].add(time.Since(ev.Message.AcceptedAt))
				if delivered.Add(1) == want {
					doneOnce.Do(func() { close(done) })
				}
			}
		}()
	}

	// Messages are built before the clock starts.
	msgs := make([][][]byte, c.groups)
	for gi := range groups {
		for range perGroup {
			msgs[gi] = append(msgs[gi], privateTB(b, groups[gi].id, 0, mls.ContentTypeApplication, 100))
		}
	}

	b.ResetTimer()
	start := time.Now()
	var sent atomic.Int64
	var sendLat latencies // how long Send took: the store's share of the latency
	var swg sync.WaitGroup
	for gi := range groups {
		for s := range c.senders {
			swg.Add(1)
			go func() {
				defer swg.Done()
				sender := groups[gi].members[s]
				for k := s; k < perGroup; k += c.senders {
					if c.rate > 0 {
						// Message k of group gi is due at its share of the total rate.
						n := k*c.groups + gi
						if d := time.Until(start.Add(time.Duration(float64(n) / c.rate * float64(time.Second)))); d > 0 {
							time.Sleep(d)
						}
					}
					t0 := time.Now()
					if _, err := svc.Send(ctx, sender, msgs[gi][k]); err != nil {
						b.Error(err)
						return
					}
					sendLat.add(time.Since(t0))
					sent.Add(1)
				}
			}()
		}
	}
	swg.Wait()
	accepted := time.Since(start)
	// The senders' own messages are not delivered to them: the expected
	// count is per message, members-1 each.
	select {
	case <-done:
	case <-time.After(2 * time.Minute): // a hang, not a speed check
		b.Fatalf("%d of %d deliveries after 2 minutes", delivered.Load(), want)
	}
	all := time.Since(start)
	b.StopTimer()
	cancel()
	wg.Wait()

	var every []time.Duration
	for i := range lats {
		every = append(every, lats[i].d...)
	}
	slices.Sort(every)
	b.ReportMetric(float64(want)/all.Seconds(), "deliveries/s")
	b.ReportMetric(float64(sent.Load())/accepted.Seconds(), "msgs/s")
	b.ReportMetric(float64(percentile(every, 0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(every, 0.99).Microseconds())/1000, "p99-ms")
	slices.Sort(sendLat.d)
	b.ReportMetric(float64(percentile(sendLat.d, 0.99).Microseconds())/1000, "send-p99-ms")
	b.ReportMetric(0, "ns/op")
}
