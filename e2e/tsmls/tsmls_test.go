// Package tsmls tests mlsds against an independent MLS implementation:
// ts-mls 1.6.4 (TypeScript, RFC 9420) under Node, pinned by package.json and
// package-lock.json in this directory, against a real server started here
// on a loopback port. tsmls.mjs is the ts-mls client (Connect's JSON
// protocol over HTTP/1.1). TestTSMLSInterop runs interop.mjs, where ts-mls
// clients talk among themselves through the DS and print their results as
// one JSON line; the tests in sdk_test.go drive ts-mls clients in sdk.mjs
// over a line protocol on its stdin and stdout and put a client of the Go
// SDK (package client) in the same groups.
//
// Needs node and npm on PATH; node_modules comes from `npm ci` (run by
// .ci/run, or by this test if it is missing). Without them the test skips,
// except under CI=true, where it fails.
package tsmls

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// results is what interop.mjs reports.
type results struct {
	OK     bool     `json:"ok"`
	Error  string   `json:"error"`
	Steps  []string `json:"steps"`
	RPCErr *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Details []any  `json:"details"`
	} `json:"rpcError"`
	Decrypted            map[string][]string `json:"decrypted"`
	DecryptedAfterRemove []string            `json:"decryptedAfterRemove"`
	Refusals             []struct {
		What    string   `json:"what"`
		Code    string   `json:"code"`
		Message string   `json:"message"`
		Details []string `json:"details"`
		Invalid *struct {
			Reason     string `json:"reason"`
			RFCSection string `json:"rfcSection"`
		} `json:"invalid"`
	} `json:"refusals"`
	TreeChecks           int                 `json:"treeChecks"`
	GroupID              []byte              `json:"groupId"`
	TreeHash             []byte              `json:"treeHash"`
	CorruptCommit        string              `json:"corruptCommit"`
	EpochAfterAdd        uint64              `json:"epochAfterAdd"`
	FinalEpoch           uint64              `json:"finalEpoch"`
	AddSeq               uint64              `json:"addSeq"`
	RemoveSeq            uint64              `json:"removeSeq"`
	CMessagesAfterRemove int                 `json:"cMessagesAfterRemove"`
	CFetchAfterRemove    string              `json:"cFetchAfterRemove"`
	Roster               []string            `json:"roster"`
	RosterAfterRemove    []string            `json:"rosterAfterRemove"`
	RosterAfterExternal  []string            `json:"rosterAfterExternal"`
	DecryptedFromD       map[string][]string `json:"decryptedFromD"`
}

const (
	alice = "tsmls-alice"
	bob   = "tsmls-bob"
	carol = "tsmls-carol"
	dave  = "tsmls-dave"
)

func TestTSMLSInterop(t *testing.T) {
	dir := nodeSetup(t)
	url, svc := startServer(t)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "interop.mjs", url)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	t.Logf("node stderr:\n%s", stderr.String())

	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var r results
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("node: %v; no JSON result (%v); stdout:\n%s", runErr, err, stdout.String())
	}
	if !r.OK || runErr != nil {
		t.Fatalf("ts-mls scenario failed after steps %q (exit: %v): %s\nrpc error: %+v", r.Steps, runErr, r.Error, r.RPCErr)
	}

	// Every member decrypted the two others' application messages.
	for _, me := range []string{alice, bob, carol} {
		var want []string
		for _, other := range []string{alice, bob, carol} {
			if other != me {
				want = append(want, "hello from "+other)
			}
		}
		got := slices.Sorted(slices.Values(r.Decrypted[me]))
		if !slices.Equal(got, want) {
			t.Errorf("%s decrypted %q, want %q", me, got, want)
		}
	}
	if !slices.Equal(r.DecryptedAfterRemove, []string{"after C left"}) {
		t.Errorf("after the removal bob decrypted %q, want [\"after C left\"]", r.DecryptedAfterRemove)
	}

	// The corrupted Commit was refused as invalid, with the rule named.
	if len(r.Refusals) != 1 || r.Refusals[0].Code != "invalid_argument" || !slices.Contains(r.Refusals[0].Details, "mlsds.v1.InvalidMessage") {
		t.Errorf("refusals %+v, want the corrupted commit refused with invalid_argument + InvalidMessage", r.Refusals)
	} else if inv := r.Refusals[0].Invalid; inv == nil || inv.RFCSection == "" || !strings.Contains(strings.ToLower(inv.Reason), "signature") {
		t.Errorf("corrupted commit refused with %+v, want a signature rule with its RFC section", inv)
	} else {
		t.Logf("corrupted commit refused: %s (RFC 9420 §%s)", inv.Reason, inv.RFCSection)
	}
	// The same bytes, decoded here, are a Commit by a member whose
	// signature fails: what was flipped is the signature, not the framing.
	if b, err := base64.StdEncoding.DecodeString(r.CorruptCommit); err != nil {
		t.Error(err)
	} else {
		var m mls.MLSMessage
		if err := m.UnmarshalBinary(b); err != nil {
			t.Errorf("corrupted commit does not decode: %v", err)
		} else if m.WireFormat != mls.WireFormatPublicMessage {
			t.Errorf("corrupted commit has wire format %v", m.WireFormat)
		}
	}

	// Epochs: 0 at creation, 1 after A's Add, 2 after B's update, 3 after
	// A's Remove (the refused Commit changed nothing), 4 after D's
	// external Commit, 5 after the Commit by reference.
	if r.EpochAfterAdd != 1 || r.FinalEpoch != 5 {
		t.Errorf("epochs %d after add, %d at the end; want 1 and 5", r.EpochAfterAdd, r.FinalEpoch)
	}
	if r.RemoveSeq <= r.AddSeq {
		t.Errorf("remove commit at seq %d, add commit at %d", r.RemoveSeq, r.AddSeq)
	}
	// The script compared the DS's tree with ts-mls's after every Commit;
	// here the DS's own view of the end state agrees with ts-mls's
	// GroupContext.
	if r.TreeChecks != 7 {
		t.Errorf("%d tree comparisons ran, want 7 (create, add, update, refused commit, remove, external commit, commit by reference)", r.TreeChecks)
	}
	tree, err := svc.RatchetTree(context.Background(), alice, r.GroupID)
	if err != nil {
		t.Fatalf("RatchetTree: %v", err)
	}
	if tree.Epoch != r.FinalEpoch || !bytes.Equal(tree.TreeHash, r.TreeHash) {
		t.Errorf("DS at epoch %d with tree hash %x; ts-mls at epoch %d with %x", tree.Epoch, tree.TreeHash, r.FinalEpoch, r.TreeHash)
	}

	// Carol gets nothing after the Commit that removed her.
	if r.CMessagesAfterRemove != 0 {
		t.Errorf("carol fetched %d messages after her removal", r.CMessagesAfterRemove)
	}
	t.Logf("carol's Fetch after her removal: %d messages (error code %q)", r.CMessagesAfterRemove, r.CFetchAfterRemove)
	if want := []string{alice, bob}; !slices.Equal(r.RosterAfterRemove, want) {
		t.Errorf("roster after the removal %q, want %q", r.RosterAfterRemove, want)
	}
	// Dave joined by external commit and the others decrypted him.
	for _, me := range []string{alice, bob} {
		if got := r.DecryptedFromD[me]; !slices.Equal(got, []string{"hello from " + dave}) {
			t.Errorf("%s decrypted %q from dave", me, got)
		}
	}
	if want := []string{alice, bob, dave}; !slices.Equal(r.RosterAfterExternal, want) {
		t.Errorf("roster after the external commit %q, want %q", r.RosterAfterExternal, want)
	}
	// Bob's Remove proposal for Dave, committed by reference by Alice.
	if want := []string{alice, bob}; !slices.Equal(r.Roster, want) {
		t.Errorf("final roster %q, want %q", r.Roster, want)
	}
}

// nodeSetup finds node and npm and makes sure node_modules is installed;
// it returns the directory of interop.mjs.
func nodeSetup(t *testing.T) string {
	t.Helper()
	ci := os.Getenv("CI") == "true"
	unavailable := func(format string, args ...any) {
		t.Helper()
		if ci {
			t.Fatalf(format+" (CI=true: .ci/run must install Node 20+ and run npm ci in e2e/tsmls)", args...)
		}
		t.Skipf(format, args...)
	}
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			unavailable("%s not found on PATH: the ts-mls interop test needs Node.js and npm", tool)
		}
	}
	// interop.mjs needs fetch with streamed bodies and WebCrypto Ed25519
	// (which ts-mls uses for suite 1): Node 18 or later. Tested on Node 20.
	if out, err := exec.Command("node", "--version").Output(); err != nil {
		unavailable("node --version: %v", err)
	} else if v := strings.TrimSpace(string(out)); nodeMajor(v) < 18 {
		unavailable("node %s is too old: the ts-mls interop test needs Node 18 or later", v)
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ts-mls", "package.json")); errors.Is(err, os.ErrNotExist) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			unavailable("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	return dir
}

// nodeMajor returns the major version of a "v20.1.2" version string, or 0.
func nodeMajor(v string) int {
	major, _, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return 0
	}
	return n
}

// startServer runs the Connect server over a ds.Service on a SQLite file
// on a loopback port (as server/harness_test.go does) and returns its URL.
// Plain HTTP/1.1 reaches it, which is what Node's fetch speaks.
func startServer(t *testing.T) (string, *ds.Service) {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "mlsds.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dsCfg := ds.Config{
		RequestsPerSecond:        10_000,
		ClaimsPerMinute:          100_000,
		ClaimsPerTargetPerMinute: 100_000,
		PollInterval:             time.Second,
	}
	srvCfg := server.Config{
		AuthRatePerSecond: -1,
		KeepAlive:         30 * time.Second,
		ShutdownTimeout:   5 * time.Second,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxMessageSize:    dsCfg.MaxMessageSize,
		Metrics:           server.NewMetrics(),
	}
	svc := ds.New(srvCfg.Metrics.InstrumentStore(st), dsCfg)
	srv, err := server.New(svc, srvCfg)
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
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		st.Close()
	})
	return "http://" + ln.Addr().String(), svc
}

// TestTSMLSExternalPubBug pins down the ts-mls 1.6.4 bug that interop.mjs
// works around (fixed upstream in ts-mls PR 449): the GroupInfo that its
// createGroupInfoWithExternalPub made (saved in testdata; the mlsds DS
// accepts it, since its signature and GroupContext are good) carries the
// bare 32-byte X25519 key as the external_pub extension_data, where
// §12.4.3.2 wants struct { HPKEPublicKey external_pub<V>; }, so a
// conforming joiner cannot read the key.
func TestTSMLSExternalPubBug(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "tsmls-1.6.4-groupinfo-external-pub-unprefixed.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var m mls.MLSMessage
	if err := m.UnmarshalBinary(data); err != nil {
		t.Fatalf("the ts-mls GroupInfo does not decode: %v", err)
	}
	if m.WireFormat != mls.WireFormatGroupInfo || m.GroupInfo == nil {
		t.Fatalf("wire format %v, want a GroupInfo", m.WireFormat)
	}
	ext, ok := m.GroupInfo.Extensions.Find(mls.ExtensionTypeExternalPub)
	if !ok {
		t.Fatal("no external_pub extension")
	}
	if len(ext.ExtensionData) != 32 {
		t.Errorf("external_pub extension_data is %d bytes, want the bare 32-byte key of the bug", len(ext.ExtensionData))
	}
	if _, err := m.GroupInfo.ExternalPub(); !errors.Is(err, mls.ErrDecode) {
		t.Errorf("ExternalPub() = %v, want an error wrapping ErrDecode", err)
	}
}
