package security

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/internal/testkit"
	"github.com/mlsds/mlsds/mls"
)

var bg = context.Background()

// sameAnswer fails unless the two errors read the same to a client: code,
// message and details.
//
// A group id in a message or a NotMember detail is the caller's own input
// echoed back, so it is masked before comparing.
func sameAnswer(t *testing.T, what string, a, b error, ids ...[]byte) {
	t.Helper()
	var ca, cb *connect.Error
	if !errors.As(a, &ca) || !errors.As(b, &cb) {
		t.Errorf("%s: %v / %v: want two Connect errors", what, a, b)
		return
	}
	mask := func(s string) string {
		for _, id := range ids {
			s = strings.ReplaceAll(s, fmt.Sprintf("%x", id), "<group>")
			s = strings.ReplaceAll(s, fmt.Sprintf("%x", append([]byte{0x0a, byte(len(id))}, id...)), "<group>")
		}
		return s
	}
	ma, mb := mask(ca.Message()), mask(cb.Message())
	da, db := mask(fmt.Sprint(detailsOf(ca))), mask(fmt.Sprint(detailsOf(cb)))
	if ca.Code() != cb.Code() || ma != mb || da != db {
		t.Errorf("%s: an outsider can tell the cases apart:\n  %v %q %v\n  %v %q %v", what,
			ca.Code(), ma, da, cb.Code(), mb, db)
	}
}

func detailsOf(ce *connect.Error) []string {
	var out []string
	for _, d := range ce.Details() {
		out = append(out, d.Type()) // the contents echo the caller's group id
	}
	return out
}

// ghost is a group id nobody created.
var ghost = []byte("no-such-group-0123456789")

func TestHostileTable(t *testing.T) {
	w := newWorld(t)
	den := newDeniableGroup(w) // deniable_table_test.go
	rw := newReinitWorld(w)    // reinit_table_test.go
	ow := newOpaqueWorld(w)    // opaque_table_test.go
	cases := []attack{
		{
			name: "stranger fetches a transparent group's GroupInfo",
			do: func(w *world) error {
				_, err := w.eve.Groups.GetGroupInfo(bg, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: w.gid}))
				_, err2 := w.eve.Groups.GetGroupInfo(bg, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: ghost}))
				sameAnswer(w.t, "GetGroupInfo of a real vs a missing group", err, err2, w.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "stranger reads a transparent group's tree",
			do: func(w *world) error {
				_, err := w.eve.Groups.GetRatchetTree(bg, connect.NewRequest(&mlsdsv1.GetRatchetTreeRequest{GroupId: w.gid}))
				_, err2 := w.eve.Groups.GetRatchetTree(bg, connect.NewRequest(&mlsdsv1.GetRatchetTreeRequest{GroupId: ghost}))
				sameAnswer(w.t, "GetRatchetTree of a real vs a missing group", err, err2, w.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "stranger reads a path of a transparent group",
			do: func(w *world) error {
				_, err := w.eve.Groups.GetPath(bg, connect.NewRequest(&mlsdsv1.GetPathRequest{GroupId: w.gid}))
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "stranger joins by external Commit from a leaked GroupInfo",
			do: func(w *world) error {
				gi, err := w.alice.g.GroupInfo(true)
				if err != nil {
					w.t.Fatal(err)
				}
				kp, priv := w.eve.KeyPackage()
				_, pm, err := mls.JoinExternal(gi, nil, kp, priv)
				if err != nil {
					w.t.Fatal(err)
				}
				req := w.bundle(pm, nil, nil)
				_, err = w.eve.Groups.SendCommitBundle(bg, connect.NewRequest(req))
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "stranger sends to a group, wrong epoch",
			do: func(w *world) error {
				msg := privateMessage(w.t, w.gid, 7)
				_, err := w.eve.Groups.Send(bg, connect.NewRequest(&mlsdsv1.SendRequest{Message: msg}))
				_, err2 := w.eve.Groups.Send(bg, connect.NewRequest(&mlsdsv1.SendRequest{Message: privateMessage(w.t, ghost, 7)}))
				sameAnswer(w.t, "Send to a real vs a missing group", err, err2, w.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "stranger fetches a group",
			do: func(w *world) error {
				_, err := w.eve.Groups.Fetch(bg, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: w.gid, FromSeq: 1}))
				_, err2 := w.eve.Groups.Fetch(bg, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: ghost, FromSeq: 1}))
				sameAnswer(w.t, "Fetch of a real vs a missing group", err, err2, w.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "stranger asks for the roster",
			do: func(w *world) error {
				_, err := w.eve.Groups.GetRoster(bg, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: w.gid}))
				_, err2 := w.eve.Groups.GetRoster(bg, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: ghost}))
				sameAnswer(w.t, "GetRoster of a real vs a missing group", err, err2, w.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "stranger makes a join link for a group",
			do: func(w *world) error {
				_, err := w.eve.Groups.CreateJoinLink(bg, connect.NewRequest(&mlsdsv1.CreateJoinLinkRequest{GroupId: w.gid}))
				_, err2 := w.eve.Groups.CreateJoinLink(bg, connect.NewRequest(&mlsdsv1.CreateJoinLinkRequest{GroupId: ghost}))
				sameAnswer(w.t, "CreateJoinLink of a real vs a missing group", err, err2, w.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "stranger lists a group's join links",
			do: func(w *world) error {
				_, err := w.eve.Groups.ListJoinLinks(bg, connect.NewRequest(&mlsdsv1.ListJoinLinksRequest{GroupId: w.gid}))
				_, err2 := w.eve.Groups.ListJoinLinks(bg, connect.NewRequest(&mlsdsv1.ListJoinLinksRequest{GroupId: ghost}))
				sameAnswer(w.t, "ListJoinLinks of a real vs a missing group", err, err2, w.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "stranger leaves a group it is not in",
			do: func(w *world) error {
				_, err := w.eve.Groups.LeaveGroup(bg, connect.NewRequest(&mlsdsv1.LeaveGroupRequest{GroupId: w.gid}))
				_, err2 := w.eve.Groups.LeaveGroup(bg, connect.NewRequest(&mlsdsv1.LeaveGroupRequest{GroupId: ghost}))
				sameAnswer(w.t, "LeaveGroup of a real vs a missing group", err, err2, w.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "member adds a KeyPackage naming bob but signed with her own key",
			do: func(w *world) error {
				kp, _ := forgedKeyPackage(w.t, "bob", nil) // a fresh key of mallory's
				pm, _, gi, _ := w.commit(w.mallory, mls.CommitOptions{Adds: []*mls.KeyPackage{kp}})
				_, err := w.mallory.Groups.SendCommitBundle(bg, connect.NewRequest(w.bundle(pm, nil, gi)))
				return err
			},
			code: connect.CodePermissionDenied, msg: "bob",
		},
		{
			name: "member adds a KeyPackage its client never published",
			do: func(w *world) error {
				kp, _ := w.eve.KeyPackage() // eve's real key, never uploaded
				pm, _, gi, _ := w.commit(w.mallory, mls.CommitOptions{Adds: []*mls.KeyPackage{kp}})
				_, err := w.mallory.Groups.SendCommitBundle(bg, connect.NewRequest(w.bundle(pm, nil, gi)))
				return err
			},
			code: connect.CodePermissionDenied,
		},
		{
			name: "member commits with a GroupInfo whose confirmation_tag is not the Commit's",
			do: func(w *world) error {
				pm, _, gi, _ := w.commit(w.mallory, mls.CommitOptions{})
				gi.ConfirmationTag = testkit.RandBytes(len(gi.ConfirmationTag))
				if err := gi.Sign(w.mallory.SigPriv); err != nil {
					w.t.Fatal(err)
				}
				_, err := w.mallory.Groups.SendCommitBundle(bg, connect.NewRequest(w.bundle(pm, nil, gi)))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "confirmation",
		},
		{
			name: "member commits without the new epoch's GroupInfo",
			do: func(w *world) error {
				pm, _, _, _ := w.commit(w.mallory, mls.CommitOptions{})
				_, err := w.mallory.Groups.SendCommitBundle(bg, connect.NewRequest(w.bundle(pm, nil, nil)))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "GroupInfo",
		},
		{
			name: "member sends a Commit with Send (no GroupInfo)",
			do: func(w *world) error {
				pm, _, _, _ := w.commit(w.mallory, mls.CommitOptions{})
				_, err := w.mallory.Groups.Send(bg, connect.NewRequest(&mlsdsv1.SendRequest{Message: testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})}))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "GroupInfo",
		},
		{
			name: "member proposes an Add of a KeyPackage naming bob with another key",
			do: func(w *world) error {
				kp, _ := forgedKeyPackage(w.t, "bob", nil)
				saved := w.clone(w.mallory.g) // the refused proposal must not stay cached
				msg, _, err := w.mallory.g.ProposeMessage(&mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}})
				if err != nil {
					w.t.Fatal(err)
				}
				w.mallory.g = saved
				_, err = w.mallory.Groups.Send(bg, connect.NewRequest(&mlsdsv1.SendRequest{Message: testkit.Message(w.t, msg)}))
				return err
			},
			code: connect.CodePermissionDenied, msg: "bob",
		},
		{
			name: "member adds a KeyPackage that another group already used",
			do: func(w *world) error {
				pm, _, gi, _ := w.commit(w.mallory, mls.CommitOptions{Adds: []*mls.KeyPackage{w.usedKP}})
				_, err := w.mallory.Groups.SendCommitBundle(bg, connect.NewRequest(w.bundle(pm, nil, gi)))
				return err
			},
			code: connect.CodeFailedPrecondition, msg: "already used",
		},
		{
			name: "stranger fetches the GroupInfo with a revoked join link",
			do: func(w *world) error {
				_, err := w.eve.Groups.GetGroupInfo(bg, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: w.gid, JoinToken: w.revokedLink}))
				_, err2 := w.eve.Groups.GetGroupInfo(bg, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: w.gid}))
				sameAnswer(w.t, "GetGroupInfo with a revoked link vs none", err, err2)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "stranger joins with a revoked join link",
			do: func(w *world) error {
				gi, err := w.alice.g.GroupInfo(true)
				if err != nil {
					w.t.Fatal(err)
				}
				kp, priv := w.eve.KeyPackage()
				_, pm, err := mls.JoinExternal(gi, nil, kp, priv)
				if err != nil {
					w.t.Fatal(err)
				}
				req := w.bundle(pm, nil, nil)
				req.JoinToken = w.revokedLink
				_, err = w.eve.Groups.SendCommitBundle(bg, connect.NewRequest(req))
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "CreateGroup with made-up leaves (one for an unregistered id)",
			do: func(w *world) error {
				return createWithLeaves(w, w.eve, "victim-1", "no-such-client")
			},
			code: connect.CodePermissionDenied,
		},
		{
			name: "CreateGroup with a registered client's leaf and no KeyPackage of it",
			do: func(w *world) error {
				return createWithLeaves(w, w.eve, "bob")
			},
			code: connect.CodePermissionDenied, msg: "bob",
		},
		{
			name: "opaque CreateGroup with an initial roster of others",
			do: func(w *world) error {
				_, err := w.eve.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
					GroupId: testkit.RandBytes(16), Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, Members: []string{"alice", "bob"}}))
				return err
			},
			code: connect.CodePermissionDenied, msg: "consent",
		},
		{
			name: "another client registers under user alice without a device link",
			do: func(w *world) error {
				c := testkit.NewClient(w.t, w.srv.URL, "alice-laptop")
				err := c.Register("alice", "")
				taken := testkit.NewClient(w.t, w.srv.URL, "bob") // bob's id, another key
				err2 := taken.Register("", "")
				sameAnswer(w.t, "registering under a taken user vs a taken client id", err, err2, w.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied,
		},
		{
			name: "Fetch from_seq at 2^63",
			do: func(w *world) error {
				_, err := w.bob.Groups.Fetch(bg, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: w.gid, FromSeq: 1 << 63}))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "9223372036854775807",
		},
	}
	cases = append(cases, den.attacks()...)
	cases = append(cases, rw.attacks()...)
	cases = append(cases, ow.attacks()...)
	cases = append(cases, sendStreamAttacks()...) // sendstream_table_test.go
	for _, id := range []string{"zero\u200bwidth", "\u0430lice", "evil\u202egnp.exe", " bob", "bob ", "Bob"} {
		cases = append(cases, attack{
			name: fmt.Sprintf("register id %q", id),
			do: func(w *world) error {
				return testkit.NewClient(w.t, w.srv.URL, id).Register("", "")
			},
			code: connect.CodeInvalidArgument,
		})
	}
	for _, a := range cases {
		t.Run(a.name, func(t *testing.T) {
			w.t = t
			w.run(t, a)
		})
	}
}

// privateMessage is a PrivateMessage with a real clear header and a body
// the server cannot read.
func privateMessage(t *testing.T, gid []byte, epoch uint64) []byte {
	return testkit.Message(t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
		GroupID: gid, Epoch: epoch, ContentType: mls.ContentTypeApplication,
		EncryptedSenderData: testkit.RandBytes(32), Ciphertext: testkit.RandBytes(64)}})
}

// forgedKeyPackage is a valid KeyPackage whose basic credential names id
// but whose signature key is sigPriv's (a fresh one if nil).
func forgedKeyPackage(t *testing.T, id string, sigPriv []byte) (*mls.KeyPackage, *mls.KeyPackagePrivate) {
	t.Helper()
	now := uint64(time.Now().Unix())
	kp, priv, err := mls.NewKeyPackage(testkit.Suite, []byte(id), sigPriv, now-3600, now+7*24*3600)
	if err != nil {
		t.Fatal(err)
	}
	return kp, priv
}

// createWithLeaves has c create a group whose first tree holds its own
// leaf and one for each of ids, made with fresh keys.
func createWithLeaves(w *world, c *testkit.Client, ids ...string) error {
	kp, priv := c.KeyPackage()
	g, err := mls.NewGroup(testkit.RandBytes(16), kp, priv)
	if err != nil {
		w.t.Fatal(err)
	}
	var adds []*mls.KeyPackage
	for _, id := range ids {
		k, _ := forgedKeyPackage(w.t, id, nil)
		adds = append(adds, k)
	}
	if _, _, err := g.Commit(adds, nil); err != nil {
		w.t.Fatal(err)
	}
	if err := g.MergePendingCommit(); err != nil {
		w.t.Fatal(err)
	}
	gi, err := g.GroupInfo(true)
	if err != nil {
		w.t.Fatal(err)
	}
	_, err = c.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: g.GroupID(), GroupInfo: testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})}))
	return err
}
