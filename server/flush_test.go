package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

type countingFlusher struct {
	*httptest.ResponseRecorder
	flushes int
}

func (c *countingFlusher) Flush() { c.flushes++ }

// TestBatchingWriter: a Subscribe stream's flushes are held back while the
// handler says more events are ready, and the held frames go out with the
// next flush or with flushHeld; other calls are not wrapped.
func TestBatchingWriter(t *testing.T) {
	var got *batchingWriter
	h := withBatchingWriter(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = r.Context().Value(batchingWriterKey{}).(*batchingWriter)
		if got != nil && w != http.ResponseWriter(got) {
			t.Error("the handler's writer is not the batching writer in its context")
		}
	}))
	under := &countingFlusher{ResponseRecorder: httptest.NewRecorder()}
	h.ServeHTTP(under, httptest.NewRequest("POST", "/mlsds.v1.GroupService/Send", nil))
	if got != nil {
		t.Fatal("a unary call got a batching writer")
	}
	h.ServeHTTP(under, httptest.NewRequest("POST", "/mlsds.v1.DeliveryService/Subscribe", nil))
	if got == nil {
		t.Fatal("Subscribe got no batching writer")
	}
	ctx := context.WithValue(context.Background(), batchingWriterKey{}, got)
	holdFlushes(ctx, true)
	got.Flush()
	got.Flush()
	if under.flushes != 0 {
		t.Fatalf("%d flushes went through while held", under.flushes)
	}
	flushHeld(ctx)
	if under.flushes != 1 || got.hold {
		t.Fatalf("flushHeld: %d flushes, hold %v; want 1, false", under.flushes, got.hold)
	}
	got.Flush()
	if under.flushes != 2 {
		t.Fatalf("a flush that is not held did not go through (%d)", under.flushes)
	}
	if rc := http.NewResponseController(got); rc.Flush() != nil || under.flushes != 3 {
		t.Errorf("http.ResponseController cannot reach the writer (%d flushes)", under.flushes)
	}
}
