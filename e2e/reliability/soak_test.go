package reliability

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// soakDuration is how long TestCrashRestartSoak sends: the 2
// minutes with MLSDS_SOAK=1 (go test -run TestCrashRestartSoak with
// MLSDS_SOAK=1 ./e2e/reliability), 15 seconds otherwise, so that a plain
// go test ./... stays short on a 2-core machine.
func soakDuration() time.Duration {
	if os.Getenv("MLSDS_SOAK") == "1" {
		return 2 * time.Minute
	}
	return 15 * time.Second
}

// soakSeed is MLSDS_SOAK_SEED if set (to replay a run), else the clock.
func soakSeed(t *testing.T) uint64 {
	if s := os.Getenv("MLSDS_SOAK_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("MLSDS_SOAK_SEED: %v", err)
		}
		return v
	}
	return uint64(time.Now().UnixNano())
}

type soakSent struct {
	sender int
	group  int
	hash   [32]byte
	seq    uint64
}

// TestCrashRestartSoak sends application messages from 4 concurrent
// senders into two opaque groups (6 and 3 members), each member with a
// Subscribe stream that acknowledges what it receives and drops itself at
// random, while the server is SIGKILLed at random points (seeded; the seed
// is logged, MLSDS_SOAK_SEED replays the schedule) and restarted on the same
// SQLite data directory. A sender resubmits a message until it gets a
// receipt. At the end:
//   - each group's history is seqs 1..n with no message stored twice, and
//     holds exactly the receipted messages, each at its receipt's seq;
//   - every member received every message of its groups not its own,
//     exactly once, in group order (nothing at or below an acknowledged
//     cursor again, no duplicate on the same stream);
//   - after a last SIGKILL the SQLite file passes PRAGMA integrity_check
//     and foreign_key_check, and the server restarts cleanly on it, serves
//     the same histories and exits 0 on SIGINT.
func TestCrashRestartSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	seed := soakSeed(t)
	dur := soakDuration()
	t.Logf("seed %d, duration %v (MLSDS_SOAK=1 for 2 minutes, MLSDS_SOAK_SEED to replay)", seed, dur)
	rng := rand.New(rand.NewPCG(seed, 0))

	// Pruning off: the checks read every group's whole history, twice,
	// after the receivers acknowledged it all.
	srv := newServer(t, "--prune-interval", "0")
	const nMembers, nSenders = 6, 4
	members := make([]*client, nMembers)
	for i := range members {
		members[i] = newClient(t, srv, fmt.Sprintf("member%d", i))
	}
	groups := [][]byte{
		[]byte(fmt.Sprintf("soak-a-%x", randBytes(4))),
		[]byte(fmt.Sprintf("soak-b-%x", randBytes(4))),
	}
	inGroup := [][]int{{0, 1, 2, 3, 4, 5}, {0, 1, 4}}
	members[0].createOpaqueGroup(t, groups[0], members)
	members[0].createOpaqueGroup(t, groups[1], []*client{members[0], members[1], members[4]})

	receivers := make([]*receiver, nMembers)
	for i, c := range members {
		receivers[i] = startReceiver(c, 1+rng.IntN(8), rand.New(rand.NewPCG(seed, uint64(100+i))), 2*time.Second)
	}
	defer func() {
		for _, r := range receivers {
			if r != nil {
				r.stop()
			}
		}
	}()

	var (
		mu   sync.Mutex
		sent []soakSent
		wg   sync.WaitGroup
	)
	stop := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), dur+60*time.Second)
	defer cancel()
	for s := 0; s < nSenders; s++ {
		srng := rand.New(rand.NewPCG(seed, uint64(200+s)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := members[s]
			var mine []int
			for g, ms := range inGroup {
				for _, m := range ms {
					if m == s {
						mine = append(mine, g)
					}
				}
			}
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				g := mine[srng.IntN(len(mine))]
				msg := privateMessage(t, groups[g], 0, mls.ContentTypeApplication, 50+srng.IntN(400))
				// Resubmit the same bytes until a receipt: one that was stored
				// before a crash gets its first receipt back.
				r, err := retry(ctx, func() (*mlsdsv1.Receipt, error) { return c.send(ctx, msg) })
				if err != nil {
					t.Errorf("%s: Send: %v", c.id, err)
					return
				}
				mu.Lock()
				sent = append(sent, soakSent{s, g, hashOf(msg), r.GroupSeq})
				mu.Unlock()
				if n%50 == 49 {
					again, err := retry(ctx, func() (*mlsdsv1.Receipt, error) { return c.send(ctx, msg) })
					if err != nil {
						t.Errorf("%s: resubmission: %v", c.id, err)
						return
					}
					if again.GroupSeq != r.GroupSeq {
						t.Errorf("%s: resubmission got seq %d, the first receipt %d", c.id, again.GroupSeq, r.GroupSeq)
					}
				}
			}
		}()
	}

	// The killer: SIGKILL after a random 300ms..2.5s, restart at once.
	start := time.Now()
	var kills []time.Duration
	for {
		d := 300*time.Millisecond + time.Duration(rng.Int64N(int64(2200*time.Millisecond)))
		if time.Since(start)+d >= dur {
			time.Sleep(dur - time.Since(start))
			break
		}
		time.Sleep(d)
		srv.crash()
		kills = append(kills, time.Since(start).Round(time.Millisecond))
	}
	close(stop)
	wg.Wait()
	t.Logf("%d SIGKILL+restarts at %v", len(kills), kills)
	if t.Failed() {
		return
	}

	// Histories, and the receipts against them.
	// Each read of the histories has a minute of its own: the wait for
	// slow receivers in between may outlast the senders' ctx.
	fetchHistories := func() [][]*mlsdsv1.Envelope {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out := make([][]*mlsdsv1.Envelope, len(groups))
		for g, gid := range groups {
			h, err := retry(ctx, func() ([]*mlsdsv1.Envelope, error) { return members[0].fetchFrom(ctx, gid, 1) })
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			out[g] = h
		}
		return out
	}
	histories := fetchHistories()
	mu.Lock()
	receipted := make([]map[uint64][32]byte, len(groups))
	for g := range receipted {
		receipted[g] = map[uint64][32]byte{}
	}
	for _, s := range sent {
		if prev, dup := receipted[s.group][s.seq]; dup {
			t.Errorf("group %d: seq %d receipted for two messages (%x, %x)", s.group, s.seq, prev[:6], s.hash[:6])
		}
		receipted[s.group][s.seq] = s.hash
	}
	nSent := len(sent)
	mu.Unlock()
	for g, h := range histories {
		stored := map[[32]byte]uint64{}
		for i, env := range h {
			hh := hashOf(env.Message)
			if env.GroupSeq != uint64(i+1) {
				t.Fatalf("group %d: history[%d] has seq %d (gap or reorder)", g, i, env.GroupSeq)
			}
			if prev, dup := stored[hh]; dup {
				t.Errorf("group %d: one message stored twice, at seq %d and %d", g, prev, env.GroupSeq)
			}
			stored[hh] = env.GroupSeq
			if want, ok := receipted[g][env.GroupSeq]; !ok {
				t.Errorf("group %d: seq %d is stored but no sender got a receipt for it", g, env.GroupSeq)
			} else if want != hh {
				t.Errorf("group %d: seq %d holds other bytes than its receipt promised", g, env.GroupSeq)
			}
		}
		if len(h) != len(receipted[g]) {
			t.Errorf("group %d: %d messages stored, %d receipted (an acknowledged message was lost)", g, len(h), len(receipted[g]))
		}
	}

	// Deliveries: every member, every message of its groups not its own,
	// once, in order. A receiver that fell behind catches up at its own
	// pace (it drops its stream every few seconds and replays from its
	// last Ack): the wait ends when it has everything, or after 30 s
	// without a new delivery.
	caughtUp := func(r *receiver, g []byte, want int) {
		last, at := r.count(g), time.Now()
		for last < want && time.Since(at) < 30*time.Second {
			time.Sleep(10 * time.Millisecond)
			if n := r.count(g); n > last {
				last, at = n, time.Now()
			}
		}
	}
	reconnects, delivered := 0, 0
	for i, r := range receivers {
		for g, ms := range inGroup {
			member := false
			for _, m := range ms {
				member = member || m == i
			}
			var want []*mlsdsv1.Envelope
			if member {
				for _, env := range histories[g] {
					if env.SenderClientId != members[i].id {
						want = append(want, env)
					}
				}
			}
			caughtUp(r, groups[g], len(want))
			got := r.deliveries(groups[g])
			delivered += len(got)
			if len(got) != len(want) {
				t.Errorf("%s received %d messages of group %d, want %d", members[i].id, len(got), g, len(want))
				continue
			}
			for k := range got {
				if got[k].GroupSeq != want[k].GroupSeq || hashOf(got[k].Message) != hashOf(want[k].Message) {
					t.Errorf("%s: delivery %d of group %d is seq %d, the history says seq %d", members[i].id, k, g, got[k].GroupSeq, want[k].GroupSeq)
					break
				}
			}
		}
		for _, p := range r.takeProblems() {
			t.Error(p)
		}
		r.mu.Lock()
		reconnects += r.reconnects
		r.mu.Unlock()
	}
	for i, r := range receivers {
		r.stop()
		receivers[i] = nil
	}
	t.Logf("%d messages receipted, %d deliveries, %d stream reconnects, %d restarts", nSent, delivered, reconnects, srv.restarts)

	// The store after a last SIGKILL.
	srv.kill()
	checkSQLite(t, srv.dbPath())
	srv.start()
	again := fetchHistories()
	for g := range groups {
		if len(again[g]) != len(histories[g]) {
			t.Errorf("group %d: %d messages after the clean restart, %d before", g, len(again[g]), len(histories[g]))
			continue
		}
		for k := range again[g] {
			if hashOf(again[g][k].Message) != hashOf(histories[g][k].Message) {
				t.Errorf("group %d: seq %d changed across the restart", g, k+1)
				break
			}
		}
	}
	if err := srv.stop(); err != nil {
		t.Errorf("mlsds serve after the soak: exit on SIGINT: %v", err)
	}
}

// checkSQLite opens the database file the killed server left and runs
// SQLite's own consistency checks on it.
func checkSQLite(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("PRAGMA integrity_check")
	if err != nil {
		t.Fatalf("integrity_check: %v", err)
	}
	var results []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		results = append(results, s)
	}
	rows.Close()
	if len(results) != 1 || results[0] != "ok" {
		t.Errorf("PRAGMA integrity_check: %q", results)
	}
	fk, err := db.Query("PRAGMA foreign_key_check")
	if err != nil {
		t.Fatalf("foreign_key_check: %v", err)
	}
	n := 0
	for fk.Next() {
		n++
	}
	fk.Close()
	if n != 0 {
		t.Errorf("PRAGMA foreign_key_check: %d violations", n)
	}
}
