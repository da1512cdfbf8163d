package server_test

import (
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// TestStreamDeadlineIdle: a Subscribe stream keeps its write deadline
// while events flow, not after: a stream that delivered events and then
// stays idle for several write timeouts is still open and delivers the
// next event. (HTTP/2 resets a stream whose deadline passes, written to or
// not.)
func TestStreamDeadlineIdle(t *testing.T) {
	const timeout = 100 * time.Millisecond
	e := startEnv(t, func(c *ds.Config, sc *server.Config) {
		c.SlowConsumerTimeout = timeout
		sc.WriteTimeout = timeout
	})
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("idle-deadline")
	alice.createOpaqueGroup(gid, bob)
	sub := bob.subscribe()
	sub.waitCaughtUp(t)
	for round := range 3 {
		for range 5 {
			alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 64))
		}
		for i := range 5 {
			if ev := sub.nextData(t); ev.GetMessage() == nil {
				t.Fatalf("round %d, event %d: %v, want a message", round, i, ev)
			}
		}
		// Idle for longer than any deadline the stream may have set
		// (a wait, not a speed check).
		time.Sleep(5 * timeout)
	}
	select {
	case err := <-sub.done:
		t.Fatalf("the idle stream ended: %v", err)
	default:
	}
}
