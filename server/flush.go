package server

import (
	"context"
	"net/http"
	"strings"
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
