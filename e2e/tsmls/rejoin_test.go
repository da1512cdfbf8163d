package tsmls

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/mlsds/mlsds/client"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/server"
)

// TestStreamAfterRejoin: a client removed from a group and then back in
// it (by external Commit, or by a Welcome) gets the group's messages on
// its Subscribe stream again, also when it is the only subscriber of the
// group on its node (here: two nodes over one store, a on the first, b on
// the second; in TestTSMLSGoSDKJoins the ts-mls clients do not subscribe
// at all). Go SDK clients only.
//
// A regression test: in the DS as it was on 2026-11-26 01:37 UTC, the
// node's tail of the group, made anew for b alone, stopped at the first
// message b may not see (the Commit that brought it back lies between its
// membership windows) and never went past it, so the stream stayed silent
// while Fetch had the messages.
func TestStreamAfterRejoin(t *testing.T) {
	for _, how := range []string{"external-commit", "welcome"} {
		t.Run(how, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "mlsds.db")
			url1, url2 := serveNode(t, db), serveNode(t, db)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			a, b := openQuiet(t, url1, "a"), openQuiet(t, url2, "b")
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			ga, err := a.CreateGroup(ctx, client.GroupOptions{})
			must(err)
			must(ga.Add(ctx, "b"))
			waitKind(t, b, client.EventJoined)
			must(ga.Remove(ctx, "b"))
			waitKind(t, b, client.EventRemoved)
			var gb *client.Group
			if how == "welcome" {
				must(ga.Add(ctx, "b"))
				waitKind(t, b, client.EventJoined)
				gb = b.Group(ga.ID())
			} else {
				// b is no longer a member: a takes it back with a join link.
				link, err := ga.CreateJoinLink(ctx, time.Hour)
				must(err)
				gb, err = b.JoinWithLink(ctx, link)
				must(err)
				waitKind(t, b, client.EventJoined)
				must(ga.Sync(ctx)) // a takes in b's Commit before it sends
			}
			_, err = ga.Send(ctx, []byte("hi"))
			must(err)
			if !waitKind(t, b, client.EventMessage) {
				t.Errorf("b got no message on its stream within 10s of its rejoin")
				must(gb.Sync(ctx))
				if waitKind(t, b, client.EventMessage) {
					t.Errorf("... while Fetch (Group.Sync) has it")
				}
			}
		})
	}
}

// serveNode runs a server over the SQLite store at dbPath. Nodes learn of
// each other's writes by polling the store.
func serveNode(t *testing.T, dbPath string) string {
	t.Helper()
	st, err := sqlite.Open(context.Background(), dbPath, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dsCfg := ds.Config{RequestsPerSecond: 10_000, ClaimsPerMinute: 100_000, ClaimsPerTargetPerMinute: 100_000, PollInterval: 100 * time.Millisecond}
	srv, err := server.New(ds.New(st, dsCfg), server.Config{
		AuthRatePerSecond: -1, KeepAlive: 30 * time.Second, ShutdownTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-done
		st.Close()
	})
	return "http://" + ln.Addr().String()
}

func openQuiet(t *testing.T, url, id string) *client.Client {
	t.Helper()
	c, err := client.Open(context.Background(), client.Config{
		Server: url, StatePath: filepath.Join(t.TempDir(), id+".db"), ClientID: id, KeyPackages: 2,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitKind reads c's events for up to 10s until one of kind k.
func waitKind(t *testing.T, c *client.Client, k client.EventKind) bool {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	for {
		select {
		case ev := <-c.Events():
			t.Logf("%s: %v (epoch %d, seq %d, err %v)", c.ID(), ev.Kind, ev.Epoch, ev.Seq, ev.Err)
			if ev.Kind == k {
				return true
			}
		case <-timer.C:
			return false
		}
	}
}
