package ds_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
)

// ackFixture is a SQLite store with groups of members and messages to
// acknowledge, set up through the store directly.
type ackFixture struct {
	store    *sqlite.Store
	members  int // per group
	messages int // per group
	groupIDs [][]byte
	clients  []string // those of the first group first
}

func newAckFixture(tb testing.TB, groups, members, messages int) *ackFixture {
	tb.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(tb.TempDir(), "ds.db"), sqlite.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	f := &ackFixture{store: st, members: members, messages: messages}
	now := time.Now().UTC().Truncate(time.Microsecond)
	for g := range groups {
		id := []byte(fmt.Sprintf("ack-group-%d", g))
		var ms []string
		for m := range members {
			ms = append(ms, fmt.Sprintf("c-%d-%d", g, m))
		}
		f.clients = append(f.clients, ms...)
		f.groupIDs = append(f.groupIDs, id)
		rec := ds.GroupRecord{ID: id, Mode: ds.ModeOpaque, CipherSuite: mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
			Creator: ms[0], CreatedAt: now, GroupInfo: []byte("gi")}
		if err := st.CreateGroup(context.Background(), rec, ms); err != nil {
			tb.Fatal(err)
		}
		var ps []ds.AcceptParams
		for i := range messages {
			data := []byte(fmt.Sprintf("%x/%d", id, i))
			h := sha256.Sum256(data)
			ps = append(ps, ds.AcceptParams{GroupID: id, Hash: h[:], ContentType: mls.ContentTypeApplication,
				WireFormat: mls.WireFormatPrivateMessage, Sender: ms[0], Data: data, AcceptedAt: now, MaxEpochLag: 2})
		}
		for i := 0; i < len(ps); i += 256 {
			_, errs := st.AcceptMessages(context.Background(), ps[i:min(i+256, len(ps))])
			if err := errors.Join(errs...); err != nil {
				tb.Fatal(err)
			}
		}
	}
	return f
}

// client returns the i-th client (modulo their number) and its group.
func (f *ackFixture) client(i int) (string, []byte) {
	i %= len(f.clients)
	return f.clients[i], f.groupIDs[i/f.members]
}

// directStore hides the engine's optional interfaces: every Ack is a
// transaction of its own, as before the coalescer.
type directStore struct{ ds.Store }

// BenchmarkAck measures Service.Ack under concurrency on SQLite: callers
// acknowledging, each as one member of groups of 100, as fast as they can.
// "direct" runs every Ack as its own transaction (the store without
// ds.BatchAcker), "batched" through the coalescer. Metric: acks/s.
//
//	go test ./ds -run '^$' -bench Ack -benchtime 2000x
func BenchmarkAck(b *testing.B) {
	f := newAckFixture(b, 3, 100, 1000)
	for _, mode := range []string{"direct", "batched"} {
		var st ds.Store = f.store
		if mode == "direct" {
			st = directStore{f.store}
		}
		svc := ds.New(st, ds.Config{RequestsPerSecond: -1, ClaimsPerMinute: -1, ClaimsPerTargetPerMinute: -1})
		for _, conc := range []int{1, 16, 64, 256} {
			b.Run(fmt.Sprintf("%s/callers=%d", mode, conc), func(b *testing.B) {
				var next atomic.Int64
				var wg sync.WaitGroup
				var failed atomic.Value
				b.ResetTimer()
				start := time.Now()
				for w := range conc {
					wg.Add(1)
					go func() {
						defer wg.Done()
						client, group := f.client(w)
						for {
							n := next.Add(1)
							if n > int64(b.N) {
								return
							}
							seq := uint64(n%int64(f.messages)) + 1
							if err := svc.Ack(context.Background(), client, group, seq); err != nil {
								failed.Store(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				if err, _ := failed.Load().(error); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "acks/s")
			})
		}
	}
}

// TestAckBatchedLikeDirect checks that Service.Ack answers the same through
// the coalescer as with one transaction per Ack, and that concurrent Acks
// leave every cursor at its highest Ack.
func TestAckBatchedLikeDirect(t *testing.T) {
	f := newAckFixture(t, 2, 16, 20)
	cfg := ds.Config{RequestsPerSecond: -1}
	direct, batched := ds.New(directStore{f.store}, cfg), ds.New(f.store, cfg)
	c0, g0 := f.client(0)
	for _, tc := range []struct {
		client string
		group  []byte
		seq    uint64
	}{
		{c0, g0, 21},            // beyond the last message
		{c0, g0, 1 << 63},       // far beyond
		{c0, []byte("nope"), 1}, // no such group
		{"stranger", g0, 3},     // not a member
		{"stranger", g0, 30},    // the head is checked first
		{c0, g0, 20},            // the last message
	} {
		errD := direct.Ack(context.Background(), tc.client, tc.group, tc.seq)
		errB := batched.Ack(context.Background(), tc.client, tc.group, tc.seq)
		if fmt.Sprint(errD) != fmt.Sprint(errB) {
			t.Errorf("Ack(%s, %s, %d): direct %v, batched %v", tc.client, tc.group, tc.seq, errD, errB)
		}
		for _, target := range []error{ds.ErrInvalidArgument, ds.ErrNotFound, ds.ErrNotMember} {
			if errors.Is(errD, target) != errors.Is(errB, target) {
				t.Errorf("Ack(%s, %s, %d): direct %v, batched %v", tc.client, tc.group, tc.seq, errD, errB)
			}
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := range 32 {
		client, group := f.client(i)
		for seq := range uint64(20) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := batched.Ack(context.Background(), client, group, 20-seq); err != nil {
					errs <- err
				}
				if err := batched.Ack(context.Background(), "stranger", group, seq); !errors.Is(err, ds.ErrNotMember) {
					errs <- fmt.Errorf("stranger's Ack: %v, want ErrNotMember", err)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range 32 {
		client, group := f.client(i)
		cur, err := f.store.Cursors(context.Background(), client)
		if err != nil {
			t.Fatal(err)
		}
		if len(cur) != 1 || string(cur[0].GroupID) != string(group) || cur[0].Acked != 20 {
			t.Errorf("%s's cursors = %+v, want %s at 20", client, cur, group)
		}
	}
}

// unbatchedAcks hides only ds.BatchAcker: messages are still group
// committed, every Ack is a transaction of its own.
type unbatchedAcks struct {
	ds.Store
	ba ds.BatchAccepter
}

func (u unbatchedAcks) AcceptMessages(ctx context.Context, ps []ds.AcceptParams) ([]ds.AcceptResult, []error) {
	return u.ba.AcceptMessages(ctx, ps)
}

// BenchmarkAckWithSends measures what Acks cost the messages that share the
// writer with them: 4 senders publish b.N application messages through
// Service.Send while 64 members acknowledge as fast as they can, with Acks
// one transaction each ("direct") or coalesced ("batched"). Metrics:
// msgs/s and acks/s over the senders' run.
//
//	go test ./ds -run '^$' -bench AckWithSends -benchtime 3000x
func BenchmarkAckWithSends(b *testing.B) {
	f := newAckFixture(b, 1, 100, 1000)
	for _, mode := range []string{"direct", "batched"} {
		var st ds.Store = f.store
		if mode == "direct" {
			st = unbatchedAcks{f.store, f.store}
		}
		svc := ds.New(st, ds.Config{RequestsPerSecond: -1, ClaimsPerMinute: -1, ClaimsPerTargetPerMinute: -1})
		b.Run(mode, func(b *testing.B) {
			msgs := make([][]byte, b.N)
			for i := range msgs {
				msgs[i] = privateTB(b, f.groupIDs[0], 0, mls.ContentTypeApplication, 100)
			}
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			var acks atomic.Int64
			var ackers sync.WaitGroup
			for w := range 64 {
				ackers.Add(1)
				go func() {
					defer ackers.Done()
					client, group := f.client(4 + w)
					for n := 0; ctx.Err() == nil; n++ {
						if err := svc.Ack(ctx, client, group, uint64(n%f.messages)+1); err == nil {
							acks.Add(1)
						} else if ctx.Err() == nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			var next atomic.Int64
			var senders sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			acks0 := acks.Load()
			for w := range 4 {
				senders.Add(1)
				go func() {
					defer senders.Done()
					client, _ := f.client(w)
					for {
						n := next.Add(1)
						if n > int64(b.N) {
							return
						}
						if _, err := svc.Send(context.Background(), client, msgs[n-1]); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			senders.Wait()
			elapsed := time.Since(start)
			acked := acks.Load() - acks0
			b.StopTimer()
			stop()
			ackers.Wait()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(float64(acked)/elapsed.Seconds(), "acks/s")
		})
	}
}
