package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

const (
	defaultKeyPackages = 20
	// keyPackageLifetime is how long a published KeyPackage is valid; the
	// server refuses lifetimes over its maximum (90 days by default).
	keyPackageLifetime = 30 * 24 * time.Hour
	ackInterval        = 200 * time.Millisecond
	fetchPage          = 500
)

// Sizes of the event path; variables so that tests can make them small.
var (
	// queueHighWater is how many undelivered events make the stream loop
	// wait before taking in more messages.
	queueHighWater = 1024
	eventBuffer    = 256
)

func open(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Offline && cfg.Server == "" {
		cfg.Server = "http://127.0.0.1:0" // never reached: calls fail at once
	}
	if cfg.Server == "" {
		return nil, errors.New("client: Config.Server is empty; set it to the Delivery Service's URL, such as http://127.0.0.1:7400 (where mlsds serve listens by default)")
	}
	if !strings.HasPrefix(cfg.Server, "http://") && !strings.HasPrefix(cfg.Server, "https://") {
		return nil, fmt.Errorf("client: Config.Server %q must start with http:// or https://", cfg.Server)
	}
	if cfg.CipherSuite == 0 {
		cfg.CipherSuite = mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	}
	if cfg.KeyPackages <= 0 {
		cfg.KeyPackages = defaultKeyPackages
	}
	if cfg.GroupInfoTreeLimit == 0 {
		cfg.GroupInfoTreeLimit = defaultGroupInfoTreeLimit
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = httpClientFor(cfg.Server)
	}
	db, err := openStore(ctx, cfg.StatePath)
	if err != nil {
		return nil, err
	}
	c, err := start(ctx, cfg, db)
	if err != nil {
		db.Close()
		return nil, err
	}
	return c, nil
}

func start(ctx context.Context, cfg Config, db *store) (*Client, error) {
	id, err := db.identity(ctx)
	switch {
	case errors.Is(err, errNoIdentity):
		if cfg.ClientID == "" {
			return nil, errors.New("client: the state holds no identity yet; set Config.ClientID to create one")
		}
		priv, _, err := cfg.CipherSuite.GenerateSignatureKeyPair()
		if err != nil {
			return nil, fmt.Errorf("client: generating a signature key for %v: %w", cfg.CipherSuite, err)
		}
		id = identity{clientID: cfg.ClientID, userID: cfg.UserID, suite: cfg.CipherSuite, sigPriv: priv}
		if err := db.putIdentity(ctx, id); err != nil {
			return nil, fmt.Errorf("client: saving the identity: %w", err)
		}
	case err != nil:
		return nil, fmt.Errorf("client: reading the identity: %w", err)
	default:
		if cfg.ClientID != "" && cfg.ClientID != id.clientID {
			return nil, fmt.Errorf("client: the state at %s belongs to client %q, not %q; use another StatePath or leave ClientID empty", cfg.StatePath, id.clientID, cfg.ClientID)
		}
		if cfg.UserID != "" && cfg.UserID != id.userID {
			return nil, fmt.Errorf("client: the state at %s belongs to user %q, not %q", cfg.StatePath, id.userID, cfg.UserID)
		}
	}
	cctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		cfg: cfg, log: cfg.Logger.With(slog.String("client", id.clientID)),
		id: id.clientID, user: id.userID, cs: id.suite, sig: id.sigPriv, db: db,
		rpc:      newRPC(cfg.HTTPClient, cfg.Server, id.clientID, id.suite, id.sigPriv),
		ctx:      cctx,
		cancel:   cancel,
		groups:   map[string]*Group{},
		caughtUp: caughtUpSignal{ch: make(chan struct{})},
		events:   make(chan Event, eventBuffer),
		queue:    newEventQueue(),
	}
	c.acks = newAcker(c)
	c.setUpDeniable()
	ok := false
	defer func() {
		if !ok {
			cancel()
		}
	}()
	if cfg.Offline {
		if err := c.loadGroups(ctx); err != nil {
			return nil, err
		}
		ok = true
		go c.queue.run(c.events)
		return c, nil
	}
	if !id.registered {
		if err := c.register(ctx); err != nil {
			return nil, err
		}
		id.registered = true
		if err := db.putIdentity(ctx, id); err != nil {
			return nil, fmt.Errorf("client: saving the identity: %w", err)
		}
	}
	if _, err := c.rpc.currentToken(ctx); err != nil {
		return nil, err
	}
	if err := c.loadGroups(ctx); err != nil {
		return nil, err
	}
	if _, err := c.publishKeyPackages(ctx); err != nil {
		return nil, err
	}
	ok = true
	if h := testHookOpened; h != nil {
		h(c)
	}
	go c.queue.run(c.events)
	c.wg.Add(2)
	go c.streamLoop()
	go c.acks.loop()
	c.followDeniableGroups()
	// Leaves not committed before the client stopped are proposed again
	// (unless the proposal of the current epoch is in the log already).
	for _, g := range c.allGroups() {
		if g.Leaving() && !g.Broken() {
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				g.maybeLeave(c.ctx)
			}()
		}
	}
	return c, nil
}

// loadGroups reads the group states.
func (c *Client) loadGroups(ctx context.Context) error {
	rows, err := c.db.groups(ctx)
	if err != nil {
		return fmt.Errorf("client: reading the group states: %w", err)
	}
	den, err := c.db.deniableStates(ctx)
	if err != nil {
		return fmt.Errorf("client: reading the deniable group states: %w", err)
	}
	for _, r := range rows {
		g, err := loadGroup(c, r)
		if err != nil {
			return fmt.Errorf("client: group %x: %w", r.id, err)
		}
		g.den = den[string(r.id)]
		c.groups[string(r.id)] = g
	}
	return nil
}

// register records the identity with the server.
func (c *Client) register(ctx context.Context) error {
	cred := mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(c.id)}
	cb, err := cred.MarshalBinary()
	if err != nil {
		return err
	}
	pub, err := c.cs.SignaturePublicKey(c.sig)
	if err != nil {
		return err
	}
	req := &mlsdsv1.RegisterClientRequest{Credential: cb, SignatureKey: pub, CipherSuite: uint32(c.cs), UserId: c.user, DeviceLink: c.cfg.DeviceLink}
	if c.cfg.EnrollmentToken != "" {
		req.Enrollment = &mlsdsv1.RegisterClientRequest_EnrollmentToken{EnrollmentToken: c.cfg.EnrollmentToken}
	}
	if err := SignRegistration(c.sig, req); err != nil {
		return err
	}
	_, err = c.rpc.auth.RegisterClient(ctx, connect.NewRequest(req))
	switch connect.CodeOf(err) {
	case connect.CodeAlreadyExists, connect.CodePermissionDenied:
		return fmt.Errorf("client: the server refused to register %q: the id may be taken, the user may belong to other clients "+
			"(a further device needs a device link from one of them), or the server needs an enrollment token: %w", c.id, err)
	}
	if err != nil {
		return fmt.Errorf("client: registering %q: %w", c.id, err)
	}
	return nil
}

func (c *Client) close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	// Wait for API calls in flight on each group.
	for _, g := range c.allGroups() {
		g.mu.Lock()
		g.closed = true
		g.mu.Unlock()
	}
	c.rpc.sends.close()
	c.acks.flush(context.Background())
	c.queue.close()
	return c.db.Close()
}

// startTask counts a background task in c.wg, so that Close waits for it
// to end, unless the client is closed, which it reports with false. A
// task it counted calls c.wg.Done when it ends.
func (c *Client) startTask() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	return true
}

// checkOpen returns ErrClosed once Close was called.
func (c *Client) checkOpen() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	return nil
}

func (c *Client) group(id []byte) *Group {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.groups[string(id)]
}

func (c *Client) allGroups() []*Group {
	c.mu.Lock()
	out := make([]*Group, 0, len(c.groups))
	for _, g := range c.groups {
		out = append(out, g)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b *Group) int { return bytes.Compare(a.id, b.id) })
	return out
}

func (c *Client) syncAll(ctx context.Context) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	var errs []error
	for _, g := range c.allGroups() {
		if err := g.syncAndLeave(ctx); err != nil && !errors.Is(err, ErrRemoved) && !errors.Is(err, ErrGroupBroken) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// emit queues an event for the Events channel.
func (c *Client) emit(evs ...Event) {
	for _, e := range evs {
		c.queue.push(e)
	}
}

// eventQueue holds the events not yet taken by the Events channel. It is
// unbounded so that no API call ever blocks on an application that does
// not read; the stream loop waits while it is long.
type eventQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []Event
	closed bool
}

func newEventQueue() *eventQueue {
	q := &eventQueue{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *eventQueue) push(e Event) {
	q.mu.Lock()
	q.items = append(q.items, e)
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (q *eventQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

// run feeds out until the queue is closed and empty, then closes out.
func (q *eventQueue) run(out chan<- Event) {
	defer close(out)
	for {
		q.mu.Lock()
		for len(q.items) == 0 && !q.closed {
			q.cond.Wait()
		}
		if len(q.items) == 0 {
			q.mu.Unlock()
			return
		}
		e := q.items[0]
		q.items[0] = Event{}
		q.items = q.items[1:]
		q.mu.Unlock()
		q.cond.Broadcast()
		out <- e
	}
}

// waitBelow waits until fewer than n events are queued or ctx ends.
func (q *eventQueue) waitBelow(ctx context.Context, n int) error {
	stop := context.AfterFunc(ctx, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.cond.Broadcast()
	})
	defer stop()
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) >= n && ctx.Err() == nil {
		q.cond.Wait()
	}
	return ctx.Err()
}

// acker sends the processed positions to the server in batches, so that a
// new subscription replays little.
type acker struct {
	c       *Client
	mu      sync.Mutex
	pending map[string]uint64
	sent    map[string]uint64
	wake    chan struct{}
}

func newAcker(c *Client) *acker {
	return &acker{c: c, pending: map[string]uint64{}, sent: map[string]uint64{}, wake: make(chan struct{}, 1)}
}

// set records that the group's messages up to seq are processed. Seq 0
// counts too: it acknowledges the Welcome of a group created with one
// (CreateGroupRequest.welcome), which no message precedes.
func (a *acker) set(groupID []byte, seq uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := string(groupID)
	p, pending := a.pending[k]
	s, sent := a.sent[k]
	if (!pending || seq > p) && (!sent || seq > s) {
		a.pending[k] = seq
	}
}

// now asks for a flush without waiting for the next tick.
func (a *acker) now() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *acker) loop() {
	defer a.c.wg.Done()
	t := time.NewTicker(ackInterval)
	defer t.Stop()
	for {
		select {
		case <-a.c.ctx.Done():
			return
		case <-t.C:
		case <-a.wake:
		}
		a.flush(a.c.ctx)
	}
}

func (a *acker) flush(ctx context.Context) {
	a.mu.Lock()
	if len(a.pending) == 0 {
		a.mu.Unlock()
		return
	}
	batch := a.pending
	a.pending = map[string]uint64{}
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	req := &mlsdsv1.AckRequest{}
	for k, seq := range batch {
		req.Cursors = append(req.Cursors, &mlsdsv1.Cursor{GroupId: []byte(k), Seq: seq})
	}
	_, err := a.c.rpc.groups.Ack(ctx, connect.NewRequest(req))
	if err != nil && len(batch) > 1 && !transient(err) {
		// One bad cursor (a group this client left) fails the batch: ack
		// one by one.
		for k, seq := range batch {
			_, e := a.c.rpc.groups.Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{Cursors: []*mlsdsv1.Cursor{{GroupId: []byte(k), Seq: seq}}}))
			if e == nil {
				a.markSent(k, seq)
			} else if transient(e) {
				a.set([]byte(k), seq)
			}
		}
		return
	}
	if err != nil {
		if transient(err) {
			for k, seq := range batch {
				a.set([]byte(k), seq)
			}
		}
		a.c.log.Debug("ack failed", slog.String("error", err.Error()))
		return
	}
	for k, seq := range batch {
		a.markSent(k, seq)
	}
}

func (a *acker) markSent(k string, seq uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if seq > a.sent[k] {
		a.sent[k] = seq
	}
}
