package ds

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// AckParams is one acknowledgement: ClientID has processed the messages of
// GroupID up to GroupSeq Seq.
type AckParams struct {
	ClientID string
	GroupID  []byte
	Seq      uint64

	// CheckHead adds Service.Ack's checks of the group's head, made
	// before anything else under the batch's transaction: ErrNotFound if
	// there is no such group, an *AckBeyondHeadError if Seq is above the
	// group's last GroupSeq. Either changes nothing.
	CheckHead bool
}

// AckBeyondHeadError is the refusal of an Ack of a GroupSeq that the group
// has not reached. It is an ErrInvalidArgument.
type AckBeyondHeadError struct {
	Seq     uint64 // the acknowledged GroupSeq
	LastSeq uint64 // the group's last GroupSeq when the Ack was refused
}

func (e *AckBeyondHeadError) Error() string {
	return fmt.Sprintf("%v: cannot acknowledge group_seq %d, the group's last message is %d", ErrInvalidArgument, e.Seq, e.LastSeq)
}

func (e *AckBeyondHeadError) Unwrap() error { return ErrInvalidArgument }

// BatchAcker is implemented by a Store that can apply several Acks in one
// transaction, so that concurrent Acks share one commit (and one fsync)
// instead of paying for one each, as BatchAccepter does for messages.
//
// AckMany applies ps in order, each with exactly the rules and effects of
// Store.Ack (and the checks of CheckHead), in a single transaction; the
// same (client, group) may come more than once (the cursor ends at the
// highest Seq applied: it never moves back). An Ack that fails
// (ErrNotMember, a Seq that does not fit the schema, the refusals of
// CheckHead) changes nothing and gets, at its index in the result, the
// error Ack would have returned; the others go on. If the transaction cannot
// commit, every Ack fails with that error and none is applied. The result
// has len(ps) entries.
type BatchAcker interface {
	AckMany(ctx context.Context, ps []AckParams) []error
}

// AckingAccepter is implemented by a Store that can apply Acks in the
// transaction of a batch of messages, so that a node that both accepts
// messages and takes their Acks commits once for both instead of
// alternating between a message transaction and an Ack transaction.
//
// AcceptMessagesAndAcks is AcceptMessages(ps) followed by AckMany(acks),
// each with exactly its rules and results, in a single transaction: an
// Ack's CheckHead sees the messages of ps that were accepted. Either slice
// may be empty. If the transaction cannot commit, every message and every
// Ack fails with that error and nothing is applied. The results have
// len(ps), len(ps) and len(acks) entries.
type AckingAccepter interface {
	AcceptMessagesAndAcks(ctx context.Context, ps []AcceptParams, acks []AckParams) (results []AcceptResult, errs []error, ackErrs []error)
}

// maxAckBatch bounds the Acks taken into one batch (before collapsing).
const maxAckBatch = 1024

// ackers holds the Ack coalescer of each Service that has Acks in flight.
// An entry exists only while its Service has Acks queued or committing, and
// for committerLinger after: it is removed, under ackers.mu, by the
// committer that ends. So an idle Service holds no entry and no goroutine
// and needs no Close, and the map does not keep a Service alive after its
// last Ack.
var ackers = struct {
	mu sync.Mutex
	m  map[*Service]*acker
}{m: make(map[*Service]*acker)}

// acker queues the Acks of concurrent callers of one Service and applies
// them in batches through a BatchAcker, like batcher does for messages:
// one committer goroutine while there is work, which lingers for
// committerLinger once the queue is empty and then ends (and the acker
// leaves the registry). A batch is whatever queued up while the previous
// one committed; nothing waits for more. Its fields are guarded by
// ackers.mu.
type acker struct {
	svc   *Service
	batch BatchAcker

	queue   []*ackReq
	running bool
	idle    bool          // the committer waits for work (on wake)
	wake    chan struct{} // tells an idle committer that work came
}

// ackReq is one queued Ack and, once done is closed, its outcome.
type ackReq struct {
	p    AckParams
	err  error
	done chan struct{}

	// Under ackers.mu: taken into a batch; withdrawn by its caller before
	// that (then it is dropped).
	taken, withdrawn bool
	item             int // index of its (collapsed) Ack in the batch
}

// ackDurably checks an Ack against the group's head and applies it,
// through the message batcher when the engine is an AckingAccepter, else
// through the coalescer when the engine supports batches, and returns once
// it is durable (or failed). The engine then checks the head under the
// batch's transaction (CheckHead): a read of the group per Ack would cost
// more than the Ack's share of the batch.
func (s *Service) ackDurably(ctx context.Context, client string, groupID []byte, seq uint64) error {
	if s.batcher != nil && s.batcher.both != nil {
		// The Ack rides in the transaction of the next message batch.
		return s.batcher.ack(ctx, AckParams{ClientID: client, GroupID: groupID, Seq: seq, CheckHead: true})
	}
	ba, ok := s.store.(BatchAcker)
	if !ok {
		head, err := s.store.Group(ctx, groupID)
		if err != nil {
			return err
		}
		if seq > head.LastSeq {
			return &AckBeyondHeadError{Seq: seq, LastSeq: head.LastSeq}
		}
		return s.store.Ack(ctx, client, groupID, seq)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r := &ackReq{p: AckParams{ClientID: client, GroupID: groupID, Seq: seq, CheckHead: true}, done: make(chan struct{})}
	ackers.mu.Lock()
	a := ackers.m[s]
	if a == nil {
		a = &acker{svc: s, batch: ba, wake: make(chan struct{}, 1)}
		ackers.m[s] = a
	}
	a.queue = append(a.queue, r)
	switch {
	case !a.running:
		a.running = true
		go a.run()
	case a.idle:
		a.idle = false
		select {
		case a.wake <- struct{}{}:
		default:
		}
	}
	ackers.mu.Unlock()
	if !await(ctx, &ackers.mu, r.done, &r.taken, &r.withdrawn) {
		return ctx.Err()
	}
	return r.err
}

// run is the committer goroutine: it commits what is queued, batch after
// batch; with an empty queue it lingers, then ends and leaves the
// registry.
//
// It does not hold Acks back to gather larger batches: a client may
// acknowledge inline, between the messages it reads (the soak's receivers
// do), and would read no faster than the pace.
func (a *acker) run() {
	var linger *time.Timer
	for {
		ackers.mu.Lock()
		ps, reqs := a.take()
		if len(reqs) == 0 {
			a.idle = true
			ackers.mu.Unlock()
			if linger == nil {
				linger = time.NewTimer(committerLinger)
			} else {
				linger.Reset(committerLinger)
			}
			select {
			case <-a.wake:
				linger.Stop()
				continue
			case <-linger.C:
			}
			ackers.mu.Lock()
			if len(a.queue) == 0 {
				a.running, a.idle = false, false
				if ackers.m[a.svc] == a {
					delete(ackers.m, a.svc)
				}
				ackers.mu.Unlock()
				return
			}
			a.idle = false
			ackers.mu.Unlock()
			continue
		}
		ackers.mu.Unlock()
		a.commit(ps, reqs)
	}
}

// take removes the next batch from the queue: see takeAcks. ackers.mu is
// held.
func (a *acker) take() ([]AckParams, []*ackReq) { return takeAcks(&a.queue) }

// takeAcks removes the next batch from queue, dropping withdrawn requests
// and collapsing the Acks of one (client, group) into one at the highest
// Seq. Its outcome is each of theirs (a cursor moved to the highest is past
// the others, the Welcomes up to the highest include theirs, a group that
// does not exist or a client that is not a member is so for any Seq),
// except when the highest is beyond the group's head: see ackOutcomes. The
// lock that guards queue is held.
func takeAcks(queue *[]*ackReq) ([]AckParams, []*ackReq) {
	type key struct{ client, group string }
	var ps []AckParams
	var reqs []*ackReq
	var index map[key]int
	q := *queue
	n := 0
	for ; n < len(q) && len(reqs) < maxAckBatch; n++ {
		r := q[n]
		if r.withdrawn {
			continue
		}
		if index == nil {
			index = make(map[key]int)
		}
		k := key{r.p.ClientID, string(r.p.GroupID)}
		i, ok := index[k]
		if !ok {
			i = len(ps)
			index[k] = i
			ps = append(ps, r.p)
		} else if r.p.Seq > ps[i].Seq {
			ps[i].Seq = r.p.Seq
		}
		r.item, r.taken = i, true
		reqs = append(reqs, r)
	}
	clear(q[:n])
	q = q[n:]
	if len(q) == 0 {
		q = nil
	}
	*queue = q
	return ps, reqs
}

// commit runs one batch and hands every request its outcome; see
// ackOutcomes for those that go back to the queue.
func (a *acker) commit(ps []AckParams, reqs []*ackReq) {
	// The batch belongs to all its callers: one caller's cancellation must
	// not abort the others' transaction. A bound keeps a hung database
	// from holding them forever.
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	errs := a.safeAckMany(ctx, ps)
	if again := ackOutcomes(ps, reqs, errs); len(again) > 0 {
		ackers.mu.Lock()
		requeueAcks(&a.queue, again)
		ackers.mu.Unlock()
	}
}

// ackOutcomes hands every request of a batch its outcome, given errs, the
// outcome of each collapsed Ack in ps. When the collapsed Ack of a (client,
// group) went beyond the group's head, those of its requests within the
// head are returned instead, for the next batch: the head only grows, so
// they stay within it.
func ackOutcomes(ps []AckParams, reqs []*ackReq, errs []error) (again []*ackReq) {
	for _, r := range reqs {
		err := errs[r.item]
		var beyond *AckBeyondHeadError
		if errors.As(err, &beyond) && r.p.Seq != ps[r.item].Seq {
			if r.p.Seq <= beyond.LastSeq {
				again = append(again, r)
				continue
			}
			err = &AckBeyondHeadError{Seq: r.p.Seq, LastSeq: beyond.LastSeq}
		}
		r.err = err
		close(r.done)
	}
	return again
}

// requeueAcks puts again back at the front of queue; the lock that guards
// queue is held.
func requeueAcks(queue *[]*ackReq, again []*ackReq) {
	for _, r := range again {
		r.taken = false
	}
	*queue = append(again, *queue...)
}

// safeAckMany runs AckMany and turns a panic of the engine or a malformed
// answer into an error for every Ack, so that no caller waits forever.
func (a *acker) safeAckMany(ctx context.Context, ps []AckParams) (errs []error) {
	defer func() {
		if v := recover(); v != nil {
			errs = make([]error, len(ps))
			for i := range errs {
				errs[i] = fmt.Errorf("ds: acknowledging a batch panicked: %v", v)
			}
		}
	}()
	errs = a.batch.AckMany(ctx, ps)
	if len(errs) != len(ps) {
		err := fmt.Errorf("ds: the store answered a batch of %d acknowledgements with %d errors", len(ps), len(errs))
		errs = make([]error, len(ps))
		for i := range errs {
			errs[i] = err
		}
	}
	return errs
}
