package sqlite

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// benchGroups builds the store of `mlsds bench --groups n --members 2
// --receivers raw`: n opaque groups of a sender and a receiver, each with a
// GroupInfo of the bench's size, and returns their ids.
func benchGroups(tb testing.TB, s *Store, n int) [][]byte {
	ctx := context.Background()
	gi := make([]byte, 700)
	rand.Read(gi)
	var ids [][]byte
	for g := range n {
		id := make([]byte, 16)
		rand.Read(id)
		members := []string{fmt.Sprintf("sender-%03d-x", g), fmt.Sprintf("recver-%03d-x", g)}
		for _, m := range members {
			if err := s.CreateClient(ctx, ds.Client{ID: m, UserID: m, CipherSuite: 1, SignatureKey: []byte("k"), CreatedAt: time.Now()}); err != nil {
				tb.Fatal(err)
			}
		}
		if err := s.CreateGroup(ctx, ds.GroupRecord{ID: id, Mode: ds.ModeOpaque, CipherSuite: 1, Creator: members[0],
			CreatedAt: time.Now(), GroupInfo: gi}, members); err != nil {
			tb.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// benchBatch returns a batch of k application messages of 246 bytes (the
// bench's 100-byte plaintext on the wire) from the senders of random
// groups, and Acks of the messages accepted so far from the receivers of
// the first groups, one Ack per 15 messages (the bench's receivers ack
// every 200ms, about that often).
func benchBatch(ids [][]byte, k int, n *uint64, acked []uint64) ([]ds.AcceptParams, []ds.AckParams) {
	ps := make([]ds.AcceptParams, k)
	var acks []ds.AckParams
	var r [8]byte
	for i := range ps {
		rand.Read(r[:])
		g := int(binary.BigEndian.Uint64(r[:]) % uint64(len(ids)))
		*n++
		data := make([]byte, 246)
		rand.Read(data[:32])
		binary.BigEndian.PutUint64(data[32:], *n)
		h := sha256.Sum256(data)
		ps[i] = ds.AcceptParams{GroupID: ids[g], Hash: h[:], ContentType: mls.ContentTypeApplication,
			WireFormat: mls.WireFormatPrivateMessage, Sender: fmt.Sprintf("sender-%03d-x", g), Data: data,
			AcceptedAt: time.Now(), MaxEpochLag: 2, RequireMember: true}
		if *n%15 == 0 && acked[g] > 0 {
			acks = append(acks, ds.AckParams{ClientID: fmt.Sprintf("recver-%03d-x", g), GroupID: ids[g], Seq: acked[g], CheckHead: true})
		}
	}
	return ps, acks
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAcceptBatch: what a batch of the accept path costs per message
// (AcceptMessagesAndAcks with batch application messages in 50 groups of 2
// members and an Ack per 15 messages, as the server's batcher sends under
// `mlsds bench --receivers raw`), one batch after the other: wall
// time and CPU time (cpu-µs/msg, this process's user+system time, which
// includes the fsyncs' system time) per message.
func BenchmarkAcceptBatch(b *testing.B) {
	for _, k := range []int{1, 10, 64} {
		b.Run(fmt.Sprintf("batch=%d", k), func(b *testing.B) {
			s, err := Open(context.Background(), filepath.Join(b.TempDir(), "mlsds.db"), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ids := benchGroups(b, s, 50)
			acked := make([]uint64, len(ids))
			idx := make(map[string]int, len(ids))
			for i, id := range ids {
				idx[string(id)] = i
			}
			var n uint64
			ctx := context.Background()
			run := func() {
				ps, acks := benchBatch(ids, k, &n, acked)
				res, errs, ackErrs := s.AcceptMessagesAndAcks(ctx, ps, acks)
				for i, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
					acked[idx[string(ps[i].GroupID)]] = res[i].Receipt.GroupSeq
				}
				for _, err := range ackErrs {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			// Warm up: a few thousand messages in the tables.
			for range 4000 / k {
				run()
			}
			b.ResetTimer()
			cpu0 := cpuTime()
			for range b.N {
				run()
			}
			cpu := cpuTime() - cpu0
			b.StopTimer()
			msgs := float64(b.N * k)
			b.ReportMetric(float64(b.Elapsed().Microseconds())/msgs, "µs/msg")
			b.ReportMetric(float64(cpu.Microseconds())/msgs, "cpu-µs/msg")
		})
	}
}
