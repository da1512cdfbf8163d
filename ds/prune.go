package ds

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Retention. The Delivery Service keeps a message only as long as someone
// may still need it:
//
//   - A message is deleted once every client it was for has acknowledged
//     it: every client whose membership window covers its GroupSeq, its
//     sender excepted, has an Ack cursor at or beyond it.
//   - Whatever its state, a message is deleted once it is older than
//     Config.Retention (30 days by default), and so is a Welcome.
//   - A transparent group's state is a snapshot plus the log of the
//     Proposals and Commits after it (statecache.go): a message of that log
//     newer than the group's snapshot is never deleted. When such messages
//     are due, the pruner first writes a new snapshot (never one with
//     pending Proposals, so the Proposals of the current epoch, which
//     GetGroupInfo serves, stay in the log).
//   - Expired KeyPackages are deleted, with the Welcomes still waiting to be
//     delivered through them.
//   - A group with no member left is deleted with everything it holds
//     (DeleteGroupIfEmpty).
//
// Each group has a watermark, its pruned GroupSeq (Store.PrunedSeq): every
// message up to it may be gone. A client that asks for messages at or below
// the watermark that fall in its membership windows is told so, with
// PrunedError (Fetch) or a PrunedEvent (Subscribe), and the GroupSeq to go
// on from. Deleting a member's own application message once everybody else
// has it does not move the watermark: nobody misses it.
//
// The pruner runs in the background of every Service (Config.PruneInterval),
// in bounded transactions (Config.PruneBatch rows each, with
// Config.PrunePause between them), and only on one node at a time of those
// that share a database (Store.LockPruner).

// PruneParams asks a Store for one bounded step of pruning.
type PruneParams struct {
	// Now is the current time: KeyPackages whose NotAfter is before it
	// have expired.
	Now time.Time
	// ExpireBefore: messages and Welcomes accepted before it are deleted
	// whether delivered or not (Now - Config.Retention). The zero time
	// expires nothing.
	ExpireBefore time.Time
	// Limit bounds the rows deleted by one call (and the groups looked at).
	Limit int
	// From is the group id at which a sweep of the groups resumes
	// (inclusive); nil starts at the first group.
	From []byte
}

// PruneResult is what one step of pruning did.
type PruneResult struct {
	Messages    int // messages deleted
	Welcomes    int // Welcomes deleted (with their routes)
	KeyPackages int // expired KeyPackages deleted
	Groups      int // empty groups deleted
	// Next is where the sweep of the groups goes on (PruneParams.From of
	// the next call); nil once it went through every group.
	Next []byte
	// More (PruneKeyPackages) says the step was full: call again.
	More bool
	// NeedSnapshot lists transparent groups that hold messages due for
	// deletion but newer than their latest snapshot: they stay until a
	// snapshot covers them.
	NeedSnapshot [][]byte
}

func (r *PruneResult) add(o PruneResult) {
	r.Messages += o.Messages
	r.Welcomes += o.Welcomes
	r.KeyPackages += o.KeyPackages
	r.Groups += o.Groups
}

// Rows reports how many rows the step deleted.
func (r PruneResult) Rows() int { return r.Messages + r.Welcomes + r.KeyPackages + r.Groups }

// ErrGroupNotEmpty is returned by Store.DeleteGroupIfEmpty for a group that
// still has a member.
var ErrGroupNotEmpty = errors.New("ds: the group still has members")

// ErrPrunerBusy is returned by Store.LockPruner while another pruner (of
// another Service or node) holds the lock.
var ErrPrunerBusy = errors.New("ds: another pruner is running on this store")

// PrunedError refuses a Fetch from a GroupSeq whose messages are gone:
// every recipient acknowledged them or they outlived the retention. The
// client fetches from OldestSeq on; if it missed a Commit among the pruned
// messages it cannot catch up by fetching and must rejoin (in a transparent
// group, by a resync external Commit from the served GroupInfo).
type PrunedError struct {
	GroupID   []byte
	OldestSeq uint64 // the first GroupSeq after the pruned ones
}

func (e *PrunedError) Error() string {
	return fmt.Sprintf("ds: the messages of group %x before GroupSeq %d were pruned (delivered to all or older than the retention); fetch from %d, or rejoin the group if a Commit was among them", e.GroupID, e.OldestSeq, e.OldestSeq)
}

// PrunedEvent tells a subscriber that messages of a group after its cursor
// were pruned before it acknowledged them; the subscription goes on from
// OldestSeq.
type PrunedEvent struct {
	GroupID   []byte
	OldestSeq uint64
}

// PruneStats are the pruner's figures since the Service started.
type PruneStats struct {
	Messages, Welcomes, KeyPackages, Groups uint64 // rows deleted
	Snapshots                               uint64 // snapshots written so that the state log could be pruned
	Runs                                    uint64 // complete sweeps
	Skipped                                 uint64 // sweeps left to another node that held the lock
	LastDuration                            time.Duration
	LastRun                                 time.Time
	LastError                               error
}

// pruner is the Service's background pruning.
type pruner struct {
	once   sync.Once
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	stats PruneStats
}

// startPruner starts the background pruning, unless Config.PruneInterval
// is negative.
func (s *Service) startPruner() {
	s.prune = &pruner{}
	if s.cfg.PruneInterval < 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.prune.cancel, s.prune.done = cancel, make(chan struct{})
	go func() {
		defer close(s.prune.done)
		t := time.NewTicker(s.cfg.PruneInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			_, _ = s.Prune(ctx)
		}
	}()
}

// Close stops the Service's background work (the pruner) and waits for it.
// It does not close the Store.
func (s *Service) Close() error {
	p := s.prune
	if p == nil {
		return nil
	}
	p.once.Do(func() {
		if p.cancel != nil {
			p.cancel()
			<-p.done
		}
	})
	return nil
}

// PruneStats returns the pruner's figures.
func (s *Service) PruneStats() PruneStats {
	s.prune.mu.Lock()
	defer s.prune.mu.Unlock()
	return s.prune.stats
}

// Prune runs one complete sweep of retention (see the top of this file)
// and returns what it deleted. It returns ErrPrunerBusy, having done
// nothing, while another pruner works on the same store. The background
// pruner calls it every Config.PruneInterval; tests and operators may call
// it directly.
func (s *Service) Prune(ctx context.Context) (PruneResult, error) {
	start := time.Now()
	total, snaps, err := s.prune1(ctx)
	p := s.prune
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &p.stats
	st.Messages += uint64(total.Messages)
	st.Welcomes += uint64(total.Welcomes)
	st.KeyPackages += uint64(total.KeyPackages)
	st.Groups += uint64(total.Groups)
	st.Snapshots += uint64(snaps)
	if errors.Is(err, ErrPrunerBusy) {
		st.Skipped++
		return total, err
	}
	st.Runs++
	st.LastDuration, st.LastRun, st.LastError = time.Since(start), s.cfg.Now(), err
	return total, err
}

func (s *Service) prune1(ctx context.Context) (total PruneResult, snapshots int, err error) {
	unlock, err := s.store.LockPruner(ctx)
	if err != nil {
		return total, 0, err
	}
	defer unlock()
	now := s.now()
	p := PruneParams{Now: now, Limit: s.cfg.PruneBatch}
	if s.cfg.Retention > 0 {
		p.ExpireBefore = now.Add(-s.cfg.Retention)
	}
	pause := func() error {
		if s.cfg.PrunePause <= 0 {
			return ctx.Err()
		}
		t := time.NewTimer(s.cfg.PrunePause)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Welcomes and KeyPackages first: a Welcome holds its Commit back.
	for {
		r, err := s.store.PruneKeyPackages(ctx, p)
		if err != nil {
			return total, snapshots, err
		}
		total.add(r)
		if !r.More {
			break
		}
		if err := pause(); err != nil {
			return total, snapshots, err
		}
	}
	// The messages held back for want of a snapshot are below the
	// watermark once the snapshot is written: a second pass takes them.
	snapped := make(map[string]bool)
	for pass := 0; pass < 2; pass++ {
		before := snapshots
		p.From = nil
		for {
			r, err := s.store.PruneMessages(ctx, p)
			if err != nil {
				return total, snapshots, err
			}
			total.add(r)
			for _, id := range r.NeedSnapshot {
				if snapped[string(id)] {
					continue
				}
				snapped[string(id)] = true
				ok, err := s.snapshotNow(ctx, id)
				if err != nil && !isNotFound(err) {
					return total, snapshots, err
				}
				if ok {
					snapshots++
				}
			}
			p.From = r.Next
			if p.From == nil {
				break
			}
			if r.Rows() > 0 {
				if err := pause(); err != nil {
					return total, snapshots, err
				}
			} else if err := ctx.Err(); err != nil {
				return total, snapshots, err
			}
		}
		if snapshots == before {
			break
		}
	}
	return total, snapshots, nil
}

// snapshotNow writes a snapshot of the transparent group's current state,
// so that the log before it may be pruned. It reports false when the state
// has pending Proposals (those must stay in the log) or is not newer than
// the stored snapshot.
func (s *Service) snapshotNow(ctx context.Context, groupID []byte) (bool, error) {
	head, err := s.store.Group(ctx, groupID)
	if err != nil {
		return false, err
	}
	if head.Mode != ModeTransparent {
		return false, nil
	}
	e, err := s.lockState(ctx, head)
	if err != nil {
		return false, err
	}
	for e.snapshotting {
		// A background snapshot is being written; wait for it.
		e.mu.Unlock()
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return false, ctx.Err()
		}
		e.mu.Lock()
	}
	// The store said its snapshot is behind the log: write one whatever
	// this Service believes was written (another node's state may differ).
	if e.st == nil || len(e.proposals) > 0 || len(e.st.PendingProposals()) > 0 {
		s.releaseState(e)
		return false, nil
	}
	st, version := e.st, e.version
	data, err := st.MarshalBinary()
	if err != nil {
		s.releaseState(e)
		return false, fmt.Errorf("ds: encoding the state of group %x: %w", groupID, err)
	}
	if err := s.store.PutSnapshot(ctx, groupID, version, data); err != nil {
		s.releaseState(e)
		return false, err
	}
	if version > e.snapVersion {
		e.logBytes -= e.logBytesSince(version)
		e.snapVersion, e.snapBytes = version, len(data)
	}
	s.releaseState(e)
	return true, nil
}

// DeleteGroupIfEmpty deletes a group that has no member left (no open
// membership window), with its messages, Welcomes, state, snapshots, state
// log, remote trees and join links, in bounded transactions. It reports
// false, with no error, if the group has a member; ErrNotFound if there is
// no such group. Leaving and client deletion call it for the groups they
// emptied; the pruner sweeps the others.
func (s *Service) DeleteGroupIfEmpty(ctx context.Context, groupID []byte) (bool, error) {
	for {
		done, err := s.store.DeleteGroupIfEmpty(ctx, groupID, s.cfg.PruneBatch)
		if errors.Is(err, ErrGroupNotEmpty) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if done {
			s.forgetState(groupID)
			return true, nil
		}
	}
}

// forgetState drops a deleted group's cached state.
func (s *Service) forgetState(groupID []byte) {
	c := &s.states
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[string(groupID)]; ok {
		c.remove(e)
	}
}

// prunedFrom checks whether messages that the client may see in the group,
// from GroupSeq from on, were pruned: if so it returns the GroupSeq to go
// on from (the group's watermark + 1), else 0. windows are the client's
// membership windows in the group.
func (s *Service) prunedFrom(ctx context.Context, groupID []byte, windows []MembershipWindow, from uint64) (uint64, error) {
	mark, err := s.store.PrunedSeq(ctx, groupID)
	if isNotFound(err) {
		return 0, nil // deleted meanwhile: nothing more to say
	}
	if err != nil || mark < from {
		return 0, err
	}
	for _, w := range windows {
		lo := max(from, w.FromSeq)
		hi := mark
		if !w.Open() {
			hi = min(hi, w.UntilSeq)
		}
		if lo <= hi {
			return mark + 1, nil
		}
	}
	return 0, nil
}

// checkPruned is Fetch's check: envs are what the store returned for
// fromSeq; only when they do not start at fromSeq can something be
// missing.
func (s *Service) checkPruned(ctx context.Context, groupID []byte, windows []MembershipWindow, fromSeq uint64, envs []Envelope) error {
	if len(envs) > 0 && envs[0].GroupSeq == max(fromSeq, 1) {
		return nil
	}
	next, err := s.prunedFrom(ctx, groupID, windows, max(fromSeq, 1))
	if err != nil {
		return err
	}
	if next != 0 {
		return &PrunedError{GroupID: append([]byte(nil), groupID...), OldestSeq: next}
	}
	return nil
}
