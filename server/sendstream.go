package server

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sync/semaphore"
	"google.golang.org/protobuf/types/known/anypb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
)

// The bounds of one SendStream: messages, and bytes of messages, read and
// not yet answered. The reader waits when either is reached, so a client
// that sends without reading its answers holds at most this much.
const (
	sendStreamMaxPending      = 64
	sendStreamMaxPendingBytes = 1 << 20
)

var (
	errSessionExpired     = errors.New("session expired: authenticate again and open a new SendStream")
	errSendStreamDeniable = errors.New("SendStream needs a session; a deniable group's messages go by Send with a membership proof")
)

// SendStream accepts a session's messages over one stream and answers each
// in order, with what Send would have answered (see groups.proto). The
// messages are queued for the store as they are read (ds.SendQueued), so
// that a client with many messages under way has them stored in few
// transactions, without a request per message.
func (g *groupService) SendStream(ctx context.Context, stream *connect.BidiStream[mlsdsv1.SendStreamRequest, mlsdsv1.SendStreamResponse]) error {
	s := g.s
	client, ok := ClientID(ctx)
	if !ok {
		return connect.NewError(connect.CodeUnauthenticated, errSendStreamDeniable)
	}
	// The session's end, read once: the session and its client are
	// checked again at every message (sessionLive).
	_, token, _ := strings.Cut(stream.RequestHeader().Get("Authorization"), " ")
	expiry, _ := sessionExpiry(strings.TrimSpace(token))

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer s.sendStreams.add(client, cancel)()

	// Answers are written as the stream goes; each write has a deadline
	// (flush.go), so a client that stops reading is cut off.
	dw := deadlineWriterOf(ctx)
	if dw != nil {
		dw.stream = true
	}
	deadline := newStreamDeadline(dw, s.cfg.WriteTimeout)
	defer deadline.stop()

	type pending struct {
		wait func() (ds.Receipt, error)
		size int64
	}
	queue := make(chan pending, sendStreamMaxPending)
	room := semaphore.NewWeighted(sendStreamMaxPendingBytes)
	// weight is what a message holds of room: its size, but a message of
	// the largest size fits alone.
	weight := func(n int) int64 { return min(int64(n), sendStreamMaxPendingBytes) }

	// ended is the outcome once ctx is done: the client hung up, or a newer
	// SendStream of the same client replaced this one.
	ended := func() error {
		if context.Cause(ctx) == errSuperseded {
			return withDetail(connect.CodeResourceExhausted, errors.New("SendStream ended: the client opened more SendStreams than the server allows, and this is the oldest"),
				&mlsdsv1.TooLarge{Limit: uint64(s.cfg.MaxStreamsPerClient), What: "SendStreams per client"})
		}
		return nil
	}

	// The reader: one message at a time, in order, into the store's queue.
	// It ends when the stream does, or once ctx is done at its next
	// message; the request body is closed when the handler returns.
	readErr := make(chan error, 1)
	go func() {
		defer close(queue)
		for {
			req, err := stream.Receive()
			if err != nil {
				if errors.Is(err, io.EOF) || ctx.Err() != nil {
					err = nil
				}
				readErr <- err
				return
			}
			if err := s.sessionLive(ctx, client, expiry); err != nil {
				readErr <- err
				return
			}
			n := weight(len(req.Message))
			if room.Acquire(ctx, n) != nil {
				readErr <- nil
				return
			}
			queue <- pending{wait: s.ds.SendQueued(ctx, client, req.Message), size: n}
		}
	}()
	// Whatever way the writer ends, every queued message is waited for
	// (its quota reservation is given back then), until the reader ends.
	defer func() {
		go func() {
			for p := range queue {
				p.wait()
			}
		}()
	}()

	// The writer (this goroutine): answers in the order of the requests.
	for {
		var p pending
		var more bool
		select {
		case p, more = <-queue:
		case <-s.draining:
			cancel(errDraining)
			return connect.NewError(connect.CodeUnavailable, errDraining)
		case <-ctx.Done():
			return ended()
		}
		if !more {
			break
		}
		r, err := p.wait()
		room.Release(p.size)
		s.accepted("send_stream", err)
		res := &mlsdsv1.SendStreamResponse{}
		if err != nil {
			res.Result = &mlsdsv1.SendStreamResponse_Error{Error: sendError(s.toConnect(ctx, err, nil))}
		} else {
			res.Result = &mlsdsv1.SendStreamResponse_Receipt{Receipt: receipt(r)}
		}
		deadline.ready()
		if err := stream.Send(res); err != nil {
			cancel(err)
			return hungUp(ctx, err)
		}
	}
	if err := <-readErr; err != nil {
		return err
	}
	return ended()
}

// sessionLive checks, at every message of a stream, what the
// authenticator checked when it opened: the session has not expired and
// its client has not been deleted since.
func (s *Server) sessionLive(ctx context.Context, client string, expiry time.Time) error {
	if !expiry.IsZero() && !s.cfg.Now().Before(expiry) {
		s.metrics.authFailures.WithLabelValues("expired").Inc()
		return connect.NewError(connect.CodeUnauthenticated, errSessionExpired)
	}
	return s.checkLive(ctx, client, expiry)
}

// sendError is the SendError of a refusal: the Connect error Send would
// have returned, details and all.
func sendError(err error) *mlsdsv1.SendError {
	ce := new(connect.Error)
	if !errors.As(err, &ce) {
		ce = connect.NewError(connect.CodeInternal, err)
	}
	e := &mlsdsv1.SendError{Code: ce.Code().String(), Message: ce.Message()}
	for _, d := range ce.Details() {
		e.Details = append(e.Details, &anypb.Any{TypeUrl: "type.googleapis.com/" + d.Type(), Value: d.Bytes()})
	}
	return e
}
