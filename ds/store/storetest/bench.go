package storetest

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// RawRate measures an engine's raw durable insert rate: rows of payload
// bytes, rowsPerTx per transaction (sqlite.RawInsertRate,
// postgres.RawInsertRate).
type RawRate func(ctx context.Context, payload, rowsPerTx int, d time.Duration) (float64, error)

// SendConcurrency is the number of concurrent senders BenchSendApplication
// runs at.
var SendConcurrency = []int{1, 16, 64, 256}

// SendPayloads are the message sizes (whole MLSMessages, in bytes) of
// BenchSendApplication.
var SendPayloads = []int{100, 1024}

// BenchSendApplication measures the rate at which a Service on an engine
// durably accepts application messages (Service.Send of PrivateMessages
// into one opaque group) at each of SendConcurrency concurrent senders and
// each of SendPayloads, and reports it as msgs/s. In the same run it
// measures the engine's raw insert rate with the same payload at 1 and 64
// rows per transaction (sub-benchmark raw) and reports each Send rate as a
// fraction of the latter (x_raw64).
//
// open must return a new, empty store; the benchmark closes it.
func BenchSendApplication(b *testing.B, open func(b *testing.B) ds.Store, raw RawRate) {
	for _, payload := range SendPayloads {
		var raw64 float64
		b.Run(fmt.Sprintf("payload=%d/raw", payload), func(b *testing.B) {
			// One measurement of a second each, whatever b.N is.
			r1, err := raw(context.Background(), payload, 1, time.Second)
			if err != nil {
				b.Fatal(err)
			}
			r64, err := raw(context.Background(), payload, 64, time.Second)
			if err != nil {
				b.Fatal(err)
			}
			raw64 = r64
			b.ReportMetric(r1, "rows/s@1")
			b.ReportMetric(r64, "rows/s@64")
		})
		for _, conc := range SendConcurrency {
			b.Run(fmt.Sprintf("payload=%d/conc=%d", payload, conc), func(b *testing.B) {
				rate := benchSend(b, open, payload, conc)
				b.ReportMetric(rate, "msgs/s")
				if raw64 > 0 {
					b.ReportMetric(rate/raw64, "x_raw64")
				}
			})
		}
		// For comparison: one transaction per message, as with an
		// engine that does not implement ds.BatchAccepter.
		for _, conc := range []int{1, 64} {
			b.Run(fmt.Sprintf("payload=%d/unbatched/conc=%d", payload, conc), func(b *testing.B) {
				rate := benchSend(b, func(b *testing.B) ds.Store { return unbatched{open(b)} }, payload, conc)
				b.ReportMetric(rate, "msgs/s")
				if raw64 > 0 {
					b.ReportMetric(rate/raw64, "x_raw64")
				}
			})
		}
	}
}

// unbatched hides an engine's AcceptMessages (and any other optional
// interface).
type unbatched struct{ ds.Store }

// benchSend sends b.N application messages from conc goroutines and returns
// the messages per second.
func benchSend(b *testing.B, open func(b *testing.B) ds.Store, payload, conc int) float64 {
	s := open(b)
	defer s.Close()
	svc := ds.New(s, ds.Config{RequestsPerSecond: -1, ClaimsPerMinute: -1, ClaimsPerTargetPerMinute: -1})
	ctx := context.Background()
	nMembers := min(conc, 64)
	var members []string
	var ms []*Member
	for i := range nMembers {
		m := NewMember(b, fmt.Sprintf("sender-%03d", i))
		if err := svc.RegisterClient(ctx, m.Client("")); err != nil {
			b.Fatal(err)
		}
		members = append(members, m.ID)
		ms = append(ms, m)
	}
	gid := make([]byte, 16)
	rand.Read(gid)
	if err := svc.CreateGroup(ctx, members[0], ds.CreateGroup{GroupID: gid, Mode: ds.ModeOpaque, Members: members[1:],
		KeyPackages: Consent(b, svc, ms[1:]...)}); err != nil {
		b.Fatal(err)
	}
	tmpl := appMessage(b, gid, payload)

	var next atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	b.SetBytes(int64(len(tmpl)))
	b.ResetTimer()
	start := time.Now()
	for g := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sender := members[g%nMembers]
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				m := make([]byte, len(tmpl))
				copy(m, tmpl)
				// Unique bytes: the last 8 bytes of the ciphertext.
				binary.BigEndian.PutUint64(m[len(m)-8:], uint64(i))
				if _, err := svc.Send(ctx, sender, m); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	return float64(b.N) / el.Seconds()
}

// appMessage returns an MLSMessage of exactly size bytes (at least the
// header's) holding an application PrivateMessage of group gid at epoch 0.
func appMessage(b *testing.B, gid []byte, size int) []byte {
	pm := &mls.PrivateMessage{GroupID: gid, Epoch: 0, ContentType: mls.ContentTypeApplication,
		EncryptedSenderData: make([]byte, 32)}
	rand.Read(pm.EncryptedSenderData)
	m := &mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm}
	for n := 8; ; n++ {
		pm.Ciphertext = make([]byte, n)
		rand.Read(pm.Ciphertext)
		data, err := m.MarshalBinary()
		if err != nil {
			b.Fatal(err)
		}
		if len(data) >= size {
			return data
		}
	}
}
