package reliability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

// receiver keeps a Subscribe stream of its client open across server
// crashes and its own disconnects. It acknowledges what it received every
// ackEvery messages; before every new stream it acknowledges its cursor
// (the highest seq received), so the replay starts right after it and
// nothing it has may come again. Every duplicate, redelivery at or below an
// acknowledged cursor, out-of-order delivery or own message is recorded as
// a problem.
type receiver struct {
	c        *client
	ackEvery int
	rng      *rand.Rand    // for disconnects; nil for none
	dropMean time.Duration // mean time between the receiver's own disconnects

	mu         sync.Mutex
	got        map[string][]*mlsdsv1.Envelope // by group, in order of arrival
	cursor     map[string]uint64              // highest seq received
	acked      map[string]uint64              // highest seq acknowledged successfully
	problems   []string
	reconnects int

	cancel context.CancelFunc
	done   chan struct{}
}

func startReceiver(c *client, ackEvery int, rng *rand.Rand, dropMean time.Duration) *receiver {
	ctx, cancel := context.WithCancel(context.Background())
	r := &receiver{c: c, ackEvery: ackEvery, rng: rng, dropMean: dropMean,
		got: map[string][]*mlsdsv1.Envelope{}, cursor: map[string]uint64{}, acked: map[string]uint64{},
		cancel: cancel, done: make(chan struct{})}
	caughtUp := make(chan struct{})
	go r.run(ctx, caughtUp)
	select {
	case <-caughtUp:
	case <-time.After(30 * time.Second):
	}
	return r
}

func (r *receiver) stop() {
	r.cancel()
	<-r.done
}

func (r *receiver) count(g []byte) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got[string(g)])
}

func (r *receiver) deliveries(g []byte) []*mlsdsv1.Envelope {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*mlsdsv1.Envelope(nil), r.got[string(g)]...)
}

func (r *receiver) run(ctx context.Context, caughtUp chan struct{}) {
	defer close(r.done)
	first := true
	for ctx.Err() == nil {
		if !first {
			r.mu.Lock()
			r.reconnects++
			r.mu.Unlock()
			if err := r.ackAll(ctx); err != nil {
				if ctx.Err() == nil {
					time.Sleep(20 * time.Millisecond)
				}
				continue
			}
		}
		first = false
		r.stream(ctx, caughtUp)
		if ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// ackAll acknowledges the cursor of every group.
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
	_, err := r.c.groups().Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{Cursors: cs}))
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

func (r *receiver) stream(ctx context.Context, caughtUp chan struct{}) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if r.rng != nil && r.dropMean > 0 {
		// The client drops its own stream now and then.
		r.mu.Lock()
		d := time.Duration(r.rng.Int64N(int64(2 * r.dropMean)))
		r.mu.Unlock()
		t := time.AfterFunc(d, cancel)
		defer t.Stop()
	}
	dc, _ := r.c.delivery()
	st, err := dc.Subscribe(sctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
	if err != nil {
		return
	}
	defer st.Close()
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
		g := string(env.GroupId)
		r.mu.Lock()
		switch {
		case env.GroupSeq <= r.acked[g]:
			r.problems = append(r.problems, fmt.Sprintf("%s: seq %d delivered after acknowledging %d", r.c.id, env.GroupSeq, r.acked[g]))
		case env.GroupSeq <= r.cursor[g]:
			r.problems = append(r.problems, fmt.Sprintf("%s: seq %d delivered again or out of order (cursor %d)", r.c.id, env.GroupSeq, r.cursor[g]))
		case env.SenderClientId == r.c.id:
			r.problems = append(r.problems, fmt.Sprintf("%s: own message %d delivered", r.c.id, env.GroupSeq))
		default:
			r.got[g] = append(r.got[g], proto.Clone(env).(*mlsdsv1.Envelope))
			r.cursor[g] = env.GroupSeq
		}
		r.mu.Unlock()
		if sinceAck++; sinceAck >= r.ackEvery {
			sinceAck = 0
			r.ackAll(ctx) // a failure shows up as the stream ending
		}
	}
}

func (r *receiver) takeProblems() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.problems...)
}
