package server_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/server"
)

// atLevel returns the records at exactly level l.
func (h *logCapture) atLevel(l slog.Level) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for i, x := range h.levels {
		if x == l {
			out = append(out, h.records[i])
		}
	}
	return out
}

// TestRefusalLogging: a refused request writes one info line naming the
// procedure, the code and the client, and never the session token; a
// client that hangs up mid-call is not logged as the server's failure.
func TestRefusalLogging(t *testing.T) {
	logs := &logCapture{}
	e := startEnv(t, func(_ *ds.Config, c *server.Config) { c.Logger = slog.New(logs) })
	alice := e.client("alice")
	eve := e.client("eve")
	gid := groupID("logged")
	alice.createOpaqueGroup(gid)

	if _, err := eve.fetch(gid, 1, 10); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("eve's Fetch: %v, want permission_denied", err)
	}
	var line string
	for _, r := range logs.atLevel(slog.LevelInfo) {
		if strings.Contains(r, "GroupService/Fetch") {
			line = r
		}
	}
	if line == "" || !strings.Contains(line, "permission_denied") || !strings.Contains(line, "client=eve") {
		t.Errorf("no info line for the refused Fetch naming its code and client; info lines: %q", logs.atLevel(slog.LevelInfo))
	}

	// eve subscribes and hangs up: her stream ends with her context.
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := eve.delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	stream.Receive() // caught_up
	cancel()
	stream.Close()
	time.Sleep(200 * time.Millisecond) // the server notices the hang-up
	if errs := logs.errors(); len(errs) > 0 {
		t.Errorf("a client hanging up was logged as an error: %q", errs)
	}
	for _, r := range append(logs.atLevel(slog.LevelInfo), logs.atLevel(slog.LevelDebug)...) {
		for _, tok := range []string{alice.token, eve.token} {
			if strings.Contains(r, tok) {
				t.Fatalf("a log line holds a session token: %q", r)
			}
		}
	}
}
