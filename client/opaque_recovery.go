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
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// How an opaque group recovers from a Commit that a member cannot follow,
// and how its roster stays tied to the signed Commits.
//
// Invalid Commits. The Delivery Service of an opaque group orders Commits
// it cannot read, so a member may send one that the others cannot process
// (a bad confirmation tag, a garbage path, a Remove of the committer, an
// Add with a duplicate signature key, content that does not decode, a
// roster declaration that lies). Each member that cannot process a Commit
// reports it (EventUndecryptable, Sender the committer), and then rejoins
// on its own (EventRejoined), as in a transparent group, by a resync
// external Commit (§12.4.3.2) from a GroupInfo and tree of the group's
// current epoch:
//
//  1. from the remote tree of the current epoch (GetRemoteTree), opened
//     with the key of its current epoch or of one it held before (see
//     remotetree.go: every Commit's blob is sealed under the key of the
//     epoch it was made in too, every resync's under the resyncer's last
//     epoch), if its tree holds every member of this client's tree except
//     those the refused Commits declared removed;
//  2. else, if the group is one Commit ahead (the one this client could
//     not process), from its own state: its GroupInfo re-signed for the
//     group's current epoch. Nobody else can process that resync, but its
//     blob is sealed under the epoch this client held, the one the other
//     members are stuck in too: they follow by (1).
//
// Racing members make their Commit again from what the server holds then
// (Group.recoverOpaque), as a transparent group's do.
//
// Rosters. A Commit of an opaque group declares the roster change in its
// authenticated_data (ds.RosterChange, ds/roster_ad.go); the Delivery
// Service applies it, and every member checks it against the tree
// (checkDeclaration): the clients the Commit adds and removes must be
// declared, and every client declared added must be in the tree after it,
// every client declared removed not. A member refuses a Commit whose
// declaration does not match like any invalid one (Err wraps
// ErrRosterMismatch) and recovers as above.
//
// Contest. A refused Commit's declaration was applied by the Delivery
// Service all the same: it may have dropped members from the roster, or
// let in clients that are not in the tree. The members who refused it
// undo that with the resync they recover by: its declaration restores
// (added) the clients the refused Commit declared removed that the tree
// still holds, and evicts (removed) those it declared added that the tree
// does not hold. The Delivery Service restores only former members of the
// group. A member that the Delivery Service stopped delivering to while
// its state says it is a member (a Fetch, GetRemoteTree or Send answered
// "not a member") reports EventDropped once, and tries again on its own,
// with growing pauses, until the others restore it: then it rejoins like
// any member that fell behind.
//
// The keys of past epochs that recovery uses are kept in memory only (the
// last maxKeptEpochKeys), so a client that restarts in between recovers
// from its current epoch's key alone.

// ErrRosterMismatch is wrapped by the Err of the EventUndecryptable of a
// Commit of an opaque group whose declared roster change (its
// authenticated_data) is not what the Commit does to the tree.
var ErrRosterMismatch = errors.New("client: the Commit's declared roster change is not what it does to the group")

// ErrDropped is wrapped by the Err of EventDropped, and returned by the
// methods of the Group meanwhile.
var ErrDropped = errors.New("client: the Delivery Service no longer delivers this group to this client, although this client's state says it is a member " +
	"(a member's Commit declared it removed without removing it, or the server is faulty); the other members' clients restore it when they notice, " +
	"and this client rejoins then on its own")

// maxKeptEpochKeys bounds the remote-tree keys of past epochs kept.
const maxKeptEpochKeys = 8

// maxDropRetries bounds the timed attempts of a dropped client to rejoin
// (about four minutes); the pauses between them grow to maxDropPause.
// After that, any message of the group delivered to it (once restored)
// makes it try again.
const (
	maxDropRetries = 60
	maxDropPause   = 4 * time.Second
)

// recoveryState is a Group's state of recovery (in memory only).
type recoveryState struct {
	// keys are the remote-tree keys of epochs this client held, oldest
	// first.
	keys []EpochKey
	// restore and evict are what the refused Commits' declarations said
	// was removed and added: the roster changes to undo (see the top).
	restore, evict []string
	// dropped says the Delivery Service answered "not a member" while
	// the state says this client is one; dropTimer retries.
	dropped   bool
	dropTimer *time.Timer
	dropTries int
	// forkDue says another member's Commit was processed since the last
	// fork check (fork.go); forkChecked is the epoch checked last.
	forkDue     bool
	forkChecked uint64
}

// rememberEpochLocked keeps the remote-tree key of prev, a state of an
// opaque group that the group leaves.
func (g *Group) rememberEpochLocked(prev *mls.Group) {
	if !g.opaque || prev == nil || prev == g.st {
		return
	}
	k, err := epochKey(prev)
	if err != nil {
		return
	}
	keys := slices.DeleteFunc(g.rec.keys, func(x EpochKey) bool { return x.Epoch == k.Epoch && bytes.Equal(x.Key, k.Key) })
	keys = append(keys, k)
	if len(keys) > maxKeptEpochKeys {
		keys = keys[len(keys)-maxKeptEpochKeys:]
	}
	g.rec.keys = keys
}

// heldKeysLocked returns the remote-tree keys this client holds: its
// current epoch's, then the past ones, newest first.
func (g *Group) heldKeysLocked() []EpochKey {
	var out []EpochKey
	if k, err := epochKey(g.st); err == nil {
		out = append(out, k)
	}
	for i := len(g.rec.keys) - 1; i >= 0; i-- {
		out = append(out, g.rec.keys[i])
	}
	return out
}

// actualChange returns the clients a Commit adds and removes (a resync,
// and a client removed and added again, are neither).
func actualChange(effect *mls.CommitEffect) (added, removed []string) {
	a, r, _ := commitEvents(effect)
	return minus(a, r), minus(r, a)
}

// declaration returns the roster declaration of a Commit of this client
// with effect: what it adds and removes, and, on top, the roster changes
// to undo (restore, evict) that fit the tree after it (after).
func (g *Group) declarationLocked(effect *mls.CommitEffect, after []string) ds.RosterChange {
	var r ds.RosterChange
	if effect != nil {
		r.Added, r.Removed = actualChange(effect)
		if effect.ReInit != nil {
			// §11.2: the successor's id, which the server then binds
			// (ds/successor.go).
			r.ReInitGroupID = bytes.Clone(effect.ReInit.GroupID)
		}
	}
	for _, id := range g.rec.restore {
		if slices.Contains(after, id) && !slices.Contains(r.Added, id) {
			r.Added = append(r.Added, id)
		}
	}
	for _, id := range g.rec.evict {
		if !slices.Contains(after, id) && !slices.Contains(r.Removed, id) {
			r.Removed = append(r.Removed, id)
		}
	}
	slices.Sort(r.Added)
	slices.Sort(r.Removed)
	return r
}

// marshalDeclaration returns r as authenticated_data: nil if it declares
// nothing.
func marshalDeclaration(r ds.RosterChange) []byte {
	if r.Empty() {
		return nil
	}
	return r.MarshalDeclaration()
}

// checkDeclaration checks the roster declaration ad of another member's
// Commit (effect, leading to the state next) against what it does: see
// the top of this file. The error wraps ErrRosterMismatch.
func checkDeclaration(ad []byte, effect *mls.CommitEffect, next *mls.Group) error {
	decl, _, err := ds.ParseRosterDeclaration(ad)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRosterMismatch, err)
	}
	// A ReInit's group_id is declared as it is, and none without a
	// ReInit: else the server would link another group as the successor.
	var reinit []byte
	if effect.ReInit != nil {
		reinit = effect.ReInit.GroupID
	}
	if !bytes.Equal(decl.ReInitGroupID, reinit) {
		return fmt.Errorf("%w: it declares the ReInit group_id %x, but commits %x", ErrRosterMismatch, decl.ReInitGroupID, reinit)
	}
	added, removed := actualChange(effect)
	after := memberIDs(next)
	for _, id := range added {
		if !slices.Contains(decl.Added, id) {
			return fmt.Errorf("%w: it adds %q without declaring it (declared added %v)", ErrRosterMismatch, id, decl.Added)
		}
	}
	for _, id := range removed {
		if !slices.Contains(decl.Removed, id) {
			return fmt.Errorf("%w: it removes %q without declaring it (declared removed %v)", ErrRosterMismatch, id, decl.Removed)
		}
	}
	for _, id := range decl.Added {
		if !slices.Contains(after, id) {
			return fmt.Errorf("%w: it declares %q added, but the group does not hold it", ErrRosterMismatch, id)
		}
	}
	for _, id := range decl.Removed {
		if slices.Contains(after, id) {
			return fmt.Errorf("%w: it declares %q removed, but the group still holds it", ErrRosterMismatch, id)
		}
	}
	return nil
}

// noteRefusedLocked records the roster declaration of a Commit of an
// opaque group that this client refused or could not process: the
// Delivery Service applied it, the tree did not change.
func (g *Group) noteRefusedLocked(msg *mls.MLSMessage) {
	if !g.opaque || msg == nil {
		return
	}
	// Only the Commit that ends this client's epoch counts: later ones
	// are of epochs it is not in (it fell behind), not refused.
	var epoch uint64
	switch {
	case msg.PublicMessage != nil:
		epoch = msg.PublicMessage.Content.Epoch
	case msg.PrivateMessage != nil:
		epoch = msg.PrivateMessage.Epoch
	}
	if epoch != g.st.Epoch() {
		return
	}
	decl, ok, err := ds.ParseRosterDeclaration(ds.CommitAuthenticatedData(msg))
	if err != nil || !ok {
		return
	}
	for _, id := range decl.Removed {
		if !slices.Contains(g.rec.restore, id) {
			g.rec.restore = append(g.rec.restore, id)
		}
		g.rec.evict = slices.DeleteFunc(g.rec.evict, func(x string) bool { return x == id })
	}
	for _, id := range decl.Added {
		if !slices.Contains(g.rec.evict, id) {
			g.rec.evict = append(g.rec.evict, id)
		}
		g.rec.restore = slices.DeleteFunc(g.rec.restore, func(x string) bool { return x == id })
	}
}

// recoverOpaque rejoins an opaque group this client could not follow (see
// the top of this file), reporting EventRejoined with reason. When several
// members do so at once they race for the epoch: a loser makes its Commit
// again from what the server holds then, at most maxAttempts times. It
// returns an error wrapping ErrDropped if the server does not deliver the
// group to this client.
func (g *Group) recoverOpaque(ctx context.Context, reason error) error {
	var lastErr error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, retryAfter(lastErr, attempt)); err != nil {
				return err
			}
		}
		err := g.recoverOpaqueOnce(ctx, reason)
		if err == nil || errors.Is(err, ErrDropped) {
			return err
		}
		lastErr = err
		if !epochConflict(err) && !transient(err) {
			return err
		}
	}
	return fmt.Errorf("client: rejoining group %x failed %d times; try again later: %w", g.id, maxAttempts, lastErr)
}

// resyncSource is a GroupInfo and tree to rejoin from.
type resyncSource struct {
	gi   *mls.GroupInfo
	tree *mls.RatchetTree
	what string
}

func (g *Group) recoverOpaqueOnce(ctx context.Context, reason error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.closed:
		return ErrClosed
	case g.removed:
		return ErrRemoved
	case !g.broken:
		return nil // rejoined meanwhile
	}
	res, err := g.c.rpc.groups.GetRemoteTree(ctx, connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: g.id}))
	if err != nil {
		if errorDetail[*mlsdsv1.NotMember](err) != nil {
			return g.droppedLocked(err)
		}
		return fmt.Errorf("client: getting the remote trees of group %x: %w", g.id, err)
	}
	current := res.Msg.Epoch
	cs := g.st.GroupContext().CipherSuite
	held := g.heldKeysLocked()
	mine := memberIDs(g.st)
	var sources []resyncSource
	for _, t := range res.Msg.RemoteTrees {
		if t.Epoch != current {
			continue
		}
		gi, tree, under, err := OpenRemoteTreeWith(cs, g.id, t.Epoch, t.Blob, held...)
		if err != nil {
			g.c.log.Debug("a remote tree does not open", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
			continue
		}
		// A tree that lost members without a declaration that says so
		// is not joined (it comes from a Commit this client refused).
		ids := treeIDs(tree)
		if lost := minus(minus(mine, ids), g.rec.restore); len(lost) > 0 {
			g.c.log.Warn("not rejoining from a remote tree that lacks members", slog.String("group", fmt.Sprintf("%x", g.id)), slog.Any("missing", lost))
			continue
		}
		sources = append(sources, resyncSource{gi, tree, fmt.Sprintf("the remote tree of epoch %d (sealed under epoch %d)", t.Epoch, under)})
	}
	if current == g.st.Epoch()+1 || current == g.st.Epoch() {
		if gi, err := g.restartGroupInfoLocked(current); err == nil {
			sources = append(sources, resyncSource{gi, g.st.Tree(), fmt.Sprintf("this client's epoch %d", g.st.Epoch())})
		}
	}
	if len(sources) == 0 {
		return fmt.Errorf("client: group %x is at epoch %d, this client at %d, and no remote tree of epoch %d opens with the keys it holds: "+
			"rejoin with Client.JoinExternalWith and a GroupInfo from another member, or have a member remove this client and add it again", g.id, current, g.st.Epoch(), current)
	}
	var errs []error
	for _, src := range sources {
		err := g.resyncLocked(ctx, src, reason)
		if err == nil {
			return nil
		}
		if epochConflict(err) || transient(err) {
			return err
		}
		errs = append(errs, fmt.Errorf("from %s: %w", src.what, err))
	}
	return fmt.Errorf("client: rejoining group %x: %w", g.id, errors.Join(errs...))
}

// treeIDs returns the identities of a tree's leaves.
func treeIDs(t *mls.RatchetTree) []string {
	var out []string
	for _, ln := range t.Leaves() {
		out = append(out, string(mls.CredentialIdentity(&ln.Credential)))
	}
	return out
}

// restartGroupInfoLocked returns this client's GroupInfo, re-signed for
// epoch: a GroupInfo to rejoin from when the group's current epoch is the
// one after the Commit this client could not process. Only this client's
// resync Commit comes from it; the others follow by its blob.
func (g *Group) restartGroupInfoLocked(epoch uint64) (*mls.GroupInfo, error) {
	gi, err := g.st.GroupInfo(false)
	if err != nil {
		return nil, err
	}
	gi.GroupContext.Epoch = epoch
	if err := gi.Sign(g.c.sig); err != nil {
		return nil, err
	}
	return gi, nil
}

// resyncLocked replaces the group's state by a resync external Commit from
// src, whose blob is sealed under the new epoch's key and the key of the
// epoch this client held (see remotetree.go), and which declares the
// roster changes to undo. It reports EventRejoined with reason.
func (g *Group) resyncLocked(ctx context.Context, src resyncSource, reason error) error {
	c := g.c
	if err := c.validateTree(ctx, g.id, src.tree); err != nil {
		return err
	}
	old, err := c.ownLeaf(src.gi, src.tree)
	if err != nil {
		return err
	}
	if old == nil {
		return errors.New("client: the tree holds no leaf of this client")
	}
	decl := g.declarationLocked(nil, treeIDs(src.tree))
	now := uint64(time.Now().Unix())
	kp, priv, err := mls.NewKeyPackageWith(src.gi.GroupContext.CipherSuite, []byte(c.id), c.sig, now-3600, now+uint64(keyPackageLifetime.Seconds()), greaseKeyPackages)
	if err != nil {
		return err
	}
	st, commit, err := mls.JoinExternalWith(src.gi, src.tree, kp, priv, mls.JoinExternalOptions{RemoveLeaf: old, AuthenticatedData: marshalDeclaration(decl)})
	if err != nil {
		return fmt.Errorf("client: joining by external Commit: %w", err)
	}
	wire, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: commit})
	if err != nil {
		return err
	}
	ngi, err := st.GroupInfo(false)
	if err != nil {
		return err
	}
	prev, err := epochKey(g.st)
	if err != nil {
		return err
	}
	blob, err := SealRemoteTree(st, ngi, st.Tree(), prev)
	if err != nil {
		return err
	}
	res, err := c.rpc.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
		Commit: wire, RemoteTree: &mlsdsv1.RemoteTree{Epoch: st.Epoch(), Blob: blob}}))
	if err != nil {
		if errorDetail[*mlsdsv1.NotMember](err) != nil {
			return g.droppedLocked(err)
		}
		return fmt.Errorf("client: sending the resync Commit: %w", err)
	}
	rc := res.Msg.Receipt
	c.log.Info("rejoined a group this client could not follow", slog.String("group", fmt.Sprintf("%x", g.id)),
		slog.String("from", src.what), slog.Uint64("epoch", st.Epoch()))
	g.rememberEpochLocked(g.st)
	// What was sent before the Commit stays unread: this client held no
	// keys of those epochs.
	g.st, g.processed = st, rc.GroupSeq
	g.broken, g.refused, g.brokenErr, g.rejoinFailures, g.pending, g.proposals, g.leaving = false, false, nil, 0, nil, nil, false
	g.own, g.removalsDue, g.commitSeen = nil, nil, true
	g.rec.restore, g.rec.evict = nil, nil
	g.stopDropRetryLocked()
	if err := g.persist(nil); err != nil {
		return err
	}
	c.emit(Event{Kind: EventRejoined, GroupID: g.id, Seq: rc.GroupSeq, Epoch: st.Epoch(), Sender: c.id, Members: memberIDs(st), AcceptedAt: rc.AcceptedAt.AsTime(), Err: reason})
	c.acks.now()
	return nil
}

// droppedLocked handles the server's "not a member" to this client,
// whose state says it is one (cause): the group is broken until the
// client rejoins; the first time, EventDropped is reported. A retry is
// scheduled. It returns an error wrapping ErrDropped.
func (g *Group) droppedLocked(cause error) error {
	if g.den != nil {
		// A deniable group has no roster to be dropped from: a refusal
		// there is a wrong or expired membership key (deniable_recover.go).
		return cause
	}
	err := fmt.Errorf("%w: %w", ErrDropped, cause)
	if g.removed || g.leaving || g.closed {
		return err
	}
	if !g.rec.dropped {
		g.rec.dropped = true
		g.c.log.Warn("the server no longer delivers a group this client is a member of", slog.String("group", fmt.Sprintf("%x", g.id)))
		if !g.broken {
			g.broken, g.refused, g.brokenErr = true, false, err
		}
		g.unsaved = append(g.unsaved, Event{Kind: EventDropped, GroupID: g.id, Seq: g.processed, Epoch: g.st.Epoch(), Err: err})
		g.dirty = true
		if perr := g.persist(nil); perr != nil {
			return perr
		}
	}
	g.scheduleDropRetryLocked()
	return err
}

// noteDropped turns the server's "not a member" answer (err) to a call of
// this client on an opaque group it is a member of into ErrDropped (see
// droppedLocked); other errors pass as they are.
func (g *Group) noteDropped(err error) error {
	if err == nil || errorDetail[*mlsdsv1.NotMember](err) == nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.opaque || g.removed || g.leaving || g.closed {
		return err
	}
	return g.droppedLocked(err)
}

// droppedErr returns ErrDropped while the server does not deliver the
// group to this client (see droppedLocked), else nil.
func (g *Group) droppedErr() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.rec.dropped && g.broken && !g.removed {
		return ErrDropped
	}
	return nil
}

// scheduleDropRetryLocked arms a timer to try rejoining a group the server
// dropped this client from, with growing pauses.
func (g *Group) scheduleDropRetryLocked() {
	if g.rec.dropTimer != nil || g.rec.dropTries >= maxDropRetries || g.closed {
		return
	}
	d := min(maxDropPause, time.Duration(1<<min(g.rec.dropTries, 10))*250*time.Millisecond)
	g.rec.dropTries++
	c := g.c
	g.rec.dropTimer = time.AfterFunc(d, func() {
		if !c.startTask() {
			return
		}
		defer c.wg.Done()
		g.mu.Lock()
		g.rec.dropTimer = nil
		due := g.rec.dropped && g.broken
		g.mu.Unlock()
		if due && c.ctx.Err() == nil {
			g.maybeRecover(c.ctx)
		}
	})
}

// stopDropRetryLocked ends the dropped state and its timer.
func (g *Group) stopDropRetryLocked() {
	if g.rec.dropTimer != nil {
		g.rec.dropTimer.Stop()
	}
	g.rec.dropTimer, g.rec.dropped, g.rec.dropTries = nil, false, 0
}
