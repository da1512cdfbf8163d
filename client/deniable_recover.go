package client

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// Recovering a deniable group from a wrong membership key.
//
// Every Commit of a deniable group carries K_{e+1}, the membership key of
// the epoch it starts, and the server cannot check it: it is an export of
// a key schedule the server does not have. A member who commits with a
// wrong key (a malicious one, or a broken client) leaves the server
// holding a key of epoch e+1 that no honest member has. Every call the
// honest members make under K_{e+1} then gets the answer of outsiders,
// while calls under K_e still pass: nobody can send, commit or read the
// group's new epoch through the server, and the group cannot be repaired
// from inside, since every Commit from e+1 on needs a proof under K_{e+1}.
//
// Detection. When a call under the newest key of a deniable group is
// refused as an outsider's (the fork check after each Commit makes one,
// so every member notices right after the Commit), the client asks the
// server again, under that key and under the previous one (GetGroupInfo).
// If the newest key is still refused, the previous one passes and the
// server is at the newest key's epoch or later, the server holds a wrong
// key for that epoch: the client emits EventKeyMismatch once per group
// and epoch, naming the committer of the Commit that started it (the
// client recorded it when it processed the Commit). A refusal for any
// other reason (the client was removed and its keys expired, a replayed
// proof, the group is gone) fails one of those probes and raises nothing.
// Probes are rate-limited per group (keyProbeInterval).
//
// Recovery. The group cannot continue, so its honest members continue in
// a branch of it (RFC 9420 §11.3) without the culprit: the remaining
// member with the lowest leaf index (the culprit left out) branches the
// group into a new deniable group with a random id and every member but
// the culprit; should it not do so within Config.CommitterTimeout, the
// next one does, and so on (the member at position p takes its turn p
// timeouts after it noticed), as for the successor of a ReInit. The
// others join from the Welcome, whose resumption PSK of usage branch only
// members of the old group hold (mls.Group.JoinBranch). Everyone gets
// EventJoined with Predecessor naming the old group, then EventLeft for
// the old group, whose state stays (closed) on disk.
//
// The server does not link the branch to the old group (no predecessor in
// a deniable group's CreateGroup: it would tie two groups' memberships
// together) and takes no Welcome with CreateGroup (deniable groups start
// with their creator alone), so the branch's creator creates it at its
// first epoch (K_1), then sends an empty Commit whose bundle carries the
// branch Welcome; the joiners join at epoch 1 and process that Commit.

// keyProbeInterval is the least time between two probes of one group's
// membership keys.
const keyProbeInterval = 2 * time.Second

// ErrKeyMismatch is wrapped by the Err of EventKeyMismatch: the server
// holds a membership key for the group's newest epoch that is not the one
// the members derive, so that no member can prove membership of that
// epoch.
var ErrKeyMismatch = errors.New("client: the server holds a wrong membership key for the deniable group's epoch; the Commit that started it gave the server a key the members do not share")

// committerRecord names the committer of the Commit that started an
// epoch of a deniable group.
type committerRecord struct {
	epoch uint64
	leaf  mls.LeafIndex
	id    string
	at    time.Time // when the server accepted the Commit
}

// keyRecovery is the in-memory state of a deniable group's key check and
// recovery.
type keyRecovery struct {
	mu        sync.Mutex
	lastProbe time.Time
	probing   bool
	flagged   map[uint64]bool // epochs found with a wrong key
	timer     *time.Timer     // this member's turn to branch
	// branchedTo is a branch of the group that this client created or
	// joined, from epoch branchedAt.
	branchedTo []byte
	branchedAt uint64
}

// noteCommitter records the committer of the Commit that started epoch.
func (d *deniableState) noteCommitter(epoch uint64, leaf mls.LeafIndex, id string, at time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rec := committerRecord{epoch, leaf, id, at.Truncate(time.Millisecond)}
	for i, c := range d.committers {
		if c.epoch == epoch {
			d.committers[i] = rec
			return
		}
	}
	d.committers = append([]committerRecord{rec}, d.committers...)
	slices.SortFunc(d.committers, func(a, b committerRecord) int { return cmp.Compare(b.epoch, a.epoch) })
	if len(d.committers) > keptMembershipKeys {
		d.committers = d.committers[:keptMembershipKeys]
	}
}

// committerOf returns the committer of the Commit that started epoch.
func (d *deniableState) committerOf(epoch uint64) (committerRecord, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.committers {
		if c.epoch == epoch {
			return c, true
		}
	}
	return committerRecord{}, false
}

// noteDeniableCommitter records the committer of a Commit of a deniable
// group (the event base's epoch is the one the Commit ended).
func (g *Group) noteDeniableCommitter(base Event, oldMembers []mls.Member, effect *mls.CommitEffect, own bool) {
	if g.den == nil {
		return
	}
	if own {
		g.den.noteCommitter(base.Epoch+1, g.st.Self(), g.c.id, base.AcceptedAt)
		return
	}
	if effect == nil || effect.External {
		return
	}
	for _, m := range oldMembers {
		if m.Leaf == effect.Committer {
			g.den.noteCommitter(base.Epoch+1, m.Leaf, string(m.Identity), base.AcceptedAt)
		}
	}
}

type keyProbeCtxKey struct{}

// keyRefused is told of every deniable-group call's outcome (the
// membership interceptor): a refusal as an outsider of a call under the
// newest key of a group this client follows starts a probe of the
// group's keys, at most one every keyProbeInterval.
func (c *Client) keyRefused(ctx context.Context, a *membershipAuth, err error) {
	if a == nil || !refusedAsOutsider(err) || ctx.Value(keyProbeCtxKey{}) != nil || c.den == nil {
		return
	}
	g := c.deniableGroup(a.groupID)
	if g == nil || a.epoch == 0 {
		return
	}
	// The caller may hold g.mu (a Fetch of catchUpLocked): the probe
	// runs apart.
	if k, ok := g.den.newest(); !ok || k.epoch != a.epoch {
		return
	}
	r := &g.den.rcv
	r.mu.Lock()
	if r.probing || r.flagged[a.epoch] || time.Since(r.lastProbe) < keyProbeInterval {
		r.mu.Unlock()
		return
	}
	r.probing, r.lastProbe = true, time.Now()
	r.mu.Unlock()
	if !c.startTask() {
		r.mu.Lock()
		r.probing = false
		r.mu.Unlock()
		return
	}
	go func() {
		defer c.wg.Done()
		defer func() {
			r.mu.Lock()
			r.probing = false
			r.mu.Unlock()
		}()
		mismatch, err := c.probeKeys(g, a.epoch)
		if err != nil {
			c.log.Debug("probing a deniable group's membership keys", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
			return
		}
		if mismatch {
			c.keyMismatch(g, a.epoch)
		}
	}()
}

// probeKeys reports whether the server holds a wrong key of g's epoch:
// a call under K_epoch is refused as an outsider's, one under
// K_{epoch-1} passes, and the server is at epoch or later.
func (c *Client) probeKeys(g *Group, epoch uint64) (bool, error) {
	g.mu.Lock()
	// The refusals of the broken epoch may have made the group look
	// dropped (opaque_recovery.go): that is no reason to stop.
	idle := g.removed || g.closed || g.broken && !g.rec.dropped
	g.mu.Unlock()
	if idle {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(context.WithValue(c.ctx, keyProbeCtxKey{}, true), 15*time.Second)
	defer cancel()
	cur, err := g.epochAuth(epoch)
	if err != nil {
		return false, err
	}
	prev, err := g.epochAuth(epoch - 1)
	if err != nil {
		return false, err
	}
	req := func() *connect.Request[mlsdsv1.GetGroupInfoRequest] {
		return connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: g.id})
	}
	if _, err := c.den.groups.GetGroupInfo(withMembership(ctx, cur), req()); err == nil || !refusedAsOutsider(err) {
		return false, nil // the key works, or the refusal was of another kind
	}
	res, err := c.den.groups.GetGroupInfo(withMembership(ctx, prev), req())
	if refusedAsOutsider(err) {
		return false, nil // removed, expired or gone: not a wrong key
	}
	if err != nil {
		return false, err
	}
	return res.Msg.Epoch >= epoch, nil
}

// keyMismatch reports that the server holds a wrong key of g's epoch
// (EventKeyMismatch, once) and starts the recovery.
func (c *Client) keyMismatch(g *Group, epoch uint64) {
	r := &g.den.rcv
	r.mu.Lock()
	if r.flagged[epoch] {
		r.mu.Unlock()
		return
	}
	if r.flagged == nil {
		r.flagged = map[uint64]bool{}
	}
	r.flagged[epoch] = true
	branched := r.branchedTo != nil && r.branchedAt >= epoch // not an older branch of the app's
	r.mu.Unlock()
	culprit, known := g.den.committerOf(epoch)
	g.mu.Lock()
	seq := g.processed
	g.mu.Unlock()
	ev := Event{Kind: EventKeyMismatch, GroupID: bytes.Clone(g.id), Seq: seq, Epoch: epoch}
	if known {
		ev.Sender, ev.Members = culprit.id, []string{culprit.id}
		ev.Err = fmt.Errorf("%w: the Commit to epoch %d by %q (leaf %d) gave it; the members continue in a branch without %q", ErrKeyMismatch, epoch, culprit.id, culprit.leaf, culprit.id)
	} else {
		ev.Err = fmt.Errorf("%w: the committer of the Commit to epoch %d is not known to this client, which does not start a branch", ErrKeyMismatch, epoch)
	}
	c.log.Warn("the server holds a wrong membership key of a deniable group", slog.String("group", fmt.Sprintf("%x", g.id)),
		slog.Uint64("epoch", epoch), slog.String("committer", culprit.id))
	c.emit(ev)
	if branched {
		// The branch came first (another member noticed sooner).
		g.leaveRecovered()
		return
	}
	if !known || culprit.id == c.id {
		return
	}
	g.scheduleBranch(culprit)
}

// scheduleBranch branches g without the culprit now, if this client is
// the remaining member with the lowest leaf index, or arms a timer for
// its turn.
func (g *Group) scheduleBranch(culprit committerRecord) {
	c := g.c
	g.mu.Lock()
	var remaining []mls.Member
	for _, m := range g.st.Members() {
		if m.Leaf != culprit.leaf && string(m.Identity) != culprit.id {
			remaining = append(remaining, m)
		}
	}
	self := g.st.Self()
	g.mu.Unlock()
	slices.SortFunc(remaining, func(a, b mls.Member) int { return cmp.Compare(a.Leaf, b.Leaf) })
	pos := slices.IndexFunc(remaining, func(m mls.Member) bool { return m.Leaf == self })
	if pos < 0 {
		return
	}
	run := func() {
		if !c.startTask() {
			return
		}
		defer c.wg.Done()
		if err := g.branchWithout(c.ctx, culprit); err != nil && c.ctx.Err() == nil {
			c.log.Warn("branching a deniable group away from a wrong membership key failed", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
		}
	}
	r := &g.den.rcv
	r.mu.Lock()
	if r.timer == nil {
		r.timer = time.AfterFunc(branchDelay(pos, c.committerTimeout(), time.Since(culprit.at)), run)
	}
	r.mu.Unlock()
}

// branchDelay is how long the member at position pos waits before it
// branches, elapsed after the server accepted the Commit that broke the
// epoch: its turn comes pos timeouts after that Commit. A member that
// notices only after the first turn passed (it was offline) waits one
// timeout more, so that a branch another member made meanwhile reaches it
// (its Welcome is waiting on the session stream) before it makes one of
// its own.
func branchDelay(pos int, timeout, elapsed time.Duration) time.Duration {
	d := max(time.Duration(pos)*timeout-elapsed, 0)
	if elapsed > timeout {
		d += timeout
	}
	return d
}

// branchWithout branches g with every member but the culprit (and this
// client, which creates the branch), unless a branch of g was made or
// joined already, and then leaves g.
func (g *Group) branchWithout(ctx context.Context, culprit committerRecord) error {
	r := &g.den.rcv
	r.mu.Lock()
	done := r.branchedTo != nil && r.branchedAt >= culprit.epoch
	r.mu.Unlock()
	if done || g.isRemoved() {
		return nil
	}
	var ids []string
	for _, id := range g.members() {
		if id != culprit.id && id != g.c.id && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	from := g.Epoch()
	b, err := g.branch(ctx, nil, g.lockOpen, ids...)
	if err != nil {
		return err
	}
	g.noteBranched(b.ID(), from)
	return nil
}

// branchJoined tells the deniable group that w, a Welcome this client
// joined group id from, branches from (if any) of the branch.
func (c *Client) branchJoined(id []byte, w *mls.Welcome, keys keyPackageKeys) {
	link, err := mls.WelcomeLink(w, keys.kp, keys.priv)
	if err != nil || link == nil || link.Usage != mls.ResumptionPSKUsageBranch {
		return
	}
	if old := c.deniableGroup(link.PSKGroupID); old != nil {
		old.noteBranched(id, link.PSKEpoch)
	}
}

// noteBranched records that this client created or joined branch id of
// g, made from g's epoch from, and leaves g if the server holds a wrong
// key of an epoch up to from: the branch is the recovery from it.
func (g *Group) noteBranched(id []byte, from uint64) {
	if g.den == nil {
		return
	}
	r := &g.den.rcv
	r.mu.Lock()
	if r.branchedTo == nil || from > r.branchedAt {
		r.branchedTo, r.branchedAt = bytes.Clone(id), from
	}
	flagged := false
	for e := range r.flagged {
		flagged = flagged || e <= from
	}
	if flagged && r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	r.mu.Unlock()
	if flagged {
		g.leaveRecovered()
	}
}

// leaveRecovered leaves g locally once its members continue in a branch:
// EventLeft, and the client stops following it; its state stays.
func (g *Group) leaveRecovered() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.removed || g.closed {
		return
	}
	g.stopDropRetryLocked() // opaque_recovery.go
	if err := g.dropLeftLocked(Event{Kind: EventLeft, GroupID: g.id, Seq: g.processed, Epoch: g.st.Epoch(), Members: memberIDs(g.st)}); err != nil {
		g.c.log.Warn("leaving a deniable group after its recovery", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
	}
}

// createDeniableBranch creates st, a branch of deniable group from (at
// epoch 1, with a Welcome for the members ids), on the server as a new
// deniable group, with no link to from; see the top of this file.
func (c *Client) createDeniableBranch(ctx context.Context, st *mls.Group, welcome *mls.Welcome, from []byte) (*Group, error) {
	id := st.GroupID()
	if err := c.validateTree(ctx, id, st.Tree()); err != nil {
		return nil, err
	}
	if err := st.SetHandshakeWireFormat(mls.WireFormatPrivateMessage); err != nil {
		return nil, err
	}
	key1, err := membershipKeyOf(st)
	if err != nil {
		return nil, err
	}
	if _, err := c.rpc.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: id, Mode: mlsdsv1.GroupMode_GROUP_MODE_DENIABLE, Epoch: st.Epoch(), MembershipKey: key1})); err != nil {
		return nil, fmt.Errorf("client: creating deniable group %x: %w", id, err)
	}
	a1 := &membershipAuth{groupID: id, epoch: st.Epoch(), key: key1}
	remote, err := currentRemoteTree(st)
	if err != nil {
		return nil, err
	}
	// A joiner whose Welcome carries no ratchet tree fetches epoch 1's.
	if _, err := c.den.groups.PutRemoteTree(withMembership(ctx, a1), connect.NewRequest(&mlsdsv1.PutRemoteTreeRequest{
		GroupId: id, RemoteTree: remote})); err != nil {
		return nil, fmt.Errorf("client: uploading the remote tree of branch %x: %w", id, err)
	}
	g := &Group{c: c, id: id, st: st, opaque: true, den: &deniableState{}}
	g.den.add(st.Epoch(), key1)
	if welcome != nil {
		// The Welcome rides on the branch's first Commit, an empty one.
		next, err := cloneState(st)
		if err != nil {
			return nil, err
		}
		msg, _, err := next.CommitMessage(mls.CommitOptions{WireFormat: mls.WireFormatPrivateMessage})
		if err != nil {
			return nil, err
		}
		wire, err := mlsMessage(msg)
		if err != nil {
			return nil, err
		}
		epoch2, blob2, err := SealPendingRemoteTree(next)
		if err != nil {
			return nil, err
		}
		if err := next.MergePendingCommit(); err != nil {
			return nil, err
		}
		key2, err := membershipKeyOf(next)
		if err != nil {
			return nil, err
		}
		wdata, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: welcome})
		if err != nil {
			return nil, err
		}
		res, err := c.den.groups.SendCommitBundle(withMembership(ctx, a1), connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
			Commit: wire, Welcome: wdata, NextMembershipKey: key2, RemoteTree: &mlsdsv1.RemoteTree{Epoch: epoch2, Blob: blob2}}))
		if err != nil {
			return nil, fmt.Errorf("client: sending the Welcome of branch %x: %w", id, err)
		}
		g.st, g.processed = next, res.Msg.Receipt.GroupSeq
		g.den.add(next.Epoch(), key2)
		g.den.noteCommitter(next.Epoch(), next.Self(), c.id, res.Msg.Receipt.AcceptedAt.AsTime())
	}
	g.dirty = true
	if err := g.persist(nil); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.groups[string(id)] = g
	c.mu.Unlock()
	c.followDeniable(g)
	c.emit(Event{Kind: EventJoined, GroupID: bytes.Clone(id), Epoch: g.st.Epoch(), Members: memberIDs(g.st), Predecessor: bytes.Clone(from)})
	return g, nil
}

// joinDeniableBranch joins w if it is the Welcome of a branch (one that
// names a resumption PSK of usage branch or reinit of a group this client
// holds), with that group's state, and returns the joined state and the
// membership key of its epoch; for any other Welcome it returns a nil
// state. A branch's Welcome carries its ratchet tree.
func (c *Client) joinDeniableBranch(ctx context.Context, w *mls.Welcome, keys keyPackageKeys) (*mls.Group, []byte, error) {
	link, err := mls.WelcomeLink(w, keys.kp, keys.priv)
	if err != nil {
		return nil, nil, err
	}
	if link == nil {
		return nil, nil, nil
	}
	st, err := c.joinWelcome(ctx, w, keys, nil)
	if err != nil {
		return nil, nil, err
	}
	key, err := membershipKeyOf(st)
	if err != nil {
		return nil, nil, err
	}
	c.joinTree.Store(ptr(treeFromWelcome))
	return st, key, nil
}

// welcomeGroupEpoch returns the group id and epoch of a joined state st
// or, if st is nil, of we.
func welcomeGroupEpoch(st *mls.Group, we *mls.WelcomeEpoch) ([]byte, uint64) {
	if st != nil {
		return st.GroupID(), st.Epoch()
	}
	return we.GroupID(), we.Epoch()
}
