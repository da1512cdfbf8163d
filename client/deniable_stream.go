package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// createDeniableGroup creates the deniable group id with this client as
// its only member: the server gets K_0 and, encrypted for the members of
// epoch 0, the GroupInfo and tree (the remote tree, as in opaque mode).
func (c *Client) createDeniableGroup(ctx context.Context, id []byte) (*Group, error) {
	kp, priv, err := mls.NewKeyPackageWith(c.cs, []byte(c.id), c.sig, 0, math.MaxUint64, greaseKeyPackages)
	if err != nil {
		return nil, err
	}
	st, err := mls.NewGroup(id, kp, priv)
	if err != nil {
		return nil, err
	}
	// The server takes PrivateMessages only: a PublicMessage would hold a
	// member's signature over the group.
	if err := st.SetHandshakeWireFormat(mls.WireFormatPrivateMessage); err != nil {
		return nil, err
	}
	remote, err := currentRemoteTree(st)
	if err != nil {
		return nil, err
	}
	key, err := membershipKeyOf(st)
	if err != nil {
		return nil, err
	}
	req := &mlsdsv1.CreateGroupRequest{GroupId: id, Mode: mlsdsv1.GroupMode_GROUP_MODE_DENIABLE, MembershipKey: key}
	if _, err := c.rpc.groups.CreateGroup(ctx, connect.NewRequest(req)); err != nil {
		return nil, fmt.Errorf("client: creating deniable group %x: %w", id, err)
	}
	g := &Group{c: c, id: id, st: st, opaque: true, den: &deniableState{}}
	g.den.add(st.Epoch(), key)
	if err := c.holdNewGroup(ctx, g, remote); err != nil {
		return nil, err
	}
	c.followDeniable(g)
	return g, nil
}

// handleDeniableWelcome joins a deniable group from a Welcome of the
// session stream, which names no group (w.GroupId and w.CommitSeq are
// empty): the group, its epoch and K_e come from the Welcome itself. The
// Welcome is then acknowledged by its KeyPackageRef, and the server
// deletes it. The new member follows the group from the first message of
// its epoch on (the server starts it there).
func (c *Client) handleDeniableWelcome(ctx context.Context, w *mlsdsv1.WelcomeEvent) error {
	ref := w.KeyPackageRef
	for _, g := range c.allGroups() {
		if g.den != nil && bytes.Equal(g.den.joinedFrom(), ref) {
			// Taken in already; the acknowledgment did not get through.
			c.ackWelcome(ref)
			return nil
		}
	}
	fail := func(err error) error {
		c.log.Warn("cannot join from Welcome", slog.String("error", err.Error()))
		c.emit(Event{Kind: EventUndecryptable, Epoch: w.Epoch, AcceptedAt: w.AcceptedAt.AsTime(),
			Err: fmt.Errorf("client: cannot join from a Welcome: %w", err)})
		c.ackWelcome(ref)
		return nil
	}
	keys, welcome, unusable, err := c.welcomeOf(ctx, w)
	if err != nil {
		return err
	}
	if unusable != nil {
		return fail(unusable)
	}
	// A branch (deniable_recover.go) is joined with the state of the
	// group it branches from, whose resumption PSK it names.
	st, key, err := c.joinDeniableBranch(ctx, welcome, keys)
	if err != nil {
		return fail(err)
	}
	var we *mls.WelcomeEpoch
	if st == nil {
		if we, err = mls.OpenWelcomeEpoch(welcome, ref, keys.priv.InitPriv, nil); err != nil {
			return fail(err)
		}
	}
	id, epoch := welcomeGroupEpoch(st, we)
	if old := c.group(id); old != nil && !old.isRemoved() && !old.Broken() {
		// A member already: nothing to take in.
		c.log.Warn("ignoring a Welcome to a group this client is a member of", slog.String("group", fmt.Sprintf("%x", id)))
		c.ackWelcome(ref)
		return nil
	}
	if st == nil {
		if key, err = we.Export(ds.MembershipLabel, ds.MembershipKeyContext(id, epoch), ds.MembershipKeySize); err != nil {
			return fail(err)
		}
	}
	den := &deniableState{welcomeRef: bytes.Clone(ref)}
	den.add(epoch, key)
	if st == nil {
		st, err = mls.JoinGroup(welcome, keys.kp, keys.priv, nil, nil)
		if errors.Is(err, mls.ErrNoRatchetTree) {
			// The tree is the remote tree of the Welcome's epoch, which the
			// server hands to members of that epoch.
			var tree *mls.RatchetTree
			if tree, err = c.deniableRemoteTree(ctx, we, key); err != nil {
				if transient(err) {
					return err // the Welcome comes again on the next stream
				}
				return fail(err)
			}
			if st, err = mls.JoinGroup(welcome, keys.kp, keys.priv, tree, nil); err == nil {
				c.joinTree.Store(ptr(treeFromRemoteTree))
			}
		} else if err == nil {
			c.joinTree.Store(ptr(treeFromWelcome))
		}
		if err != nil {
			return fail(err)
		}
	}
	if err := st.SetHandshakeWireFormat(mls.WireFormatPrivateMessage); err != nil {
		return fail(err)
	}
	if err := c.validateTree(ctx, id, st.Tree()); err != nil {
		var ce *CredentialError
		if !errors.As(err, &ce) {
			return err // could not decide: the Welcome comes again
		}
		c.logRefused("a Welcome", ce)
		c.emit(refusedEvent(Event{GroupID: id, Epoch: st.Epoch(), AcceptedAt: w.AcceptedAt.AsTime()}, ce))
		// The server keeps no roster to leave: the members' clients see
		// this client's leaf in their tree, and may remove it.
		c.ackWelcome(ref)
		return nil
	}
	g := &Group{c: c, id: st.GroupID(), st: st, opaque: true, den: den}
	var del []byte
	if !keys.lastResort {
		del = ref
	}
	if err := g.persist(del); err != nil {
		return err
	}
	c.mu.Lock()
	c.groups[string(g.id)] = g
	c.mu.Unlock()
	pred := welcomePredecessor(welcome, keys)
	c.emit(Event{Kind: EventJoined, GroupID: g.id, Epoch: st.Epoch(), Members: g.members(), AcceptedAt: w.AcceptedAt.AsTime(), Predecessor: pred})
	c.ackWelcome(ref)
	c.branchJoined(g.id, welcome, keys) // deniable_recover.go
	c.topUpLater()
	c.followDeniable(g)
	// Catch up with what was sent in the epoch joined.
	if err := g.sync(ctx); err != nil && !errors.Is(err, ErrRemoved) {
		c.log.Debug("catching up after joining", slog.String("error", err.Error()))
	}
	return nil
}

// joinedFrom returns the KeyPackageRef of the Welcome the group was
// joined from.
func (d *deniableState) joinedFrom() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.welcomeRef
}

// deniableRemoteTree fetches and opens the remote tree of the epoch we
// starts, proving membership with that epoch's key.
func (c *Client) deniableRemoteTree(ctx context.Context, we *mls.WelcomeEpoch, key []byte) (*mls.RatchetTree, error) {
	id, epoch := we.GroupID(), we.Epoch()
	a := &membershipAuth{groupID: id, epoch: epoch, key: key}
	res, err := c.den.groups.GetRemoteTree(withMembership(ctx, a), connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: id}))
	if err != nil {
		if transient(err) {
			return nil, err
		}
		return nil, fmt.Errorf("GetRemoteTree: %w", err)
	}
	var blob []byte
	for _, t := range res.Msg.RemoteTrees {
		if t.Epoch == epoch {
			blob = t.Blob
		}
	}
	if blob == nil {
		return nil, fmt.Errorf("the Welcome carries no ratchet tree and the server holds no remote tree of epoch %d (the group is at epoch %d): "+
			"a member has to remove this client and add it again", epoch, res.Msg.Epoch)
	}
	rtKey, err := we.Export(RemoteTreeLabel, remoteTreeContext(id, epoch), we.CipherSuite().AEADKeySize())
	if err != nil {
		return nil, err
	}
	_, tree, err := OpenRemoteTree(we.CipherSuite(), rtKey, id, epoch, blob)
	return tree, err
}

// ackWelcome tells the server that the Welcome to the KeyPackage ref was
// taken in, so that it deletes it. If that fails, the Welcome comes again
// and is recognized (deniableState.welcomeRef).
func (c *Client) ackWelcome(ref []byte) {
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	if _, err := c.rpc.groups.Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{WelcomeRefs: [][]byte{ref}})); err != nil && c.ctx.Err() == nil {
		c.log.Debug("acknowledging a Welcome failed; it comes again", slog.String("error", err.Error()))
	}
}

// groupStream is the state of one deniable group's stream.
type groupStream struct {
	caughtUp caughtUpSignal
	done     chan struct{} // closed when the group is no longer followed
}

// followDeniableGroups starts the streams of the client's deniable groups
// (Open).
func (c *Client) followDeniableGroups() {
	for _, g := range c.allGroups() {
		if g.den != nil && !g.isRemoved() {
			c.followDeniable(g)
		}
	}
}

// followDeniable follows deniable group g on a stream of its own
// (SubscribeGroup) until the client closes or is no longer a member,
// reconnecting with backoff. Each (re)connection starts after the
// position the state holds, with the newest membership key.
func (c *Client) followDeniable(g *Group) {
	d := c.den
	if d == nil || c.cfg.Offline {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	d.mu.Lock()
	if d.streams[g] != nil {
		d.mu.Unlock()
		return
	}
	s := &groupStream{caughtUp: caughtUpSignal{ch: make(chan struct{})}, done: make(chan struct{})}
	d.streams[g] = s
	d.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() {
			d.mu.Lock()
			delete(d.streams, g)
			d.mu.Unlock()
			close(s.done)
		}()
		attempt := 0
		for c.ctx.Err() == nil && c.follows(g) {
			err := c.groupStreamOnce(g, s, &attempt)
			s.caughtUp.set(false)
			if c.ctx.Err() != nil || !c.follows(g) {
				return
			}
			c.log.Debug("group stream ended; reconnecting", slog.String("group", fmt.Sprintf("%x", g.id)), slog.Any("error", err), slog.Int("attempt", attempt))
			sleep(c.ctx, retryAfter(err, attempt))
			attempt++
		}
	}()
}

// follows reports whether the client still follows g: a member, and the
// client's Group of that id (a Welcome that adds the client again after
// it was removed, or could not follow the group, replaces it).
func (c *Client) follows(g *Group) bool {
	return !g.isRemoved() && c.group(g.id) == g
}

// groupStreamOnce follows g on one SubscribeGroup stream until it ends.
func (c *Client) groupStreamOnce(g *Group, s *groupStream, attempt *int) error {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	a, err := g.newestAuth()
	if err != nil {
		return err
	}
	g.mu.Lock()
	from := g.processed + 1
	g.mu.Unlock()
	stream, err := c.den.delivery.SubscribeGroup(withMembership(ctx, a), connect.NewRequest(&mlsdsv1.SubscribeGroupRequest{GroupId: g.id, FromSeq: from}))
	if err != nil {
		return err
	}
	events, done := readAhead(ctx, stream, nil)
	defer func() {
		cancel()
		<-done
		stream.Close()
	}()
	for {
		batch, err := nextBatch(ctx, events)
		if err != nil {
			return err
		}
		if batch == nil {
			break
		}
		*attempt = 0
		if err := c.handleGroupBatch(ctx, g, s, batch); err != nil {
			return err
		}
		if !c.follows(g) {
			return nil
		}
	}
	<-done
	return stream.Err()
}

// handleGroupBatch processes a batch of g's stream: the messages in
// memory, the state written once at the end (or before a caught_up).
func (c *Client) handleGroupBatch(ctx context.Context, g *Group, s *groupStream, batch []*mlsdsv1.SubscribeGroupResponse) error {
	touched := false
	flush := func() error {
		if !touched {
			return nil
		}
		touched = false
		g.mu.Lock()
		err := g.flushLocked()
		g.mu.Unlock()
		if err == nil {
			g.afterProcessing(ctx)
		}
		return err
	}
	for _, ev := range batch {
		if err := c.queue.waitBelow(ctx, queueHighWater); err != nil {
			return errors.Join(err, flush())
		}
		switch {
		case ev.GetMessage() != nil:
			touched = true
			if err := g.take(ctx, ev.GetMessage()); err != nil {
				return errors.Join(err, flush())
			}
		case ev.GetCaughtUp() != nil:
			if err := flush(); err != nil {
				return err
			}
			s.caughtUp.set(true)
		case ev.GetPruned() != nil:
			if err := flush(); err != nil {
				return err
			}
			if err := g.deniablePruned(ctx, ev.GetPruned().OldestSeq); err != nil {
				return err
			}
		}
	}
	return flush()
}

// deniablePruned handles the server's word that g's messages before
// oldest are gone. A member that has processed nothing yet (it joined by
// Welcome and starts at its epoch) just moves over them.
func (g *Group) deniablePruned(ctx context.Context, oldest uint64) error {
	g.mu.Lock()
	if g.processed == 0 && oldest > 0 {
		g.processed, g.dirty = oldest-1, true
		err := g.flushLocked()
		g.mu.Unlock()
		return err
	}
	err := g.prunedLocked(ctx, oldest)
	g.mu.Unlock()
	if err != nil {
		return err
	}
	g.afterProcessing(ctx)
	return nil
}

// waitDeniableCaughtUp waits until the stream of every deniable group
// followed has caught up once (see WaitCaughtUp).
func (c *Client) waitDeniableCaughtUp(ctx context.Context) error {
	if c.den == nil {
		return nil
	}
	c.den.mu.Lock()
	var waits []*groupStream
	for _, s := range c.den.streams {
		waits = append(waits, s)
	}
	c.den.mu.Unlock()
	for _, s := range waits {
		select {
		case <-s.caughtUp.wait():
		case <-s.done:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return ErrClosed
		}
	}
	return nil
}
