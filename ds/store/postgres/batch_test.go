package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/storetest"
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/mls"
)

// TestBatchCommitFailure: a batch whose COMMIT fails (here on a deferred
// constraint trigger that fires for the poison sender's message) gives no
// receipt and leaves nothing behind.
func TestBatchCommitFailure(t *testing.T) {
	storetest.BatchCommitFailure(t, func(t *testing.T) ds.Store {
		s, err := Open(ctx(), pgtest.NewDatabase(t), Options{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, func(t *testing.T, st ds.Store) {
		s := st.(*Store)
		for _, q := range []string{
			`CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN RAISE EXCEPTION 'poisoned batch'; END $$`,
			`CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON messages DEFERRABLE INITIALLY DEFERRED
			FOR EACH ROW WHEN (NEW.sender = '` + storetest.PoisonSender + `') EXECUTE FUNCTION poison()`,
		} {
			if _, err := s.pool.Exec(ctx(), q); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestRawInsertRateRefusesNoFsync: a rate measured on a server without
// fsync would compare durable commits with non-durable ones.
func TestRawInsertRateRefusesNoFsync(t *testing.T) {
	url := pgtest.NewDatabase(t)
	r, err := RawInsertRate(ctx(), url, 100, 4, 50*time.Millisecond)
	var fsync string
	conn := open(t, url, Options{})
	if err := conn.pool.QueryRow(ctx(), "SHOW fsync").Scan(&fsync); err != nil {
		t.Fatal(err)
	}
	if fsync == "on" {
		if err != nil || r <= 0 {
			t.Errorf("RawInsertRate = %v, %v; want a positive rate", r, err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), "fsync") {
		t.Errorf("RawInsertRate on a server with fsync=%s: %v, %v; want an error that names fsync", fsync, r, err)
	}
}

var (
	durableOnce sync.Once
	durable     *pgtest.Server
	durableErr  error
)

// BenchmarkSendApplication: application messages per second that a Service
// on PostgreSQL durably accepts at 1, 16, 64 and 256 concurrent senders,
// next to PostgreSQL's raw insert rate (storetest.BenchSendApplication). It
// runs a server of its own with fsync on, unlike the tests.
func BenchmarkSendApplication(b *testing.B) {
	durableOnce.Do(func() { durable, durableErr = pgtest.Start(pgtest.Options{}) })
	if durableErr != nil {
		pgtest.Unavailable(b, durableErr)
	}
	b.Cleanup(func() { durable.Stop() })
	newDB := func(b *testing.B) string {
		name, err := durable.CreateDatabase(context.Background(), "bench")
		if err != nil {
			b.Fatal(err)
		}
		return durable.URL(name)
	}
	rawURL := newDB(b)
	storetest.BenchSendApplication(b, func(b *testing.B) ds.Store {
		s, err := Open(context.Background(), newDB(b), Options{MaxConns: 16})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}, func(ctx context.Context, payload, rowsPerTx int, d time.Duration) (float64, error) {
		return RawInsertRate(ctx, rawURL, payload, rowsPerTx, d)
	})
}

// TestTwoNodesBatches: batches of two nodes that touch the same groups in
// different orders, some with a Commit (the upfront lock path), some with
// application messages only: none deadlocks or fails, sequence numbers stay
// gap-free, exactly one Commit wins, and every accepted message is stored
// once at the sequence number of its receipt.
func TestTwoNodesBatches(t *testing.T) {
	a, b := twoNodes(t, Options{})
	groups := []string{"g1", "g2", "g3"}
	for _, g := range groups {
		if err := a.CreateGroup(ctx(), ds.GroupRecord{ID: []byte(g), Mode: ds.ModeOpaque, CipherSuite: suite, Creator: "c0", CreatedAt: t0}, []string{"c0", "c1"}); err != nil {
			t.Fatal(err)
		}
	}
	type accepted struct {
		p ds.AcceptParams
		r ds.AcceptResult
	}
	var mu sync.Mutex
	var got []accepted
	commits := 0
	var wg sync.WaitGroup
	for w := range 8 {
		node := []*Store{a, b}[w%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 10 {
				var ps []ds.AcceptParams
				for k := range 6 {
					g := groups[(w+k)%len(groups)]
					if w%2 == 1 {
						g = groups[(len(groups)*6-w-k)%len(groups)]
					}
					p := appMsg(g, 0, mls.ContentTypeApplication, []string{"c0", "c1"}[k%2], fmt.Sprintf("w%d r%d k%d", w, round, k))
					p.RequireMember = true
					ps = append(ps, p)
				}
				if round%3 == 0 {
					c := appMsg("g2", 0, mls.ContentTypeCommit, "c0", fmt.Sprintf("commit w%d r%d", w, round))
					ps = append(ps[:3], append([]ds.AcceptParams{c}, ps[3:]...)...)
				}
				res, errs := node.AcceptMessages(ctx(), ps)
				mu.Lock()
				for i := range ps {
					var we *ds.WrongEpochError
					switch {
					case errs[i] == nil:
						got = append(got, accepted{ps[i], res[i]})
						if ps[i].ContentType == mls.ContentTypeCommit {
							commits++
						}
					case ps[i].ContentType == mls.ContentTypeCommit && errors.As(errs[i], &we):
					default:
						t.Errorf("worker %d round %d message %d: %v", w, round, i, errs[i])
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if commits != 1 {
		t.Errorf("%d Commits for epoch 0 won, want 1", commits)
	}
	for _, g := range groups {
		envs, err := a.Messages(ctx(), ds.MessageQuery{GroupID: []byte(g), ClientID: "c0", FromSeq: 1, Limit: 10000})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, x := range got {
			if string(x.p.GroupID) != g {
				continue
			}
			n++
			if x.r.Duplicate || x.r.GroupSeq < 1 || x.r.GroupSeq > uint64(len(envs)) ||
				!bytes.Equal(envs[x.r.GroupSeq-1].Data, x.p.Data) {
				t.Fatalf("%s: receipt %+v does not name its message", g, x.r)
			}
		}
		for i, e := range envs {
			if e.GroupSeq != uint64(i+1) {
				t.Fatalf("%s: seq %d at position %d", g, e.GroupSeq, i)
			}
		}
		if n != len(envs) {
			t.Errorf("%s: %d receipts, %d stored messages", g, n, len(envs))
		}
	}
}
