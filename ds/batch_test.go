package ds_test

import (
	"context"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/ds/store/storetest"
	"github.com/mlsds/mlsds/mls"
)

// TestSendApplicationConcurrent: application messages sent at once share
// batches, and each still gets what a lone Send would: a receipt with a
// gap-free sequence number, the first receipt again for the same bytes,
// ErrNotMember, a WrongEpochError for a future epoch, ErrNotFound for an
// unknown group.
func TestSendApplicationConcurrent(t *testing.T) {
	e := newEnv(t, ds.Config{})
	ids := []string{"a", "b", "c", "d"}
	for _, id := range append(ids, "outsider") {
		e.register(id, id)
	}
	gid := []byte("batched")
	if err := e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: ids[1:]}); err != nil {
		t.Fatal(err)
	}
	const n = 200
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = private(t, gid, 0, mls.ContentTypeApplication)
	}
	type result struct {
		r   ds.Receipt
		err error
	}
	var wg sync.WaitGroup
	send := func(sender string, m []byte) <-chan result {
		ch := make(chan result, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := sendMsg(e.svc, sender, m)
			ch <- result{r, err}
		}()
		return ch
	}
	var ok []<-chan result
	for i, m := range msgs {
		ok = append(ok, send(ids[i%len(ids)], m))
	}
	outsider := send("outsider", private(t, gid, 0, mls.ContentTypeApplication))
	future := send("a", private(t, gid, 1, mls.ContentTypeApplication))
	unknown := send("a", private(t, []byte("no such group"), 0, mls.ContentTypeApplication))
	wg.Wait()

	var seqs []int
	receipts := make([]ds.Receipt, n)
	for i, ch := range ok {
		res := <-ch
		if res.err != nil {
			t.Fatalf("message %d: %v", i, res.err)
		}
		receipts[i] = res.r
		seqs = append(seqs, int(res.r.GroupSeq))
	}
	sort.Ints(seqs)
	for i, s := range seqs {
		if s != i+1 {
			t.Fatalf("sequence numbers %v are not 1..%d", seqs, n)
		}
	}
	wantIs(t, (<-outsider).err, ds.ErrNotMember)
	if we := wantErr[*ds.WrongEpochError](t, (<-future).err); we.Expected != 0 || we.FetchFromSeq != 1 {
		t.Errorf("future epoch: %+v", we)
	}
	// An unknown group gets the outsider's answer (one answer for both).
	wantIs(t, (<-unknown).err, ds.ErrNotMember)

	// Resubmissions, concurrent too, get the first receipts and store
	// nothing.
	var resent []<-chan result
	for i, m := range msgs[:50] {
		resent = append(resent, send(ids[(i+1)%len(ids)], m))
	}
	wg.Wait()
	for i, ch := range resent {
		res := <-ch
		if res.err != nil || res.r.GroupSeq != receipts[i].GroupSeq || !res.r.AcceptedAt.Equal(receipts[i].AcceptedAt) {
			t.Errorf("resubmission %d: %+v, %v; want %+v", i, res.r, res.err, receipts[i])
		}
	}
	envs, err := e.svc.Fetch(bg, "a", gid, 1, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(envs) != n {
		t.Errorf("Fetch: %d messages, want %d", len(envs), n)
	}
	// The sequence follows the order of acceptance: each stored message
	// is the one its receipt names.
	for i, m := range msgs {
		if got := envs[receipts[i].GroupSeq-1]; string(got.Data) != string(m) {
			t.Fatalf("message %d is not at seq %d", i, receipts[i].GroupSeq)
		}
	}
}

// BenchmarkSendApplication: application messages per second that a Service
// on SQLite durably accepts at 1, 16, 64 and 256 concurrent senders, next
// to SQLite's raw insert rate on the same disk (see
// storetest.BenchSendApplication). The PostgreSQL counterpart is in
// ds/store/postgres.
func BenchmarkSendApplication(b *testing.B) {
	dir := b.TempDir()
	storetest.BenchSendApplication(b, func(b *testing.B) ds.Store {
		s, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "bench.db"), sqlite.Options{})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}, func(ctx context.Context, payload, rowsPerTx int, d time.Duration) (float64, error) {
		return sqlite.RawInsertRate(ctx, dir, payload, rowsPerTx, d)
	})
}
