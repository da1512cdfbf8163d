package client

import (
	"bytes"
	"context"
	"database/sql"
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

// streamLoop follows the server's Subscribe stream until Close,
// reconnecting with backoff whenever it ends.
func (c *Client) streamLoop() {
	defer c.wg.Done()
	attempt := 0
	for c.ctx.Err() == nil {
		err := c.streamOnce(&attempt)
		c.caughtUp.set(false)
		if c.ctx.Err() != nil {
			return
		}
		c.noteConnection(false, err)
		c.log.Debug("stream ended; reconnecting", slog.Any("error", err), slog.Int("attempt", attempt))
		sleep(c.ctx, retryAfter(err, attempt))
		attempt++
	}
}

func (c *Client) streamOnce(attempt *int) error {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	c.streams.Add(1)
	stream, err := c.rpc.delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
	if err != nil {
		return err
	}
	events, done := readAhead(ctx, stream, func() {
		c.streamReceived.Add(1)
		c.noteConnection(true, nil)
	})
	defer func() {
		cancel()
		<-done
		stream.Close()
	}()
	if err := c.processStream(ctx, events, attempt); err != nil {
		return err
	}
	<-done
	err = stream.Err()
	if connect.CodeOf(err) == connect.CodeUnauthenticated {
		c.rpc.tokMu.Lock()
		stale := c.rpc.token
		c.rpc.tokMu.Unlock()
		if _, lerr := c.rpc.login(ctx, stale); lerr != nil {
			c.log.Warn("re-authentication failed", slog.String("error", lerr.Error()))
		}
	}
	return err
}

// noteConnection records whether the stream from the server works and
// tells Config.OnConnection when that changes: the client starts
// connected (Open talked to the server), is down from the end of a stream
// until a new one brings its first event.
func (c *Client) noteConnection(up bool, err error) {
	if c.connDown.Load() == !up {
		return
	}
	if !c.connDown.CompareAndSwap(up, !up) {
		return
	}
	if f := c.cfg.OnConnection; f != nil {
		f(up, err)
	}
}

// streamBatch bounds the stream events processed between two writes of a
// group's state.
const streamBatch = 128

// processStream handles the stream's events until the stream ends (nil)
// or an event fails: in batches of those that are there, each group's
// state written once per batch.
func (c *Client) processStream(ctx context.Context, events <-chan *mlsdsv1.SubscribeResponse, attempt *int) error {
	for {
		batch, err := nextBatch(ctx, events)
		if err != nil || batch == nil {
			return err
		}
		*attempt = 0
		if err := c.handleStreamBatch(ctx, batch); err != nil {
			return err
		}
	}
}

// readAhead reads stream in the background, so that the events that
// arrive while a batch is processed make the next batch: it sends them to
// events, calling received (if not nil) for each, until the stream or ctx
// ends, then closes events, and done once the reader has stopped.
func readAhead[M any](ctx context.Context, stream *connect.ServerStreamForClient[M], received func()) (events <-chan *M, done <-chan struct{}) {
	ch := make(chan *M, streamBatch)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		defer close(ch)
		for stream.Receive() {
			if received != nil {
				received()
			}
			select {
			case ch <- stream.Msg():
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, stopped
}

// nextBatch waits for the next event of events and returns it with those
// queued behind it, streamBatch at the most; nil once events is closed.
func nextBatch[T any](ctx context.Context, events <-chan T) ([]T, error) {
	var batch []T
	select {
	case ev, ok := <-events:
		if !ok {
			return nil, nil
		}
		batch = append(batch, ev)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for len(batch) < streamBatch {
		select {
		case ev, ok := <-events:
			if !ok {
				return batch, nil
			}
			batch = append(batch, ev)
		default:
			return batch, nil
		}
	}
	return batch, nil
}

// handleStreamBatch processes a batch of stream events. The messages are
// processed in memory and each group touched is written once at the end
// (or before an event of another kind), which queues their events.
func (c *Client) handleStreamBatch(ctx context.Context, batch []*mlsdsv1.SubscribeResponse) error {
	var touched []*Group
	flush := func() error {
		var first error
		for _, g := range touched {
			g.mu.Lock()
			err := g.flushLocked()
			g.mu.Unlock()
			if err != nil && first == nil {
				first = err
			}
		}
		if first == nil {
			for _, g := range touched {
				g.afterProcessing(ctx)
			}
		}
		touched = nil
		return first
	}
	for _, ev := range batch {
		if err := c.queue.waitBelow(ctx, queueHighWater); err != nil {
			return errors.Join(err, flush())
		}
		if hook := c.testHookStream.Load(); hook != nil {
			(*hook)()
		}
		if env := ev.GetMessage(); env != nil {
			g := c.group(env.GroupId)
			if g == nil {
				// A group this client has no state of (it dropped or
				// lost it, or refused its Welcome; the server sends a
				// new member's Welcome before the group's messages):
				// leave it rather than download it again.
				c.leaveUnknown(env.GroupId, nil)
				continue
			}
			if !slices.Contains(touched, g) {
				touched = append(touched, g)
			}
			if err := g.take(ctx, env); err != nil {
				return errors.Join(err, flush())
			}
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		if err := c.handleStreamEvent(ctx, ev); err != nil {
			return err
		}
	}
	return flush()
}

// handleStreamEvent processes one event of the stream. An error ends the
// stream; the events not acknowledged come again on the next one.
func (c *Client) handleStreamEvent(ctx context.Context, ev *mlsdsv1.SubscribeResponse) error {
	switch {
	case ev.GetMessage() != nil:
		env := ev.GetMessage()
		g := c.group(env.GroupId)
		if g == nil {
			// A group this client has no state of: leave it.
			c.leaveUnknown(env.GroupId, nil)
			return nil
		}
		return g.deliver(ctx, env)
	case ev.GetWelcome() != nil:
		return c.handleWelcome(ctx, ev.GetWelcome())
	case ev.GetPruned() != nil:
		return c.handlePruned(ctx, ev.GetPruned()) // pruned.go
	case ev.GetKeyPackageLow() != nil:
		c.topUpLater()
	case ev.GetCaughtUp() != nil:
		// What came before is processed and its events queued.
		c.caughtUp.set(true)
	}
	return nil
}

// caughtUpSignal tells whether a stream has caught up: ch is closed once
// it has, and replaced by an open one when the stream ends.
type caughtUpSignal struct {
	mu     sync.Mutex
	ch     chan struct{}
	closed bool
}

// set records whether the stream has caught up: true releases those
// waiting on wait; false (the stream ended) makes the next ones wait for
// the next stream.
func (s *caughtUpSignal) set(up bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case up && !s.closed:
		close(s.ch)
		s.closed = true
	case !up && s.closed:
		s.ch = make(chan struct{})
		s.closed = false
	}
}

// wait returns a channel closed once the stream has caught up.
func (s *caughtUpSignal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

func (c *Client) waitCaughtUp(ctx context.Context) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	select {
	case <-c.caughtUp.wait():
		return c.waitDeniableCaughtUp(ctx)
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return ErrClosed
	}
}

// topUpLater publishes KeyPackages in the background.
func (c *Client) topUpLater() {
	if !c.startTask() {
		return
	}
	go func() {
		defer c.wg.Done()
		if _, err := c.publishKeyPackages(c.ctx); err != nil && c.ctx.Err() == nil {
			c.log.Warn("publishing KeyPackages failed", slog.String("error", err.Error()))
		}
	}()
}

// publishKeyPackages tops up the published KeyPackages.
func (c *Client) publishKeyPackages(ctx context.Context) (int, error) {
	c.kpMu.Lock()
	defer c.kpMu.Unlock()
	count, err := c.rpc.kps.CountKeyPackages(ctx, connect.NewRequest(&mlsdsv1.CountKeyPackagesRequest{}))
	if err != nil {
		return 0, fmt.Errorf("client: counting published KeyPackages: %w", err)
	}
	list, err := c.rpc.kps.ListKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ListKeyPackagesRequest{}))
	if err != nil {
		return 0, fmt.Errorf("client: listing published KeyPackages: %w", err)
	}
	// The count leaves out expired and last-resort KeyPackages; a
	// last-resort one close to its end is replaced.
	have, lastResort := int(count.Msg.ByCipherSuite[uint32(c.cs)]), false
	var stale [][]byte
	for _, kp := range list.Msg.KeyPackages {
		if !kp.LastResort || mls.CipherSuite(kp.CipherSuite) != c.cs {
			continue
		}
		if kp.NotAfter.AsTime().After(time.Now().Add(keyPackageLifetime / 10)) {
			lastResort = true
		} else {
			stale = append(stale, kp.Ref)
		}
	}
	if !lastResort && len(stale) > 0 {
		// The server keeps one last-resort KeyPackage per suite.
		if _, err := c.rpc.kps.DeleteKeyPackages(ctx, connect.NewRequest(&mlsdsv1.DeleteKeyPackagesRequest{Refs: stale})); err != nil {
			return 0, fmt.Errorf("client: replacing the last-resort KeyPackage: %w", err)
		}
	}
	var keys []keyPackageKeys
	now := time.Now()
	nb, na := uint64(now.Add(-time.Hour).Unix()), uint64(now.Add(keyPackageLifetime).Unix())
	for i := have; i < c.cfg.KeyPackages; i++ {
		kp, priv, err := mls.NewKeyPackageWith(c.cs, []byte(c.id), c.sig, nb, na, greaseKeyPackages)
		if err != nil {
			return 0, err
		}
		keys = append(keys, keyPackageKeys{kp: kp, priv: priv})
	}
	if !lastResort {
		kp, priv, err := mls.NewKeyPackageWith(c.cs, []byte(c.id), c.sig, nb, na, greaseKeyPackages)
		if err != nil {
			return 0, err
		}
		keys = append(keys, keyPackageKeys{kp: kp, priv: priv, lastResort: true})
	}
	if len(keys) == 0 {
		return 0, nil
	}
	// Keys of KeyPackages that expired long ago can no longer be named by
	// a Welcome; the last-resort ones are kept.
	if err := c.db.pruneKeyPackages(context.WithoutCancel(ctx), now.Add(-keyPackageLifetime-7*24*time.Hour).Unix()); err != nil {
		c.log.Warn("pruning old KeyPackage keys", slog.String("error", err.Error()))
	}
	// The private keys are saved before the server can hand the
	// KeyPackages out.
	if err := c.db.putKeyPackages(context.WithoutCancel(ctx), keys, now.Unix()); err != nil {
		return 0, fmt.Errorf("client: saving KeyPackage keys: %w", err)
	}
	req := &mlsdsv1.UploadKeyPackagesRequest{}
	for _, k := range keys {
		data, err := (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: k.kp}).MarshalBinary()
		if err != nil {
			return 0, err
		}
		req.KeyPackages = append(req.KeyPackages, &mlsdsv1.KeyPackageUpload{KeyPackage: data, LastResort: k.lastResort})
	}
	if _, err := c.rpc.kps.UploadKeyPackages(ctx, connect.NewRequest(req)); err != nil {
		for _, k := range keys {
			if ref, rerr := k.kp.Ref(); rerr == nil {
				c.db.deleteKeyPackage(context.WithoutCancel(ctx), ref)
			}
		}
		return 0, fmt.Errorf("client: uploading %d KeyPackages: %w", len(keys), err)
	}
	return len(keys), nil
}

// handleWelcome joins a group from a Welcome to one of this client's
// KeyPackages.
func (c *Client) handleWelcome(ctx context.Context, w *mlsdsv1.WelcomeEvent) error {
	if len(w.GroupId) == 0 {
		// A deniable group's: the server does not know the group.
		return c.handleDeniableWelcome(ctx, w)
	}
	if g := c.group(w.GroupId); g != nil && !g.wasRemovedBefore(w.CommitSeq) {
		// Seen already (the server repeats a Welcome until it is
		// acknowledged).
		c.acks.set(w.GroupId, w.CommitSeq)
		c.acks.now()
		return nil
	}
	fail := func(err error) error {
		c.log.Warn("cannot join from Welcome", slog.String("group", fmt.Sprintf("%x", w.GroupId)), slog.String("error", err.Error()))
		c.emit(Event{Kind: EventUndecryptable, GroupID: w.GroupId, Seq: w.CommitSeq, Epoch: w.Epoch, AcceptedAt: w.AcceptedAt.AsTime(),
			Err: fmt.Errorf("client: cannot join from a Welcome: %w", err)})
		// Acknowledge it so that it does not come again forever.
		c.acks.set(w.GroupId, w.CommitSeq)
		c.acks.now()
		return nil
	}
	keys, welcome, unusable, err := c.welcomeOf(ctx, w)
	if err != nil {
		return err
	}
	if unusable != nil {
		return fail(unusable)
	}
	st, opaque, err := c.joinFromWelcome(ctx, w, welcome, keys)
	if err != nil {
		if transient(err) {
			return err
		}
		return fail(err)
	}
	if !bytes.Equal(st.GroupID(), w.GroupId) {
		return fail(fmt.Errorf("the Welcome is for group %x, not %x as the server says", st.GroupID(), w.GroupId))
	}
	// Every leaf of the tree joined passes the credential check (§5.3.1)
	// before the client takes the group.
	if err := c.validateTree(ctx, st.GroupID(), st.Tree()); err != nil {
		var ce *CredentialError
		if !errors.As(err, &ce) {
			return err // could not decide: the Welcome comes again
		}
		c.logRefused("a Welcome", ce)
		c.emit(refusedEvent(Event{GroupID: w.GroupId, Seq: w.CommitSeq, Epoch: st.Epoch(), AcceptedAt: w.AcceptedAt.AsTime()}, ce))
		c.acks.set(w.GroupId, w.CommitSeq)
		c.acks.now()
		// The server counts this client a member: leave, with a Remove
		// proposal so that the members' clients commit it.
		var proposal []byte
		if pm, err := st.Propose(&mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: st.Self()}}); err == nil && !opaque {
			proposal, _ = mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})
		}
		c.leaveUnknown(w.GroupId, proposal)
		return nil
	}
	if !opaque {
		// The group the Welcome brings must be the one the server serves
		// (guard.go): a Welcome made from another Commit than the one
		// accepted would put this client into a group of its own.
		if err := c.checkJoinedFork(ctx, st); err != nil {
			if transient(err) {
				return err // the Welcome comes again
			}
			c.forkedWelcome(w, st, err)
			return nil
		}
	}
	g := &Group{c: c, id: st.GroupID(), st: st, processed: w.CommitSeq, opaque: opaque}
	var del []byte
	if !keys.lastResort {
		del = w.KeyPackageRef
	}
	if err := g.persist(del); err != nil {
		return err
	}
	c.mu.Lock()
	c.groups[string(g.id)] = g
	c.mu.Unlock()
	c.emit(Event{Kind: EventJoined, GroupID: g.id, Seq: w.CommitSeq, Epoch: st.Epoch(), Members: g.members(), AcceptedAt: w.AcceptedAt.AsTime(),
		Predecessor: welcomePredecessor(welcome, keys)})
	c.acks.set(g.id, w.CommitSeq)
	c.acks.now()
	c.topUpLater()
	// Catch up with what was sent after the Commit that added us.
	if err := g.sync(ctx); err != nil && !errors.Is(err, ErrRemoved) {
		c.log.Debug("catching up after joining", slog.String("error", err.Error()))
	}
	return nil
}

// Where a joiner took the ratchet tree from (Client.joinTree).
const (
	treeFromWelcome     = "welcome"      // the Welcome's ratchet_tree extension
	treeFromRemoteTree  = "remote tree"  // opaque mode: GetRemoteTree, decrypted
	treeFromRatchetTree = "ratchet tree" // transparent mode: GetRatchetTree
	treeFromGroupInfo   = "group info"   // a server without GetRemoteTree: GetGroupInfo
)

// joinFromWelcome joins the group of the Welcome w (the stream's event ev)
// with the KeyPackage keys, and tells whether the group is opaque.
//
// The group's mode takes one small call: GetRemoteTree, which serves the
// encrypted trees of opaque groups and refuses transparent ones with
// InvalidArgument. The tree comes from the Welcome if it carries one;
// otherwise, in an opaque group, from the remote tree of the Welcome's
// epoch, decrypted with the key the Welcome gives (OpenRemoteTree checks
// it against the GroupInfo); in a transparent group, from GetRatchetTree.
// Either way mls.JoinGroup checks that the tree's hash is the one the
// Welcome's GroupContext names.
func (c *Client) joinFromWelcome(ctx context.Context, ev *mlsdsv1.WelcomeEvent, w *mls.Welcome, keys keyPackageKeys) (*mls.Group, bool, error) {
	remote, rerr := c.rpc.groups.GetRemoteTree(ctx, connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: ev.GroupId}))
	var opaque, legacy bool
	switch code := connect.CodeOf(rerr); {
	case rerr == nil:
		opaque = true
	case code == connect.CodeInvalidArgument:
		// A transparent group.
	case code == connect.CodeUnimplemented:
		legacy = true
	case transient(rerr):
		return nil, false, rerr
	default:
		return nil, false, fmt.Errorf("GetRemoteTree: %w", rerr)
	}
	var info *mlsdsv1.GetGroupInfoResponse
	if legacy {
		// A server without remote trees: GetGroupInfo tells the mode.
		res, err := c.rpc.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: ev.GroupId}))
		if err != nil {
			if transient(err) {
				return nil, false, err
			}
			return nil, false, fmt.Errorf("GetGroupInfo: %w", err)
		}
		info = res.Msg
		opaque = info.Mode == mlsdsv1.GroupMode_GROUP_MODE_OPAQUE
	}
	st, err := c.joinWelcome(ctx, w, keys, nil) // reinit.go
	if err == nil {
		c.joinTree.Store(ptr(treeFromWelcome))
		return st, opaque, nil
	}
	if !errors.Is(err, mls.ErrNoRatchetTree) {
		return nil, opaque, err
	}
	var tree *mls.RatchetTree
	var from string
	switch {
	case legacy:
		if len(info.RatchetTree) == 0 {
			return nil, opaque, errors.New("the Welcome carries no ratchet tree and the server serves none")
		}
		if tree, err = mls.UnmarshalRatchetTree(keys.kp.CipherSuite, info.RatchetTree); err != nil {
			return nil, opaque, fmt.Errorf("the server's ratchet tree does not decode: %w", err)
		}
		from = treeFromGroupInfo
	case opaque:
		key, we, err := WelcomeRemoteTreeKey(w, keys.kp, keys.priv, nil)
		if err != nil {
			return nil, opaque, err
		}
		var blob []byte
		for _, t := range remote.Msg.RemoteTrees {
			if t.Epoch == we.Epoch() {
				blob = t.Blob
			}
		}
		if blob == nil {
			return nil, opaque, fmt.Errorf("the Welcome carries no ratchet tree and the server holds no remote tree of epoch %d "+
				"(it keeps the current and the previous epoch's; the group is at epoch %d, or the committer uploaded none): "+
				"a member has to remove this client and add it again", we.Epoch(), remote.Msg.Epoch)
		}
		if _, tree, err = OpenRemoteTree(we.CipherSuite(), key, we.GroupID(), we.Epoch(), blob); err != nil {
			return nil, opaque, err
		}
		from = treeFromRemoteTree
	default:
		res, err := c.rpc.groups.GetRatchetTree(ctx, connect.NewRequest(&mlsdsv1.GetRatchetTreeRequest{GroupId: ev.GroupId}))
		if err != nil {
			if transient(err) {
				return nil, opaque, err
			}
			return nil, opaque, fmt.Errorf("the Welcome carries no ratchet tree, and GetRatchetTree failed: %w", err)
		}
		if tree, err = mls.UnmarshalRatchetTree(keys.kp.CipherSuite, res.Msg.RatchetTree); err != nil {
			return nil, opaque, fmt.Errorf("the server's ratchet tree does not decode: %w", err)
		}
		if res.Msg.Epoch != ev.Epoch {
			// The server has the current epoch's tree only.
			return nil, opaque, fmt.Errorf("the Welcome carries no ratchet tree and the server's is of epoch %d, not the Welcome's %d: "+
				"a member has to remove this client and add it again", res.Msg.Epoch, ev.Epoch)
		}
		from = treeFromRatchetTree
	}
	// JoinGroup checks the tree against the GroupContext's tree_hash.
	st, err = c.joinWelcome(ctx, w, keys, tree)
	if err != nil {
		return nil, opaque, err
	}
	c.joinTree.Store(ptr(from))
	return st, opaque, nil
}

func ptr[T any](v T) *T { return &v }

// welcomeOf finds the keys of the KeyPackage that a Welcome event names
// and decodes the Welcome. unusable says why this client cannot join from
// it (no such KeyPackage here, bytes that are no Welcome); err is a
// failure to read the state.
func (c *Client) welcomeOf(ctx context.Context, w *mlsdsv1.WelcomeEvent) (keys keyPackageKeys, welcome *mls.Welcome, unusable, err error) {
	keys, err = c.db.keyPackage(ctx, w.KeyPackageRef, c.sig)
	if errors.Is(err, sql.ErrNoRows) {
		return keys, nil, errors.New("the Welcome is for a KeyPackage whose private keys this client does not have (another state file?)"), nil
	}
	if err != nil {
		return keys, nil, nil, err
	}
	msg, err := mls.ParseMLSMessage(w.Welcome)
	if err != nil || msg.Welcome == nil {
		return keys, nil, fmt.Errorf("the Welcome does not decode: %v", err), nil
	}
	return keys, msg.Welcome, nil, nil
}
