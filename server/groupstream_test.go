package server_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// TestGroupStreamsBounded: one client cannot hold more than
// MaxGroupStreams SubscribeGroup streams open (each costs the server a
// goroutine and buffers); the next is refused with QuotaExceeded until
// one ends, and other clients are not affected.
func TestGroupStreamsBounded(t *testing.T) {
	const max = 2
	e := startEnv(t, func(_ *ds.Config, c *server.Config) { c.MaxGroupStreams = max })
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("bounded-streams")
	alice.createOpaqueGroup(gid, alice, bob)
	alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 30))

	// open starts a stream of m and returns it once it is caught up (it
	// holds its place then), or the error that ended it.
	open := func(m *member) (*groupStream, error) {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := m.delivery.SubscribeGroup(ctx, connect.NewRequest(&mlsdsv1.SubscribeGroupRequest{GroupId: gid}))
		if err != nil {
			cancel()
			return nil, err
		}
		s := &groupStream{events: make(chan *mlsdsv1.SubscribeGroupResponse, 64), cancel: cancel, done: make(chan error, 1)}
		go func() {
			defer close(s.events)
			for stream.Receive() {
				s.events <- stream.Msg()
			}
			s.done <- stream.Err()
		}()
		t.Cleanup(s.close)
		for {
			ev := s.next(t)
			if ev == nil {
				return nil, <-s.done
			}
			if ev.GetCaughtUp() != nil {
				return s, nil
			}
		}
	}

	var held []*groupStream
	for i := 0; i < max; i++ {
		s, err := open(bob)
		if err != nil {
			t.Fatalf("bob's stream %d: %v", i+1, err)
		}
		held = append(held, s)
	}
	_, err := open(bob)
	d := detail[mlsdsv1.QuotaExceeded](t, connectErr(t, err, connect.CodeResourceExhausted))
	if d.What != server.WhatGroupStreams || d.Limit != max {
		t.Fatalf("QuotaExceeded{%q, %d}, want {%q, %d}", d.What, d.Limit, server.WhatGroupStreams, max)
	}
	// Another client is not held back by bob's streams.
	if _, err := open(alice); err != nil {
		t.Fatalf("alice's stream while bob is at his bound: %v", err)
	}
	// bob's held streams still deliver.
	alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 30))
	for i, s := range held {
		if m := s.nextMessage(t); m.GroupSeq != 2 {
			t.Fatalf("bob's stream %d got seq %d, want 2", i+1, m.GroupSeq)
		}
	}
	// Once one ends, bob may open another.
	held[0].close()
	var last error
	for range 100 {
		if _, last = open(bob); last == nil {
			break
		}
		connectErr(t, last, connect.CodeResourceExhausted) // the end is seen a moment later
		time.Sleep(10 * time.Millisecond)
	}
	if last != nil {
		t.Fatalf("bob's stream after closing one: %v", last)
	}
}
