package server

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// A Subscribe stream writes one frame per event, and Connect flushes
// after each. When several events are ready at once, flushing each one
// costs a write system call per event per stream; batchingWriter lets the
// stream handler hold the flushes back until the last ready event (or
// maxHeldEvents), so that a burst goes out in one write. Nothing waits for
// more events to arrive: a lone event is flushed at once.
type batchingWriter struct {
	http.ResponseWriter
	hold bool // set and read only by the goroutine of the stream handler
}

// maxHeldEvents bounds how many events may wait for one flush.
const maxHeldEvents = 64

func (w *batchingWriter) Flush() {
	if w.hold {
		return
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *batchingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type batchingWriterKey struct{}

// withBatchingWriter wraps the writer of Subscribe calls and hands it to
// the handler through the request's context.
func withBatchingWriter(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/Subscribe") {
			h.ServeHTTP(w, r)
			return
		}
		bw := &batchingWriter{ResponseWriter: w}
		h.ServeHTTP(bw, r.WithContext(context.WithValue(r.Context(), batchingWriterKey{}, bw)))
	})
}

// holdFlushes tells the stream's writer whether to keep the coming frame
// in its buffer; it does nothing for a stream without a batchingWriter.
func holdFlushes(ctx context.Context, hold bool) {
	if bw, ok := ctx.Value(batchingWriterKey{}).(*batchingWriter); ok {
		bw.hold = hold
	}
}

// flushHeld flushes the frames a stream held back.
func flushHeld(ctx context.Context) {
	if bw, ok := ctx.Value(batchingWriterKey{}).(*batchingWriter); ok {
		bw.hold = false
		bw.Flush()
	}
}

// Write deadlines. A client that stops reading fills its TCP window (or
// its HTTP/2 flow-control window), and a write to it blocks for as long as
// it likes, holding the answer's buffers and, for a stream, its
// subscription. deadlineWriter gives every write a deadline
// (Config.WriteTimeout): a unary answer must be written within it from its
// first byte, and each event of a Subscribe stream within it from its
// start, or at most twice that (the handler keeps the deadline while
// events flow and removes it when the stream is idle: see Subscribe). A write that misses it fails, and the call ends: HTTP/1.1
// closes the connection, HTTP/2 resets the stream.
type deadlineWriter struct {
	http.ResponseWriter
	rc       *http.ResponseController // of the writer underneath
	s        *Server
	stream   bool      // the handler arms the deadline itself
	armed    bool      // a deadline is set
	deadline time.Time // the deadline set, if armed
	timedOut bool      // a write failed after the deadline
	held     int64     // bytes of an answer counted in mlsds_fetch_buffered_bytes
}

type deadlineWriterKey struct{}

// withWriteDeadlines wraps the writer of every call (see deadlineWriter).
func (s *Server) withWriteDeadlines(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dw := &deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w), s: s,
			stream: strings.HasSuffix(r.URL.Path, "/Subscribe")}
		defer dw.done()
		h.ServeHTTP(dw, r.WithContext(context.WithValue(r.Context(), deadlineWriterKey{}, dw)))
	})
}

func (w *deadlineWriter) WriteHeader(code int) {
	w.armUnary()
	w.ResponseWriter.WriteHeader(code)
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	w.armUnary()
	n, err := w.ResponseWriter.Write(p)
	if err != nil {
		w.failed()
	}
	return n, err
}

func (w *deadlineWriter) Flush() {
	w.armUnary()
	if err := w.rc.Flush(); err != nil {
		w.failed()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// armUnary sets the deadline of a unary answer at its first write.
func (w *deadlineWriter) armUnary() {
	if !w.stream && !w.armed {
		w.arm()
	}
}

// arm sets the deadline WriteTimeout from now.
func (w *deadlineWriter) arm() { w.armUntil(time.Now().Add(w.s.cfg.WriteTimeout)) }

// armUntil sets the deadline d.
func (w *deadlineWriter) armUntil(d time.Time) {
	w.armed, w.deadline = true, d
	w.rc.SetWriteDeadline(d)
}

// disarm removes the deadline (between the events of a stream: an idle
// HTTP/2 stream would otherwise be reset when it passes).
func (w *deadlineWriter) disarm() {
	if w.armed {
		w.armed = false
		w.rc.SetWriteDeadline(time.Time{})
	}
}

// failed notes a failed write: the deadline passed, or the client went.
func (w *deadlineWriter) failed() {
	if w.armed && !w.timedOut && !time.Now().Before(w.deadline) {
		w.timedOut = true
		kind := "unary"
		if w.stream {
			kind = "stream"
		}
		w.s.metrics.writeTimeouts.WithLabelValues(kind).Inc()
	}
}

// hold counts n bytes (n < 0: gives them back) of an answer as buffered
// until the call ends.
func (w *deadlineWriter) hold(n int64) {
	w.held += n
	w.s.fetchHeld.Add(n)
	w.s.metrics.fetchBufferedBytes.Add(float64(n))
}

func (w *deadlineWriter) done() {
	if w.held != 0 {
		w.hold(-w.held)
	}
}

func deadlineWriterOf(ctx context.Context) *deadlineWriter {
	dw, _ := ctx.Value(deadlineWriterKey{}).(*deadlineWriter)
	return dw
}

// reserveAnswerBytes takes up to want bytes of Config.FetchBufferedMaxBytes
// for the call's answer, held until the call ends, and returns how many
// (0 when none are left). The caller adjusts with holdAnswerBytes once it
// knows the answer's size.
func (s *Server) reserveAnswerBytes(ctx context.Context, want int64) int64 {
	dw := deadlineWriterOf(ctx)
	if dw == nil {
		return want
	}
	for {
		held := s.fetchHeld.Load()
		r := max(0, min(want, s.cfg.FetchBufferedMaxBytes-held))
		if s.fetchHeld.CompareAndSwap(held, held+r) {
			dw.held += r
			s.metrics.fetchBufferedBytes.Add(float64(r))
			return r
		}
	}
}

// holdAnswerBytes counts n more bytes (n < 0: fewer) of the call's answer
// in mlsds_fetch_buffered_bytes until the call ends.
func holdAnswerBytes(ctx context.Context, n int64) {
	if dw := deadlineWriterOf(ctx); dw != nil {
		dw.hold(n)
	}
}

// streamDeadline keeps the write deadline of a server stream: a client
// that does not read (its window full) is cut once it passes, and its
// stream with it. Setting it costs a message to the HTTP/2 connection's
// goroutine, so it is not set and removed around every event: ready leaves
// it in place while it gives the coming write at least WriteTimeout, and
// otherwise sets it 2*WriteTimeout ahead. So every write has between
// WriteTimeout and twice that. An idle stream must have none (HTTP/2
// resets the stream when it passes even without a write): idle fires
// WriteTimeout before it, and the stream's loop calls disarm then.
type streamDeadline struct {
	dw    *deadlineWriter // nil: no deadlines (the writer is not ours)
	wt    time.Duration
	timer *time.Timer
	// signal, when set, is called instead of sending on idle's channel,
	// and idleDue then says whether it was for the deadline (a loop that
	// waits on one channel of its own for all its wake-ups: a timer's
	// channel costs every select that waits on it a trip to the timer heap).
	signal func()
	fired  atomic.Bool
}

func newStreamDeadline(dw *deadlineWriter, writeTimeout time.Duration) *streamDeadline {
	return &streamDeadline{dw: dw, wt: writeTimeout}
}

// ready makes sure the next write has at least WriteTimeout.
func (d *streamDeadline) ready() {
	if d.dw != nil {
		d.readyAt(time.Now())
	}
}

// readyAt is ready with the time now.
func (d *streamDeadline) readyAt(now time.Time) {
	if d.dw == nil {
		return
	}
	if d.dw.armed && d.dw.deadline.Sub(now) >= d.wt {
		return
	}
	d.dw.armUntil(now.Add(2 * d.wt))
	switch {
	case d.timer != nil:
		d.timer.Reset(d.wt)
	case d.signal != nil:
		d.timer = time.AfterFunc(d.wt, func() {
			d.fired.Store(true)
			d.signal()
		})
	default:
		d.timer = time.NewTimer(d.wt)
	}
}

// idleDue reports, with signal set, whether the deadline is about to pass
// (the stream's loop calls disarm then, if no write runs). A stale report,
// for a deadline set again since, only removes a deadline between writes:
// ready sets it again before the next.
func (d *streamDeadline) idleDue() bool { return d.fired.Swap(false) }

// idle fires when the deadline is about to pass with no write running;
// nil (never) before the first ready, and with signal set.
func (d *streamDeadline) idle() <-chan time.Time {
	if d.timer == nil {
		return nil
	}
	return d.timer.C
}

// disarm removes the deadline.
func (d *streamDeadline) disarm() {
	if d.dw != nil {
		d.dw.disarm()
	}
}

// timedOut reports whether a write failed because the deadline passed.
func (d *streamDeadline) timedOut() bool { return d.dw != nil && d.dw.timedOut }

// stop ends the timer and removes the deadline: none outlives the call
// (over HTTP/1.1 it would stay on the connection for its next request).
func (d *streamDeadline) stop() {
	if d.timer != nil {
		d.timer.Stop()
	}
	d.disarm()
}
