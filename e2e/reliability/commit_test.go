package reliability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

const (
	commitClients  = 8
	commitEpochs   = 240 // Commits accepted before the committers stop
	commitRestarts = 3   // SIGKILL + restart at these fractions of commitEpochs
)

// view is what one client learned about the group's epochs: for each
// epoch, the hash of the Commit that started the next one, and where it
// learned it (receipt, fetch or subscribe).
type view struct {
	mu     sync.Mutex
	id     string
	winner map[uint64][32]byte
	source map[uint64]string
	forks  []string
}

func (v *view) learn(epoch uint64, h [32]byte, src string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if prev, ok := v.winner[epoch]; ok {
		if prev != h {
			v.forks = append(v.forks, fmt.Sprintf("%s: epoch %d won by %x (%s) and by %x (%s)",
				v.id, epoch, prev[:6], v.source[epoch], h[:6], src))
		}
		return
	}
	v.winner[epoch] = h
	v.source[epoch] = src
}

// receipted is a Commit the server acknowledged with a receipt.
type receipted struct {
	client string
	epoch  uint64
	seq    uint64
	hash   [32]byte
}

// TestCommitLinearizable: 8 clients of one opaque group race Commits
// (PrivateMessages with a real clear header) for the epoch each believes
// current. A loser gets wrong_epoch, Fetches what it missed, learns the
// epochs from it and commits again for the new epoch. Meanwhile each
// client's Subscribe stream is dropped and reopened at random, and the
// server is SIGKILLed and restarted on its SQLite data directory three
// times. Every client records, for every epoch, which Commit (by hash) it
// saw start the next epoch — from its receipts, its Fetches and its stream.
//
// The views are then checked against the group's history, as Fetch gives
// it after the run, in two ways:
//   - invariants: the history is one Commit per epoch 0..E at consecutive
//     seqs (no gaps); no two views name different winners for an epoch (no
//     forks); every receipt's Commit is in the history at its epoch and
//     seq; every view covers a prefix 0..k of the epochs and agrees with
//     the history on it;
//   - porcupine: the Sends, with their call and return times and outcomes
//     (receipt, wrong_epoch with the epoch it named, or unknown when the
//     server died under the call), are a linearizable history of a
//     compare-and-set register holding the Commit history (linearize_test.go).
func TestCommitLinearizable(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d (times of the streams' own disconnects)", seed)
	srv := newServer(t)
	clients := make([]*client, commitClients)
	for i := range clients {
		clients[i] = newClient(t, srv, fmt.Sprintf("committer%d", i))
	}
	gid := []byte(fmt.Sprintf("linearizable-%x", randBytes(4)))
	clients[0].createOpaqueGroup(t, gid, clients)

	views := make([]*view, commitClients)
	receivers := make([]*receiver, commitClients)
	for i, c := range clients {
		views[i] = &view{id: c.id, winner: map[uint64][32]byte{}, source: map[uint64]string{}}
		receivers[i] = startReceiver(c, 4, rand.New(rand.NewPCG(seed, uint64(i))), 300*time.Millisecond)
	}
	defer func() {
		for _, r := range receivers {
			r.stop()
		}
	}()

	var (
		accepted atomic.Int64
		mu       sync.Mutex
		receipts []receipted
		ops      []sendOp
		wg       sync.WaitGroup
		opStart  = time.Now()
	)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	stop := make(chan struct{})
	var stopOnce sync.Once
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := views[i]
			epoch, lastSeq := uint64(0), uint64(0)
			learn := func(envs []*mlsdsv1.Envelope, src string) {
				for _, env := range envs {
					if env.ContentType != mlsdsv1.ContentType_CONTENT_TYPE_COMMIT {
						t.Errorf("%s: non-Commit at seq %d", c.id, env.GroupSeq)
						continue
					}
					v.learn(env.Epoch, hashOf(env.Message), src)
					epoch = max(epoch, env.Epoch+1)
					lastSeq = max(lastSeq, env.GroupSeq)
				}
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				if ctx.Err() != nil {
					return
				}
				msg := privateMessage(t, gid, epoch, mls.ContentTypeCommit, 64)
				h := hashOf(msg)
				// Until a definite answer, resubmit the same bytes: a
				// resubmission of a stored Commit gives back its receipt.
				for {
					op := sendOp{client: i, epoch: epoch, hash: h, call: time.Since(opStart)}
					r, err := c.send(ctx, msg)
					op.ret = time.Since(opStart)
					if err != nil && transient(err) && ctx.Err() == nil {
						op.outcome = outcomeUnknown
						mu.Lock()
						ops = append(ops, op)
						mu.Unlock()
						time.Sleep(20 * time.Millisecond)
						continue
					}
					if err == nil {
						op.outcome = outcomeOK
						if r.Epoch != epoch {
							t.Errorf("%s: Commit for epoch %d got a receipt for epoch %d", c.id, epoch, r.Epoch)
						}
						mu.Lock()
						ops = append(ops, op)
						receipts = append(receipts, receipted{c.id, r.Epoch, r.GroupSeq, h})
						mu.Unlock()
						v.learn(r.Epoch, h, "receipt")
						epoch, lastSeq = r.Epoch+1, max(lastSeq, r.GroupSeq)
						if accepted.Add(1) >= commitEpochs {
							stopOnce.Do(func() { close(stop) })
						}
						break
					}
					we := wrongEpoch(err)
					if we == nil {
						if ctx.Err() == nil {
							t.Errorf("%s: Commit for epoch %d: %v", c.id, epoch, err)
						}
						return
					}
					op.outcome, op.observed = outcomeWrongEpoch, we.ExpectedEpoch
					mu.Lock()
					ops = append(ops, op)
					mu.Unlock()
					if we.ExpectedEpoch <= epoch {
						t.Errorf("%s: Commit for epoch %d refused with wrong_epoch expecting %d", c.id, epoch, we.ExpectedEpoch)
						return
					}
					// Fetch what this client has not processed (it may be more
					// than one epoch behind) and learn the epochs from it.
					from := min(lastSeq+1, we.FetchFromSeq)
					envs, err := retry(ctx, func() ([]*mlsdsv1.Envelope, error) { return c.fetchFrom(ctx, gid, from) })
					if err != nil {
						if ctx.Err() == nil {
							t.Errorf("%s: Fetch from %d: %v", c.id, from, err)
						}
						return
					}
					learn(envs, "fetch")
					if epoch < we.ExpectedEpoch {
						t.Errorf("%s: wrong_epoch expects %d, Fetch from %d only reaches epoch %d", c.id, we.ExpectedEpoch, from, epoch)
						return
					}
					break
				}
			}
		}()
	}

	// The killer: SIGKILL and restart at 1/4, 2/4 and 3/4 of the run.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k := 1; k <= commitRestarts; k++ {
			for accepted.Load() < int64(k*commitEpochs/(commitRestarts+1)) {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				case <-time.After(2 * time.Millisecond):
				}
			}
			srv.crash()
			t.Logf("SIGKILL + restart %d after %d accepted Commits", k, accepted.Load())
		}
	}()
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("run did not finish in time: %d Commits accepted", accepted.Load())
	}
	if t.Failed() {
		return
	}

	// The history, after the run.
	history, err := retry(context.Background(), func() ([]*mlsdsv1.Envelope, error) {
		return clients[0].fetchFrom(context.Background(), gid, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	hist := make([][32]byte, len(history))
	for i, env := range history {
		if env.GroupSeq != uint64(i+1) || env.Epoch != uint64(i) || env.ContentType != mlsdsv1.ContentType_CONTENT_TYPE_COMMIT {
			t.Fatalf("history[%d] is seq %d epoch %d %v: want a Commit at seq %d for epoch %d (gap or fork)",
				i, env.GroupSeq, env.Epoch, env.ContentType, i+1, i)
		}
		hist[i] = hashOf(env.Message)
	}
	if len(history) < commitEpochs {
		t.Fatalf("history has %d Commits, %d were accepted", len(history), accepted.Load())
	}

	// Receipts: each in the history at its epoch and seq.
	for _, r := range receipts {
		if r.epoch >= uint64(len(hist)) || hist[r.epoch] != r.hash || r.seq != r.epoch+1 {
			t.Errorf("%s's receipted Commit (epoch %d, seq %d) is not in the history there", r.client, r.epoch, r.seq)
		}
	}
	if len(receipts) != int(accepted.Load()) {
		t.Errorf("%d receipts recorded, %d counted", len(receipts), accepted.Load())
	}

	// Let the streams catch up with the whole history, then fold them in.
	deadline := time.Now().Add(30 * time.Second)
	for i, r := range receivers {
		own := 0
		for _, env := range history {
			if env.SenderClientId == clients[i].id {
				own++
			}
		}
		for r.count(gid) < len(history)-own && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		for _, p := range r.takeProblems() {
			t.Error(p)
		}
		for _, env := range r.deliveries(gid) {
			views[i].learn(env.Epoch, hashOf(env.Message), "subscribe")
		}
	}
	// Views: no forks within or across them; each a prefix of the history.
	reconnects := 0
	for i, v := range views {
		for _, f := range v.forks {
			t.Error("fork: " + f)
		}
		for e := uint64(0); e < uint64(len(hist)); e++ {
			h, ok := v.winner[e]
			if !ok {
				t.Errorf("%s's view has no winner for epoch %d of %d", v.id, e, len(hist))
				break
			}
			if h != hist[e] {
				t.Errorf("fork: %s saw %x (%s) win epoch %d, the history has %x", v.id, h[:6], v.source[e], e, hist[e][:6])
			}
		}
		if len(v.winner) != len(hist) {
			t.Errorf("%s's view has %d epochs, the history %d", v.id, len(v.winner), len(hist))
		}
		receivers[i].mu.Lock()
		reconnects += receivers[i].reconnects
		receivers[i].mu.Unlock()
	}
	// Each subscriber got the history less its own Commits, in order.
	for i, r := range receivers {
		var want [][32]byte
		for _, env := range history {
			if env.SenderClientId != clients[i].id {
				want = append(want, hashOf(env.Message))
			}
		}
		got := r.deliveries(gid)
		if len(got) != len(want) {
			t.Errorf("%s received %d Commits, want %d", clients[i].id, len(got), len(want))
			continue
		}
		for k := range got {
			if hashOf(got[k].Message) != want[k] {
				t.Errorf("%s's delivery %d is not the history's", clients[i].id, k)
				break
			}
		}
	}

	mu.Lock()
	defer mu.Unlock()
	checkLinearizable(t, ops)
	var byOutcome [3]int
	for _, op := range ops {
		byOutcome[op.outcome]++
	}
	t.Logf("%d epochs; %d Send calls: %d receipts, %d wrong_epoch, %d cut by a crash; %d stream reconnects, %d server restarts",
		len(hist), len(ops), byOutcome[outcomeOK], byOutcome[outcomeWrongEpoch], byOutcome[outcomeUnknown], reconnects, srv.restarts)
}
