package server

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"
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
	defer s.streams.add(client, cancel)()
	events, err := s.ds.Subscribe(ctx, client)
	if err != nil {
		return s.toConnect(ctx, err, nil)
	}
	s.metrics.streamingClients.Inc()
	defer s.metrics.streamingClients.Dec()
	s.log.LogAttrs(ctx, slog.LevelDebug, "subscribed", slog.String("client", client))

	// ended is the outcome once ctx is done: the client hung up, or a newer
	// subscription of the same client replaced this one.
	ended := func() error {
		if context.Cause(ctx) == errSuperseded {
			return withDetail(connect.CodeResourceExhausted, errSuperseded,
				&mlsdsv1.TooLarge{Limit: uint64(s.cfg.MaxStreamsPerClient), What: "subscriptions per client"})
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
	deadline := newStreamDeadline(dw, s.cfg.WriteTimeout)
	defer deadline.stop()
	// send writes one event within the write deadline.
	send := func(msg *mlsdsv1.SubscribeResponse) error {
		deadline.ready()
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
	keepAlive := time.NewTicker(s.cfg.KeepAlive)
	defer keepAlive.Stop()
	held := 0 // events sent since the last flush
	for {
		select {
		case <-ctx.Done():
			return ended()
		case <-s.draining:
			return connect.NewError(connect.CodeUnavailable, errDraining)
		case <-deadline.idle():
			// Idle (no write runs): the deadline goes before it passes.
			// Frames still held go out at the next event's write.
			deadline.disarm()
		case <-keepAlive.C:
			ka := &mlsdsv1.SubscribeResponse{Event: &mlsdsv1.SubscribeResponse_KeepAlive{
				KeepAlive: &mlsdsv1.KeepAliveEvent{ServerTime: timestamppb.New(s.cfg.Now())}}}
			// Frames held back go out with this one.
			hold(false)
			held = 0
			if err := send(ka); err != nil {
				return err
			}
			s.metrics.streamEvents.WithLabelValues("keep_alive").Inc()
		case ev, ok := <-events:
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
			msg, kind := eventMessage(ev)
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
			s.metrics.streamEvents.WithLabelValues(kind).Inc()
			keepAlive.Reset(s.cfg.KeepAlive)
		}
	}
}

// SubscribeGroup: groupstream.go.
