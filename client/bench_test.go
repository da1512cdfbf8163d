package client

import (
	"context"
	"testing"
)

// BenchmarkSendReceive measures one application message from Send on one
// client to the Event on another, through a real server on loopback, with
// both clients' states in SQLite files.
func BenchmarkSendReceive(b *testing.B) {
	e := startEnv(b)
	ctx := context.Background()
	open := func(id string) *Client {
		c, err := Open(ctx, Config{Server: e.url, StatePath: b.TempDir() + "/" + id + ".db", ClientID: id, Logger: quiet, KeyPackages: 2})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	alice, bob := open("alice"), open("bob")
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if err := g.Add(ctx, "bob"); err != nil {
		b.Fatal(err)
	}
	next := func(k EventKind) Event {
		for ev := range bob.Events() {
			if ev.Kind == k {
				return ev
			}
			if ev.Kind == EventUndecryptable {
				b.Fatal(ev.Err)
			}
		}
		b.Fatal("bob's events ended")
		return Event{}
	}
	next(EventJoined)
	msg := make([]byte, 256)
	for b.Loop() {
		if _, err := g.Send(ctx, msg); err != nil {
			b.Fatal(err)
		}
		next(EventMessage)
	}
}
