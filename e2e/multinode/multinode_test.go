package multinode

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/mls"
)

const (
	nNodes      = 3
	nClients    = 30
	nCommitters = 20
	nEpochs     = 50 // as the issue asks; the race of one epoch takes a few ms
	nClaimers   = 10
	nTargets    = 3  // clients whose KeyPackages are claimed
	kpsPerTgt   = 20 // KeyPackages each target uploads
	appPerSend  = 10 // application messages each of the 30 clients sends
)

// TestThreeNodesOnePostgres runs three `mlsds serve` processes on one
// PostgreSQL database, as behind a load balancer, with 30 clients spread
// over them (client i on node i%3), each with a Subscribe stream on its
// node for the whole test. In order:
//
//   - claims: 10 claimers on the 3 nodes claim, concurrently, every
//     KeyPackage of 3 clients; no KeyPackage is handed out twice, every
//     uploaded one is handed out once with its exact bytes, and then the
//     targets are exhausted (NOT_FOUND).
//   - commits: for each of 50 epochs, 20 clients on the 3 nodes race a
//     Commit for that epoch; exactly one is accepted, and every loser gets
//     ABORTED with a WrongEpoch detail naming the next epoch and the seq of
//     the winner. All 30 clients Fetch the same history through their own
//     nodes, and each subscriber received exactly that history (less its
//     own messages) in that order, whichever node the winner used.
//   - application messages with a SIGKILL: every client sends 10
//     application messages through its node; after a third of them, node 3
//     is killed with SIGKILL. Its senders resend what had no receipt
//     through another node (a resubmission is answered with the original
//     receipt), its subscribers acknowledge what they received on another
//     node and subscribe there. Every message with a receipt is delivered
//     exactly once to each other member, nothing at or below an
//     acknowledged cursor is delivered again, and nothing is lost.
//
// Cross-node delivery depends on LISTEN/NOTIFY wake-ups (the nodes' poll
// fallback is the default 5s); the test logs the delivery latencies it saw
// but asserts only that everything is delivered.
func TestThreeNodesOnePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs three nodes")
	}
	start := time.Now()
	url := pgtest.NewDatabase(t)
	bin := buildBinary(t)
	secret := writeSecret(t, t.TempDir())

	// Start the nodes together: the migrations must be applied once even
	// so.
	nodes := make([]*node, nNodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i] = startNode(t, bin, fmt.Sprintf("node%d", i+1), url, secret)
		}()
	}
	wg.Wait()
	for _, n := range nodes {
		if n == nil {
			t.FailNow()
		}
		defer n.stop()
	}
	cl := newCluster(nodes...)
	t.Logf("3 nodes up after %v", time.Since(start).Round(time.Millisecond))

	clients := make([]*client, nClients)
	for i := range clients {
		clients[i] = newClient(t, nodes[i%nNodes], fmt.Sprintf("client%02d", i))
	}

	// One group of all 30, for the Commits and the application messages.
	gid := []byte(fmt.Sprintf("multinode-%x", randBytes(4)))
	clients[0].createOpaqueGroup(t, gid, clients)

	receivers := make([]*receiver, nClients)
	for i, c := range clients {
		receivers[i] = startReceiver(c, i, cl, 16)
		defer receivers[i].stop()
	}

	t.Run("claims", func(t *testing.T) { testClaims(t, clients) })
	if t.Failed() {
		return
	}

	history := testCommits(t, clients, receivers, gid)
	if t.Failed() {
		return
	}

	testAppMessagesWithKill(t, cl, nodes[2], clients, receivers, gid, history)

	for _, r := range receivers {
		r.mu.Lock()
		for _, p := range r.problems {
			t.Error(p)
		}
		r.mu.Unlock()
	}
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}

// testClaims: 10 claimers on 3 nodes never get the same KeyPackage.
func testClaims(t *testing.T, clients []*client) {
	ctx := context.Background()
	targets := clients[nClients-nTargets:]
	uploaded := map[string][]byte{} // ref -> KeyPackage bytes
	owner := map[string]string{}
	for _, tg := range targets {
		req := &mlsdsv1.UploadKeyPackagesRequest{}
		var datas [][]byte
		for range kpsPerTgt {
			d := tg.keyPackage(t)
			datas = append(datas, d)
			req.KeyPackages = append(req.KeyPackages, &mlsdsv1.KeyPackageUpload{KeyPackage: d})
		}
		res, err := tg.kps.UploadKeyPackages(ctx, connect.NewRequest(req))
		if err != nil {
			t.Fatalf("UploadKeyPackages(%s): %v", tg.id, err)
		}
		if len(res.Msg.KeyPackages) != kpsPerTgt {
			t.Fatalf("upload of %d gave %d refs", kpsPerTgt, len(res.Msg.KeyPackages))
		}
		for i, info := range res.Msg.KeyPackages {
			uploaded[string(info.Ref)] = datas[i]
			owner[string(info.Ref)] = tg.id
		}
	}

	type claim struct {
		claimer, node, target string
		kp                    *mlsdsv1.ClaimedKeyPackage
	}
	var (
		mu     sync.Mutex
		claims []claim
		wg     sync.WaitGroup
	)
	startGun := make(chan struct{})
	for i := range nClaimers {
		c := clients[i] // clients 0..9: nodes 1, 2, 3, 1, ...
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-startGun
			exhausted := map[string]bool{}
			for k := i; len(exhausted) < len(targets); k++ {
				tg := targets[k%len(targets)]
				if exhausted[tg.id] {
					continue
				}
				res, err := c.kps.ClaimKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
					Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: tg.id}, CipherSuite: uint32(suite)}))
				if connectCode(err) == connect.CodeNotFound {
					exhausted[tg.id] = true
					continue
				}
				if err != nil {
					t.Errorf("%s claims from %s on %s: %v", c.id, tg.id, c.node.name, err)
					return
				}
				mu.Lock()
				for _, kp := range res.Msg.KeyPackages {
					claims = append(claims, claim{c.id, c.node.name, tg.id, kp})
				}
				mu.Unlock()
			}
		}()
	}
	close(startGun)
	wg.Wait()

	byRef := map[string]claim{}
	nodesUsed := map[string]bool{}
	for _, c := range claims {
		ref := string(c.kp.Ref)
		if prev, dup := byRef[ref]; dup {
			t.Errorf("KeyPackage %x claimed twice: by %s on %s and by %s on %s", c.kp.Ref, prev.claimer, prev.node, c.claimer, c.node)
			continue
		}
		byRef[ref] = c
		nodesUsed[c.node] = true
		if !bytes.Equal(c.kp.KeyPackage, uploaded[ref]) || c.kp.ClientId != owner[ref] || c.kp.ClientId != c.target {
			t.Errorf("claim of %x by %s: not the KeyPackage uploaded by %s", c.kp.Ref, c.claimer, c.target)
		}
		if c.kp.LastResort {
			t.Errorf("claim of %x: marked last resort, none was uploaded", c.kp.Ref)
		}
	}
	if len(byRef) != len(uploaded) {
		t.Errorf("%d distinct KeyPackages claimed, %d uploaded", len(byRef), len(uploaded))
	}
	if len(nodesUsed) != nNodes {
		t.Errorf("claims went through %d nodes, want %d", len(nodesUsed), nNodes)
	}
	t.Logf("%d claims by %d claimers through %d nodes, all distinct", len(claims), nClaimers, len(nodesUsed))
}

// testCommits races 20 Commits per epoch for 50 epochs and returns the
// group's history as Fetch gives it.
func testCommits(t *testing.T, clients []*client, receivers []*receiver, gid []byte) []*mlsdsv1.Envelope {
	ctx := context.Background()
	committers := clients[:nCommitters]
	type winner struct {
		who  string
		node string
		seq  uint64
		data []byte
	}
	winners := make([]winner, nEpochs)
	winnerNodes := map[string]bool{}
	for epoch := uint64(0); epoch < nEpochs; epoch++ {
		var (
			mu       sync.Mutex
			accepted []winner
			losers   []*mlsdsv1.WrongEpoch
			wg       sync.WaitGroup
		)
		msgs := make([][]byte, len(committers))
		for i := range committers {
			msgs[i] = privateMessage(t, gid, epoch, mls.ContentTypeCommit, 64)
		}
		startGun := make(chan struct{})
		for i, c := range committers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-startGun
				r, err := c.send(ctx, msgs[i])
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					accepted = append(accepted, winner{c.id, c.node.name, r.GroupSeq, msgs[i]})
					if r.Epoch != epoch {
						t.Errorf("epoch %d: receipt says epoch %d", epoch, r.Epoch)
					}
					return
				}
				if we := wrongEpoch(err); we != nil {
					losers = append(losers, we)
					return
				}
				t.Errorf("epoch %d: %s on %s: %v", epoch, c.id, c.node.name, err)
			}()
		}
		close(startGun)
		wg.Wait()
		if len(accepted) != 1 || len(losers) != nCommitters-1 {
			t.Fatalf("epoch %d: %d Commits accepted, %d wrong_epoch; want 1 and %d", epoch, len(accepted), len(losers), nCommitters-1)
		}
		w := accepted[0]
		for _, we := range losers {
			if we.ExpectedEpoch != epoch+1 || we.FetchFromSeq != w.seq {
				t.Fatalf("epoch %d: wrong_epoch says expected %d from seq %d; want %d from seq %d",
					epoch, we.ExpectedEpoch, we.FetchFromSeq, epoch+1, w.seq)
			}
		}
		winners[epoch] = w
		winnerNodes[w.node] = true
	}
	t.Logf("50 epochs x 20 racers: one winner each; winners came through %d nodes", len(winnerNodes))

	// Every client reads the same history through its own node.
	ref, err := clients[0].fetchAll(ctx, gid)
	if err != nil {
		t.Fatal(err)
	}
	if len(ref) != nEpochs {
		t.Fatalf("history has %d messages, want %d Commits", len(ref), nEpochs)
	}
	for e, env := range ref {
		w := winners[e]
		if env.Epoch != uint64(e) || env.GroupSeq != w.seq || env.SenderClientId != w.who || !bytes.Equal(env.Message, w.data) ||
			env.ContentType != mlsdsv1.ContentType_CONTENT_TYPE_COMMIT {
			t.Fatalf("history[%d] = seq %d epoch %d from %s; the winner of epoch %d was %s with seq %d",
				e, env.GroupSeq, env.Epoch, env.SenderClientId, e, w.who, w.seq)
		}
	}
	for _, c := range clients[1:] {
		h, err := c.fetchAll(ctx, gid)
		if err != nil {
			t.Fatalf("Fetch(%s on %s): %v", c.id, c.node.name, err)
		}
		if !sameHistory(h, ref) {
			t.Fatalf("%s on %s fetches another history than client00 on node1", c.id, c.node.name)
		}
	}
	// And every subscriber got it, in that order, without its own.
	waitDelivered(t, receivers, gid, func(r *receiver) int {
		n := 0
		for _, env := range ref {
			if env.SenderClientId != r.c.id {
				n++
			}
		}
		return n
	})
	for _, r := range receivers {
		var want []*mlsdsv1.Envelope
		for _, env := range ref {
			if env.SenderClientId != r.c.id {
				want = append(want, env)
			}
		}
		got := r.deliveries(gid)
		if len(got) != len(want) {
			t.Fatalf("%s received %d Commits, want %d", r.c.id, len(got), len(want))
		}
		for i := range got {
			if got[i].groupSeq != want[i].GroupSeq || !bytes.Equal(got[i].message, want[i].Message) {
				t.Fatalf("%s: delivery %d is seq %d, want seq %d", r.c.id, i, got[i].groupSeq, want[i].GroupSeq)
			}
		}
	}
	return ref
}

func sameHistory(a, b []*mlsdsv1.Envelope) bool {
	return slices.EqualFunc(a, b, func(x, y *mlsdsv1.Envelope) bool {
		return x.GroupSeq == y.GroupSeq && x.Epoch == y.Epoch && x.SenderClientId == y.SenderClientId && bytes.Equal(x.Message, y.Message)
	})
}

// waitDelivered waits until each receiver has want(r) messages of the
// group (a hang guard, not a speed check).
func waitDelivered(t *testing.T, receivers []*receiver, gid []byte, want func(*receiver) int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range receivers {
		w := want(r)
		for r.count(gid) < w {
			if time.Now().After(deadline) {
				t.Fatalf("%s has %d of %d messages after 30s", r.c.id, r.count(gid), w)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

type sentMsg struct {
	sender string
	data   []byte
	seq    uint64
	at     time.Time
}

// testAppMessagesWithKill: exactly-once delivery across nodes, with one
// node killed in the middle.
func testAppMessagesWithKill(t *testing.T, cl *cluster, victim *node, clients []*client, receivers []*receiver, gid []byte, history []*mlsdsv1.Envelope) {
	ctx := context.Background()
	epoch := uint64(nEpochs) // the group's epoch after the Commits
	var (
		mu       sync.Mutex
		sent     []sentMsg
		wg       sync.WaitGroup
		nSent    atomic.Int64
		killOnce sync.Once
		moved    atomic.Int64
	)
	killAt := int64(nClients * appPerSend / 3)
	for i, c0 := range clients {
		c := *c0 // the sender's own copy, rebound if its node dies
		c.bind(c0.node)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range appPerSend {
				data := privateMessage(t, gid, epoch, mls.ContentTypeApplication, 100)
				at := time.Now()
				var r *mlsdsv1.Receipt
				for attempt := 0; ; attempt++ {
					var err error
					r, err = c.send(ctx, data)
					if err == nil {
						break
					}
					if !cl.isDead(c.node) || attempt > 20 {
						t.Errorf("%s sends through %s: %v", c.id, c.node.name, err)
						return
					}
					// Its node is gone: resend the same bytes elsewhere.
					// If the first attempt was stored, the receipt is the
					// original one.
					c.bind(cl.other(c.node, i))
					moved.Add(1)
				}
				mu.Lock()
				sent = append(sent, sentMsg{c.id, data, r.GroupSeq, at})
				mu.Unlock()
				if nSent.Add(1) == killAt {
					killOnce.Do(func() { cl.kill(victim) })
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if !cl.isDead(victim) {
		t.Fatal("the victim node was not killed")
	}
	if len(sent) != nClients*appPerSend {
		t.Fatalf("%d messages sent, want %d", len(sent), nClients*appPerSend)
	}
	bySeq := map[uint64]sentMsg{}
	for _, s := range sent {
		if prev, dup := bySeq[s.seq]; dup {
			t.Fatalf("seq %d given to two messages (%s and %s)", s.seq, prev.sender, s.sender)
		}
		bySeq[s.seq] = s
	}

	// Everything stored is what got receipts, once: the history after the
	// Commits is exactly the 300 messages, by their receipts.
	all, err := clients[0].fetchAll(ctx, gid)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(history)+len(sent) {
		t.Fatalf("group holds %d messages, want %d Commits + %d application messages", len(all), len(history), len(sent))
	}
	for _, env := range all[len(history):] {
		s, ok := bySeq[env.GroupSeq]
		if !ok || !bytes.Equal(s.data, env.Message) || s.sender != env.SenderClientId {
			t.Fatalf("stored seq %d from %s matches no receipt", env.GroupSeq, env.SenderClientId)
		}
	}

	total := len(history) + len(sent)
	waitDelivered(t, receivers, gid, func(r *receiver) int {
		n := 0
		for _, env := range all {
			if env.SenderClientId != r.c.id {
				n++
			}
		}
		return n
	})
	var lat []time.Duration
	crossNode := 0
	reconnected := 0
	for _, r := range receivers {
		got := r.deliveries(gid)
		seqs := map[uint64]bool{}
		for _, d := range got {
			seqs[d.groupSeq] = true
		}
		for _, env := range all {
			if env.SenderClientId != r.c.id && !seqs[env.GroupSeq] {
				t.Errorf("%s never received seq %d", r.c.id, env.GroupSeq)
			}
		}
		for _, d := range got[len(history)-commitsBy(history, r.c.id):] {
			s := bySeq[d.groupSeq]
			if !bytes.Equal(d.message, s.data) {
				t.Errorf("%s: seq %d has other bytes than were sent", r.c.id, d.groupSeq)
			}
			lat = append(lat, d.at.Sub(s.at))
			if d.node != nodeOf(clients, s.sender) {
				crossNode++
			}
		}
		r.mu.Lock()
		if r.reconnects > 0 {
			reconnected++
		}
		r.mu.Unlock()
	}
	if crossNode == 0 {
		t.Error("no message was read on another node than its sender's")
	}
	if reconnected == 0 {
		t.Error("no subscriber had to reconnect after the kill")
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		t.Logf("%d messages in %d epochs total, %d application deliveries (%d read on another node than the sender's); %d subscribers and %d sends moved after the SIGKILL; send-to-delivery latency p50 %v p99 %v max %v (for information)",
			total, nEpochs+1, len(lat), crossNode, reconnected, moved.Load(),
			lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)*99/100].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
	}
}

func commitsBy(history []*mlsdsv1.Envelope, id string) int {
	n := 0
	for _, env := range history {
		if env.SenderClientId == id {
			n++
		}
	}
	return n
}

// nodeOf names the node a client started on.
func nodeOf(clients []*client, id string) string {
	for _, c := range clients {
		if c.id == id {
			return c.node.name
		}
	}
	return ""
}
