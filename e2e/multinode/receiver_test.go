package multinode

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

// cluster is the set of nodes still alive; a client whose node dies moves
// to another one.
type cluster struct {
	mu    sync.Mutex
	nodes []*node
	dead  map[*node]bool
}

func newCluster(nodes ...*node) *cluster {
	return &cluster{nodes: nodes, dead: map[*node]bool{}}
}

func (cl *cluster) isDead(n *node) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.dead[n]
}

// kill SIGKILLs n and takes it out of the cluster.
func (cl *cluster) kill(n *node) {
	cl.mu.Lock()
	cl.dead[n] = true
	cl.mu.Unlock()
	n.kill()
}

// other returns a live node other than n, chosen by i.
func (cl *cluster) other(n *node, i int) *node {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var live []*node
	for _, m := range cl.nodes {
		if m != n && !cl.dead[m] {
			live = append(live, m)
		}
	}
	return live[i%len(live)]
}

// delivery is one message as a subscriber received it.
type delivery struct {
	groupSeq uint64
	epoch    uint64
	sender   string
	message  []byte
	at       time.Time
	node     string
}

// receiver keeps a Subscribe stream of its client open, moving to another
// node when its node dies. It acknowledges what it received every ackEvery
// messages; when it reconnects it first acknowledges everything it has
// (its own cursor) on the new node, so that the replay starts right after
// it. It records any duplicate or any message at or below a cursor it had
// acknowledged, which the test then reports.
type receiver struct {
	c        *client // its own copy: the sender goroutines use another
	index    int
	cl       *cluster
	ackEvery int

	mu         sync.Mutex
	got        map[string][]delivery // by group, in order of arrival
	seen       map[string]map[uint64]bool
	cursor     map[string]uint64 // highest seq received, by group
	acked      map[string]uint64 // highest seq acknowledged successfully
	problems   []string
	reconnects int
	nodes      map[string]bool // nodes it streamed from

	cancel context.CancelFunc
	done   chan struct{}
}

func startReceiver(c *client, index int, cl *cluster, ackEvery int) *receiver {
	rc := *c
	rc.bind(c.node)
	ctx, cancel := context.WithCancel(context.Background())
	r := &receiver{c: &rc, index: index, cl: cl, ackEvery: ackEvery,
		got: map[string][]delivery{}, seen: map[string]map[uint64]bool{},
		cursor: map[string]uint64{}, acked: map[string]uint64{}, nodes: map[string]bool{},
		cancel: cancel, done: make(chan struct{})}
	caughtUp := make(chan struct{})
	go r.run(ctx, caughtUp)
	select {
	case <-caughtUp:
	case <-time.After(30 * time.Second):
	}
	return r
}

func (r *receiver) problem(format string, args ...any) {
	r.mu.Lock()
	r.problems = append(r.problems, fmt.Sprintf(r.c.id+": "+format, args...))
	r.mu.Unlock()
}

func (r *receiver) stop() {
	r.cancel()
	<-r.done
}

// count returns how many messages r has received in group g.
func (r *receiver) count(g []byte) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got[string(g)])
}

func (r *receiver) deliveries(g []byte) []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got[string(g)]...)
}

func (r *receiver) run(ctx context.Context, caughtUp chan struct{}) {
	defer close(r.done)
	first := true
	for ctx.Err() == nil {
		if !first {
			// The node died: move, acknowledge what was received, and
			// resume from there.
			r.c.bind(r.cl.other(r.c.node, r.index))
			r.mu.Lock()
			r.reconnects++
			r.mu.Unlock()
			if err := r.ackAll(ctx); err != nil {
				if ctx.Err() == nil {
					time.Sleep(50 * time.Millisecond)
				}
				continue
			}
		}
		first = false
		err := r.stream(ctx, caughtUp)
		if ctx.Err() != nil {
			return
		}
		if !r.cl.isDead(r.c.node) {
			r.problem("stream on live node %s ended: %v", r.c.node.name, err)
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// ackAll acknowledges the cursor of every group on the current node.
func (r *receiver) ackAll(ctx context.Context) error {
	r.mu.Lock()
	var cs []*mlsdsv1.Cursor
	for g, seq := range r.cursor {
		cs = append(cs, &mlsdsv1.Cursor{GroupId: []byte(g), Seq: seq})
	}
	r.mu.Unlock()
	if len(cs) == 0 {
		return nil
	}
	_, err := r.c.groups.Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{Cursors: cs}))
	if err != nil {
		return err
	}
	r.mu.Lock()
	for _, c := range cs {
		r.acked[string(c.GroupId)] = max(r.acked[string(c.GroupId)], c.Seq)
	}
	r.mu.Unlock()
	return nil
}

func (r *receiver) stream(ctx context.Context, caughtUp chan struct{}) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := r.c.delivery.Subscribe(sctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
	if err != nil {
		return err
	}
	defer st.Close()
	name := r.c.node.name
	r.mu.Lock()
	r.nodes[name] = true
	r.mu.Unlock()
	sinceAck := 0
	for st.Receive() {
		ev := st.Msg()
		if ev.GetCaughtUp() != nil {
			select {
			case <-caughtUp:
			default:
				close(caughtUp)
			}
			continue
		}
		env := ev.GetMessage()
		if env == nil {
			continue
		}
		now := time.Now()
		g := string(env.GroupId)
		r.mu.Lock()
		if r.seen[g] == nil {
			r.seen[g] = map[uint64]bool{}
		}
		switch {
		case r.seen[g][env.GroupSeq]:
			r.problems = append(r.problems, fmt.Sprintf("%s: seq %d delivered twice (from %s)", r.c.id, env.GroupSeq, name))
		case env.GroupSeq <= r.acked[g]:
			r.problems = append(r.problems, fmt.Sprintf("%s: seq %d delivered after acknowledging %d", r.c.id, env.GroupSeq, r.acked[g]))
		case env.SenderClientId == r.c.id:
			r.problems = append(r.problems, fmt.Sprintf("%s: own message %d delivered", r.c.id, env.GroupSeq))
		default:
			r.seen[g][env.GroupSeq] = true
			r.got[g] = append(r.got[g], delivery{groupSeq: env.GroupSeq, epoch: env.Epoch, sender: env.SenderClientId,
				message: bytes.Clone(env.Message), at: now, node: name})
			r.cursor[g] = max(r.cursor[g], env.GroupSeq)
		}
		r.mu.Unlock()
		if sinceAck++; sinceAck >= r.ackEvery {
			sinceAck = 0
			r.ackAll(ctx) // a failure here shows up as the stream ending
		}
	}
	return st.Err()
}
