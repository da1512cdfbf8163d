// Package deletion deletes clients of a real `mlsds serve` process after a
// full life (device link, KeyPackages, a group, messages both ways, join
// links, leaving and rejoining), by the SDK, by `mlsds admin` on the
// database with the server stopped, and by `mlsds admin` through
// AdminService with it running, and checks every row of every table for
// the deleted ids.
package deletion

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mlsds/mlsds/client"
	"github.com/mlsds/mlsds/internal/testkit"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func open(t *testing.T, url, id string, cfg client.Config) *client.Client {
	t.Helper()
	cfg.Server, cfg.ClientID, cfg.Logger, cfg.KeyPackages = url, id, quiet, 5
	if cfg.StatePath == "" {
		cfg.StatePath = filepath.Join(t.TempDir(), id+".db")
	}
	c, err := client.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("client.Open(%s): %v", id, err)
	}
	go func() {
		for range c.Events() {
		}
	}()
	t.Cleanup(func() { c.Close() })
	return c
}

// eventually polls cond until it holds, failing after a generous timeout
// (a hang, not a speed check).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 60s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// life is alice and bob (with a second device, bob2) in one transparent
// group: messages both ways, join links of both, bob leaves and rejoins.
type life struct {
	alice, bob, bob2 *client.Client
	ga               *client.Group
	bobID, bobUser   string
}

func live(t *testing.T, url string) *life {
	ctx := ctxT(t)
	l := &life{bobID: "deleted-bob-7f3a9c", bobUser: "deleted-bob-user-51e2"}
	l.alice = open(t, url, "alice", client.Config{})
	l.bob = open(t, url, l.bobID, client.Config{UserID: l.bobUser})
	dl, err := l.bob.CreateDeviceLink(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.bob.CreateDeviceLink(ctx, time.Hour); err != nil { // one left unused
		t.Fatal(err)
	}
	l.bob2 = open(t, url, "deleted-bob-tablet", client.Config{UserID: dl.UserID, DeviceLink: dl.Link})

	if l.ga, err = l.alice.CreateGroup(ctx, client.GroupOptions{}); err != nil {
		t.Fatal(err)
	}
	gid := l.ga.ID()
	if err := l.ga.Add(ctx, l.bobID); err != nil {
		t.Fatalf("alice adds bob: %v", err)
	}
	eventually(t, "bob's Welcome", func() bool { return l.bob.Group(gid) != nil && !l.bob.Group(gid).Removed() })
	gb := l.bob.Group(gid)
	if _, err := l.ga.Send(ctx, []byte("hello bob")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "bob at alice's epoch", func() bool { return gb.Epoch() == l.ga.Epoch() })
	if _, err := gb.Send(ctx, []byte("hello alice")); err != nil {
		t.Fatal(err)
	}
	link, err := l.ga.CreateJoinLink(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gb.CreateJoinLink(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := gb.Update(ctx); err != nil {
		t.Fatalf("bob's Update: %v", err)
	}

	// Bob leaves; alice's client commits his removal.
	if err := gb.Leave(ctx); err != nil {
		t.Fatalf("bob leaves: %v", err)
	}
	eventually(t, "bob's removal", func() bool { return !slices.Contains(l.ga.Members(), l.bobID) })
	// And comes back through alice's join link.
	gb, err = l.bob.JoinWithLink(ctx, link)
	if err != nil {
		t.Fatalf("bob rejoins: %v", err)
	}
	eventually(t, "bob back", func() bool { return slices.Contains(l.ga.Members(), l.bobID) })
	if _, err := gb.Send(ctx, []byte("I'm back")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "alice at bob's epoch", func() bool { return l.ga.Epoch() == gb.Epoch() })

	// An opaque group that bob created, with alice: it outlives him
	// (groups.creator, remote_trees.sender).
	gbo, err := l.bob.CreateGroup(ctx, client.GroupOptions{Opaque: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := gbo.Add(ctx, "alice"); err != nil {
		t.Fatalf("bob adds alice: %v", err)
	}
	if _, err := gbo.Send(ctx, []byte("opaque hello")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "alice in bob's group", func() bool { return l.alice.Group(gbo.ID()) != nil })
	return l
}

// mlsColumns hold MLS objects that members signed (or encrypted), which
// the Delivery Service keeps as they are: a transparent group's
// handshakes, tree and GroupInfo name their members' credentials.
var mlsColumns = map[string]map[string]bool{
	"messages":        {"data": true},
	"groups":          {"group_info": true, "state": true},
	"group_snapshots": {"state": true},
}

// assertForgotten fails for every row of the store that names one of ids,
// as text or (in blobs, which the dump shows in hex) as bytes, outside
// the MLS objects of mlsColumns.
func assertForgotten(t *testing.T, dump testkit.Dump, ids ...string) {
	t.Helper()
	if len(dump) == 0 {
		t.Fatal("the dump is empty")
	}
	for _, f := range naming(dump, false, ids...) {
		t.Error(f)
	}
}

// naming lists the fields of the store that name one of ids; with all,
// the MLS objects of mlsColumns too.
func naming(dump testkit.Dump, all bool, ids ...string) []string {
	var out []string
	for table, lines := range dump {
		for _, line := range lines {
			for _, field := range strings.Split(line, " | ") {
				col, val, _ := strings.Cut(field, "=")
				if !all && mlsColumns[table][col] {
					continue
				}
				for _, id := range ids {
					if strings.Contains(val, id) || strings.Contains(val, hex.EncodeToString([]byte(id))) {
						out = append(out, fmt.Sprintf("table %s, column %s still names %q: %.300s", table, col, id, line))
					}
				}
			}
		}
	}
	return out
}

// stillWorks checks that alice's client removes the deleted leaves of her
// group (after a Commit of hers, if nothing else prompts it) and goes on.
func stillWorks(t *testing.T, l *life, gone ...string) {
	ctx := ctxT(t)
	if err := l.ga.Update(ctx); err != nil {
		t.Fatalf("alice's Update after the deletion: %v", err)
	}
	eventually(t, "the deleted leaves removed", func() bool {
		for _, id := range gone {
			if slices.Contains(l.ga.Members(), id) {
				return false
			}
		}
		return true
	})
	if _, err := l.ga.Send(ctx, []byte("still here")); err != nil {
		t.Fatalf("alice sends after the deletion: %v", err)
	}
}

// TestDeleteClientSDK: bob deletes himself with the SDK; his tablet, of
// the same user, stays.
func TestDeleteClientSDK(t *testing.T) {
	srv := testkit.StartServe(t, "--prune-interval", "1s")
	l := live(t, srv.URL)
	ctx := ctxT(t)
	if _, err := l.bob.Delete(ctx); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	eventually(t, "bob's leaf removed", func() bool { return !slices.Contains(l.ga.Members(), l.bobID) })
	stillWorks(t, l, l.bobID)
	assertForgotten(t, testkit.DumpSQLite(t, srv.DBPath()), l.bobID)
	// Once alice has acknowledged everything and the pruner has run, the
	// signed history that named bob (his Add, his Commits, the trees and
	// GroupInfos that held his leaf) is gone too: no field of any row
	// names him.
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := naming(testkit.DumpSQLite(t, srv.DBPath()), true, l.bobID)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, f := range left {
				t.Error(f)
			}
			t.Fatal("30 s after bob's deletion and removal, the store still names him")
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The tablet is still a client of the user.
	if err := l.bob2.Sync(ctx); err != nil {
		t.Errorf("bob's tablet after bob's deletion: %v", err)
	}
	if errs := srv.LogsAt("ERROR"); len(errs) > 0 {
		t.Errorf("server logged errors: %v", errs)
	}
}

// TestDeleteUserOffline: the operator deletes bob's user with `mlsds
// admin delete-user` on the database while the server is stopped.
func TestDeleteUserOffline(t *testing.T) {
	srv := testkit.StartServe(t)
	l := live(t, srv.URL)
	dir := srv.DataDir
	l.bob.Close()
	l.bob2.Close()
	// With the server running, the data directory is refused.
	out, err := exec.Command(testkit.Binary(t), "admin", "delete-user", "--data-dir", dir, l.bobUser).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("in use")) {
		t.Errorf("admin on a data directory in use: %v\n%s", err, out)
	}
	stopServe(t, dir)
	out, err = exec.Command(testkit.Binary(t), "admin", "delete-user", "--data-dir", dir, l.bobUser).CombinedOutput()
	if err != nil {
		t.Fatalf("mlsds admin delete-user: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte(l.bobID)) || !bytes.Contains(out, []byte("deleted-bob-tablet")) {
		t.Errorf("admin output does not list both clients:\n%s", out)
	}
	assertForgotten(t, testkit.DumpSQLite(t, filepath.Join(dir, "mlsds.db")), l.bobID, "deleted-bob-tablet", l.bobUser)
	// The server comes back on the same data; alice's client goes on.
	// (The later --data-dir wins over StartServe's own.)
	testkit.StartServe(t, "--data-dir", dir, "--listen", strings.TrimPrefix(srv.URL, "http://"))
	stillWorks(t, l, l.bobID)
	assertForgotten(t, testkit.DumpSQLite(t, filepath.Join(dir, "mlsds.db")), l.bobID, "deleted-bob-tablet", l.bobUser)
}

// TestDeleteUserAdminService: the operator deletes bob's user through a
// running server's AdminService.
func TestDeleteUserAdminService(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte(hex.EncodeToString(testkit.RandBytes(32))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testkit.StartServe(t, "--admin-token-file", tokenFile)
	l := live(t, srv.URL)
	wrong := filepath.Join(t.TempDir(), "wrong.token")
	os.WriteFile(wrong, []byte("not-the-admin-token-at-all"), 0o600)
	out, err := exec.Command(testkit.Binary(t), "admin", "delete-user", "--server", srv.URL, "--admin-token-file", wrong, l.bobUser).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("refused the admin token")) {
		t.Errorf("admin with a wrong token: %v\n%s", err, out)
	}
	out, err = exec.Command(testkit.Binary(t), "admin", "delete-user", "--server", srv.URL, "--admin-token-file", tokenFile, l.bobUser).CombinedOutput()
	if err != nil {
		t.Fatalf("mlsds admin delete-user --server: %v\n%s", err, out)
	}
	stillWorks(t, l, l.bobID)
	assertForgotten(t, testkit.DumpSQLite(t, srv.DBPath()), l.bobID, "deleted-bob-tablet", l.bobUser)
	for _, line := range srv.Logs() {
		if tok, _ := os.ReadFile(tokenFile); strings.Contains(line.Raw, strings.TrimSpace(string(tok))) {
			t.Errorf("the server logged the admin token: %s", line.Raw)
		}
	}
}

// stopServe stops the `mlsds serve` that holds the data directory dir
// (its pid is in the directory's lock file) and waits until it is gone.
func stopServe(t *testing.T, dir string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "mlsds.lock"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		t.Fatalf("lock file holds %q", data)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the server to stop", func() bool { return syscall.Kill(pid, 0) != nil })
}
