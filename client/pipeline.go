package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// maxAttempts bounds how often a message is made again after the group
// moved on under it.
const maxAttempts = 10

// pendingCommit is a Commit of this client that was sent, or is about to
// be, and whose outcome is not known yet.
type pendingCommit struct {
	wire      []byte     // the Commit as an MLSMessage
	next      *mls.Group // the state once it is merged
	nextState []byte     // next.MarshalBinary()
	welcome   []byte
	groupInfo []byte // transparent mode: the new epoch's GroupInfo
	// remoteTree is, in opaque mode, the new epoch's GroupInfo and tree
	// encrypted for its members (see remotetree.go).
	remoteTree *mlsdsv1.RemoteTree
	added      []string
	removed    []string
	// effect is what the Commit changes (nil once read back from the
	// state file).
	effect *mls.CommitEffect
	merged bool // accepted by the server and merged
	// restored marks a Commit read back from the state file: only the
	// group's log tells whether it was accepted.
	restored bool
}

func loadGroup(c *Client, r groupRow) (*Group, error) {
	st, err := mls.UnmarshalGroup(r.state)
	if err != nil {
		return nil, fmt.Errorf("stored state does not decode: %w", err)
	}
	g := &Group{c: c, id: r.id, st: st, processed: r.processed, opaque: r.opaque, removed: r.removed, broken: r.broken, refused: r.refused, leaving: r.leaving, proposals: decodeList(r.proposals)}
	if g.broken {
		g.brokenErr = errors.New("client: the state was broken when the client last stopped")
	}
	if r.pendingCommit != nil {
		next, err := mls.UnmarshalGroup(r.pendingState)
		if err != nil {
			return nil, fmt.Errorf("stored pending Commit does not decode: %w", err)
		}
		g.pending = &pendingCommit{wire: r.pendingCommit, next: next, nextState: r.pendingState, restored: true}
	}
	return g, nil
}

// persist writes the group's state and processed position in one
// transaction (and deletes the KeyPackage deleteRef, if not nil). Then, and
// only then, the events of the messages processed since the last write
// are queued and the position acknowledged: a client that stops before
// the write processes those messages again from the state written before,
// and their events come once.
func (g *Group) persist(deleteRef []byte) error {
	if err := g.save(deleteRef); err != nil {
		return err
	}
	g.dirty = false
	if (g.removed || g.broken) && g.ended != nil {
		close(g.ended)
		g.ended = nil
	}
	if len(g.unsaved) > 0 {
		g.c.emit(g.unsaved...)
		g.unsaved = nil
	}
	if g.processed > 0 {
		g.c.acks.set(g.id, g.processed)
	}
	return nil
}

// save writes the group's row. An in-memory state (Config.StatePath "")
// dies with the client, so encoding the group into it would only cost
// CPU: only the KeyPackage is deleted there.
func (g *Group) save(deleteRef []byte) error {
	ctx := context.Background()
	den := g.deniableRowLocked()
	if g.c.db.inMemory() {
		if deleteRef != nil {
			return g.c.db.consumeKeyPackage(ctx, deleteRef)
		}
		return nil
	}
	state, err := g.st.MarshalBinary()
	if err != nil {
		return err
	}
	r := &groupRow{id: g.id, state: state, processed: g.processed, opaque: g.opaque, removed: g.removed, broken: g.broken, refused: g.refused, leaving: g.leaving, proposals: encodeList(g.proposals)}
	r.deniable = den
	if p := g.pending; p != nil {
		r.pendingCommit, r.pendingState = p.wire, p.nextState
	}
	if err := g.c.db.putGroup(ctx, r, deleteRef); err != nil {
		return fmt.Errorf("client: saving the state of group %x: %w", g.id, err)
	}
	return nil
}

// flushLocked writes the state if messages were processed since the last
// write, which queues their events.
func (g *Group) flushLocked() error {
	if !g.dirty {
		return nil
	}
	return g.persist(nil)
}

func encodeList(list [][]byte) []byte {
	if len(list) == 0 {
		return nil
	}
	var b []byte
	for _, x := range list {
		b = binary.AppendUvarint(b, uint64(len(x)))
		b = append(b, x...)
	}
	return b
}

func decodeList(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return out
		}
		out = append(out, bytes.Clone(b[k:k+int(n)]))
		b = b[k+int(n):]
	}
	return out
}

func (g *Group) groupID() []byte { return bytes.Clone(g.id) }

func (g *Group) epoch() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.st.Epoch()
}

func (g *Group) epochAuthenticator() []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.st.EpochAuthenticator()
}

func (g *Group) members() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return memberIDs(g.st)
}

func memberIDs(st *mls.Group) []string {
	var out []string
	for _, m := range st.Members() {
		out = append(out, string(m.Identity))
	}
	return out
}

// wasRemovedBefore reports whether this client was removed from the group
// at a position before seq (or could not follow it since), so that it may
// join it again.
func (g *Group) wasRemovedBefore(seq uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return (g.removed || g.broken) && g.processed < seq
}

func (g *Group) isRemoved() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.removed
}

// lockActive locks the group, failing if the client is closed or no
// longer a member.
// lockOpen locks g unless it is closed or this client was removed from
// it (ErrClosed, ErrRemoved).
func (g *Group) lockOpen() error {
	g.mu.Lock()
	switch {
	case g.closed:
		g.mu.Unlock()
		return ErrClosed
	case g.removed:
		g.mu.Unlock()
		return ErrRemoved
	}
	return nil
}

func (g *Group) lockActive() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return ErrClosed
	}
	if g.removed {
		g.mu.Unlock()
		return ErrRemoved
	}
	if g.broken {
		g.mu.Unlock()
		if g.rec.dropped {
			return ErrDropped
		}
		return ErrGroupBroken
	}
	if g.frozenLocked() {
		g.mu.Unlock()
		return ErrGroupReInit
	}
	return nil
}

// cloneState copies an mls.Group through its encoding, so that a Commit
// or a Proposal can be made without touching the state until the server
// accepts it.
func cloneState(st *mls.Group) (*mls.Group, error) {
	b, err := st.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return mls.UnmarshalGroup(b)
}

func mlsMessage(m *mls.MLSMessage) ([]byte, error) {
	m.Version = mls.ProtocolVersionMLS10
	return m.MarshalBinary()
}

// createGroup creates a group with this client as its only member.
func (c *Client) createGroup(ctx context.Context, opts GroupOptions) (*Group, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	id := bytes.Clone(opts.ID)
	if id == nil {
		id = make([]byte, 16)
		rand.Read(id)
	}
	if c.group(id) != nil {
		return nil, fmt.Errorf("client: this client already has group %x", id)
	}
	if opts.Deniable {
		return c.createDeniableGroup(ctx, id) // deniable_stream.go
	}
	kp, priv, err := mls.NewKeyPackageWith(c.cs, []byte(c.id), c.sig, 0, math.MaxUint64, greaseKeyPackages)
	if err != nil {
		return nil, err
	}
	st, err := mls.NewGroup(id, kp, priv)
	if err != nil {
		return nil, err
	}
	gi, err := st.GroupInfo(false)
	if err != nil {
		return nil, err
	}
	req := &mlsdsv1.CreateGroupRequest{GroupId: id, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT}
	var remote *mlsdsv1.RemoteTree
	if opts.Opaque {
		// The server gets no GroupInfo in the clear, only the encrypted
		// one of the remote tree.
		req.Mode = mlsdsv1.GroupMode_GROUP_MODE_OPAQUE
		blob, err := SealRemoteTree(st, gi, st.Tree())
		if err != nil {
			return nil, err
		}
		remote = &mlsdsv1.RemoteTree{Epoch: st.Epoch(), Blob: blob}
	} else {
		if req.GroupInfo, err = mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}); err != nil {
			return nil, err
		}
		if req.RatchetTree, err = st.Tree().MarshalBinary(); err != nil {
			return nil, err
		}
	}
	if _, err := c.rpc.groups.CreateGroup(ctx, connect.NewRequest(req)); err != nil {
		return nil, fmt.Errorf("client: creating group %x: %w", id, err)
	}
	g := &Group{c: c, id: id, st: st, opaque: opts.Opaque}
	if err := c.holdNewGroup(ctx, g, remote); err != nil {
		return nil, err
	}
	return g, nil
}

// holdNewGroup saves g, a group this client has just created on the
// server, holds it, and uploads remote, the remote tree of its first
// epoch, if there is one. The group exists by then, so a failed upload
// does not undo it (it is logged): the tree is only needed by a member
// that loses track before the first Commit, whose bundle carries the next
// one.
func (c *Client) holdNewGroup(ctx context.Context, g *Group, remote *mlsdsv1.RemoteTree) error {
	if err := g.persist(nil); err != nil {
		return err
	}
	c.mu.Lock()
	c.groups[string(g.id)] = g
	c.mu.Unlock()
	if remote != nil {
		if err := c.putRemoteTree(ctx, g.id, remote); err != nil {
			c.log.Warn("uploading the remote tree of a new group failed", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
		}
	}
	return nil
}

// currentRemoteTree is the remote tree of st's current epoch: its
// GroupInfo and ratchet tree, sealed for that epoch.
func currentRemoteTree(st *mls.Group) (*mlsdsv1.RemoteTree, error) {
	gi, err := st.GroupInfo(false)
	if err != nil {
		return nil, err
	}
	blob, err := SealRemoteTree(st, gi, st.Tree())
	if err != nil {
		return nil, err
	}
	return &mlsdsv1.RemoteTree{Epoch: st.Epoch(), Blob: blob}, nil
}

// putRemoteTree uploads an opaque group's remote tree, retrying while the
// server is unreachable.
func (c *Client) putRemoteTree(ctx context.Context, groupID []byte, t *mlsdsv1.RemoteTree) error {
	var err error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			if serr := sleep(ctx, retryAfter(err, attempt)); serr != nil {
				return serr
			}
		}
		_, err = c.rpc.groups.PutRemoteTree(ctx, connect.NewRequest(&mlsdsv1.PutRemoteTreeRequest{GroupId: groupID, RemoteTree: t}))
		if err == nil || !transient(err) {
			break
		}
	}
	return err
}

// deliver processes a message from the stream, after the messages before
// it (fetched if the stream skipped some), and writes the state.
func (g *Group) deliver(ctx context.Context, env *mlsdsv1.Envelope) error {
	err := g.take(ctx, env)
	g.mu.Lock()
	if ferr := g.flushLocked(); err == nil {
		err = ferr
	}
	g.mu.Unlock()
	if err != nil {
		return err
	}
	g.afterProcessing(ctx)
	return nil
}

// take processes a message from the stream, after the messages before it
// (fetched if the stream skipped some), leaving the state to be written
// (flushLocked) with the next messages.
func (g *Group) take(ctx context.Context, env *mlsdsv1.Envelope) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.removed || g.closed || env.GroupSeq <= g.processed {
		return nil
	}
	g.skipOwnLocked()
	if env.GroupSeq == g.processed+1 {
		return g.processLocked(env)
	}
	return g.catchUpLocked(ctx, env.GroupSeq)
}

// skipOwnLocked moves the processed position over this client's own
// application messages that directly follow it, and forgets those below.
func (g *Group) skipOwnLocked() {
	for len(g.own) > 0 {
		if g.own[g.processed+1] {
			delete(g.own, g.processed+1)
			g.processed++
			g.dirty = true
			continue
		}
		for seq := range g.own {
			if seq <= g.processed {
				delete(g.own, seq)
			}
		}
		return
	}
}

// sync fetches and processes everything outstanding, then commits pending
// proposals if it is this client's turn.
func (g *Group) sync(ctx context.Context) error {
	if err := g.lockOpen(); err != nil {
		return err
	}
	err := g.catchUpLocked(ctx, math.MaxUint64)
	g.mu.Unlock()
	if err != nil {
		return g.noteDropped(err) // opaque_recovery.go
	}
	g.maybeRecover(ctx)
	if err := g.droppedErr(); err != nil {
		return err
	}
	return g.maybeAutoCommit(ctx)
}

// catchUpLocked fetches and processes the group's messages after the
// processed position up to seq upTo (or as far as there are). The state is
// written once per page of messages.
func (g *Group) catchUpLocked(ctx context.Context, upTo uint64) (err error) {
	defer func() {
		if ferr := g.flushLocked(); err == nil {
			err = ferr
		}
	}()
	for g.processed < upTo && !g.removed {
		from := g.processed + 1
		res, err := g.c.rpc.groups.Fetch(ctx, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: g.id, FromSeq: from, Limit: fetchPage}))
		if err != nil {
			if oldest := prunedFrom(err); oldest > from {
				// Gone from the server (pruned.go).
				if err := g.prunedLocked(ctx, oldest); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("client: fetching group %x from %d: %w", g.id, from, err)
		}
		if len(res.Msg.Messages) == 0 {
			return nil
		}
		for _, env := range res.Msg.Messages {
			if env.GroupSeq > upTo || g.removed {
				return nil
			}
			if err := g.processLocked(env); err != nil {
				return err
			}
		}
		if err := g.flushLocked(); err != nil {
			return err
		}
		if res.Msg.NextSeq <= from {
			return nil
		}
	}
	return nil
}

// processLocked processes the message at the next position: it updates
// the state and the position in memory and keeps the events until the
// state is written (flushLocked, persist). It fails, changing nothing, only
// when the credential check could not decide (ErrValidatorUnavailable):
// the message is processed again later.
func (g *Group) processLocked(env *mlsdsv1.Envelope) error {
	if env.GroupSeq <= g.processed {
		return nil
	}
	if g.skipPrunedLocked(env.GroupSeq) {
		return nil
	}
	if g.removed || g.skipDeniableLocked(env) {
		return nil
	}
	base := Event{GroupID: g.id, Seq: env.GroupSeq, Epoch: env.Epoch, Sender: env.SenderClientId, AcceptedAt: env.AcceptedAt.AsTime()}
	undecryptable := func(err error) []Event {
		e := base
		e.Kind, e.Err = EventUndecryptable, err
		g.c.log.Warn("message not processed", slog.String("group", fmt.Sprintf("%x", g.id)), slog.Uint64("seq", env.GroupSeq),
			slog.String("error", err.Error()))
		return []Event{e}
	}
	var evs []Event
	var retry error
	// Deniable groups' envelopes name no sender (deniable.go).
	own := env.SenderClientId == g.c.id || g.ownDeniableLocked(env)
	msg, err := mls.ParseMLSMessage(env.Message)
	switch {
	case err != nil:
		evs = undecryptable(fmt.Errorf("client: message does not decode: %w", err))
	case msg.PrivateMessage != nil:
		switch msg.PrivateMessage.ContentType {
		case mls.ContentTypeProposal:
			// Another member's proposal sent encrypted (§6.3).
			evs, retry = g.takePrivateProposal(base, msg, env, undecryptable)
		case mls.ContentTypeCommit:
			evs, retry = g.applyCommit(base, env, msg, own, undecryptable)
		case mls.ContentTypeApplication:
			if own {
				break // this client's own application message
			}
			sender, data, err := g.st.Open(msg.PrivateMessage)
			if err != nil {
				evs = undecryptable(fmt.Errorf("client: application message of epoch %d does not open: %w", msg.PrivateMessage.Epoch, err))
				break
			}
			if me := g.misattributedLocked(base, env, sender); me != nil {
				evs = []Event{*me}
				break
			}
			e := base
			e.Kind, e.Data = EventMessage, data
			for _, m := range g.st.Members() {
				if m.Leaf == sender {
					e.Sender = string(m.Identity)
				}
			}
			evs = []Event{e}
		default:
			evs = undecryptable(fmt.Errorf("client: PrivateMessage of unknown content type %d", msg.PrivateMessage.ContentType))
		}
	case msg.PublicMessage != nil:
		pm := msg.PublicMessage
		switch pm.Content.ContentType {
		case mls.ContentTypeProposal:
			if s := pm.Content.Sender; s.SenderType == mls.SenderTypeMember && !own {
				if me := g.misattributedLocked(base, env, s.LeafIndex); me != nil {
					evs = []Event{*me}
					break
				}
			}
			if de := g.admitProposalLocked(base, len(env.Message)); de != nil {
				evs = []Event{*de}
				break
			}
			if err := g.checkProposalLocked(pm.Content.Proposal, pm.Content.Sender); err != nil {
				var ce *CredentialError
				if !errors.As(err, &ce) {
					retry = err
					break
				}
				// Left out of the state, so that no Commit of this client
				// carries it; a Commit of another member that does is
				// refused.
				evs = []Event{refusedEvent(base, ce)}
			} else if _, err := g.st.HandleProposal(pm); err != nil {
				evs = undecryptable(fmt.Errorf("client: proposal not accepted: %w", err))
			} else {
				g.proposals = append(g.proposals, env.Message)
			}
		case mls.ContentTypeCommit:
			var me *Event
			if s := pm.Content.Sender; s.SenderType == mls.SenderTypeMember && !own {
				// Reported, yet processed: the Commit's signature binds its
				// leaf, and refusing it would only break this state.
				me = g.misattributedLocked(base, env, s.LeafIndex)
			}
			evs, retry = g.applyCommit(base, env, msg, own, undecryptable)
			if me != nil && retry == nil {
				evs = append([]Event{*me}, evs...)
			}
		default:
			evs = undecryptable(errors.New("client: application data sent as PublicMessage"))
		}
	default:
		evs = undecryptable(fmt.Errorf("client: unexpected wire format %d in a group", msg.WireFormat))
	}
	if retry != nil {
		g.c.log.Debug("message left for later: the credential check could not decide", slog.String("group", fmt.Sprintf("%x", g.id)),
			slog.Uint64("seq", env.GroupSeq), slog.String("error", retry.Error()))
		return retry
	}
	g.processed = env.GroupSeq
	g.unsaved = append(g.unsaved, evs...)
	g.dirty = true
	return nil
}

// applyCommit processes a Commit: this client's own pending one is merged,
// another member's is handled on a copy of the state, which replaces the
// state once the leaves the Commit brings in pass the credential check.
// It fails, changing nothing, only when that check could not decide.
func (g *Group) applyCommit(base Event, env *mlsdsv1.Envelope, msg *mls.MLSMessage, own bool, undecryptable func(error) []Event) ([]Event, error) {
	oldMembers := g.st.Members()
	prev := g.st
	var before []string
	for _, m := range oldMembers {
		before = append(before, string(m.Identity))
	}
	leavers := g.selfRemoversLocked(oldMembers)
	// This client makes PublicMessage Commits only: an encrypted one the
	// server says is its own is one it does not hold, as is a plain one
	// from its own leaf.
	ownLeaf := msg.PrivateMessage != nil || msg.PublicMessage.Content.Sender.SenderType == mls.SenderTypeMember && msg.PublicMessage.Content.Sender.LeafIndex == g.st.Self()
	// effect is what the Commit changes, when known (not for an own
	// Commit read back from the state file).
	var effect *mls.CommitEffect
	if own && g.pending != nil && bytes.Equal(g.pending.wire, env.Message) {
		// Its leaves were checked when it was made (makeCommit).
		effect = g.pending.effect
		g.st = g.pending.next
		g.pending.merged = true
		g.pending = nil
	} else if own && ownLeaf {
		g.pending = nil
		return g.breakLocked(errBroken(errors.New("a Commit of this client that it no longer holds (state lost?)")), undecryptable), nil
	} else {
		next, err := cloneState(g.st)
		if err != nil {
			return g.breakLocked(errBroken(err), undecryptable), nil
		}
		p, err := next.Process(msg)
		if err == nil && p.Commit == nil {
			err = errors.New("mls: the message is not a Commit")
		}
		if err != nil {
			g.pending = nil
			g.noteRefusedLocked(msg) // opaque_recovery.go
			return g.breakLocked(errBroken(err), undecryptable), nil
		}
		effect = p.Commit
		base = g.deniableSender(base, oldMembers, effect, false)
		for _, r := range effect.Removed {
			if r.Leaf == g.st.Self() {
				g.st = next
				g.pending = nil
				e := base
				e.Kind, e.Members = EventRemoved, before
				if g.leaving || slices.Contains(leavers, g.c.id) {
					// The removal this client asked for (Leave).
					e.Kind = EventLeft
				}
				g.removed = true
				g.leaving = false
				g.proposals = nil
				return []Event{e}, nil
			}
		}
		if g.opaque {
			// The declared roster change must be what the Commit does
			// (opaque_recovery.go).
			if err := checkDeclaration(p.AuthenticatedData, effect, next); err != nil {
				g.pending = nil
				g.noteRefusedLocked(msg)
				return g.breakLocked(errBroken(err), undecryptable), nil
			}
		}
		g.rec.forkDue = true // fork.go
		if err := g.checkCommitLeaves(next, effect); err != nil {
			var ce *CredentialError
			if !errors.As(err, &ce) {
				return nil, err
			}
			// The state stays as it was; without the Commit the client
			// cannot follow the group, and a rejoin would take the leaf
			// in: the group is broken until the app rejoins.
			g.c.logRefused("a Commit", ce)
			g.pending = nil
			g.broken, g.refused, g.brokenErr = true, true, ce
			return []Event{refusedEvent(base, ce)}, nil
		}
		g.st = next
		g.pending = nil
	}
	g.rememberEpochLocked(prev) // opaque_recovery.go
	base = g.deniableSender(base, oldMembers, effect, own)
	g.noteEpochEndLocked(oldMembers)
	g.proposals = nil
	g.proposalsSince = time.Time{}
	g.stopTakeoverLocked()
	g.commitSeen = true
	g.rejoinFailures = 0
	after := memberIDs(g.st)
	// Every membership change is told, from what the Commit did: a client
	// removed and added again by one Commit shows in both lists.
	added, removed := minus(after, before), minus(before, after)
	var updated []string
	if effect != nil {
		added, removed, updated = commitEvents(effect)
	}
	var evs []Event
	if len(added) > 0 {
		e := base
		e.Kind, e.Members = EventMembersAdded, added
		evs = append(evs, e)
	}
	if len(removed) > 0 {
		e := base
		e.Kind, e.Members = EventMembersRemoved, removed
		for _, id := range removed {
			if slices.Contains(leavers, id) {
				e.Left = append(e.Left, id)
			}
		}
		evs = append(evs, e)
	}
	if len(updated) > 0 {
		e := base
		e.Kind, e.Members = EventMembersUpdated, updated
		evs = append(evs, e)
	}
	e := base
	e.Kind, e.Epoch, e.Members = EventEpoch, g.st.Epoch(), after
	evs = append(evs, e)
	if r, frozen := g.st.Frozen(); frozen {
		// The group is closed; its successor is the app's to set up.
		re := base
		re.Epoch = g.st.Epoch()
		evs = append(evs, reInitEvent(re, r, after))
	}
	return evs, nil
}

// breakLocked marks the group broken by a Commit it could not process
// (err) and returns the EventUndecryptable of it. A transparent group is
// then rejoined on its own (maybeRecover).
func (g *Group) breakLocked(err error, undecryptable func(error) []Event) []Event {
	g.broken, g.refused, g.brokenErr = true, false, err
	return undecryptable(err)
}

// checkCommitLeaves runs the credential check on the leaves a Commit of
// another member brings in (effect, with next the state after it): those
// it adds (an external joiner's too), those Update proposals replace and
// the committer's UpdatePath leaf.
func (g *Group) checkCommitLeaves(next *mls.Group, effect *mls.CommitEffect) error {
	if len(effect.Added) == 0 && len(effect.Updated) == 0 {
		return nil
	}
	tree := next.Tree()
	var leaves []leafRef
	for _, a := range effect.Added {
		if ln := tree.Leaf(a.Leaf); ln != nil {
			leaves = append(leaves, leafRef{a.Leaf, ln})
		}
	}
	for _, u := range effect.Updated {
		if ln := tree.Leaf(u.Leaf); ln != nil {
			leaves = append(leaves, leafRef{u.Leaf, ln})
		}
	}
	ctx, cancel := g.c.validationCtx()
	defer cancel()
	return g.c.validateLeaves(ctx, g.id, leaves)
}

// UnplacedLeaf is the leaf index a CredentialValidator gets for the leaf of
// an Add proposal, which has no place in the tree yet.
const UnplacedLeaf = ^mls.LeafIndex(0)

// checkProposalLocked runs the credential check on the leaf a proposal
// brings in (an Add's KeyPackage, an Update's LeafNode), if any.
func (g *Group) checkProposalLocked(p *mls.Proposal, sender mls.Sender) error {
	var l leafRef
	switch {
	case p == nil:
		return nil
	case p.ProposalType == mls.ProposalTypeAdd && p.Add != nil:
		l = leafRef{UnplacedLeaf, &p.Add.KeyPackage.LeafNode}
	case p.ProposalType == mls.ProposalTypeUpdate && p.Update != nil && sender.SenderType == mls.SenderTypeMember:
		l = leafRef{sender.LeafIndex, &p.Update.LeafNode}
	default:
		return nil
	}
	ctx, cancel := g.c.validationCtx()
	defer cancel()
	return g.c.validateLeaves(ctx, g.id, []leafRef{l})
}

// takePrivateProposal processes a proposal sent as a PrivateMessage, on a
// copy of the state that replaces it once the proposal passes the
// credential check. The proposals list keeps it decrypted, as a
// PublicMessage without authentication (it only ever serves to read the
// proposal back: mls keeps the authenticated one for the Commit that
// refers to it).
func (g *Group) takePrivateProposal(base Event, msg *mls.MLSMessage, env *mlsdsv1.Envelope, undecryptable func(error) []Event) ([]Event, error) {
	next, err := cloneState(g.st)
	if err != nil {
		return undecryptable(err), nil
	}
	p, err := next.Process(msg)
	if err != nil {
		return undecryptable(fmt.Errorf("client: encrypted proposal not accepted: %w", err)), nil
	}
	if p.Sender.SenderType == mls.SenderTypeMember && env.SenderClientId != g.c.id {
		if me := g.misattributedLocked(base, env, p.Sender.LeafIndex); me != nil {
			return []Event{*me}, nil
		}
	}
	if de := g.admitProposalLocked(base, len(env.Message)); de != nil {
		return []Event{*de}, nil
	}
	if p.Proposal == nil {
		g.st = next
		g.proposals = append(g.proposals, env.Message)
		return nil, nil
	}
	if err := g.checkProposalLocked(p.Proposal, p.Sender); err != nil {
		var ce *CredentialError
		if !errors.As(err, &ce) {
			return nil, err
		}
		return []Event{refusedEvent(base, ce)}, nil
	}
	g.st = next
	plain := &mls.PublicMessage{Content: mls.FramedContent{GroupID: g.id, Epoch: p.Epoch, Sender: p.Sender,
		ContentType: mls.ContentTypeProposal, Proposal: p.Proposal}}
	if p.Sender.SenderType == mls.SenderTypeMember {
		plain.MembershipTag = []byte{}
	}
	b, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: plain})
	if err != nil {
		g.c.log.Warn("keeping an encrypted proposal", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
		b = env.Message
	}
	g.proposals = append(g.proposals, b)
	return nil, nil
}

// errBroken explains a Commit this client could not process.
func errBroken(err error) error {
	return fmt.Errorf("client: a Commit could not be processed, so this client can no longer follow the group until it rejoins (it does so on its own): %w", err)
}

// minus returns the ids in a that are not in b.
func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// send seals data and sends it, sealing it again on the new state if the
// group moved on under it.
func (g *Group) send(ctx context.Context, data []byte) (Receipt, error) {
	return g.sendRetrying(ctx, "sending to", func(wire *[]byte) (Receipt, error) { return g.sendOnce(ctx, data, wire) })
}

// sendRetrying runs once until it succeeds, at most maxAttempts times.
// once makes the message into *wire if it is nil and sends *wire. When
// the group has moved on, the group is synced and the message made again
// on the new state (wire reset); after a transient failure the same bytes
// go again: if the first try was accepted after all, the server answers
// with its receipt.
func (g *Group) sendRetrying(ctx context.Context, what string, once func(wire *[]byte) (Receipt, error)) (Receipt, error) {
	var lastErr error
	var wire []byte
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, retryAfter(lastErr, attempt)); err != nil {
				return Receipt{}, err
			}
		}
		r, err := once(&wire)
		if err == nil {
			return r, nil
		}
		lastErr = err
		switch {
		case epochConflict(err):
			g.c.rebases.Add(1)
			wire = nil
			if err := g.sync(ctx); err != nil && !transient(err) {
				return Receipt{}, err
			}
		case transient(err):
		default:
			return Receipt{}, g.noteDropped(g.checkRemoved(ctx, err))
		}
	}
	return Receipt{}, fmt.Errorf("client: %s group %x failed %d times; try again later: %w", what, g.id, maxAttempts, lastErr)
}

// sendOnce seals data (unless *wire holds it sealed already) and sends it.
func (g *Group) sendOnce(ctx context.Context, data []byte, wire *[]byte) (Receipt, error) {
	if err := g.lockActive(); err != nil {
		return Receipt{}, err
	}
	defer g.mu.Unlock()
	if *wire == nil {
		pm, err := g.st.Seal(data, nil)
		if err != nil {
			return Receipt{}, err
		}
		b, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm})
		if err != nil {
			return Receipt{}, err
		}
		if g.den != nil {
			g.den.noteSent(b) // the group's stream brings it back
		}
		// The ratchet moved: save it before the message leaves, so that
		// a restart never reuses a key and nonce.
		if err := g.persist(nil); err != nil {
			return Receipt{}, err
		}
		*wire = b
	}
	res, err := g.c.rpc.groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: *wire}))
	if err != nil {
		return Receipt{}, fmt.Errorf("client: sending to group %x: %w", g.id, err)
	}
	rc := res.Msg.Receipt
	if rc.GroupSeq == g.processed+1 {
		// Nothing arrived in between: skip over our own message now. The
		// position goes to the state file with its next write (the next
		// Send's, or that of the next messages processed), not in a write
		// of its own: a client that stops before then fetches the message
		// again and passes over it as its own (processLocked), and the
		// server's cursor waits for that write too (persist).
		g.processed = rc.GroupSeq
		g.dirty = true
	} else if rc.GroupSeq > g.processed {
		// Messages of others come first; the stream will not bring this
		// one, so remember to step over it.
		if g.own == nil {
			g.own = make(map[uint64]bool)
		}
		g.own[rc.GroupSeq] = true
	}
	return Receipt{Seq: rc.GroupSeq, Epoch: rc.Epoch, AcceptedAt: rc.AcceptedAt.AsTime()}, nil
}

// intent is what a Commit is for; it is applied again to the new state
// when the Commit is rebased.
type intent struct {
	adds, removes []string
	update        bool
	auto          bool        // commit the pending proposals, if it is this client's turn
	reinit        *mls.ReInit // a ReInit proposal, alone (Group.ReInit, reinit.go)
}

// commit makes, sends and merges a Commit for in, rebasing it on the new
// state whenever another Commit wins the epoch.
func (g *Group) commit(ctx context.Context, in intent) error {
	claimed := map[string]*mls.KeyPackage{}
	var mine *pendingCommit
	var lastErr error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, retryAfter(lastErr, attempt)); err != nil {
				return err
			}
		}
		err := g.commitOnce(ctx, in, claimed, &mine)
		if err == nil {
			if !in.auto {
				// This client's own Commit ended the epoch, and with it a
				// Remove proposal of its own that it did not take in.
				g.maybeLeave(ctx)
			}
			// As after any Commit: remove the members who are gone (a
			// deleted client, whose removal nobody proposed).
			g.removeStale(ctx)
			return nil
		}
		lastErr = err
		switch {
		case epochConflict(err):
			g.c.rebases.Add(1)
			if err := g.sync(ctx); err != nil && !transient(err) {
				return err
			}
		case transient(err):
		default:
			return g.noteDropped(g.checkRemoved(ctx, err))
		}
	}
	return fmt.Errorf("client: committing to group %x failed %d times; try again later: %w", g.id, maxAttempts, lastErr)
}

// commitOnce makes a Commit for in (unless mine, made by an earlier
// attempt, is still in flight) and sends it.
func (g *Group) commitOnce(ctx context.Context, in intent, claimed map[string]*mls.KeyPackage, mine **pendingCommit) error {
	if err := g.lockActive(); err != nil {
		return err
	}
	defer g.mu.Unlock()
	if *mine != nil && (*mine).merged {
		return nil
	}
	if p := g.pending; p != nil {
		if p.restored {
			// Read back from the state file after a restart: the Commit
			// was accepted if and only if it is in the group's log.
			if err := g.catchUpLocked(ctx, math.MaxUint64); err != nil {
				return err
			}
			if g.pending == p {
				g.pending = nil
				if err := g.persist(nil); err != nil {
					return err
				}
			}
		} else {
			// A Commit whose outcome is unknown (a transport error) is
			// sent again as it is: the server answers the same bytes
			// with the same receipt.
			if err := g.sendPendingLocked(ctx); err != nil {
				return err
			}
			if p == *mine {
				return nil
			}
		}
		if g.removed {
			return ErrRemoved
		}
	}
	p, err := g.makeCommit(ctx, in, claimed)
	if err != nil || p == nil {
		return err
	}
	g.pending, *mine = p, p
	if err := g.persist(nil); err != nil {
		g.pending = nil
		return err
	}
	return g.sendPendingLocked(ctx)
}

// sendPendingLocked sends the pending Commit and, once accepted, processes
// the messages ordered before it and merges it. A refused Commit is
// dropped; after a transport error it stays pending.
func (g *Group) sendPendingLocked(ctx context.Context) error {
	p := g.pending
	req := &mlsdsv1.SendCommitBundleRequest{Commit: p.wire, Welcome: p.welcome, GroupInfo: p.groupInfo}
	if g.opaque {
		req.Added, req.Removed, req.RemoteTree = p.added, p.removed, p.remoteTree
	}
	res, err := g.c.rpc.groups.SendCommitBundle(ctx, connect.NewRequest(req))
	if err != nil {
		if !transient(err) {
			g.pending = nil
			if perr := g.persist(nil); perr != nil {
				return perr
			}
		}
		return fmt.Errorf("client: sending a Commit to group %x: %w", g.id, err)
	}
	rc := res.Msg.Receipt
	// Process what the server ordered before the Commit (messages of the
	// old epoch), then the Commit itself.
	if err := g.catchUpLocked(ctx, rc.GroupSeq-1); err != nil {
		g.c.log.Debug("catching up before an own Commit; will finish later", slog.String("error", err.Error()))
		return nil
	}
	if g.processed == rc.GroupSeq-1 {
		if err := g.processLocked(&mlsdsv1.Envelope{GroupId: g.id, GroupSeq: rc.GroupSeq, Epoch: rc.Epoch, SenderClientId: g.c.id,
			ContentType: mlsdsv1.ContentType_CONTENT_TYPE_COMMIT, Message: p.wire, AcceptedAt: rc.AcceptedAt}); err != nil {
			return err
		}
		return g.flushLocked()
	}
	return nil
}

// makeCommit makes a Commit for in on the current state, or returns nil if
// there is nothing to commit.
func (g *Group) makeCommit(ctx context.Context, in intent, claimed map[string]*mls.KeyPackage) (*pendingCommit, error) {
	current := memberIDs(g.st)
	var missing []string
	for _, id := range in.adds {
		if !slices.Contains(current, id) && !slices.Contains(missing, id) && claimed[id] == nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > 1 {
		if err := g.claimMany(ctx, missing, claimed); err != nil {
			return nil, err
		}
	}
	var adds []*mls.KeyPackage
	var addIDs []string
	for _, id := range in.adds {
		if slices.Contains(current, id) || slices.Contains(addIDs, id) {
			continue
		}
		kp := claimed[id]
		if kp == nil {
			var err error
			if kp, err = g.claim(ctx, id); err != nil {
				return nil, err
			}
			claimed[id] = kp
		}
		adds = append(adds, kp)
		addIDs = append(addIDs, id)
	}
	var removes []mls.LeafIndex
	for _, m := range g.st.Members() {
		if slices.Contains(in.removes, string(m.Identity)) {
			if m.Leaf == g.st.Self() {
				return nil, errors.New("client: a client cannot remove itself; use Group.Leave")
			}
			removes = append(removes, m.Leaf)
		}
	}
	if in.auto && !g.myTurnLocked() {
		return nil, nil
	}
	// The pending proposals this Commit may carry (guard.go).
	include := g.includeLocked(ctx, in.removes)
	if len(adds) == 0 && len(removes) == 0 && !in.update && in.reinit == nil && !(in.auto && g.committableLocked(include)) {
		return nil, nil
	}
	next, err := cloneState(g.st)
	if err != nil {
		return nil, err
	}
	// A PublicMessage, unless the state says to send handshakes encrypted
	// (mls.Group.SetHandshakeWireFormat).
	opts := mls.CommitOptions{Adds: adds, Removes: removes, Include: include, ReInit: in.reinit}
	var decl ds.RosterChange
	if g.opaque {
		// The Commit declares its roster change in its authenticated_data
		// (opaque_recovery.go), learnt from a trial Commit first.
		trial, err := cloneState(g.st)
		if err != nil {
			return nil, err
		}
		if _, _, err := trial.CommitMessage(opts); err != nil {
			return nil, fmt.Errorf("client: making a Commit: %w", err)
		}
		effect := trial.PendingCommitEffect()
		if err := trial.MergePendingCommit(); err != nil {
			return nil, err
		}
		decl = g.declarationLocked(effect, memberIDs(trial))
		opts.AuthenticatedData = marshalDeclaration(decl)
	}
	msg, welcome, err := next.CommitMessage(opts)
	if err != nil {
		return nil, fmt.Errorf("client: making a Commit: %w", err)
	}
	p := &pendingCommit{next: next, effect: next.PendingCommitEffect()}
	if g.opaque || g.c.testWelcomeWithoutTree {
		if welcome != nil {
			welcome = g.welcomeWithoutTree(next, welcome, adds)
		}
	}
	if g.opaque {
		// The new epoch's GroupInfo and tree go to the server encrypted,
		// with the Commit: the joiners of the Welcome fetch them there.
		epoch, blob, err := SealPendingRemoteTree(next)
		if err != nil {
			return nil, fmt.Errorf("client: encrypting the remote tree: %w", err)
		}
		p.remoteTree = &mlsdsv1.RemoteTree{Epoch: epoch, Blob: blob}
	}
	if err := next.MergePendingCommit(); err != nil {
		return nil, err
	}
	// The leaves this Commit brings in (the claimed KeyPackages', those of
	// the proposals it commits) pass the credential check first.
	if err := g.checkOwnCommitLeaves(ctx, next); err != nil {
		return nil, err
	}
	if p.wire, err = mlsMessage(msg); err != nil {
		return nil, err
	}
	if welcome != nil {
		if p.welcome, err = mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: welcome}); err != nil {
			return nil, err
		}
	}
	if !g.opaque {
		gi, err := g.c.commitGroupInfo(next)
		if err != nil {
			return nil, err
		}
		if p.groupInfo, err = mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}); err != nil {
			return nil, err
		}
	}
	if p.nextState, err = next.MarshalBinary(); err != nil {
		return nil, err
	}
	after := memberIDs(next)
	p.added, p.removed = minus(after, current), minus(current, after)
	if g.opaque {
		if got := g.declarationLocked(p.effect, after); !slices.Equal(got.Added, decl.Added) || !slices.Equal(got.Removed, decl.Removed) {
			return nil, fmt.Errorf("client: the Commit's roster change (added %v, removed %v) is not the one declared (added %v, removed %v); try again", got.Added, got.Removed, decl.Added, decl.Removed)
		}
		p.added, p.removed = decl.Added, decl.Removed
	}
	return p, nil
}

// welcomeWithoutTree rebuilds the Welcome w of next's pending Commit
// without the ratchet_tree extension (the joiners take the tree from the
// server). The Commit may add clients besides adds, by reference to
// pending Add proposals: their KeyPackages come from those. If some
// joiner's KeyPackage is not at hand, w is kept as it is.
func (g *Group) welcomeWithoutTree(next *mls.Group, w *mls.Welcome, adds []*mls.KeyPackage) *mls.Welcome {
	candidates := slices.Clone(adds)
	for _, b := range g.proposals {
		m, err := mls.ParseMLSMessage(b)
		if err != nil || m.PublicMessage == nil || m.PublicMessage.Content.Proposal == nil {
			continue
		}
		if p := m.PublicMessage.Content.Proposal; p.ProposalType == mls.ProposalTypeAdd && p.Add != nil {
			candidates = append(candidates, &p.Add.KeyPackage)
		}
	}
	byRef := map[string]*mls.KeyPackage{}
	for _, kp := range candidates {
		if ref, err := kp.Ref(); err == nil {
			byRef[string(ref)] = kp
		}
	}
	var joiners []*mls.KeyPackage
	for _, s := range w.Secrets {
		kp := byRef[string(s.NewMember)]
		if kp == nil {
			g.c.log.Warn("keeping the ratchet tree in a Welcome: a joiner's KeyPackage is unknown", slog.String("group", fmt.Sprintf("%x", g.id)))
			return w
		}
		joiners = append(joiners, kp)
	}
	out, err := next.WelcomeWithoutTree(joiners)
	if err != nil {
		g.c.log.Warn("keeping the ratchet tree in a Welcome", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
		return w
	}
	return out
}

// claim claims a KeyPackage of client id.
func (g *Group) claim(ctx context.Context, id string) (*mls.KeyPackage, error) {
	res, err := g.c.rpc.kps.ClaimKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
		Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: id}, CipherSuite: uint32(g.c.cs)}))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			return nil, fmt.Errorf("client: %q has no KeyPackage left (or is not registered); it must publish some before it can be added: %w", id, err)
		}
		return nil, fmt.Errorf("client: claiming a KeyPackage of %q: %w", id, err)
	}
	if len(res.Msg.KeyPackages) != 1 {
		return nil, fmt.Errorf("client: claiming a KeyPackage of %q: got %d", id, len(res.Msg.KeyPackages))
	}
	return claimedKeyPackage(id, res.Msg.KeyPackages[0].KeyPackage)
}

// claimedKeyPackage decodes the KeyPackage data claimed for client id.
func claimedKeyPackage(id string, data []byte) (*mls.KeyPackage, error) {
	kp := new(mls.KeyPackage)
	if m, err := mls.ParseMLSMessage(data); err == nil && m.KeyPackage != nil {
		kp = m.KeyPackage
	} else if err := kp.UnmarshalBinary(data); err != nil {
		return nil, fmt.Errorf("client: the KeyPackage claimed for %q does not decode: %w", id, err)
	}
	if string(kp.LeafNode.Credential.Identity) != id {
		return nil, fmt.Errorf("client: the KeyPackage claimed for %q names %q", id, kp.LeafNode.Credential.Identity)
	}
	return kp, nil
}

// claimBatch is how many clients one batch claim names at first: the
// server's bound by default (ds.MaxClaimBatch). A server with a lower
// bound (a small group size limit or claim budget) answers TooLarge with
// it, and the rest go in batches of that size.
const claimBatch = 1000

// claimMany claims a KeyPackage of each of ids (distinct, none a member)
// into claimed, with one ClaimKeyPackages call per batch of the server's
// bound. KeyPackages claimed before an error stay in claimed, so that a
// retry claims only the others. A server that predates batch claims
// (answering Unimplemented or InvalidArgument) gets one call per client.
func (g *Group) claimMany(ctx context.Context, ids []string, claimed map[string]*mls.KeyPackage) error {
	chunk := claimBatch
	for len(ids) > 0 {
		batch := ids[:min(chunk, len(ids))]
		res, err := g.c.rpc.kps.ClaimKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
			ClientIds: batch, CipherSuite: uint32(g.c.cs)}))
		if err != nil {
			switch connect.CodeOf(err) {
			case connect.CodeUnimplemented, connect.CodeInvalidArgument:
				for _, id := range ids {
					kp, err := g.claim(ctx, id)
					if err != nil {
						return err
					}
					claimed[id] = kp
				}
				return nil
			case connect.CodeResourceExhausted:
				if tl := errorDetail[*mlsdsv1.TooLarge](err); tl != nil && tl.Limit >= 1 && tl.Limit < uint64(len(batch)) {
					chunk = int(tl.Limit)
					continue
				}
			case connect.CodeNotFound:
				return fmt.Errorf("client: claiming KeyPackages of %d clients: some are not registered: %w", len(batch), err)
			}
			return fmt.Errorf("client: claiming KeyPackages of %d clients: %w", len(batch), err)
		}
		for _, c := range res.Msg.KeyPackages {
			if !slices.Contains(batch, c.ClientId) || claimed[c.ClientId] != nil {
				return fmt.Errorf("client: a batch claim answered a KeyPackage of %q, which was not asked for", c.ClientId)
			}
			kp, err := claimedKeyPackage(c.ClientId, c.KeyPackage)
			if err != nil {
				return err
			}
			claimed[c.ClientId] = kp
		}
		if len(res.Msg.Exhausted) > 0 {
			var none []string
			for _, x := range res.Msg.Exhausted {
				none = append(none, x.ClientId)
			}
			return fmt.Errorf("client: %q have no KeyPackage left; they must publish some before they can be added: %w",
				none, connect.NewError(connect.CodeNotFound, errors.New("KeyPackages exhausted")))
		}
		for _, id := range batch {
			if claimed[id] == nil {
				return fmt.Errorf("client: a batch claim answered no KeyPackage of %q", id)
			}
		}
		ids = ids[len(batch):]
	}
	return nil
}

// myTurnLocked reports whether this client is the one to commit the
// pending proposals: the member with the lowest leaf index that they do
// not remove or update, or, once it let Config.CommitterTimeout pass
// without committing, the next one in leaf order (designatedLocked).
func (g *Group) myTurnLocked() bool {
	if g.frozenLocked() {
		return false
	}
	order, turn, ok := g.designatedLocked(time.Now())
	return ok && order[turn] == g.st.Self()
}

// maybeAutoCommit commits the pending proposals if it is this client's
// turn.
func (g *Group) maybeAutoCommit(ctx context.Context) error {
	g.mu.Lock()
	turn := !g.removed && !g.broken && !g.closed && g.pending == nil && g.myTurnLocked()
	g.mu.Unlock()
	if !turn {
		return nil
	}
	err := g.commit(ctx, intent{auto: true})
	if err != nil && !errors.Is(err, ErrRemoved) && !errors.Is(err, ErrClosed) {
		g.c.log.Warn("committing pending proposals failed", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
	}
	return nil
}

// groupInfo returns a GroupInfo with the tree, for an external join.
func (g *Group) groupInfo() ([]byte, error) {
	if err := g.lockActive(); err != nil {
		return nil, err
	}
	defer g.mu.Unlock()
	gi, err := g.st.GroupInfoWith(mls.GroupInfoOptions{RatchetTree: true, Grease: true})
	if err != nil {
		return nil, err
	}
	return mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
}

// checkOwnCommitLeaves runs the credential check on the leaves of next (the
// state after this client's Commit) that are new or changed since the
// current state, other than this client's own.
func (g *Group) checkOwnCommitLeaves(ctx context.Context, next *mls.Group) error {
	old := g.st.Tree()
	var leaves []leafRef
	for i, ln := range next.Tree().Leaves() {
		if i == next.Self() {
			continue
		}
		if o := old.Leaf(i); o != nil && bytes.Equal(o.SignatureKey, ln.SignatureKey) && sameCredential(&o.Credential, &ln.Credential) {
			continue
		}
		leaves = append(leaves, leafRef{i, ln})
	}
	return g.c.validateLeaves(ctx, g.id, leaves)
}

// noteEpochEndLocked records, as the epoch ends (oldMembers its members),
// the clients whose removal was proposed in it but not committed: a
// designated member commits their removal (removeStale).
func (g *Group) noteEpochEndLocked(oldMembers []mls.Member) {
	current := map[string]bool{}
	for _, m := range g.st.Members() {
		current[string(m.Identity)] = true
	}
	for id := range g.removalsDue {
		if !current[id] {
			delete(g.removalsDue, id)
		}
	}
	for _, b := range g.proposals {
		m, err := mls.ParseMLSMessage(b)
		if err != nil || m.PublicMessage == nil || m.PublicMessage.Content.Proposal == nil {
			continue
		}
		p := m.PublicMessage.Content.Proposal
		if p.ProposalType != mls.ProposalTypeRemove || p.Remove == nil {
			continue
		}
		for _, om := range oldMembers {
			if om.Leaf == p.Remove.Removed && current[string(om.Identity)] && om.Leaf != g.st.Self() {
				if g.removalsDue == nil {
					g.removalsDue = map[string]bool{}
				}
				g.removalsDue[string(om.Identity)] = true
			}
		}
	}
}

// selfRemoversLocked returns the client ids of the members (of members,
// the roster of the current epoch) whose own Remove proposal is pending:
// those who asked to leave.
func (g *Group) selfRemoversLocked(members []mls.Member) []string {
	var out []string
	for _, b := range g.proposals {
		m, err := mls.ParseMLSMessage(b)
		if err != nil || m.PublicMessage == nil || m.PublicMessage.Content.Proposal == nil {
			continue
		}
		c := m.PublicMessage.Content
		p := c.Proposal
		if p.ProposalType != mls.ProposalTypeRemove || p.Remove == nil || c.Sender.SenderType != mls.SenderTypeMember || c.Sender.LeafIndex != p.Remove.Removed {
			continue
		}
		for _, om := range members {
			if om.Leaf == p.Remove.Removed {
				out = append(out, string(om.Identity))
			}
		}
	}
	return out
}

// sameCredential reports whether a and b are the same credential.
func sameCredential(a, b *mls.Credential) bool {
	return a.CredentialType == b.CredentialType && bytes.Equal(a.Identity, b.Identity) && slices.EqualFunc(a.Certificates, b.Certificates, bytes.Equal)
}
