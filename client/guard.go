package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// What the client does against a member that misbehaves: which pending
// proposals its Commits carry (ProposalPolicy, and never a ReInit or the
// re-add of a client the same Commit removes), how many it keeps
// (Config.MaxPendingProposals, MaxPendingProposalBytes), who commits them
// when the designated member does not (Config.CommitterTimeout), and the
// checks of what it receives: the sender the Delivery Service recorded
// against the leaf that signed (EventMisattributed), the group a Welcome
// brings against the one the Delivery Service serves (EventForked).

// ProposalPolicy decides whether this client commits a proposal of another
// member (or of an external sender) when it makes a Commit: groupID is the
// group, sender the proposer's client id ("" for an external sender).
// Proposals it refuses stay out of this client's Commits; other members'
// clients may still commit them. It is called with the group locked: it
// must not call the Group's methods.
type ProposalPolicy func(ctx context.Context, groupID []byte, proposal *mls.Proposal, sender string) bool

// Defaults of the Config bounds on pending proposals and of the committer
// timeout.
const (
	DefaultMaxPendingProposals     = 64
	DefaultMaxPendingProposalBytes = 512 << 10
	DefaultCommitterTimeout        = 30 * time.Second
)

func (c *Client) maxPendingProposals() int {
	if c.cfg.MaxPendingProposals > 0 {
		return c.cfg.MaxPendingProposals
	}
	return DefaultMaxPendingProposals
}

func (c *Client) maxPendingProposalBytes() int {
	if c.cfg.MaxPendingProposalBytes > 0 {
		return c.cfg.MaxPendingProposalBytes
	}
	return DefaultMaxPendingProposalBytes
}

func (c *Client) committerTimeout() time.Duration {
	if c.cfg.CommitterTimeout > 0 {
		return c.cfg.CommitterTimeout
	}
	return DefaultCommitterTimeout
}

// ErrGroupReInit is returned by the methods of a Group that a committed
// ReInit proposal closed (RFC 9420 §11.2): it takes no more messages or
// Commits. EventReInit named the successor group.
var ErrGroupReInit = errors.New("client: a committed ReInit closed this group: it takes no more messages or Commits; " +
	"its members continue in the successor group that EventReInit names")

// ErrMisattributed is wrapped by the Err of EventMisattributed.
var ErrMisattributed = errors.New("client: the message's sender leaf is not the client the Delivery Service recorded as its sender")

// ErrProposalDropped is wrapped by the Err of EventProposalDropped.
var ErrProposalDropped = errors.New("client: a proposal was dropped: the pending proposals of the epoch are at their bound")

// ReInitInfo names the successor group of a committed ReInit proposal
// (RFC 9420 §12.1.5).
type ReInitInfo struct {
	GroupID     []byte
	Version     mls.ProtocolVersion
	CipherSuite mls.CipherSuite
	Extensions  mls.Extensions
}

// frozenLocked reports whether a committed ReInit closed the group.
func (g *Group) frozenLocked() bool {
	_, frozen := g.st.Frozen()
	return frozen
}

// identityOfLocked returns the client id of the member at leaf, or "".
func (g *Group) identityOfLocked(leaf mls.LeafIndex) string {
	if ln := g.st.Tree().Leaf(leaf); ln != nil {
		return string(mls.CredentialIdentity(&ln.Credential))
	}
	return ""
}

// includeLocked returns the filter of the pending proposals a Commit of
// this client that removes the clients removes carries: never a ReInit
// (its successor group is for the app to set up), never an Add of a
// client that the Commit removes (by value or by a pending Remove) or that
// stays a member (a client is in a group once); the others' proposals
// then as Config.ProposalPolicy says (default: all).
func (g *Group) includeLocked(ctx context.Context, removes []string) func(*mls.PendingProposal) bool {
	self := g.st.Self()
	gone := map[string]bool{}
	for _, id := range removes {
		gone[id] = true
	}
	for _, pp := range g.st.PendingProposals() {
		if p := pp.Proposal; p.ProposalType == mls.ProposalTypeRemove && p.Remove != nil {
			if id := g.identityOfLocked(p.Remove.Removed); id != "" {
				gone[id] = true
			}
		}
	}
	stays := map[string]bool{}
	for _, m := range g.st.Members() {
		if !gone[string(m.Identity)] {
			stays[string(m.Identity)] = true
		}
	}
	policy := g.c.cfg.ProposalPolicy
	return func(pp *mls.PendingProposal) bool {
		p := pp.Proposal
		switch {
		case p.ProposalType == mls.ProposalTypeReInit:
			return false
		case p.ProposalType == mls.ProposalTypeAdd && p.Add != nil:
			id := string(mls.CredentialIdentity(&p.Add.KeyPackage.LeafNode.Credential))
			if gone[id] || stays[id] {
				return false
			}
		}
		var sender string
		if pp.Sender.SenderType == mls.SenderTypeMember {
			if pp.Sender.LeafIndex == self {
				return true
			}
			sender = g.identityOfLocked(pp.Sender.LeafIndex)
		}
		return policy == nil || policy(ctx, g.id, p, sender)
	}
}

// committableLocked reports whether some pending proposal could go into a
// Commit of this client under include: one that is not its own Update or
// its own removal.
func (g *Group) committableLocked(include func(*mls.PendingProposal) bool) bool {
	self := g.st.Self()
	for _, pp := range g.st.PendingProposals() {
		p := pp.Proposal
		own := pp.Sender.SenderType == mls.SenderTypeMember && pp.Sender.LeafIndex == self
		if own && p.ProposalType == mls.ProposalTypeUpdate || p.ProposalType == mls.ProposalTypeRemove && p.Remove != nil && p.Remove.Removed == self {
			continue
		}
		if include(&pp) {
			return true
		}
	}
	return false
}

// misattributedLocked checks the member leaf that signed a message against
// the client the Delivery Service recorded as its sender (env's
// sender_client_id): it returns the EventMisattributed to report, or nil
// if they agree. An empty sender_client_id (the Delivery Service forgot a
// deleted client) is not checked.
func (g *Group) misattributedLocked(base Event, env *mlsdsv1.Envelope, leaf mls.LeafIndex) *Event {
	if env.SenderClientId == "" {
		return nil
	}
	id := g.identityOfLocked(leaf)
	if id == env.SenderClientId {
		return nil
	}
	e := base
	e.Kind, e.Members = EventMisattributed, []string{id}
	e.Err = fmt.Errorf("%w: leaf %d (%q) signed it, the Delivery Service says %q sent it", ErrMisattributed, leaf, id, env.SenderClientId)
	g.c.log.Warn("message refused: its sender is not the one the server recorded", slog.String("group", fmt.Sprintf("%x", g.id)),
		slog.Uint64("seq", env.GroupSeq), slog.String("leaf_identity", id), slog.String("server_sender", env.SenderClientId))
	return &e
}

// admitProposalLocked checks a proposal of size bytes against the bounds
// of the epoch's pending proposals: it returns the EventProposalDropped to
// report if the proposal must be dropped, unseen by the state.
func (g *Group) admitProposalLocked(base Event, size int) *Event {
	n, total := len(g.proposals), size
	for _, b := range g.proposals {
		total += len(b)
	}
	maxN, maxBytes := g.c.maxPendingProposals(), g.c.maxPendingProposalBytes()
	if n < maxN && total <= maxBytes {
		if n == 0 {
			g.proposalsSince = base.AcceptedAt
			if g.proposalsSince.IsZero() {
				g.proposalsSince = time.Now()
			}
		}
		return nil
	}
	e := base
	e.Kind = EventProposalDropped
	e.Err = fmt.Errorf("%w (%d proposals of %d bytes held, a proposal of %d bytes arrived; Config.MaxPendingProposals %d, MaxPendingProposalBytes %d)",
		ErrProposalDropped, n, total-size, size, maxN, maxBytes)
	g.c.log.Warn("proposal dropped: too many pending", slog.String("group", fmt.Sprintf("%x", g.id)), slog.Uint64("seq", base.Seq),
		slog.String("sender", base.Sender), slog.Int("bytes", size))
	return &e
}

// commitEvents returns the events of a Commit's membership changes from
// its effect: EventMembersAdded, EventMembersRemoved (a client removed and
// added again by the same Commit is in both) and EventMembersUpdated (the
// leaves Update proposals replaced; a resync external Commit, which
// replaces the joiner's old leaf). The committer's own UpdatePath is not
// reported.
func commitEvents(effect *mls.CommitEffect) (added, removed, updated []string) {
	resync := map[string]bool{}
	if effect.External {
		for _, a := range effect.Added {
			for _, r := range effect.Removed {
				if bytes.Equal(a.Identity, r.Identity) {
					resync[string(a.Identity)] = true
				}
			}
		}
	}
	for _, a := range effect.Added {
		if id := string(a.Identity); !resync[id] {
			added = append(added, id)
		}
	}
	for _, r := range effect.Removed {
		if id := string(r.Identity); !resync[id] {
			removed = append(removed, id)
		}
	}
	for _, u := range effect.Updated {
		if !effect.External && u.Leaf == effect.Committer {
			continue // the committer's path
		}
		updated = append(updated, string(u.Identity))
	}
	for id := range resync {
		updated = append(updated, id)
	}
	slices.Sort(updated)
	return added, removed, updated
}

// reInitEvent returns the EventReInit of a committed ReInit.
func reInitEvent(base Event, r *mls.ReInit, roster []string) Event {
	e := base
	e.Kind, e.Members = EventReInit, roster
	e.ReInit = &ReInitInfo{GroupID: bytes.Clone(r.GroupID), Version: r.Version, CipherSuite: r.CipherSuite, Extensions: r.Extensions}
	e.Err = ErrGroupReInit
	return e
}

// designatedLocked returns the member expected to commit the pending
// proposals now: the members the proposals neither remove nor update, in
// leaf order, take turns of Config.CommitterTimeout each from when the
// first proposal of the epoch arrived, so that a designated committer that
// does not commit (gone, or malicious) is stood in for. ok is false if
// there is nobody.
func (g *Group) designatedLocked(now time.Time) (order []mls.LeafIndex, turn int, ok bool) {
	if len(g.proposals) == 0 {
		return nil, 0, false
	}
	gone := map[mls.LeafIndex]bool{}
	for _, b := range g.proposals {
		m, err := mls.ParseMLSMessage(b)
		if err != nil || m.PublicMessage == nil || m.PublicMessage.Content.Proposal == nil {
			continue
		}
		switch p := m.PublicMessage.Content.Proposal; {
		case p.ProposalType == mls.ProposalTypeRemove && p.Remove != nil:
			gone[p.Remove.Removed] = true
		case p.ProposalType == mls.ProposalTypeUpdate:
			// A member may not commit its own Update (§12.2).
			if s := m.PublicMessage.Content.Sender; s.SenderType == mls.SenderTypeMember {
				gone[s.LeafIndex] = true
			}
		}
	}
	for _, m := range g.st.Members() {
		if !gone[m.Leaf] {
			order = append(order, m.Leaf)
		}
	}
	if len(order) == 0 {
		return nil, 0, false
	}
	if g.proposalsSince.IsZero() {
		g.proposalsSince = now
	}
	turn = int(now.Sub(g.proposalsSince) / g.c.committerTimeout())
	return order, min(max(turn, 0), len(order)-1), true
}

// scheduleTakeoverLocked arms a timer for when this client's turn to
// commit the pending proposals comes, if it is not its turn yet: the
// designated committer did not commit within Config.CommitterTimeout.
func (g *Group) scheduleTakeoverLocked() {
	if g.takeover != nil || g.removed || g.broken || g.closed || g.frozenLocked() {
		return
	}
	now := time.Now()
	order, turn, ok := g.designatedLocked(now)
	if !ok {
		return
	}
	pos := slices.Index(order, g.st.Self())
	if pos <= turn {
		return // its turn now (maybeAutoCommit), or it is not eligible
	}
	at := g.proposalsSince.Add(time.Duration(pos) * g.c.committerTimeout())
	c := g.c
	epoch := g.st.Epoch()
	g.takeover = time.AfterFunc(max(at.Sub(now), time.Millisecond), func() {
		if !c.startTask() {
			return
		}
		defer c.wg.Done()
		g.mu.Lock()
		g.takeover = nil
		stale := g.st.Epoch() != epoch || len(g.proposals) == 0
		g.mu.Unlock()
		if stale || c.ctx.Err() != nil {
			return
		}
		g.c.log.Info("the designated committer did not commit the pending proposals in time; committing them", slog.String("group", fmt.Sprintf("%x", g.id)))
		g.maybeAutoCommit(c.ctx)
		g.mu.Lock()
		g.scheduleTakeoverLocked()
		g.mu.Unlock()
	})
}

// stopTakeoverLocked stops the takeover timer, if any.
func (g *Group) stopTakeoverLocked() {
	if g.takeover != nil {
		g.takeover.Stop()
	}
	g.takeover = nil
}

// checkJoinedFork compares the group a Welcome brought this client into
// (st, a transparent group) with what the Delivery Service serves of it: at
// the same epoch, the tree hash and confirmed transcript hash must be
// those of the served GroupInfo, which the Delivery Service checked
// against the Commit it accepted (a Welcome made from another Commit than
// the one accepted puts the joiner into a fork). If the group has moved on
// already, the next Commit, which a forked state cannot process, shows
// it. It returns a non-nil error for a fork, and for a failed check it
// cannot decide, transient(err).
func (c *Client) checkJoinedFork(ctx context.Context, st *mls.Group) error {
	res, err := c.rpc.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: st.GroupID()}))
	if err != nil {
		if transient(err) {
			return err
		}
		c.log.Debug("checking a joined group against the server's GroupInfo", slog.String("error", err.Error()))
		return nil
	}
	if res.Msg.Epoch != st.Epoch() || len(res.Msg.GroupInfo) == 0 {
		return nil
	}
	m, err := mls.ParseMLSMessage(res.Msg.GroupInfo)
	if err != nil || m.GroupInfo == nil {
		return nil
	}
	served, mine := m.GroupInfo.GroupContext, st.GroupContext()
	if !bytes.Equal(served.TreeHash, mine.TreeHash) || !bytes.Equal(served.ConfirmedTranscriptHash, mine.ConfirmedTranscriptHash) {
		return fmt.Errorf("%w: the Welcome's group of epoch %d has tree hash %x and confirmed transcript hash %x; the Delivery Service's has %x and %x",
			ErrForked, st.Epoch(), mine.TreeHash, mine.ConfirmedTranscriptHash, served.TreeHash, served.ConfirmedTranscriptHash)
	}
	return nil
}

// ErrForked is wrapped by the Err of EventForked.
var ErrForked = errors.New("client: the group this client joined is not the one the Delivery Service serves (a fork)")

// forkedWelcome refuses the state a forked Welcome w gave (st; err says
// how it differs), reports EventForked, and joins the group the server
// serves by external Commit instead, in the background (EventJoined).
func (c *Client) forkedWelcome(w *mlsdsv1.WelcomeEvent, st *mls.Group, err error) {
	c.log.Warn("refusing a Welcome whose group is not the one the server serves", slog.String("group", fmt.Sprintf("%x", w.GroupId)),
		slog.String("error", err.Error()))
	c.emit(Event{Kind: EventForked, GroupID: w.GroupId, Seq: w.CommitSeq, Epoch: st.Epoch(), Members: memberIDs(st),
		AcceptedAt: w.AcceptedAt.AsTime(), Err: err})
	c.acks.set(w.GroupId, w.CommitSeq)
	c.acks.now()
	// Marked as joining at once, so that the group's messages meanwhile
	// do not make the client leave it (leaveUnknown).
	done := c.beginJoin(w.GroupId)
	if !c.startTask() {
		done()
		return
	}
	go func() {
		defer c.wg.Done()
		defer done()
		if _, err := c.joinExternal(c.ctx, w.GroupId, nil); err != nil && c.ctx.Err() == nil {
			c.log.Warn("joining by external Commit after a forked Welcome failed", slog.String("group", fmt.Sprintf("%x", w.GroupId)),
				slog.String("error", err.Error()))
		}
	}()
}
