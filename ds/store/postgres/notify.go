package postgres

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mlsds/mlsds/ds"
)

// Notifier is a ds.Notifier shared by every node on one database, on
// PostgreSQL LISTEN/NOTIFY. Every node listens on one channel (Options.Channel);
// a notification's payload names the node that sent it and the topics it
// wakes.
//
// Notify wakes the listeners of its own node at once and sends one NOTIFY
// (for many topics, a few) through the pool; other nodes wake their
// listeners when it arrives, and a node ignores the echo of its own
// notifications. A topic longer than maxTopicLen bytes, or one that is not
// plain text, travels as its SHA-256 hash.
//
// Listening needs a connection of its own, opened on the first Listen.
// When it breaks, the Notifier reconnects with backoff; since whatever was
// notified in between is lost, it wakes every listener once LISTEN is back,
// and every Options.FallbackInterval while it is not. A wake-up only says
// "look again" (subscriptions also poll the Store), so a lost notification
// costs a delay, never a message.
type Notifier struct {
	pool     *pgxpool.Pool
	connCfg  *pgx.ConnConfig
	channel  string
	origin   string // random id of this Notifier, first field of every payload
	fallback time.Duration
	keep     time.Duration
	log      *slog.Logger

	mu        sync.Mutex
	next      uint64
	listeners map[string]map[uint64]func() // by wire key of the topic
	started   bool
	closed    bool
	listening bool
	ready     chan struct{} // closed while listening; replaced when the connection is lost
	cancel    context.CancelFunc
	done      chan struct{}
}

var _ ds.Notifier = (*Notifier)(nil)

const (
	// maxTopicLen: longer topics are sent as their hash.
	maxTopicLen = 200
	// maxPayload stays below PostgreSQL's 8000-byte limit on a payload.
	maxPayload = 7000
)

func newNotifier(pool *pgxpool.Pool, cc *pgx.ConnConfig, opts Options) *Notifier {
	if opts.Channel == "" {
		opts.Channel = "mlsds"
	}
	if opts.FallbackInterval <= 0 {
		opts.FallbackInterval = time.Second
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	var id [8]byte
	rand.Read(id[:])
	return &Notifier{
		pool:      pool,
		connCfg:   cc.Copy(),
		channel:   opts.Channel,
		origin:    hex.EncodeToString(id[:]),
		fallback:  opts.FallbackInterval,
		keep:      opts.KeepAlive,
		log:       opts.Logger,
		listeners: make(map[string]map[uint64]func()),
		ready:     make(chan struct{}),
		done:      make(chan struct{}),
	}
}

// wireKey is how topic travels in a payload: "=" and the topic itself, or
// "#" and the hex SHA-256 of a topic that is long or not plain text (a
// payload is text, and topics are separated by newlines).
func wireKey(topic string) string {
	if len(topic) <= maxTopicLen && textOK(topic) && !strings.ContainsAny(topic, "\n\r") {
		return "=" + topic
	}
	h := sha256.Sum256([]byte(topic))
	return "#" + hex.EncodeToString(h[:])
}

// Notify wakes the listeners of each topic on this node and, through
// PostgreSQL, on every other node. Local listeners are woken even if the
// NOTIFY fails; the error is then returned.
func (n *Notifier) Notify(ctx context.Context, topics ...string) error {
	if len(topics) == 0 {
		return nil
	}
	keys := make([]string, 0, len(topics))
	seen := make(map[string]bool, len(topics))
	for _, t := range topics {
		k := wireKey(t)
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	n.dispatch(keys)

	var payloads []string
	var cur strings.Builder
	for _, k := range keys {
		if cur.Len() > 0 && cur.Len()+1+len(k) > maxPayload {
			payloads = append(payloads, cur.String())
			cur.Reset()
		}
		if cur.Len() == 0 {
			cur.WriteString(n.origin)
		}
		cur.WriteByte('\n')
		cur.WriteString(k)
	}
	payloads = append(payloads, cur.String())
	_, err := n.pool.Exec(ctx, "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", n.channel, payloads)
	return engineErr("notify", err)
}

// Listen calls fn whenever topic is notified, on any node, until stop is
// called. fn runs on the Notifier's goroutine: it must return quickly and
// must not call back into the Notifier.
func (n *Notifier) Listen(topic string, fn func()) (stop func()) {
	key := wireKey(topic)
	n.mu.Lock()
	defer n.mu.Unlock()
	id := n.next
	n.next++
	m := n.listeners[key]
	if m == nil {
		m = make(map[uint64]func())
		n.listeners[key] = m
	}
	m[id] = fn
	n.startLocked()
	var once sync.Once
	return func() {
		once.Do(func() {
			n.mu.Lock()
			defer n.mu.Unlock()
			delete(n.listeners[key], id)
			if len(n.listeners[key]) == 0 {
				delete(n.listeners, key)
			}
		})
	}
}

// Ready starts listening if no Listen did yet and waits until the
// listening connection is up (or ctx ends). A node is fully connected to
// the others once Ready returned nil.
func (n *Notifier) Ready(ctx context.Context) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return errors.New("postgres: notifier closed")
	}
	n.startLocked()
	ready := n.ready
	n.mu.Unlock()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Listening reports whether the listening connection is up.
func (n *Notifier) Listening() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.listening
}

func (n *Notifier) startLocked() {
	if n.started || n.closed {
		return
	}
	n.started = true
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go n.run(ctx)
}

// close stops the listening goroutine and waits for it.
func (n *Notifier) close() {
	n.mu.Lock()
	n.closed = true
	started := n.started
	if n.cancel != nil {
		n.cancel()
	}
	n.mu.Unlock()
	if started {
		<-n.done
	}
}

// dispatch calls the listeners of keys, outside the lock.
func (n *Notifier) dispatch(keys []string) {
	var fns []func()
	n.mu.Lock()
	for _, k := range keys {
		for _, fn := range n.listeners[k] {
			fns = append(fns, fn)
		}
	}
	n.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// wakeAll calls every listener: used when notifications may have been lost.
func (n *Notifier) wakeAll() {
	var fns []func()
	n.mu.Lock()
	for _, m := range n.listeners {
		for _, fn := range m {
			fns = append(fns, fn)
		}
	}
	n.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

func (n *Notifier) setListening(up bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if up == n.listening {
		return
	}
	n.listening = up
	if up {
		close(n.ready)
	} else {
		n.ready = make(chan struct{})
	}
}

// run keeps a listening connection until ctx ends.
func (n *Notifier) run(ctx context.Context) {
	defer close(n.done)
	const minBackoff, maxBackoff = 100 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	for {
		established, err := n.session(ctx)
		n.setListening(false)
		if ctx.Err() != nil {
			return
		}
		if established {
			backoff = minBackoff
		}
		n.log.Warn("postgres notifier: listening connection lost; reconnecting (wake-ups fall back to polling meanwhile)",
			"channel", n.channel, "err", err, "retry_in", backoff)
		// Whatever was notified since the connection broke is lost.
		n.wakeAll()
		deadline := time.Now().Add(backoff)
		for time.Now().Before(deadline) {
			wait := min(n.fallback, time.Until(deadline))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			n.wakeAll()
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// session connects, listens and dispatches notifications until the
// connection fails or ctx ends. established reports whether LISTEN
// succeeded.
func (n *Notifier) session(ctx context.Context) (established bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, n.connCfg.Copy())
	cancel()
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{n.channel}.Sanitize()); err != nil {
		return false, err
	}
	// Notifications sent before LISTEN took effect (at start-up, or while
	// reconnecting) are lost: have every listener look again. Listeners
	// that come after this get every notification.
	n.wakeAll()
	n.setListening(true)
	for {
		wctx, cancel := context.WithTimeout(ctx, n.keep)
		note, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return true, ctx.Err()
			}
			if !pgconn.Timeout(err) && !errors.Is(err, context.DeadlineExceeded) {
				return true, err
			}
			// Idle: check that the connection is still alive.
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return true, err
			}
			continue
		}
		n.handle(note.Payload)
	}
}

// handle dispatches one payload: "origin\nkey\nkey...".
func (n *Notifier) handle(payload string) {
	origin, rest, ok := strings.Cut(payload, "\n")
	if !ok || origin == n.origin {
		return // malformed, or our own: already dispatched by Notify
	}
	n.dispatch(strings.Split(rest, "\n"))
}
