package security

import (
	"crypto/sha256"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/internal/testkit"
	"github.com/mlsds/mlsds/mls"
)

// deniableGroup is a deniable group of alice, made before the table runs,
// and a client without session for the calls that carry a membership
// proof instead.
type deniableGroup struct {
	gid    []byte
	g      *mls.Group
	anon   mlsdsv1connect.GroupServiceClient
	lastMs uint64
}

func newDeniableGroup(w *world) *deniableGroup {
	w.t.Helper()
	kp, priv := w.alice.KeyPackage()
	d := &deniableGroup{gid: testkit.RandBytes(16), anon: mlsdsv1connect.NewGroupServiceClient(testkit.H2C(), w.srv.URL)}
	var err error
	if d.g, err = mls.NewGroup(d.gid, kp, priv); err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.alice.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: d.gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_DENIABLE, MembershipKey: d.key(w)})); err != nil {
		w.t.Fatalf("creating the deniable group: %v", err)
	}
	return d
}

func (d *deniableGroup) key(w *world) []byte {
	k, err := d.g.Export(ds.MembershipLabel, ds.MembershipKeyContext(d.gid, d.g.Epoch()), ds.MembershipKeySize)
	if err != nil {
		w.t.Fatal(err)
	}
	return k
}

// sign puts a membership proof of epoch 0 under key on req, skew away from
// now.
func sign[T any](d *deniableGroup, w *world, req *connect.Request[T], procedure string, gid, key []byte, skew time.Duration) *connect.Request[T] {
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(any(req.Msg).(proto.Message))
	if err != nil {
		w.t.Fatal(err)
	}
	h := sha256.Sum256(body)
	ts := uint64(time.Now().Add(skew).UnixMilli())
	if skew == 0 { // no two calls share a MAC
		ts = max(ts, d.lastMs+1)
		d.lastMs = ts
	}
	nonce := ds.NewMembershipNonce()
	mac := ds.MembershipMAC(key, ds.MembershipTranscript(procedure, gid, 0, ts, nonce, h[:]))
	req.Header().Set(ds.MembershipHeader, ds.FormatMembershipHeader(0, ts, nonce, mac))
	return req
}

func (d *deniableGroup) fetch(w *world, gid, key []byte, skew time.Duration) error {
	_, err := d.anon.Fetch(bg, sign(d, w, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid}), mlsdsv1connect.GroupServiceFetchProcedure, gid, key, skew))
	return err
}

// attacks are the deniable group's rows of the table.
func (d *deniableGroup) attacks() []attack {
	made := make([]byte, 32) // a key nobody derived
	return []attack{
		{
			name: "stranger sends to a deniable group with a made-up MAC",
			do: func(w *world) error {
				send := func(gid []byte) error {
					req := connect.NewRequest(&mlsdsv1.SendRequest{Message: privateMessage(w.t, gid, 0)})
					_, err := d.anon.Send(bg, sign(d, w, req, mlsdsv1connect.GroupServiceSendProcedure, gid, made, 0))
					return err
				}
				err := send(d.gid)
				sameAnswer(w.t, "Send with a made-up MAC to a deniable vs a missing group", err, send(ghost), d.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "creator of a deniable group uses its session",
			do: func(w *world) error {
				roster := func(gid []byte) error {
					_, err := w.alice.Groups.GetRoster(bg, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid}))
					return err
				}
				err := roster(d.gid)
				sameAnswer(w.t, "GetRoster of a deniable vs a missing group", err, roster(ghost), d.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "replayed deniable Fetch",
			do: func(w *world) error {
				req := sign(d, w, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: d.gid}), mlsdsv1connect.GroupServiceFetchProcedure, d.gid, d.key(w), 0)
				if _, err := d.anon.Fetch(bg, req); err != nil {
					w.t.Fatalf("the member's own Fetch: %v", err)
				}
				again := connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: d.gid})
				again.Header().Set(ds.MembershipHeader, req.Header().Get(ds.MembershipHeader))
				_, err := d.anon.Fetch(bg, again)
				sameAnswer(w.t, "a replayed Fetch vs one of a missing group", err, d.fetch(w, ghost, made, 0), d.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "deniable Fetch with a stale timestamp",
			do: func(w *world) error {
				err := d.fetch(w, d.gid, d.key(w), -10*time.Minute)
				sameAnswer(w.t, "a stale proof for a deniable vs a missing group", err, d.fetch(w, ghost, made, -10*time.Minute), d.gid, ghost)
				return err
			},
			code: connect.CodeInvalidArgument, msg: "timestamp",
		},
	}
}
