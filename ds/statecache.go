package ds

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/mlsds/mlsds/mls"
)

// The state of a transparent group lives in the store as a snapshot (an
// encoded mls.PublicGroupState of some StateVersion) and a log: every
// Proposal and Commit accepted since, each stored once as a message anyway,
// tagged with the StateVersion it produced. Accepting a handshake message
// writes only the message; a new snapshot is written now and then, in the
// background, by whichever Service has the state at hand. A crash at any
// point leaves a snapshot and a complete log, so the state can always be
// rebuilt, and the store stays the only source of truth.
//
// A Service keeps decoded states in a bounded cache. An entry is trusted
// only at the StateVersion it was built for: before each use it is
// compared with the version in the group's head, and brought up to date
// by applying the log entries it lacks (other nodes' messages), or rebuilt
// from the snapshot if that is not possible. While a handshake message is
// validated and stored, its group's entry stays locked, so the messages of
// one group are handled one at a time on a node; the store's
// compare-and-set on the StateVersion orders them across nodes.

// stateLogPage is how many log entries are read at once.
const stateLogPage = 256

// stateMemoryFactor estimates the memory of a decoded state from the size
// of its encoding (tree nodes, cached hashes, key index, client index):
// about 4.7 measured on a synthetic group of 2,000 members.
const stateMemoryFactor = 5

// stateCache is an LRU cache of group states. The zero value is ready;
// maxBytes is set by the first use.
type stateCache struct {
	mu       sync.Mutex
	maxBytes int64 // negative: no cache
	entries  map[string]*groupState
	lru      list.List // of *groupState, most recent first
	bytes    int64
}

// groupState is the state of one group as this Service knows it.
type groupState struct {
	id []byte

	// Guarded by stateCache.mu.
	elem *list.Element // nil once evicted
	size int64

	mu sync.Mutex // held while the state is read or changed; guards the rest

	st      *mls.PublicGroupState // nil: to be rebuilt
	version uint64                // the StateVersion st belongs to
	// ids maps the client id of every member leaf to its leaf index (or
	// indices: a group may have been created with two leaves of one
	// client).
	ids map[string][]mls.LeafIndex
	// proposals are the MLSMessages of the Proposals of the current epoch,
	// in order.
	proposals [][]byte

	// The latest snapshot known, and the log bytes since.
	snapVersion  uint64
	snapBytes    int
	logBytes     int
	snapshotting bool
	// encoding is a state being encoded for a snapshot, without the lock;
	// encoded is closed once that is done. Nothing may change that state
	// meanwhile: only HandleProposal would (a Commit makes a new state).
	encoding *mls.PublicGroupState
	encoded  chan struct{}

	// tree caches the encoded ratchet tree of epoch treeEpoch.
	tree      []byte
	treeEpoch uint64
	// groupInfo is the group's latest GroupInfo as stored, if known
	// (another node's Commit may have replaced it).
	groupInfo      []byte
	groupInfoKnown bool

	// pending is the change the message being stored makes, while
	// the store has not answered.
	pending *pendingChange
}

// pendingChange is what a handshake message does to the state once it is
// stored.
type pendingChange struct {
	hash []byte
	data []byte
	// A Commit: the state it leads to and what it changed. A Proposal:
	// next is nil, and the entry's own state already holds the Proposal
	// (HandleProposal adds to its receiver).
	next      *mls.PublicGroupState
	eff       *mls.CommitEffect
	groupInfo []byte // stored with the Commit, if not nil
}

// lockState returns the state of the transparent group whose head was
// just read, locked and brought at least to head.StateVersion. The caller
// unlocks it with releaseState (or settleState after storing a message).
func (s *Service) lockState(ctx context.Context, head GroupRecord) (*groupState, error) {
	e, _, err := s.lockStateHead(ctx, head)
	return e, err
}

// lockStateHead is lockState that also returns a head of the group that
// belongs to the state's version: head itself, or, if this node stored a
// message since head was read (while waiting for the lock), a head read
// again.
func (s *Service) lockStateHead(ctx context.Context, head GroupRecord) (*groupState, GroupRecord, error) {
	e := s.states.get(head.ID, s.cfg.StateCacheBytes)
	e.mu.Lock()
	for try := 0; ; try++ {
		if err := s.syncState(ctx, e, head.StateVersion); err != nil {
			e.st = nil
			e.mu.Unlock()
			return nil, GroupRecord{}, err
		}
		if e.version == head.StateVersion || try == 2 {
			return e, head, nil
		}
		h, err := s.store.Group(ctx, head.ID)
		if err != nil {
			e.mu.Unlock()
			return nil, GroupRecord{}, err
		}
		head = h
	}
}

// releaseState unlocks a state without a change.
func (s *Service) releaseState(e *groupState) {
	s.states.touch(e)
	e.mu.Unlock()
}

// get returns the cache entry of a group, creating it if needed; with the
// cache off, always a new one.
func (c *stateCache) get(id []byte, maxBytes int64) *groupState {
	if maxBytes < 0 {
		return &groupState{id: append([]byte(nil), id...)}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = make(map[string]*groupState)
	}
	c.maxBytes = maxBytes
	if e, ok := c.entries[string(id)]; ok {
		c.lru.MoveToFront(e.elem)
		return e
	}
	e := &groupState{id: append([]byte(nil), id...)}
	e.elem = c.lru.PushFront(e)
	c.entries[string(id)] = e
	return e
}

// touch updates the accounted size of e (whose lock the caller holds) and
// evicts the least recently used entries beyond the bound.
func (c *stateCache) touch(e *groupState) {
	size := int64(0)
	if e.st != nil {
		size = int64(e.snapBytes+e.logBytes+len(e.tree)) * stateMemoryFactor
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.elem == nil { // evicted, or the cache is off
		return
	}
	c.bytes += size - e.size
	e.size = size
	for c.bytes > c.maxBytes {
		last := c.lru.Back()
		if last == nil || last == e.elem {
			break
		}
		c.remove(last.Value.(*groupState))
	}
}

// remove drops an entry; c.mu is held. A goroutine still using it goes on
// with its own reference.
func (c *stateCache) remove(e *groupState) {
	if e.elem == nil {
		return
	}
	c.lru.Remove(e.elem)
	e.elem = nil
	c.bytes -= e.size
	if c.entries[string(e.id)] == e {
		delete(c.entries, string(e.id))
	}
}

// syncState brings e (locked) to version want or later: by the log if e
// holds an older state, from the snapshot if it holds none (or one that
// the store does not know).
func (s *Service) syncState(ctx context.Context, e *groupState, want uint64) error {
	e.pending = nil
	if e.st == nil {
		return s.rebuildState(ctx, e)
	}
	if e.version >= want {
		// e only moves on with what the store accepted: a higher version
		// means the head was read before a message of this node was
		// stored.
		return nil
	}
	return s.catchUp(ctx, e)
}

// rebuildState loads the latest snapshot and applies the log after it.
func (s *Service) rebuildState(ctx context.Context, e *groupState) error {
	rec, err := s.store.GroupState(ctx, e.id)
	if err != nil {
		return err
	}
	if rec.Mode != ModeTransparent {
		return fmt.Errorf("ds: group %x is not transparent", e.id)
	}
	if rec.State == nil {
		return fmt.Errorf("ds: transparent group %x has no stored state", e.id)
	}
	st, err := mls.UnmarshalPublicGroupState(rec.State)
	if err != nil {
		return fmt.Errorf("ds: stored state of group %x does not decode: %w", e.id, err)
	}
	ids, err := leafIndex(st)
	if err != nil {
		return fmt.Errorf("ds: stored state of group %x: %w", e.id, err)
	}
	e.st, e.version, e.ids = st, rec.SnapshotVersion, ids
	e.proposals = nil
	e.snapVersion, e.snapBytes, e.logBytes = rec.SnapshotVersion, len(rec.State), 0
	e.tree = nil
	st.SetPolicy(s.policy())
	if err := s.catchUp(ctx, e); err != nil {
		return err
	}
	// rec's GroupInfo is the one of rec.StateVersion.
	if e.version == rec.StateVersion {
		e.groupInfo, e.groupInfoKnown = rec.GroupInfo, true
	}
	return nil
}

// leafIndex maps the client ids of the leaves of st's tree to their
// indices.
func leafIndex(st *mls.PublicGroupState) (map[string][]mls.LeafIndex, error) {
	ids := make(map[string][]mls.LeafIndex)
	for i, leaf := range st.Tree().Leaves() {
		id, err := credentialClientID(&leaf.Credential)
		if err != nil {
			return nil, fmt.Errorf("leaf %d: %w", i, err)
		}
		ids[id] = append(ids[id], i)
	}
	return ids, nil
}

// catchUp applies the log entries after e.version.
func (s *Service) catchUp(ctx context.Context, e *groupState) error {
	for {
		log, err := s.store.StateLog(ctx, e.id, e.version, stateLogPage)
		if err != nil {
			return err
		}
		for _, le := range log {
			if le.Version != e.version+1 {
				return fmt.Errorf("ds: state log of group %x jumps from version %d to %d", e.id, e.version, le.Version)
			}
			if err := s.replay(e, le); err != nil {
				return err
			}
		}
		if len(log) < stateLogPage {
			s.maybeSnapshot(e)
			return nil
		}
	}
}

// replay applies one log entry, a message that was valid when it was
// accepted. Lifetimes are not checked again: they were, against the clock
// of the time of acceptance.
func (s *Service) replay(e *groupState, le StateLogEntry) error {
	fail := func(err error) error {
		return fmt.Errorf("ds: group %x: message %d (state version %d) does not apply to the stored state: %w", e.id, le.GroupSeq, le.Version, err)
	}
	m, err := mls.ParseMLSMessage(le.Data)
	if err != nil {
		return fail(err)
	}
	if m.WireFormat != mls.WireFormatPublicMessage {
		return fail(fmt.Errorf("wire format %d", m.WireFormat))
	}
	pm := m.PublicMessage
	e.st.SetPolicy(mls.GroupPolicy{})
	defer func() {
		if e.st != nil {
			e.st.SetPolicy(s.policy())
		}
	}()
	switch pm.Content.ContentType {
	case mls.ContentTypeProposal:
		e.beforeProposal()
		if _, err := e.st.HandleProposal(pm); err != nil {
			return fail(err)
		}
		e.addProposal(le.Data)
	case mls.ContentTypeCommit:
		next, eff, err := e.st.HandleCommit(pm)
		if err != nil {
			return fail(err)
		}
		e.commit(next, eff)
		e.groupInfo, e.groupInfoKnown = nil, false // it may have come with a new one
	default:
		return fail(fmt.Errorf("content type %d", pm.Content.ContentType))
	}
	e.version++
	e.logBytes += len(le.Data)
	return nil
}

// beforeProposal waits until e.st may take a Proposal: not while a
// snapshot of it is being encoded.
func (e *groupState) beforeProposal() {
	if e.encoding != nil && e.encoding == e.st {
		<-e.encoded
	}
}

func (e *groupState) addProposal(data []byte) {
	e.proposals = append(e.proposals, data)
}

// commit moves e to the state a Commit led to.
func (e *groupState) commit(next *mls.PublicGroupState, eff *mls.CommitEffect) {
	for _, r := range eff.Removed {
		id, err := credentialClientID(&r.Credential)
		if err != nil {
			continue
		}
		leaves := e.ids[id]
		for k, l := range leaves {
			if l == r.Leaf {
				leaves = append(leaves[:k:k], leaves[k+1:]...)
				break
			}
		}
		if len(leaves) == 0 {
			delete(e.ids, id)
		} else {
			e.ids[id] = leaves
		}
	}
	for _, a := range eff.Added {
		if id, err := credentialClientID(&a.Credential); err == nil {
			e.ids[id] = append(e.ids[id], a.Leaf)
		}
	}
	e.st = next
	e.proposals = nil
}

// settleState ends the handling of a message whose change prepare left
// pending in sub.state: applies it if the store accepted the message,
// forgets it otherwise, and unlocks the state. It does nothing for a
// message that locked no state.
func (s *Service) settleState(sub *submission, res AcceptResult, err error) {
	e := sub.state
	if e == nil {
		return
	}
	sub.state = nil
	pc := e.pending
	e.pending = nil
	switch {
	case pc == nil:
	case err == nil && !res.Duplicate:
		if pc.next != nil {
			e.commit(pc.next, pc.eff)
			if pc.groupInfo != nil {
				e.groupInfo, e.groupInfoKnown = pc.groupInfo, true
			}
		} else {
			e.addProposal(pc.data)
		}
		e.version++
		e.logBytes += len(pc.data)
		s.maybeSnapshot(e)
	case pc.next == nil:
		// The state holds a Proposal the store did not take.
		e.st = nil
	}
	s.releaseState(e)
}

// maybeSnapshot starts writing a snapshot of e (locked) if its log has
// grown enough since the last one. Only states without pending Proposals
// are written, so that the Proposals of an epoch are all in the log.
func (s *Service) maybeSnapshot(e *groupState) {
	if e.st == nil || e.snapshotting || e.version == e.snapVersion {
		return
	}
	if int(e.version-e.snapVersion) < s.cfg.SnapshotEvery && e.logBytes < e.snapBytes {
		return
	}
	if len(e.proposals) > 0 || len(e.st.PendingProposals()) > 0 {
		return
	}
	e.snapshotting = true
	go s.writeSnapshot(e)
}

// writeSnapshot encodes e's state, if it still has no pending Proposals,
// and stores it. The encoding runs without e's lock, so that Commits of
// the group go on meanwhile (they do not change the state they start
// from); a Proposal waits (beforeProposal).
func (s *Service) writeSnapshot(e *groupState) {
	e.mu.Lock()
	st, version := e.st, e.version
	ok := st != nil && len(e.proposals) == 0
	var done chan struct{}
	if ok {
		done = make(chan struct{})
		e.encoding, e.encoded = st, done
	}
	e.mu.Unlock()
	var data []byte
	var err error
	if ok {
		data, err = st.MarshalBinary()
		close(done)
	}
	if data != nil && err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err = s.store.PutSnapshot(ctx, e.id, version, data)
		cancel()
	}
	e.mu.Lock()
	e.snapshotting = false
	if e.encoded == done {
		e.encoding, e.encoded = nil, nil
	}
	if data != nil && err == nil && version > e.snapVersion {
		e.logBytes -= e.logBytesSince(version)
		e.snapVersion, e.snapBytes = version, len(data)
	}
	e.mu.Unlock()
}

// logBytesSince is an estimate of the log bytes that a snapshot of
// version v covers: all of them when v is the current version, else the
// share of the versions up to v.
func (e *groupState) logBytesSince(v uint64) int {
	if v >= e.version || e.version == e.snapVersion {
		return e.logBytes
	}
	return int(uint64(e.logBytes) * (v - e.snapVersion) / (e.version - e.snapVersion))
}

// treeBytes returns the encoded ratchet tree of e's state, cached per
// epoch.
func (e *groupState) treeBytes() ([]byte, error) {
	epoch := e.st.Epoch()
	if e.tree == nil || e.treeEpoch != epoch {
		enc, err := e.st.Tree().MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("ds: encoding tree of group %x: %w", e.id, err)
		}
		e.tree, e.treeEpoch = enc, epoch
	}
	return e.tree, nil
}
