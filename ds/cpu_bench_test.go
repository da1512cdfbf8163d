package ds_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
)

// BenchmarkServiceCPU measures the CPU time (user and system, of the whole
// process) that a Service on SQLite spends per accepted message: one
// sender per group calls Service.Send as fast as it can with messages built
// beforehand, and every other member follows a subscription. The senders
// and consumers do little besides, so nearly all of it is the Service's:
// validation, the batched commit, the fan-out and the subscriptions.
//
// Metrics: cpu-µs/msg; with more than 2 members, cpu-µs/delivery, the CPU
// per further delivery: the difference to the 2-member case of as many
// groups in the same run, over the further deliveries of a message. (The
// server's own figure, with HTTP/2 and Connect, is BenchmarkServerCPU in
// cmd/mlsds.)
//
//	go test ./ds -run '^$' -bench ServiceCPU -benchtime 20000x
func BenchmarkServiceCPU(b *testing.B) {
	base := make(map[int]float64) // cpu-µs/msg of groups of 2, by groups
	for _, c := range []struct{ groups, members int }{{50, 2}, {10, 2}, {10, 100}} {
		b.Run(fmt.Sprintf("groups=%d/members=%d", c.groups, c.members), func(b *testing.B) {
			perMsg := runServiceCPU(b, c.groups, c.members)
			b.ReportMetric(perMsg, "cpu-µs/msg")
			if c.members == 2 {
				base[c.groups] = perMsg
			} else if m0, ok := base[c.groups]; ok {
				b.ReportMetric((perMsg-m0)/float64(c.members-2), "cpu-µs/delivery")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// cpuTime is the CPU time the process has used so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func runServiceCPU(b *testing.B, nGroups, members int) float64 {
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
	groups := make([]grp, nGroups)
	var subs []string
	for gi := range groups {
		g := &groups[gi]
		g.id = fmt.Appendf(nil, "cpu-group-%d", gi)
		var consent [][]byte
		for i := range members {
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
		subs = append(subs, g.members[1:]...) // member 0 sends
	}

	perGroup := (b.N + nGroups - 1) / nGroups
	want := int64(perGroup*nGroups) * int64(members-1)
	var delivered atomic.Int64
	done := make(chan struct{})
	var doneOnce sync.Once
	var wg sync.WaitGroup
	for _, id := range subs {
		ch, err := svc.Subscribe(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		for ev := range ch {
			if ev.Err != nil {
				b.Fatal(ev.Err)
			}
			if ev.CaughtUp {
				break
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range ch {
				if ev.Err != nil {
					b.Error(ev.Err)
					return
				}
				if ev.Message != nil && delivered.Add(1) == want {
					doneOnce.Do(func() { close(done) })
				}
			}
		}()
	}
	msgs := make([][][]byte, nGroups)
	for gi := range groups {
		for range perGroup {
			msgs[gi] = append(msgs[gi], privateTB(b, groups[gi].id, 0, mls.ContentTypeApplication, 100))
		}
	}

	b.ResetTimer()
	cpu0 := cpuTime(b)
	var swg sync.WaitGroup
	for gi := range groups {
		swg.Add(1)
		go func() {
			defer swg.Done()
			for _, m := range msgs[gi] {
				if _, err := svc.Send(ctx, groups[gi].members[0], m); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	swg.Wait()
	select {
	case <-done:
	case <-time.After(2 * time.Minute): // a hang, not a speed check
		b.Fatalf("%d of %d deliveries after 2 minutes", delivered.Load(), want)
	}
	cpu := cpuTime(b) - cpu0
	b.StopTimer()
	cancel()
	wg.Wait()
	return float64(cpu.Microseconds()) / float64(perGroup*nGroups)
}
