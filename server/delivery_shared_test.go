package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// TestSharedMessageEvent: the response made once for an envelope is
// shared by every subscriber, and its bytes on the wire decode to the
// same event as a response built for one subscriber.
func TestSharedMessageEvent(t *testing.T) {
	e := &ds.Envelope{GroupID: []byte("shared-group"), GroupSeq: 42, Epoch: 7, Sender: "alice",
		ContentType: mls.ContentTypeApplication, Data: []byte("an MLS message"), AcceptedAt: time.Unix(1700000000, 123000)}
	var c sharedResponses
	first := c.subscribe(e)
	if again := c.subscribe(e); again != first {
		t.Fatal("a second subscriber got a response of its own, not the shared one")
	}
	want, _ := eventMessage(ds.Event{Message: e})
	b, err := proto.Marshal(first)
	if err != nil {
		t.Fatal(err)
	}
	var got mlsdsv1.SubscribeResponse
	if err := proto.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&got, want) {
		t.Fatalf("shared response decodes to %v, want %v", &got, want)
	}
	// Another envelope with the same content is another message as far as
	// the cache knows: its response is its own.
	e2 := *e
	if c.subscribe(&e2) == first {
		t.Fatal("two envelopes share one response")
	}
}

// TestSharedResponsesBounded: the cache keeps at most two generations of
// sharedShardBytes per shard, however many envelopes pass.
func TestSharedResponsesBounded(t *testing.T) {
	var c sharedResponses
	data := make([]byte, 4096)
	for i := range 4000 {
		c.subscribe(&ds.Envelope{GroupID: []byte("g"), GroupSeq: uint64(i), Data: data})
	}
	for i := range c.shards {
		sh := &c.shards[i]
		n := 0
		for _, m := range []map[*ds.Envelope]*mlsdsv1.SubscribeResponse{sh.cur, sh.old} {
			for _, r := range m {
				n += len(r.ProtoReflect().GetUnknown()) + sharedOverhead
			}
		}
		// Each generation may pass the bound by the entry that reached it.
		if limit := 2 * (sharedShardBytes + len(data) + 1024); n > limit {
			t.Fatalf("shard %d holds %d bytes, above %d", i, n, limit)
		}
	}
}

// TestBinaryCodec: only the binary protobuf codec of the three protocols
// gets shared responses (JSON would lose their unknown fields).
func TestBinaryCodec(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/connect+proto":      true,
		"application/grpc":               true,
		"application/grpc+proto":         true,
		"application/grpc-web":           true,
		"application/grpc-web+proto":     true,
		"Application/Connect+Proto; x=y": true,
		"application/connect+json":       false,
		"application/grpc+json":          false,
		"application/grpc-web+json":      false,
		"application/json":               false,
		"":                               false,
	} {
		if got := binaryCodec(ct); got != want {
			t.Errorf("binaryCodec(%q) = %v, want %v", ct, got, want)
		}
	}
}

// TestStreamsDrain: drain ends every registered stream with errDraining,
// and a stream registered after it at once.
func TestStreamsDrain(t *testing.T) {
	st := newStreams(4)
	ctx1, cancel1 := context.WithCancelCause(context.Background())
	defer st.add("alice", cancel1)()
	st.drain()
	if !errors.Is(context.Cause(ctx1), errDraining) {
		t.Fatalf("open stream after drain: cause %v, want errDraining", context.Cause(ctx1))
	}
	ctx2, cancel2 := context.WithCancelCause(context.Background())
	defer st.add("bob", cancel2)()
	if !errors.Is(context.Cause(ctx2), errDraining) {
		t.Fatalf("stream opened after drain: cause %v, want errDraining", context.Cause(ctx2))
	}
}
