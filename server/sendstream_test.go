package server_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// sendStreamAnswers sends msgs over one SendStream of m, all of them before
// reading any answer, and returns the answers.
func sendStreamAnswers(t *testing.T, m *member, msgs [][]byte) []*mlsdsv1.SendStreamResponse {
	t.Helper()
	stream := m.groups.SendStream(context.Background())
	sendErr := make(chan error, 1)
	go func() {
		for _, msg := range msgs {
			if err := stream.Send(&mlsdsv1.SendStreamRequest{Message: msg}); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- stream.CloseRequest()
	}()
	var out []*mlsdsv1.SendStreamResponse
	for range msgs {
		res, err := stream.Receive()
		if err != nil {
			t.Fatalf("SendStream: answer %d: %v", len(out), err)
		}
		out = append(out, res)
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("SendStream: sending: %v", err)
	}
	if _, err := stream.Receive(); err == nil {
		t.Fatalf("SendStream: an answer more than messages sent")
	}
	stream.CloseResponse()
	return out
}

// TestSendStream: a member sends 300 application messages over one
// SendStream without waiting for answers. Every answer is a receipt, in
// the order sent, and the group holds exactly those messages in that
// order; the same bytes again get the same receipts.
func TestSendStream(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	g := groupID("stream")
	alice.createOpaqueGroup(g, alice, bob)

	msgs := make([][]byte, 300)
	for i := range msgs {
		msgs[i] = privateMessage(t, g, 0, mls.ContentTypeApplication, 100+i)
	}
	answers := sendStreamAnswers(t, alice, msgs)
	for i, a := range answers {
		r := a.GetReceipt()
		if r == nil {
			t.Fatalf("answer %d: %v, want a receipt", i, a.GetError())
		}
		if r.GroupSeq != uint64(i+1) || !bytes.Equal(r.GroupId, g) {
			t.Fatalf("answer %d: receipt for seq %d of %q, want seq %d: the stream's order is not kept", i, r.GroupSeq, r.GroupId, i+1)
		}
	}
	var got [][]byte
	for from := uint64(1); ; {
		page, err := bob.fetch(g, from, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, env := range page.Messages {
			got = append(got, env.Message)
		}
		if len(page.Messages) == 0 {
			break
		}
		from = page.NextSeq
	}
	if len(got) != len(msgs) {
		t.Fatalf("the group holds %d messages, want %d", len(got), len(msgs))
	}
	for i := range got {
		if !bytes.Equal(got[i], msgs[i]) {
			t.Fatalf("message %d of the group is not the %dth sent", i+1, i+1)
		}
	}
	again := sendStreamAnswers(t, alice, msgs[:5])
	for i, a := range again {
		if !proto.Equal(a.GetReceipt(), answers[i].GetReceipt()) {
			t.Errorf("resubmitted message %d: %v, want the first receipt %v", i, a, answers[i])
		}
	}
}

// TestSendStreamRefusalsAsSend: what the stream refuses, it refuses with
// the code, message and details that Send returns for the same message,
// and a refusal does not end the stream: the messages around it are
// accepted.
func TestSendStreamRefusalsAsSend(t *testing.T) {
	e := startEnv(t, func(c *ds.Config, _ *server.Config) { c.MaxMessageSize = 4 << 10 })
	alice, bob, mallory := e.client("alice"), e.client("bob"), e.client("mallory")
	g := groupID("refusals")
	alice.createOpaqueGroup(g, alice, bob)
	// Move the group to epoch 1, so that there is a stale epoch to refuse.
	commit := privateMessage(t, g, 0, mls.ContentTypeCommit, 64)
	alice.mustSend(commit)

	other := groupID("mallorys")
	mallory.createOpaqueGroup(other, mallory)
	cases := []struct {
		name string
		from *member
		msg  []byte
	}{
		{"not a member", mallory, privateMessage(t, g, 1, mls.ContentTypeApplication, 50)},
		{"no such group", alice, privateMessage(t, groupID("none"), 0, mls.ContentTypeApplication, 50)},
		{"future epoch", alice, privateMessage(t, g, 7, mls.ContentTypeApplication, 50)},
		{"a Commit of a past epoch", alice, privateMessage(t, g, 0, mls.ContentTypeCommit, 64)},
		{"not an MLSMessage", alice, []byte("hello")},
		{"too large", alice, privateMessage(t, g, 1, mls.ContentTypeApplication, 5<<10)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, unaryErr := c.from.groups.Send(context.Background(), connect.NewRequest(&mlsdsv1.SendRequest{Message: c.msg}))
			ce := new(connect.Error)
			if !errors.As(unaryErr, &ce) {
				t.Fatalf("Send: %v, want a refusal", unaryErr)
			}
			// An accepted message of the sender's own group on either side.
			own := g
			if c.from == mallory {
				own = other
			}
			before := privateMessage(t, own, 1, mls.ContentTypeApplication, 40)
			if c.from == mallory {
				before = privateMessage(t, own, 0, mls.ContentTypeApplication, 40)
			}
			after := append([]byte(nil), before...)
			after[len(after)-1] ^= 1 // other bytes, same header
			answers := sendStreamAnswers(t, c.from, [][]byte{before, c.msg, after})
			if answers[0].GetReceipt() == nil || answers[2].GetReceipt() == nil {
				t.Fatalf("the messages around the refused one: %v, %v; want receipts", answers[0], answers[2])
			}
			if answers[2].GetReceipt().GroupSeq != answers[0].GetReceipt().GroupSeq+1 {
				t.Errorf("the refused message took a sequence number: %d then %d", answers[0].GetReceipt().GroupSeq, answers[2].GetReceipt().GroupSeq)
			}
			se := answers[1].GetError()
			if se == nil {
				t.Fatalf("SendStream accepted what Send refused (%v)", unaryErr)
			}
			if se.Code != ce.Code().String() || se.Message != ce.Message() {
				t.Errorf("SendStream: %s %q; Send: %s %q", se.Code, se.Message, ce.Code(), ce.Message())
			}
			if len(se.Details) != len(ce.Details()) {
				t.Fatalf("SendStream: %d details; Send: %d", len(se.Details), len(ce.Details()))
			}
			for i, d := range ce.Details() {
				if se.Details[i].TypeUrl != "type.googleapis.com/"+d.Type() || !bytes.Equal(se.Details[i].Value, d.Bytes()) {
					t.Errorf("detail %d: %s %x; Send: %s %x", i, se.Details[i].TypeUrl, se.Details[i].Value, d.Type(), d.Bytes())
				}
			}
		})
	}
}

// TestSendStreamSession: the stream needs a session; once the session
// expires, or its client is deleted, the next message ends the stream
// with Unauthenticated and is not stored.
func TestSendStreamSession(t *testing.T) {
	var skew atomic.Int64
	e := startEnv(t, func(_ *ds.Config, c *server.Config) {
		c.SessionTTL = time.Hour
		c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	alice, bob := e.client("alice"), e.client("bob")
	g := groupID("session")
	alice.createOpaqueGroup(g, alice, bob)

	t.Run("no session", func(t *testing.T) {
		anon := e.newMember("anon")
		stream := anon.groups.SendStream(context.Background())
		stream.Send(&mlsdsv1.SendStreamRequest{Message: privateMessage(t, g, 0, mls.ContentTypeApplication, 10)})
		_, err := stream.Receive()
		connectErr(t, err, connect.CodeUnauthenticated)
	})

	for _, c := range []struct {
		name string
		end  func(t *testing.T, m *member)
	}{
		{"expired", func(t *testing.T, m *member) { skew.Store(int64(2 * time.Hour)) }},
		{"deleted", func(t *testing.T, m *member) {
			if _, err := m.account().DeleteClient(context.Background(), connect.NewRequest(&mlsdsv1.DeleteClientRequest{})); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			skew.Store(0)
			m := e.client("carol-" + c.name)
			g := groupID(c.name)
			m.createOpaqueGroup(g, m, bob)
			stream := m.groups.SendStream(context.Background())
			defer stream.CloseResponse()
			if err := stream.Send(&mlsdsv1.SendStreamRequest{Message: privateMessage(t, g, 0, mls.ContentTypeApplication, 10)}); err != nil {
				t.Fatal(err)
			}
			if res, err := stream.Receive(); err != nil || res.GetReceipt() == nil {
				t.Fatalf("first message: %v, %v", res, err)
			}
			c.end(t, m)
			stream.Send(&mlsdsv1.SendStreamRequest{Message: privateMessage(t, g, 0, mls.ContentTypeApplication, 11)})
			_, err := stream.Receive()
			connectErr(t, err, connect.CodeUnauthenticated)
			skew.Store(0)
			page, ferr := bob.fetch(g, 1, 10)
			if ferr != nil {
				t.Fatal(ferr)
			}
			if len(page.Messages) != 1 {
				t.Errorf("the group holds %d messages, want only the one sent before the session ended", len(page.Messages))
			}
		})
	}
}

// TestSendStreamsPerClient: a client's SendStreams are bounded as its
// Subscribe streams are: opening one too many ends the oldest with
// ResourceExhausted, and the newest works.
func TestSendStreamsPerClient(t *testing.T) {
	const max = 2
	e := startEnv(t, func(_ *ds.Config, c *server.Config) { c.MaxStreamsPerClient = max })
	alice := e.client("alice")
	g := groupID("streams")
	alice.createOpaqueGroup(g, alice)
	var streams []*connect.BidiStreamForClient[mlsdsv1.SendStreamRequest, mlsdsv1.SendStreamResponse]
	for i := range max + 1 {
		s := alice.groups.SendStream(context.Background())
		defer s.CloseResponse()
		if err := s.Send(&mlsdsv1.SendStreamRequest{Message: privateMessage(t, g, 0, mls.ContentTypeApplication, 10+i)}); err != nil {
			t.Fatal(err)
		}
		if res, err := s.Receive(); err != nil || res.GetReceipt() == nil {
			t.Fatalf("stream %d: %v, %v", i, res, err)
		}
		streams = append(streams, s)
	}
	_, err := streams[0].Receive()
	ce := connectErr(t, err, connect.CodeResourceExhausted)
	if d := detail[mlsdsv1.TooLarge](t, ce); d == nil || d.Limit != max {
		t.Errorf("detail %v, want TooLarge with limit %d", d, max)
	}
	last := streams[max]
	if err := last.Send(&mlsdsv1.SendStreamRequest{Message: privateMessage(t, g, 0, mls.ContentTypeApplication, 99)}); err != nil {
		t.Fatal(err)
	}
	if res, err := last.Receive(); err != nil || res.GetReceipt() == nil {
		t.Fatalf("newest stream after the oldest ended: %v, %v", res, err)
	}
}

// TestSendStreamLongerThanARequest: a stream may carry many times the
// largest request in all; each message is bounded, not the stream.
func TestSendStreamLongerThanARequest(t *testing.T) {
	e := startEnv(t, func(c *ds.Config, s *server.Config) {
		c.MaxMessageSize = 8 << 10
		s.MaxRequestBytes = 16 << 10
	})
	alice := e.client("alice")
	g := groupID("long")
	alice.createOpaqueGroup(g, alice)
	msgs := make([][]byte, 200) // 200 * 6 KiB: 75 times the request limit
	for i := range msgs {
		msgs[i] = privateMessage(t, g, 0, mls.ContentTypeApplication, 6<<10)
	}
	for i, a := range sendStreamAnswers(t, alice, msgs) {
		if a.GetReceipt() == nil {
			t.Fatalf("message %d: %v", i, a.GetError())
		}
	}
}
