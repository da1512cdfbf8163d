package client

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
)

// A Client's Sends (application messages, proposals) of transparent and
// opaque groups go over one SendStream, opened on the first Send and
// shared by all its groups and goroutines: one request per message
// instead of one HTTP request, which costs both sides less CPU.
//
//   - A Send writes its message and waits for the answer at its position:
//     the server answers the requests of a stream in their order, so the
//     waiters form a queue that one reader goroutine per stream serves.
//   - A refusal comes back as the *connect.Error a unary Send returns (same
//     code, message and details), so that rebasing on WrongEpoch, waiting
//     out RateLimited and the rest work as for unary calls.
//   - A stream that ends before it answers a message (the connection
//     broke, the session expired, the server restarts) has the message
//     sent again on a new stream, which is safe, since the server answers
//     a message it accepted already with its first receipt; after
//     maxStreamResends such ends the Send returns a transient error
//     (CodeUnavailable), and the caller's retry sends the same bytes.
//   - The stream carries the session token of its opening. When the token
//     is renewed, the next Send opens a stream with the new one and the
//     old stream, closed for writing, answers what it holds and ends.
//   - A server without SendStream (an older one, or a proxy that does not
//     carry bidirectional streams or speaks HTTP/1.1) answers Unimplemented
//     or HTTP 505 before any answer: the Client sends by unary Send from
//     then on, starting with the messages that stream held.
//   - A caller whose ctx ends stops waiting; the stream goes on for the
//     others, but the next Send opens a new one, in case this one hangs.
//   - Deniable groups keep their session-less unary Send (routedGroups).

// sendStreams sends a Client's session-authenticated Send requests over
// SendStream.
type sendStreams struct {
	r       *rpc
	gs      mlsdsv1connect.GroupServiceClient // the session-authenticated client
	streams mlsdsv1connect.GroupServiceClient // the same, for SendStream

	mu     sync.Mutex
	cur    *sendConn // the stream new Sends go on; nil before the first
	stale  string    // a token the server refused: log in again
	unary  bool      // the server does not take SendStream
	closed bool
	wg     sync.WaitGroup // the streams' goroutines

	opened atomic.Int64 // streams opened, for tests
}

// newSendStreams: gs is the session-authenticated client of unary Sends,
// streams the one that opens SendStreams (on streamHTTPClient).
func newSendStreams(r *rpc, gs, streams mlsdsv1connect.GroupServiceClient) *sendStreams {
	return &sendStreams{r: r, gs: gs, streams: streams}
}

// streamHTTPClient returns hc for the SendStream client: with a
// transport that hands the HTTP/2 transport each message of a stream's
// request body in one piece (see envelopeReader), and without hc's
// Timeout, which would cut the long-lived stream (each Send has its
// caller's context).
func streamHTTPClient(hc *http.Client) *http.Client {
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	out := *hc
	out.Transport = wholeEnvelopes{base}
	out.Timeout = 0
	return &out
}

// wholeEnvelopes is an http.RoundTripper that reads request bodies
// through an envelopeReader.
type wholeEnvelopes struct{ base http.RoundTripper }

func (t wholeEnvelopes) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil && req.Body != http.NoBody {
		req = req.Clone(req.Context())
		req.Body = &envelopeReader{r: req.Body}
	}
	return t.base.RoundTrip(req)
}

// envelopeReader reads a streaming request body made of Connect envelopes
// (a 5-byte prefix, then as many bytes as it says) and returns from Read
// only at the end of an envelope, or with p full. Connect writes an
// envelope into the body's pipe as two writes, the prefix and the rest,
// and the HTTP/2 transport sends what each Read returns as a DATA frame
// and flushes it: two frames and two system calls per message, where one
// does. Read never waits for a later message: Connect writes the rest of
// an envelope right after its prefix.
type envelopeReader struct {
	r      io.ReadCloser
	prefix [5]byte
	nh     int    // prefix bytes of the current envelope read so far
	left   uint32 // bytes of the current envelope after its prefix still to read
}

func (e *envelopeReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := e.r.Read(p[n:])
		e.track(p[n : n+m])
		n += m
		if err != nil {
			return n, err
		}
		if e.nh == 0 && n > 0 {
			return n, nil // at the end of an envelope
		}
	}
	return n, nil
}

// track follows the envelope boundaries through b.
func (e *envelopeReader) track(b []byte) {
	for len(b) > 0 {
		if e.nh < 5 {
			k := copy(e.prefix[e.nh:], b)
			e.nh += k
			b = b[k:]
			if e.nh == 5 {
				e.left = binary.BigEndian.Uint32(e.prefix[1:])
				if e.left == 0 {
					e.nh = 0
				}
			}
			continue
		}
		k := min(int64(len(b)), int64(e.left))
		e.left -= uint32(k)
		b = b[k:]
		if e.left == 0 {
			e.nh = 0
		}
	}
}

func (e *envelopeReader) Close() error { return e.r.Close() }

// sendConn is one SendStream.
type sendConn struct {
	s      *sendStreams
	stream *connect.BidiStreamForClient[mlsdsv1.SendStreamRequest, mlsdsv1.SendStreamResponse]
	token  string
	cancel context.CancelFunc

	wmu       sync.Mutex // serializes writes (and so the order of queue)
	reqClosed bool       // under wmu: CloseRequest was called

	qmu      sync.Mutex
	queue    []*sendWaiter // waiting for their answers, in the order sent
	err      error         // why the stream broke; nil while it works
	retiring bool          // closed for writing: answers what it holds and ends
	answered bool          // the server answered at least once
}

// sendWaiter is one Send waiting for its answer. ch has room for the
// answer, so that the reader never waits for a caller that left.
type sendWaiter struct {
	ch chan sendAnswer
}

type sendAnswer struct {
	res *mlsdsv1.SendStreamResponse
	err error
}

// errSendUnary tells a waiter to send its message again by unary Send.
var errSendUnary = errors.New("client: send this message by unary Send")

// errStreamBroke is wrapped by the transient error of a message whose
// stream ended before its answer.
var errStreamBroke = errors.New("the send stream ended before the answer")

// maxStreamResends bounds how often Send puts a message on a new stream
// after the one it was on ended, before it returns the transient error to
// the caller: as authInterceptor makes a unary call again after a refused
// session, a stream that ends (its session expired, the connection broke)
// is no failure of the Sends on it.
const maxStreamResends = 2

// errConnGone tells a writer that the stream it picked stopped taking
// writes meanwhile: pick again.
var errConnGone = errors.New("client: the send stream stopped taking messages")

// Send sends req over the stream, or by unary Send where the stream does
// not apply. It waits out RateLimited refusals as the unary path does.
func (s *sendStreams) Send(ctx context.Context, req *connect.Request[mlsdsv1.SendRequest]) (*connect.Response[mlsdsv1.SendResponse], error) {
	if req.Msg.JoinToken != "" {
		// SendStreamRequest carries no join token.
		return s.gs.Send(ctx, req)
	}
	resends := 0
	for {
		if s.useUnary() {
			return s.gs.Send(ctx, req)
		}
		res, err := s.sendOnStream(ctx, req.Msg.Message)
		if errors.Is(err, errSendUnary) {
			return s.gs.Send(ctx, req)
		}
		if errors.Is(err, errStreamBroke) && resends < maxStreamResends && ctx.Err() == nil {
			// Sending it again is safe: the server answers a message it
			// accepted already with its first receipt.
			resends++
			continue
		}
		// As rateLimitWaiter does for unary calls: a RateLimited refusal
		// leaves the message unsent; send it again once the wait is over.
		if !waitRateLimited(ctx, err) {
			return res, err
		}
	}
}

func (s *sendStreams) useUnary() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unary || s.closed
}

// sendOnStream sends msg on the current stream and waits for its answer.
func (s *sendStreams) sendOnStream(ctx context.Context, msg []byte) (*connect.Response[mlsdsv1.SendResponse], error) {
	if err := ctx.Err(); err != nil {
		return nil, ctxError(err)
	}
	w := &sendWaiter{ch: make(chan sendAnswer, 1)}
	var c *sendConn
	for {
		var err error
		if c, err = s.conn(ctx); err != nil {
			return nil, err
		}
		if c == nil {
			return nil, errSendUnary
		}
		err = c.write(w, msg)
		if err == nil {
			break
		}
		if !errors.Is(err, errConnGone) {
			return nil, err
		}
	}
	select {
	case a := <-w.ch:
		if a.err != nil {
			return nil, a.err
		}
		return responseOf(a.res)
	case <-ctx.Done():
		// The answer will come to nobody; the stream goes on for the
		// others, but new Sends take a new one in case this one hangs.
		s.retire(c)
		return nil, ctxError(ctx.Err())
	}
}

// ctxError is the error of a call whose context ended, as Connect makes
// it for a unary call.
func ctxError(err error) error {
	code := connect.CodeCanceled
	if errors.Is(err, context.DeadlineExceeded) {
		code = connect.CodeDeadlineExceeded
	}
	return connect.NewError(code, err)
}

// conn returns the stream to write on, opening one if there is none that
// works with the current session token; nil if Sends go by unary Send.
func (s *sendStreams) conn(ctx context.Context) (*sendConn, error) {
	tok, err := s.r.currentToken(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	stale := s.stale
	s.mu.Unlock()
	if tok == stale {
		// The server ended a stream as unauthenticated: log in again, as
		// authInterceptor does for unary calls.
		if tok, err = s.r.login(ctx, tok); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unary || s.closed {
		return nil, nil
	}
	// Tokens only move forward: take the newest, not the one read before
	// the lock, which another Send may have renewed meanwhile.
	tok = s.r.tokenNow()
	if c := s.cur; c != nil {
		if c.token == tok && c.usable() {
			return c, nil
		}
		s.retireLocked(c)
	}
	sctx, cancel := context.WithCancel(context.Background())
	stream := s.streams.SendStream(sctx)
	stream.RequestHeader().Set("Authorization", "Bearer "+tok)
	c := &sendConn{s: s, stream: stream, token: tok, cancel: cancel}
	s.cur = c
	s.opened.Add(1)
	// Canceling the stream's context does not end it while the HTTP
	// transport waits for more of the request: closing the request does.
	s.wg.Add(2)
	stop := context.AfterFunc(sctx, func() {
		defer s.wg.Done()
		c.closeRequest()
	})
	go func() {
		c.read()
		if stop() {
			s.wg.Done()
		}
		s.wg.Done()
	}()
	return c, nil
}

// closeRequest ends the stream's request side, once.
func (c *sendConn) closeRequest() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.reqClosed {
		c.reqClosed = true
		_ = c.stream.CloseRequest()
	}
}

// retire stops new Sends from going on c.
func (s *sendStreams) retire(c *sendConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retireLocked(c)
}

func (s *sendStreams) retireLocked(c *sendConn) {
	if s.cur == c {
		s.cur = nil
	}
	c.qmu.Lock()
	if c.retiring || c.err != nil {
		c.qmu.Unlock()
		return
	}
	c.retiring = true
	idle := len(c.queue) == 0
	c.qmu.Unlock()
	if idle {
		c.cancel()
		return
	}
	// It answers what it holds, then ends. A writer may be stuck on it,
	// so the close goes on another goroutine.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		c.closeRequest()
	}()
}

// close ends the streams (Client.Close, once no group operation is in
// flight) and waits for their goroutines; later Sends go by unary Send.
func (s *sendStreams) close() {
	s.mu.Lock()
	s.closed = true
	c := s.cur
	s.cur = nil
	s.mu.Unlock()
	if c != nil {
		c.cancel()
	}
	s.wg.Wait()
}

// usable reports whether c takes new messages.
func (c *sendConn) usable() bool {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return c.err == nil && !c.retiring
}

// write queues w and sends msg. If the send fails, the reader learns why
// from the stream and answers w with it.
func (c *sendConn) write(w *sendWaiter, msg []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.qmu.Lock()
	if c.err != nil || c.retiring || c.reqClosed {
		c.qmu.Unlock()
		return errConnGone
	}
	c.queue = append(c.queue, w)
	c.qmu.Unlock()
	if err := c.stream.Send(&mlsdsv1.SendStreamRequest{Message: msg}); err != nil && !errors.Is(err, io.EOF) {
		// io.EOF: the server ended the stream, and Receive tells the
		// reader why. Anything else ends it here.
		c.cancel()
	}
	return nil
}

// read hands each answer to the waiter at its position until the stream
// ends, then fails the waiters left.
func (c *sendConn) read() {
	defer c.stream.CloseResponse()
	for {
		res, err := c.stream.Receive()
		if err != nil {
			c.fail(err)
			return
		}
		c.qmu.Lock()
		if len(c.queue) == 0 {
			c.qmu.Unlock()
			c.fail(connect.NewError(connect.CodeInternal, errors.New("the server answered a message that was not sent")))
			c.cancel()
			return
		}
		w := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		c.answered = true
		done := c.retiring && len(c.queue) == 0
		c.qmu.Unlock()
		w.ch <- sendAnswer{res: res}
		if done {
			c.cancel()
		}
	}
}

// fail records why the stream ended and answers its waiters: with
// errSendUnary where the message should go by unary Send, else with a
// transient error, so that the caller sends it again.
func (c *sendConn) fail(cause error) {
	c.cancel()
	c.qmu.Lock()
	if c.err == nil {
		c.err = cause
	}
	q := c.queue
	c.queue = nil
	answered := c.answered
	c.qmu.Unlock()

	s := c.s
	s.mu.Lock()
	if s.cur == c {
		s.cur = nil
	}
	var out error
	switch code := connect.CodeOf(cause); {
	case !answered && streamUnsupported(cause):
		s.unary = true
		out = errSendUnary
	case code == connect.CodeResourceExhausted && errorDetail[*mlsdsv1.RateLimited](cause) != nil:
		// Send waits as long as the server asks, then sends again.
		out = cause
	case code == connect.CodeUnauthenticated:
		s.stale = c.token
		out = connect.NewError(connect.CodeUnavailable, fmt.Errorf("%w: its session ended: %w", errStreamBroke, cause))
	case errors.Is(cause, io.EOF), code == connect.CodeCanceled, transient(cause):
		out = connect.NewError(connect.CodeUnavailable, fmt.Errorf("%w: %w", errStreamBroke, cause))
	default:
		// Whatever the server refused the stream for, a unary Send of
		// the message says what it refuses the message for, if anything.
		out = errSendUnary
	}
	s.mu.Unlock()
	for _, w := range q {
		w.ch <- sendAnswer{err: out}
	}
}

// streamUnsupported reports whether err, ending a stream before its first
// answer, says that the server (or a proxy before it) does not carry
// SendStream.
func streamUnsupported(err error) bool {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return false
	}
	switch ce.Code() {
	case connect.CodeUnimplemented:
		return true
	case connect.CodeUnknown:
		// HTTP 505: a server that got the stream over HTTP/1.1.
		return strings.Contains(ce.Message(), "HTTP status 505")
	}
	return false
}

// responseOf turns an answer of SendStream into what Send returns.
func responseOf(res *mlsdsv1.SendStreamResponse) (*connect.Response[mlsdsv1.SendResponse], error) {
	switch r := res.GetResult().(type) {
	case *mlsdsv1.SendStreamResponse_Receipt:
		if r.Receipt != nil {
			return connect.NewResponse(&mlsdsv1.SendResponse{Receipt: r.Receipt}), nil
		}
	case *mlsdsv1.SendStreamResponse_Error:
		return nil, sendErrorOf(r.Error)
	}
	return nil, connect.NewError(connect.CodeInternal, errors.New("the server's SendStream answer holds neither a receipt nor an error"))
}

// sendErrorOf rebuilds the *connect.Error a unary Send would have
// returned from the SendError that stands for it.
func sendErrorOf(e *mlsdsv1.SendError) error {
	var code connect.Code
	if err := code.UnmarshalText([]byte(e.GetCode())); err != nil {
		code = connect.CodeUnknown
	}
	ce := connect.NewError(code, errors.New(e.GetMessage()))
	for _, d := range e.GetDetails() {
		if ed, err := connect.NewErrorDetail(d); err == nil {
			ce.AddDetail(ed)
		}
	}
	return ce
}
