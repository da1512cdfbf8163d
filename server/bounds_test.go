package server_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// logCapture is a slog.Handler that keeps every record at or above Debug.
type logCapture struct {
	mu      sync.Mutex
	records []string
	levels  []slog.Level
}

func (h *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCapture) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logCapture) WithGroup(string) slog.Handler            { return h }
func (h *logCapture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, b.String())
	h.levels = append(h.levels, r.Level)
	return nil
}

// errors returns the records at level Error or above.
func (h *logCapture) errors() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for i, l := range h.levels {
		if l >= slog.LevelError {
			out = append(out, h.records[i])
		}
	}
	return out
}

// TestNumbersOutOfRange sends numbers that no group can reach or that are
// beyond a documented bound. Each is the client's mistake: it gets
// InvalidArgument with a message that names the bound, and the server
// logs no ERROR line (those are for the operator's problems).
func TestNumbersOutOfRange(t *testing.T) {
	logs := &logCapture{}
	e := startEnv(t, func(_ *ds.Config, c *server.Config) { c.Logger = slog.New(logs) })
	ctx := context.Background()
	alice := e.client("alice")
	gid := groupID("bounds")
	alice.createOpaqueGroup(gid)
	last := alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 10)).GroupSeq
	tgid := groupID("bounds-t")
	_, gi, tree := alice.newTransparentGroup(tgid)
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{GroupId: tgid, GroupInfo: gi, RatchetTree: tree})); err != nil {
		t.Fatal(err)
	}

	const maxSeq = "9223372036854775807" // 2^63-1
	fetch := func(from uint64, limit uint32) error {
		_, err := alice.groups.Fetch(ctx, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid, FromSeq: from, Limit: limit}))
		return err
	}
	ack := func(seq uint64) error {
		_, err := alice.groups.Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{Cursors: []*mlsdsv1.Cursor{{GroupId: gid, Seq: seq}}}))
		return err
	}
	putTree := func(epoch uint64) error {
		_, err := alice.groups.PutRemoteTree(ctx, connect.NewRequest(&mlsdsv1.PutRemoteTreeRequest{GroupId: gid,
			RemoteTree: &mlsdsv1.RemoteTree{Epoch: epoch, Blob: []byte("blob")}}))
		return err
	}
	for _, tc := range []struct {
		name  string
		call  func() error
		bound string // in the error message
	}{
		{"Fetch from_seq 2^63", func() error { return fetch(1<<63, 0) }, maxSeq},
		{"Fetch from_seq max uint64", func() error { return fetch(math.MaxUint64, 10) }, maxSeq},
		{"Fetch limit above the maximum", func() error { return fetch(1, 1001) }, "1000"},
		{"Fetch limit max uint32", func() error { return fetch(1, math.MaxUint32) }, "1000"},
		{"Ack seq 2^63", func() error { return ack(1 << 63) }, maxSeq},
		{"Ack seq max uint64", func() error { return ack(math.MaxUint64) }, maxSeq},
		{"Ack beyond the last message", func() error { return ack(last + 1) }, fmt.Sprint(last)},
		{"GetPath beyond the tree", func() error {
			_, err := alice.groups.GetPath(ctx, connect.NewRequest(&mlsdsv1.GetPathRequest{GroupId: tgid, LeafIndex: 7}))
			return err
		}, "1 leaves"},
		{"GetPath max uint32", func() error {
			_, err := alice.groups.GetPath(ctx, connect.NewRequest(&mlsdsv1.GetPathRequest{GroupId: tgid, LeafIndex: math.MaxUint32}))
			return err
		}, "1 leaves"},
		{"GetRoster leaf beyond the tree", func() error {
			_, err := alice.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: tgid, IncludeLeaves: true, LeafIndices: []uint32{math.MaxUint32}}))
			return err
		}, "1 leaves"},
		{"CreateGroup opaque epoch 2^62", func() error {
			_, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{GroupId: groupID("e62"),
				Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, Epoch: 1 << 62}))
			return err
		}, "4611686018427387903"},
		{"CreateGroup opaque epoch max uint64", func() error {
			_, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{GroupId: groupID("e64"),
				Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, Epoch: math.MaxUint64}))
			return err
		}, "4611686018427387903"},
		{"PutRemoteTree epoch 2^63", func() error { return putTree(1 << 63) }, "4611686018427387903"},
		{"PutRemoteTree epoch max uint64", func() error { return putTree(math.MaxUint64) }, "4611686018427387903"},
		{"SendCommitBundle remote tree epoch max uint64", func() error {
			_, err := alice.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
				Commit:     privateMessage(t, gid, 0, mls.ContentTypeCommit, 10),
				RemoteTree: &mlsdsv1.RemoteTree{Epoch: math.MaxUint64, Blob: []byte("blob")}}))
			return err
		}, "starts epoch 1"},
		{"ClaimKeyPackages cipher_suite beyond uint16", func() error {
			_, err := alice.kps.ClaimKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
				Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: "bob"}, CipherSuite: 1<<16 + 1}))
			return err
		}, "65537"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ce := connectErr(t, tc.call(), connect.CodeInvalidArgument)
			if !strings.Contains(ce.Message(), tc.bound) {
				t.Errorf("message %q does not name the bound %s", ce.Message(), tc.bound)
			}
		})
	}
	// Too many clients in one claim is documented as ResourceExhausted
	// with a TooLarge detail giving the bound: the caller splits the list.
	ids := make([]string, ds.MaxClaimBatch+1)
	for i := range ids {
		ids[i] = fmt.Sprintf("c%d", i)
	}
	_, err := alice.kps.ClaimKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{ClientIds: ids, CipherSuite: uint32(suite)}))
	ce := connectErr(t, err, connect.CodeResourceExhausted)
	if d := detail[mlsdsv1.TooLarge](t, ce); d.Limit != ds.MaxClaimBatch {
		t.Errorf("TooLarge limit %d, want %d", d.Limit, ds.MaxClaimBatch)
	}

	if errs := logs.errors(); len(errs) > 0 {
		t.Errorf("%d ERROR log lines for clients' mistakes:\n%s", len(errs), strings.Join(errs, "\n"))
	}
}
