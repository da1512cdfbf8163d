package ds

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/mlsds/mlsds/mls"
)

// BatchAccepter is implemented by a Store that can accept several messages
// in one transaction, so that concurrent Sends share one commit (and one
// fsync) instead of paying for one each: group commit.
//
// AcceptMessages applies ps in order, each with exactly the rules and
// effects of AcceptMessage, in a single transaction. A message that fails
// (wrong epoch, not a member, state conflict, unknown group, ...) changes
// nothing and gets, at its index in errs, the error AcceptMessage would
// have returned for it at that point of the batch; the others go on. So
// two Commits for one epoch in a batch: the first wins, the second gets a
// *WrongEpochError with the epoch after and the first's GroupSeq; the same
// hash twice: the second gets the first's receipt with Duplicate set.
//
// Nothing is durable before the transaction commits. If it cannot commit,
// every message fails with that error and none is stored: no receipt may
// be handed out for a message that a crash could lose. Both slices have
// len(ps) entries; results[i] is meaningful when errs[i] is nil.
type BatchAccepter interface {
	AcceptMessages(ctx context.Context, ps []AcceptParams) (results []AcceptResult, errs []error)
}

// Bounds of one batch. A batch is whatever is queued when the committer is
// free, up to these; it never waits for more to arrive.
const (
	maxBatchMessages = 256
	maxBatchBytes    = 8 << 20
)

// batchTimeout bounds the store's work on one batch.
const batchTimeout = 30 * time.Second

// batcher queues the AcceptMessage calls of concurrent submissions and
// runs them as batches through a BatchAccepter. There is at most one
// committer at a time, and only while there is work: a submission that
// finds none becomes it, commits batches (its own message among the first)
// until its message is done, and then hands what is queued to a committer
// goroutine, which ends when the queue is empty. So a lone Send commits on
// its own goroutine, and an idle Service holds no goroutine and needs no
// Close.
type batcher struct {
	batch  BatchAccepter
	notify func(topics ...string)

	mu      sync.Mutex
	queue   []*acceptReq
	running bool
}

// acceptReq is one queued message and, once done is closed, its outcome.
type acceptReq struct {
	p      AcceptParams
	topics []string
	res    AcceptResult
	err    error
	done   chan struct{}

	// Under batcher.mu: taken into a batch; withdrawn by its caller
	// before that (then it is dropped).
	taken, withdrawn bool
}

// newBatcher returns a batcher over store, or nil if the engine cannot
// accept batches.
func newBatcher(store Store, notify func(topics ...string)) *batcher {
	ba, ok := store.(BatchAccepter)
	if !ok {
		return nil
	}
	return &batcher{batch: ba, notify: notify}
}

// acceptMessage stores p, through the batcher when the engine supports
// batches, and wakes topics if the message is new. It returns once the
// message's transaction committed (or failed).
func (s *Service) acceptMessage(ctx context.Context, p AcceptParams, topics []string) (AcceptResult, error) {
	if s.batcher == nil {
		res, err := s.store.AcceptMessage(ctx, p)
		if err == nil && !res.Duplicate {
			s.notify(topics...)
		}
		return res, err
	}
	return s.batcher.accept(ctx, p, topics)
}

func (b *batcher) accept(ctx context.Context, p AcceptParams, topics []string) (AcceptResult, error) {
	if err := ctx.Err(); err != nil {
		return AcceptResult{}, err
	}
	r := &acceptReq{p: p, topics: topics, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, r)
	lead := !b.running
	b.running = true
	b.mu.Unlock()
	if lead {
		// No committer runs: this caller is it until its own message
		// is done, so that a lone Send pays for no hand-over.
		b.lead(r)
		return r.res, r.err
	}
	select {
	case <-r.done:
		return r.res, r.err
	case <-ctx.Done():
	}
	// A message still queued is withdrawn: the caller learns that it was
	// not stored. One already in a batch's transaction is waited for, so
	// that the caller learns what became of it (the batch does not take
	// long; abandoning it would leave the outcome unknown).
	b.mu.Lock()
	taken := r.taken
	r.withdrawn = !taken
	b.mu.Unlock()
	if !taken {
		return AcceptResult{}, ctx.Err()
	}
	<-r.done
	return r.res, r.err
}

// lead commits batches on the caller's goroutine until own is done, then
// leaves what is still queued to a committer goroutine.
func (b *batcher) lead(own *acceptReq) {
	for {
		reqs := b.next()
		if reqs == nil {
			return
		}
		b.commit(reqs)
		select {
		case <-own.done:
			b.mu.Lock()
			if len(b.queue) == 0 {
				b.running = false
			} else {
				go b.run()
			}
			b.mu.Unlock()
			return
		default:
		}
	}
}

// run is the committer goroutine: it takes what is queued, commits it as
// one batch, and repeats until the queue is empty.
func (b *batcher) run() {
	for {
		reqs := b.next()
		if reqs == nil {
			return
		}
		b.commit(reqs)
	}
}

// next takes the next batch from the queue; if there is none, the
// committer stops (running turns false) and next returns nil.
func (b *batcher) next() []*acceptReq {
	b.mu.Lock()
	defer b.mu.Unlock()
	reqs := b.take()
	if len(reqs) == 0 {
		b.running = false
		return nil
	}
	return reqs
}

// take removes the next batch from the queue, dropping withdrawn
// requests; b.mu is held.
func (b *batcher) take() []*acceptReq {
	var reqs []*acceptReq
	n, size := 0, 0
	for ; n < len(b.queue) && len(reqs) < maxBatchMessages; n++ {
		r := b.queue[n]
		if r.withdrawn {
			continue
		}
		sz := r.p.size()
		if len(reqs) > 0 && size+sz > maxBatchBytes {
			break
		}
		size += sz
		r.taken = true
		reqs = append(reqs, r)
	}
	clear(b.queue[:n])
	b.queue = b.queue[n:]
	if len(b.queue) == 0 {
		b.queue = nil
	}
	return reqs
}

func (p *AcceptParams) size() int {
	return len(p.Data) + len(p.NewState) + len(p.GroupInfo) + len(p.Welcome) + 256
}

// commit runs one batch and hands every request its outcome.
func (b *batcher) commit(reqs []*acceptReq) {
	// The batch belongs to all its callers: one caller's cancellation
	// must not abort the others' transaction. A bound keeps a hung
	// database from holding them forever.
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	ps := make([]AcceptParams, len(reqs))
	for i, r := range reqs {
		ps[i] = r.p
	}
	res, errs := b.safeAccept(ctx, ps)
	for i, r := range reqs {
		r.res, r.err = res[i], errs[i]
	}
	var topics []string
	seen := make(map[string]bool)
	for _, r := range reqs {
		if r.err != nil || r.res.Duplicate {
			continue
		}
		for _, t := range r.topics {
			if !seen[t] {
				seen[t] = true
				topics = append(topics, t)
			}
		}
	}
	for _, r := range reqs {
		close(r.done)
	}
	// One wake-up per batch and topic, after the answers: a receipt does
	// not wait for it (with PostgreSQL it is a round trip of its own), and
	// the next batch, which is taken after it, grows meanwhile.
	b.notify(topics...)
}

// safeAccept runs AcceptMessages and turns a panic of the engine into an
// error for every message, so that no caller waits forever.
func (b *batcher) safeAccept(ctx context.Context, ps []AcceptParams) (res []AcceptResult, errs []error) {
	defer func() {
		if v := recover(); v != nil {
			res, errs = make([]AcceptResult, len(ps)), make([]error, len(ps))
			for i := range errs {
				errs[i] = fmt.Errorf("ds: accepting a batch of messages panicked: %v", v)
			}
		}
	}()
	res, errs = b.batch.AcceptMessages(ctx, ps)
	if len(res) != len(ps) || len(errs) != len(ps) {
		err := fmt.Errorf("ds: the store answered a batch of %d messages with %d results and %d errors", len(ps), len(res), len(errs))
		res, errs = make([]AcceptResult, len(ps)), make([]error, len(ps))
		for i := range errs {
			errs[i] = err
		}
	}
	return res, errs
}

// prepareApplication prepares an application message in a PrivateMessage
// without reading the group: in both modes it is accepted from a member of
// the group for an epoch within the window, and the store checks all of
// that (and idempotency, and that the group exists) under its transaction,
// with the same typed errors. Sparing the reads matters: they cost more
// than the message's share of a batched commit.
func (s *Service) prepareApplication(sub *submission) (AcceptParams, []string) {
	p := s.acceptParams(sub)
	p.MaxEpochLag = s.cfg.AppMessageEpochWindow
	p.RequireMember = true
	return p, []string{GroupTopic(sub.groupID)}
}

// isPrivateApplication reports whether sub is an application message in a
// PrivateMessage, which prepareApplication handles.
func (sub *submission) isPrivateApplication() bool {
	return sub.ct == mls.ContentTypeApplication && sub.wf == mls.WireFormatPrivateMessage && sub.bundle == nil
}
