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
// runs them as batches through a BatchAccepter. One committer goroutine
// runs while there is work: it takes whatever is queued, commits it as one
// batch, and repeats; once the queue is empty it lingers for
// committerLinger and then ends. So an idle Service holds no goroutine and
// needs no Close, and a busy one commits on one goroutine whose stack has
// grown to the engine's needs, instead of growing a request's stack for
// every batch (SQLite's pure-Go engine runs deep).
type batcher struct {
	batch  BatchAccepter
	notify func(topics ...string)

	// both is the engine as an AckingAccepter, or nil: then the Acks of
	// the Service are queued here too (acks), and go into the message
	// batches' transactions.
	both AckingAccepter

	mu      sync.Mutex
	queue   []*acceptReq
	acks    []*ackReq
	running bool          // a committer goroutine runs
	idle    bool          // it waits for work (on wake)
	wake    chan struct{} // tells an idle committer that work came

	// Wake-ups waiting to be sent (notifyLater).
	nmu       sync.Mutex
	pending   []string
	pendingAt map[string]bool
	notifying bool // a goroutine sends them
}

// committerLinger is how long a committer goroutine with nothing to do
// waits for more before it ends.
const committerLinger = 100 * time.Millisecond

// acceptReq is one queued message and, once done is closed, its outcome.
type acceptReq struct {
	p      AcceptParams
	topics []string
	fan    *fanout // of the Service that queued it; nil in tests
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
	both, _ := store.(AckingAccepter)
	return &batcher{batch: ba, both: both, notify: notify, wake: make(chan struct{}, 1)}
}

// acceptMessage stores p, through the batcher when the engine supports
// batches, and wakes topics if the message is new. It returns once the
// message's transaction committed (or failed).
func (s *Service) acceptMessage(ctx context.Context, p AcceptParams, topics []string) (AcceptResult, error) {
	if s.batcher == nil {
		res, err := s.store.AcceptMessage(ctx, p)
		if err == nil && !res.Duplicate {
			if wakesGroup(topics, p.GroupID) {
				s.fan.publish([]Envelope{acceptedEnvelope(&p, &res)})
			}
			s.notify(topics...)
		}
		return res, err
	}
	return s.batcher.accept(ctx, p, topics, s.fan)
}

func (b *batcher) accept(ctx context.Context, p AcceptParams, topics []string, fan *fanout) (AcceptResult, error) {
	r, err := b.enqueue(ctx, p, topics, fan)
	if err != nil {
		return AcceptResult{}, err
	}
	return b.wait(ctx, r)
}

// enqueue queues p for the next batch; messages queued one after the other
// are stored in that order.
func (b *batcher) enqueue(ctx context.Context, p AcceptParams, topics []string, fan *fanout) (*acceptReq, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := &acceptReq{p: p, topics: topics, fan: fan, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, r)
	b.startLocked()
	b.mu.Unlock()
	return r, nil
}

// wait returns the outcome of r once its batch's transaction committed (or
// failed).
func (b *batcher) wait(ctx context.Context, r *acceptReq) (AcceptResult, error) {
	if !await(ctx, &b.mu, r.done, &r.taken, &r.withdrawn) {
		return AcceptResult{}, ctx.Err()
	}
	return r.res, r.err
}

// await waits for done, which a batch closes once it has a queued
// request's outcome. If ctx ends first, a request still queued (taken is
// false) is withdrawn and await reports false: the caller learns that it
// was not applied. One already in a batch's transaction is waited for, so
// that its caller learns what became of it (the batch does not take long;
// abandoning it would leave the outcome unknown). mu guards taken and
// withdrawn.
func await(ctx context.Context, mu *sync.Mutex, done <-chan struct{}, taken, withdrawn *bool) bool {
	select {
	case <-done:
		return true
	case <-ctx.Done():
	}
	mu.Lock()
	t := *taken
	*withdrawn = !t
	mu.Unlock()
	if t {
		<-done
	}
	return t
}

// ack queues an Ack for the next batch's transaction (b.both is set) and
// returns once it is durable (or failed). An Ack still queued when ctx ends
// is withdrawn and reported as not applied; one already in a batch is
// waited for.
func (b *batcher) ack(ctx context.Context, p AckParams) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r := &ackReq{p: p, done: make(chan struct{})}
	b.mu.Lock()
	b.acks = append(b.acks, r)
	b.startLocked()
	b.mu.Unlock()
	if !await(ctx, &b.mu, r.done, &r.taken, &r.withdrawn) {
		return ctx.Err()
	}
	return r.err
}

// startLocked makes sure a committer looks at the queue: it starts one,
// or wakes the one that lingers. b.mu is held.
func (b *batcher) startLocked() {
	switch {
	case !b.running:
		b.running = true
		go b.run()
	case b.idle:
		b.idle = false
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
}

// run is the committer goroutine: it takes what is queued, commits it as
// one batch, and repeats; with an empty queue it lingers, then ends.
func (b *batcher) run() {
	var linger *time.Timer
	for {
		b.mu.Lock()
		reqs := b.take()
		acks, ackReqs := takeAcks(&b.acks)
		if len(reqs) == 0 && len(ackReqs) == 0 {
			b.idle = true
			b.mu.Unlock()
			if linger == nil {
				linger = time.NewTimer(committerLinger)
			} else {
				linger.Reset(committerLinger)
			}
			select {
			case <-b.wake:
				linger.Stop()
				continue
			case <-linger.C:
			}
			b.mu.Lock()
			if len(b.queue) == 0 && len(b.acks) == 0 {
				b.running, b.idle = false, false
				b.mu.Unlock()
				return
			}
			b.idle = false
			b.mu.Unlock()
			continue
		}
		b.mu.Unlock()
		b.commit(reqs, acks, ackReqs)
	}
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

// commit runs one batch, with the collapsed Acks acks of ackReqs in its
// transaction, and hands every request its outcome.
func (b *batcher) commit(reqs []*acceptReq, acks []AckParams, ackReqs []*ackReq) {
	// The batch belongs to all its callers: one caller's cancellation
	// must not abort the others' transaction. A bound keeps a hung
	// database from holding them forever.
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	ps := make([]AcceptParams, len(reqs))
	for i, r := range reqs {
		ps[i] = r.p
	}
	var res []AcceptResult
	var errs, ackErrs []error
	if len(acks) > 0 {
		res, errs, ackErrs = b.safeAcceptAndAck(ctx, ps, acks)
	} else {
		res, errs = b.safeAccept(ctx, ps)
	}
	for i, r := range reqs {
		r.res, r.err = res[i], errs[i]
	}
	var topics []string
	var envs []Envelope
	var fan *fanout // the batcher belongs to one Service
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
		if r.fan != nil && wakesGroup(r.topics, r.p.GroupID) {
			if envs == nil {
				envs = make([]Envelope, 0, len(reqs))
			}
			envs = append(envs, acceptedEnvelope(&r.p, &r.res))
			fan = r.fan
		}
	}
	for _, r := range reqs {
		close(r.done)
	}
	if again := ackOutcomes(acks, ackReqs, ackErrs); len(again) > 0 {
		b.mu.Lock()
		requeueAcks(&b.acks, again)
		b.mu.Unlock()
	}
	// This node's subscriptions take the messages from memory; the
	// wake-ups after them are the tails' expected echoes, and tell other
	// nodes to read the store.
	if fan != nil {
		fan.publish(envs)
	}
	// One wake-up per topic, after the answers, and off the committer's
	// path: a receipt does not wait for it, nor does the next batch (with
	// PostgreSQL it is a round trip of its own).
	b.notifyLater(topics)
}

// notifyLater sends the wake-ups of topics on a goroutine of their own,
// merged with those of the batches that commit meanwhile.
func (b *batcher) notifyLater(topics []string) {
	if len(topics) == 0 {
		return
	}
	b.nmu.Lock()
	defer b.nmu.Unlock()
	if b.pendingAt == nil {
		b.pendingAt = make(map[string]bool)
	}
	for _, t := range topics {
		if !b.pendingAt[t] {
			b.pendingAt[t] = true
			b.pending = append(b.pending, t)
		}
	}
	if !b.notifying {
		b.notifying = true
		go b.sendNotifications()
	}
}

func (b *batcher) sendNotifications() {
	for {
		b.nmu.Lock()
		topics := b.pending
		if len(topics) == 0 {
			b.notifying = false
			b.nmu.Unlock()
			return
		}
		b.pending = nil
		clear(b.pendingAt)
		b.nmu.Unlock()
		b.notify(topics...)
	}
}

// acceptedEnvelope is the Envelope of an accepted message, as the store
// returns it to its readers.
func acceptedEnvelope(p *AcceptParams, res *AcceptResult) Envelope {
	return Envelope{
		GroupID: p.GroupID, GroupSeq: res.GroupSeq, Epoch: p.Epoch, Sender: p.Sender,
		ContentType: p.ContentType, WireFormat: p.WireFormat, Data: p.Data, AcceptedAt: res.AcceptedAt,
	}
}

// wakesGroup reports whether topics holds GroupTopic(groupID), without
// building it: only a message whose group topic is notified may be
// published (the tail expects the wake-up's echo).
func wakesGroup(topics []string, groupID []byte) bool {
	const digits = "0123456789abcdef"
	for _, t := range topics {
		if len(t) != 2+2*len(groupID) || t[:2] != "g:" {
			continue
		}
		ok := true
		for i, c := range groupID {
			if t[2+2*i] != digits[c>>4] || t[3+2*i] != digits[c&15] {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
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

// safeAcceptAndAck runs AcceptMessagesAndAcks, with safeAccept's care.
func (b *batcher) safeAcceptAndAck(ctx context.Context, ps []AcceptParams, acks []AckParams) (res []AcceptResult, errs, ackErrs []error) {
	fail := func(err error) {
		res, errs, ackErrs = make([]AcceptResult, len(ps)), make([]error, len(ps)), make([]error, len(acks))
		for i := range errs {
			errs[i] = err
		}
		for i := range ackErrs {
			ackErrs[i] = err
		}
	}
	defer func() {
		if v := recover(); v != nil {
			fail(fmt.Errorf("ds: accepting a batch of messages and acknowledgements panicked: %v", v))
		}
	}()
	res, errs, ackErrs = b.both.AcceptMessagesAndAcks(ctx, ps, acks)
	if len(res) != len(ps) || len(errs) != len(ps) || len(ackErrs) != len(acks) {
		fail(fmt.Errorf("ds: the store answered a batch of %d messages and %d acknowledgements with %d results, %d errors and %d acknowledgement errors",
			len(ps), len(acks), len(res), len(errs), len(ackErrs)))
	}
	return res, errs, ackErrs
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
