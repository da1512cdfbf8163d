package server_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// BenchmarkDelivery is ds's BenchmarkFanout over the API: one server on
// SQLite in b.TempDir(), every member of the groups on a Subscribe stream
// over HTTP/2 (h2c), a few senders per group calling Send. b.N is the
// number of messages; each is delivered to every member but its sender.
// Client and server share the process (and the machine's cores).
//
// Metrics: deliveries/s (from the first Send to the last receive), msgs/s
// accepted, the latency from acceptance (accepted_at) to the client's
// receive, p50 and p99 in milliseconds, and send-p99-ms, the 99th
// percentile of the Send calls themselves.
//
//	go test ./server -run '^$' -bench Delivery -benchtime 3000x
func BenchmarkDelivery(b *testing.B) {
	for _, c := range []deliveryCase{
		{groups: 1, members: 100, senders: 4},
		{groups: 10, members: 100, senders: 2},
		{groups: 1, members: 100, senders: 4, rate: 1000},
	} {
		b.Run(c.name(), func(b *testing.B) { runDelivery(b, c) })
	}
}

type deliveryCase struct {
	groups, members int
	senders         int     // per group
	rate            float64 // messages per second in all; 0: as fast as possible
}

func (c deliveryCase) name() string {
	s := fmt.Sprintf("groups=%d/members=%d", c.groups, c.members)
	if c.rate > 0 {
		s += fmt.Sprintf("/rate=%g", c.rate)
	}
	return s
}

func runDelivery(b *testing.B, c deliveryCase) {
	e := startEnv(b, func(d *ds.Config, s *server.Config) {
		d.RequestsPerSecond = -1
		d.PollInterval = 5 * time.Second // the production default
		s.AuthRatePerSecond = -1
	})
	type grp struct {
		id      []byte
		members []*member
	}
	groups := make([]grp, c.groups)
	var all []*member
	for gi := range groups {
		g := &groups[gi]
		g.id = groupID(fmt.Sprintf("bench%d", gi))
		g.members = make([]*member, c.members)
		idleParallel(b, c.members, 8, func(i int) error {
			m := e.newMember(fmt.Sprintf("g%d-m%03d", gi, i))
			if _, err := m.auth.RegisterClient(context.Background(), connect.NewRequest(m.registerReq(""))); err != nil {
				return err
			}
			tok, err := m.tryLogin()
			if err != nil {
				return err
			}
			m.token = tok
			g.members[i] = m
			return nil
		})
		g.members[0].createOpaqueGroup(g.id, g.members[1:]...)
		all = append(all, g.members...)
	}

	perGroup := (b.N + c.groups - 1) / c.groups
	want := int64(perGroup*c.groups) * int64(c.members-1)
	var delivered atomic.Int64
	done := make(chan struct{})
	var doneOnce sync.Once
	lats := make([][]time.Duration, len(all))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	ready := make(chan error, len(all))
	for i, m := range all {
		lats[i] = make([]time.Duration, 0, perGroup)
		wg.Add(1)
		go func() {
			defer wg.Done()
			stream, err := m.delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
			if err != nil {
				ready <- err
				return
			}
			defer stream.Close()
			for stream.Receive() {
				ev := stream.Msg()
				if ev.GetCaughtUp() != nil {
					ready <- nil
					continue
				}
				env := ev.GetMessage()
				if env == nil {
					continue
				}
				lats[i] = append(lats[i], time.Since(env.AcceptedAt.AsTime()))
				if delivered.Add(1) == want {
					doneOnce.Do(func() { close(done) })
				}
			}
		}()
	}
	for range all {
		if err := <-ready; err != nil {
			b.Fatal(err)
		}
	}

	msgs := make([][][]byte, c.groups)
	for gi := range groups {
		for range perGroup {
			msgs[gi] = append(msgs[gi], privateMessage(b, groups[gi].id, 0, mls.ContentTypeApplication, 100))
		}
	}

	b.ResetTimer()
	start := time.Now()
	var sent atomic.Int64
	sendLat := make([][]time.Duration, c.groups*c.senders)
	var swg sync.WaitGroup
	for gi := range groups {
		for s := range c.senders {
			swg.Add(1)
			go func() {
				defer swg.Done()
				m := groups[gi].members[s]
				for k := s; k < perGroup; k += c.senders {
					if c.rate > 0 {
						n := k*c.groups + gi
						if d := time.Until(start.Add(time.Duration(float64(n) / c.rate * float64(time.Second)))); d > 0 {
							time.Sleep(d)
						}
					}
					t0 := time.Now()
					if _, err := m.send(msgs[gi][k]); err != nil {
						b.Error(err)
						return
					}
					sendLat[gi*c.senders+s] = append(sendLat[gi*c.senders+s], time.Since(t0))
					sent.Add(1)
				}
			}()
		}
	}
	swg.Wait()
	accepted := time.Since(start)
	select {
	case <-done:
	case <-time.After(2 * time.Minute): // a hang, not a speed check
		b.Fatalf("%d of %d deliveries after 2 minutes", delivered.Load(), want)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cancel()
	wg.Wait()

	var every, sends []time.Duration
	for _, l := range lats {
		every = append(every, l...)
	}
	for _, l := range sendLat {
		sends = append(sends, l...)
	}
	slices.Sort(every)
	slices.Sort(sends)
	pct := func(d []time.Duration, p float64) float64 {
		if len(d) == 0 {
			return 0
		}
		return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(want)/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(float64(sent.Load())/accepted.Seconds(), "msgs/s")
	b.ReportMetric(pct(every, 0.50), "p50-ms")
	b.ReportMetric(pct(every, 0.99), "p99-ms")
	b.ReportMetric(pct(sends, 0.99), "send-p99-ms")
	b.ReportMetric(0, "ns/op")
}
