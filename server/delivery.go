package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
)

// deliveryService implements mlsds.v1.DeliveryService.
type deliveryService struct{ s *Server }

var (
	errDraining   = errors.New("server is shutting down; reconnect (to another node, if any) and resume")
	errSubClosed  = errors.New("subscription ended by the server; reconnect and resume")
	errSuperseded = errors.New("subscription ended: the client opened more subscriptions than the server allows, and this is the oldest")
)

// streams bounds the Subscribe streams of each client. When a client opens
// one too many, its oldest stream ends: a client that reconnects before
// the server noticed that its old connection died is never locked out.
type streams struct {
	max      int
	mu       sync.Mutex
	next     uint64
	byClient map[string][]streamEntry
	drained  bool // drain ran: every stream ends at once
}

type streamEntry struct {
	id     uint64
	cancel context.CancelCauseFunc
}

func newStreams(max int) *streams {
	return &streams{max: max, byClient: make(map[string][]streamEntry)}
}

// add registers a stream of client and returns the function that removes
// it again.
func (st *streams) add(client string, cancel context.CancelCauseFunc) (remove func()) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.next++
	id := st.next
	if st.drained {
		cancel(errDraining)
	}
	list := append(st.byClient[client], streamEntry{id, cancel})
	for len(list) > st.max {
		list[0].cancel(errSuperseded)
		list = list[1:]
	}
	st.byClient[client] = list
	return func() {
		st.mu.Lock()
		defer st.mu.Unlock()
		list := st.byClient[client]
		for i, e := range list {
			if e.id == id {
				list = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(st.byClient, client)
		} else {
			st.byClient[client] = list
		}
	}
}

// drain ends every stream, and those added later at once, with
// errDraining as their context's cause. The streams learn of the shutdown
// from their own context, not from a channel that all of them would wait
// on (and lock) at every event.
func (st *streams) drain() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.drained = true
	for _, list := range st.byClient {
		for _, e := range list {
			e.cancel(errDraining)
		}
	}
}

func eventMessage(ev ds.Event) (*mlsdsv1.SubscribeResponse, string) {
	switch {
	case ev.Message != nil:
		return &mlsdsv1.SubscribeResponse{Event: &mlsdsv1.SubscribeResponse_Message{Message: envelope(ev.Message)}}, "message"
	case ev.Welcome != nil:
		w := ev.Welcome
		return &mlsdsv1.SubscribeResponse{Event: &mlsdsv1.SubscribeResponse_Welcome{Welcome: &mlsdsv1.WelcomeEvent{
			GroupId:       w.GroupID,
			Welcome:       w.Data,
			KeyPackageRef: w.KeyPackageRef,
			CommitSeq:     w.CommitSeq,
			Epoch:         w.Epoch,
			AcceptedAt:    timestamppb.New(w.AcceptedAt),
		}}}, "welcome"
	case ev.KeyPackageLow != nil:
		l := ev.KeyPackageLow
		return &mlsdsv1.SubscribeResponse{Event: &mlsdsv1.SubscribeResponse_KeyPackageLow{KeyPackageLow: &mlsdsv1.KeyPackageLowEvent{
			CipherSuite: uint32(l.CipherSuite),
			Remaining:   uint32(max(0, l.Remaining)),
			LowWater:    uint32(max(0, l.LowWater)),
		}}}, "key_package_low"
	case ev.Pruned != nil:
		return &mlsdsv1.SubscribeResponse{Event: &mlsdsv1.SubscribeResponse_Pruned{Pruned: &mlsdsv1.PrunedEvent{
			GroupId: ev.Pruned.GroupID, OldestSeq: ev.Pruned.OldestSeq}}}, "pruned"
	case ev.CaughtUp:
		return &mlsdsv1.SubscribeResponse{Event: &mlsdsv1.SubscribeResponse_CaughtUp{CaughtUp: &mlsdsv1.CaughtUpEvent{}}}, "caught_up"
	}
	return nil, ""
}

func (d *deliveryService) Subscribe(ctx context.Context, req *connect.Request[mlsdsv1.SubscribeRequest], stream *connect.ServerStream[mlsdsv1.SubscribeResponse]) error {
	s, client := d.s, mustClient(ctx)
	select {
	case <-s.draining:
		return connect.NewError(connect.CodeUnavailable, errDraining)
	default:
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Drain and a newer subscription of the client end the stream through
	// its context (streams.drain, streams.add).
	defer s.streams.add(client, cancel)()
	events, err := s.ds.Subscribe(ctx, client)
	if err != nil {
		return s.toConnect(ctx, err, nil)
	}
	s.metrics.streamingClients.Inc()
	defer s.metrics.streamingClients.Dec()
	s.log.LogAttrs(ctx, slog.LevelDebug, "subscribed", slog.String("client", client))

	// ended is the outcome once ctx is done: the client hung up, the
	// server is shutting down, or a newer subscription of the same client
	// replaced this one.
	ended := func() error {
		switch context.Cause(ctx) {
		case errSuperseded:
			return withDetail(connect.CodeResourceExhausted, errSuperseded,
				&mlsdsv1.TooLarge{Limit: uint64(s.cfg.MaxStreamsPerClient), What: "subscriptions per client"})
		case errDraining:
			return connect.NewError(connect.CodeUnavailable, errDraining)
		}
		return nil
	}
	// The stream's writers, looked up once (nil without them).
	dw := deadlineWriterOf(ctx)
	bw, _ := ctx.Value(batchingWriterKey{}).(*batchingWriter)
	hold := func(h bool) {
		if bw != nil {
			bw.hold = h
		}
	}
	// Message events of clients that speak the binary codec go out as the
	// bytes marshalled once for every subscriber (sharedResponses).
	shared := binaryCodec(req.Header().Get("Content-Type"))
	counts := s.eventCounters()
	// The loop waits on the events and on wake, one channel for all else:
	// the end of ctx, the keep-alive and the write deadline's idle timer
	// (timers that call a function, not timer channels, which cost every
	// select waiting on them a trip to the timer heap).
	wake := make(chan struct{}, 1)
	signal := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	defer context.AfterFunc(ctx, signal)()
	deadline := newStreamDeadline(dw, s.cfg.WriteTimeout)
	deadline.signal = signal
	defer deadline.stop()
	// lastSent is when the last event went out: a keep-alive follows
	// KeepAlive after it. The timer is not moved at every event; when it
	// fires early, it is set again for the rest of the interval.
	lastSent := time.Now()
	var keepAliveDue atomic.Bool
	keepAlive := time.AfterFunc(s.cfg.KeepAlive, func() {
		keepAliveDue.Store(true)
		signal()
	})
	defer keepAlive.Stop()
	// send writes one event within the write deadline.
	send := func(msg *mlsdsv1.SubscribeResponse) error {
		lastSent = time.Now()
		deadline.readyAt(lastSent)
		err := stream.Send(msg)
		if err != nil {
			if deadline.timedOut() {
				s.metrics.streamsCut.WithLabelValues("write_timeout").Inc()
				s.log.LogAttrs(ctx, slog.LevelDebug, "subscription cut: the client did not read", slog.String("client", client))
			}
			return err
		}
		return nil
	}
	held := 0 // events sent since the last flush
	for {
		var ev ds.Event
		var ok bool
		// An event that is ready is taken without a full select.
		select {
		case ev, ok = <-events:
		default:
			select {
			case ev, ok = <-events:
			case <-wake:
				if ctx.Err() != nil {
					return ended()
				}
				if deadline.idleDue() {
					// Idle (no write runs): the deadline goes before it
					// passes. Frames still held go out at the next
					// event's write.
					deadline.disarm()
				}
				if keepAliveDue.Swap(false) {
					if wait := s.cfg.KeepAlive - time.Since(lastSent); wait > 0 {
						keepAlive.Reset(wait)
						continue
					}
					ka := &mlsdsv1.SubscribeResponse{Event: &mlsdsv1.SubscribeResponse_KeepAlive{
						KeepAlive: &mlsdsv1.KeepAliveEvent{ServerTime: timestamppb.New(s.cfg.Now())}}}
					// Frames held back go out with this one.
					hold(false)
					held = 0
					if err := send(ka); err != nil {
						return err
					}
					keepAlive.Reset(s.cfg.KeepAlive)
					counts.keepAlive.Inc()
				}
				continue
			}
		}
		if !ok {
			if ctx.Err() != nil {
				return ended()
			}
			return connect.NewError(connect.CodeUnavailable, errSubClosed)
		}
		if ev.Err != nil {
			if ctx.Err() != nil {
				return ended()
			}
			if errors.Is(ev.Err, ds.ErrSlowConsumer) {
				s.metrics.streamsCut.WithLabelValues("slow_consumer").Inc()
			}
			s.log.LogAttrs(ctx, slog.LevelWarn, "subscription ended", slog.String("client", client), slog.String("error", ev.Err.Error()))
			return connect.NewError(connect.CodeUnavailable, errSubClosed)
		}
		var msg *mlsdsv1.SubscribeResponse
		var count prometheus.Counter
		if ev.Message != nil && shared {
			msg, count = sharedMessages.subscribe(ev.Message), counts.message
		} else {
			var kind string
			msg, kind = eventMessage(ev)
			count = counts.of(kind)
		}
		if msg == nil {
			if held > 0 && len(events) == 0 {
				deadline.ready()
				if bw != nil {
					bw.hold = false
					bw.Flush()
				}
				held = 0
			}
			continue
		}
		// While more events are ready, their frames share one flush.
		more := len(events) > 0 && held < maxHeldEvents
		hold(more)
		err := send(msg)
		hold(false)
		if err != nil {
			return err
		}
		if more {
			held++
		} else {
			held = 0
		}
		count.Inc()
	}
}

// eventCounters holds the stream event counters of each kind, looked up
// once per stream rather than by label at every event.
type eventCounters struct {
	message, welcome, keyPackageLow, pruned, caughtUp, keepAlive prometheus.Counter
}

func (s *Server) eventCounters() *eventCounters {
	v := s.metrics.streamEvents
	return &eventCounters{
		message:       v.WithLabelValues("message"),
		welcome:       v.WithLabelValues("welcome"),
		keyPackageLow: v.WithLabelValues("key_package_low"),
		pruned:        v.WithLabelValues("pruned"),
		caughtUp:      v.WithLabelValues("caught_up"),
		keepAlive:     v.WithLabelValues("keep_alive"),
	}
}

// of returns the counter of kind (as eventMessage names it).
func (c *eventCounters) of(kind string) prometheus.Counter {
	switch kind {
	case "message":
		return c.message
	case "welcome":
		return c.welcome
	case "key_package_low":
		return c.keyPackageLow
	case "pruned":
		return c.pruned
	case "caught_up":
		return c.caughtUp
	}
	return c.keepAlive
}

// SubscribeGroup: groupstream.go.

// Shared message events. Every subscriber of a group gets the same
// Envelope from the group's tail (ds shares it among the subscriptions of
// this node), so its SubscribeResponse is built and marshalled once: the
// first subscriber to send it makes a response that holds the marshalled
// event as its only (unknown) fields, which the binary codec writes out as
// they are, and the others send that response again. The responses are
// shared between goroutines and must never be modified. Only the binary
// codec may send them: JSON would drop the unknown fields.
type sharedResponses struct {
	shards [16]sharedShard
}

// sharedShard keeps two generations of responses: when the newer one
// holds sharedShardBytes, the older one is dropped. An envelope read from
// the store for one subscription only passes through once.
type sharedShard struct {
	mu       sync.Mutex
	cur, old map[*ds.Envelope]*mlsdsv1.SubscribeResponse
	bytes    int
}

const (
	sharedShardBytes = 1 << 20
	sharedOverhead   = 96 // the map entry and the response, roughly
)

// sharedMessages is the process's one cache: the key is an immutable
// Envelope, and its response depends on nothing else, whichever Server
// sends it.
var sharedMessages sharedResponses

// subscribe returns the SubscribeResponse of the message event of e,
// marshalled once.
func (c *sharedResponses) subscribe(e *ds.Envelope) *mlsdsv1.SubscribeResponse {
	sh := &c.shards[e.GroupSeq%uint64(len(c.shards))]
	sh.mu.Lock()
	r, ok := sh.cur[e]
	if !ok {
		if r, ok = sh.old[e]; ok {
			sh.putLocked(e, r)
		}
	}
	sh.mu.Unlock()
	if ok {
		return r
	}
	r = marshalMessageEvent(e)
	sh.mu.Lock()
	sh.putLocked(e, r)
	sh.mu.Unlock()
	return r
}

func (sh *sharedShard) putLocked(e *ds.Envelope, r *mlsdsv1.SubscribeResponse) {
	if sh.cur == nil || sh.bytes >= sharedShardBytes {
		sh.old, sh.cur, sh.bytes = sh.cur, make(map[*ds.Envelope]*mlsdsv1.SubscribeResponse), 0
	}
	if _, ok := sh.cur[e]; !ok {
		sh.cur[e] = r
		sh.bytes += len(r.ProtoReflect().GetUnknown()) + sharedOverhead
	}
}

// marshalMessageEvent returns a SubscribeResponse whose only fields are
// the marshalled message event of e.
func marshalMessageEvent(e *ds.Envelope) *mlsdsv1.SubscribeResponse {
	full := &mlsdsv1.SubscribeResponse{Event: &mlsdsv1.SubscribeResponse_Message{Message: envelope(e)}}
	b, err := proto.Marshal(full)
	if err != nil || len(b) == 0 {
		return full // cannot happen; the full response is right too, if slower
	}
	r := &mlsdsv1.SubscribeResponse{}
	r.ProtoReflect().SetUnknown(b)
	return r
}

// binaryCodec reports whether a stream's Content-Type names the binary
// protobuf codec (Connect, gRPC or gRPC-Web).
func binaryCodec(contentType string) bool {
	ct, _, _ := strings.Cut(contentType, ";")
	ct = strings.ToLower(strings.TrimSpace(ct))
	switch ct {
	case "application/grpc", "application/grpc-web":
		return true
	}
	return strings.HasSuffix(ct, "+proto")
}
