package security

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/internal/testkit"
	"github.com/mlsds/mlsds/mls"
)

// The rows of the table for the Commits of an opaque group, whose roster
// the Delivery Service learns from the roster declaration in the Commit's
// authenticated_data (ds/send.go prepareOpaque, ds/roster_ad.go), and for
// the successor of an opaque group a ReInit closed (ds/successor.go).

// opaqueWorld holds what those rows need, made before the table runs: an
// opaque group of alice and trudy (a member who attacks it), both with
// their MLS state; a KeyPackage of bob that trudy claimed; and an opaque
// group of alice and trudy that alice closed with a Commit declaring a
// ReInit of group succ.
type opaqueWorld struct {
	gid    []byte
	alice  *member
	trudy  *member
	bobKP  *mls.KeyPackage // claimed by trudy, unused
	frozen []byte
	succ   []byte
	pings  int
}

func newOpaqueWorld(w *world) *opaqueWorld {
	t := w.t
	t.Helper()
	o := &opaqueWorld{gid: testkit.RandBytes(16), frozen: testkit.RandBytes(16), succ: testkit.RandBytes(16)}
	trudy := testkit.NewClient(t, w.srv.URL, "trudy").MustJoin()
	tkps, tprivs := trudy.Upload(1)
	kp, priv := w.alice.KeyPackage()
	g, err := mls.NewGroup(o.gid, kp, priv)
	if err != nil {
		t.Fatal(err)
	}
	o.alice = &member{Client: w.alice.Client, g: g}
	if _, err := w.alice.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: o.gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE})); err != nil {
		t.Fatalf("creating the opaque group: %v", err)
	}
	claimed := w.claim(w.alice.Client, "trudy")
	decl := ds.RosterChange{Added: []string{"trudy"}}
	pm, welcome, _, next := w.commit(o.alice, mls.CommitOptions{Adds: claimed, AuthenticatedData: decl.MarshalDeclaration()})
	req := o.bundle(w, pm, welcome)
	req.Added = decl.Added
	if _, err := w.alice.Groups.SendCommitBundle(bg, connect.NewRequest(req)); err != nil {
		t.Fatalf("alice adds trudy to the opaque group: %v", err)
	}
	o.alice.g = next
	o.trudy = &member{Client: trudy, g: w.join(welcome, claimed[0], tkps, tprivs)}
	o.alive(w)

	w.bob.Upload(1)
	o.bobKP = w.claim(trudy, "bob")[0]

	trudy.Upload(1)
	if _, err := w.alice.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: o.frozen, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, Members: []string{"trudy"},
		KeyPackages: [][]byte{kpMessage(w, w.claim(w.alice.Client, "trudy")[0])}})); err != nil {
		t.Fatalf("creating the opaque group to reinitialize: %v", err)
	}
	if _, err := w.alice.Groups.SendCommitBundle(bg, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
		Commit:     opaqueCommit(w, o.frozen, 0, ds.RosterChange{ReInitGroupID: o.succ}.MarshalDeclaration()),
		RemoteTree: &mlsdsv1.RemoteTree{Epoch: 1, Blob: testkit.RandBytes(64)}})); err != nil {
		t.Fatalf("the ReInit Commit of the opaque group: %v", err)
	}
	return o
}

// opaqueCommit is a Commit of an opaque group as the server sees it: a
// PrivateMessage with a clear header and authenticated_data ad, and a body
// it cannot read.
func opaqueCommit(w *world, gid []byte, epoch uint64, ad []byte) []byte {
	return testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
		GroupID: gid, Epoch: epoch, ContentType: mls.ContentTypeCommit, AuthenticatedData: ad,
		EncryptedSenderData: testkit.RandBytes(32), Ciphertext: testkit.RandBytes(64)}})
}

// bundle is the SendCommitBundle request of an opaque group's Commit pm,
// with a remote tree of the epoch it starts and the Welcome, if any.
func (o *opaqueWorld) bundle(w *world, pm *mls.PublicMessage, welcome *mls.Welcome) *mlsdsv1.SendCommitBundleRequest {
	req := w.bundle(pm, welcome, nil)
	req.RemoteTree = &mlsdsv1.RemoteTree{Epoch: pm.Content.Epoch + 1, Blob: testkit.RandBytes(64)}
	return req
}

// alive shows the opaque group works: alice sends an application message,
// and trudy fetches and decrypts it.
func (o *opaqueWorld) alive(w *world) {
	w.t.Helper()
	o.pings++
	text := fmt.Sprintf("opaque ping %d", o.pings)
	pm, err := o.alice.g.Seal([]byte(text), nil)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx := context.Background()
	res, err := w.alice.Groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm})}))
	if err != nil {
		w.t.Fatalf("the opaque group stopped working: alice's Send: %v", err)
	}
	seq := res.Msg.Receipt.GroupSeq
	page, err := o.trudy.Groups.Fetch(ctx, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: o.gid, FromSeq: seq, Limit: 1}))
	if err != nil || len(page.Msg.Messages) != 1 {
		w.t.Fatalf("the opaque group stopped working: trudy's Fetch of seq %d: %v", seq, err)
	}
	msg, err := mls.ParseMLSMessage(page.Msg.Messages[0].Message)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, got, err := o.trudy.g.Open(msg.PrivateMessage); err != nil || string(got) != text {
		w.t.Fatalf("the opaque group stopped working: trudy opened %q, %v; want %q", got, err, text)
	}
}

// send has trudy send her Commit made with opts (its declaration ad) in a
// bundle that edit may change, and checks, once the row's store
// comparison is done, that the opaque group still works.
func (o *opaqueWorld) send(w *world, opts mls.CommitOptions, edit func(*mlsdsv1.SendCommitBundleRequest)) error {
	w.t.Cleanup(func() { o.alive(w) }) // runs after (*world).run's checks
	pm, welcome, _, _ := w.commit(o.trudy, opts)
	req := o.bundle(w, pm, welcome)
	if edit != nil {
		edit(req)
	}
	_, err := o.trudy.Groups.SendCommitBundle(bg, connect.NewRequest(req))
	return err
}

func (o *opaqueWorld) attacks() []attack {
	declare := func(r ds.RosterChange) []byte { return r.MarshalDeclaration() }
	return []attack{
		{
			name: "opaque Commit without remote_tree",
			do: func(w *world) error {
				return o.send(w, mls.CommitOptions{}, func(req *mlsdsv1.SendCommitBundleRequest) { req.RemoteTree = nil })
			},
			code: connect.CodeInvalidArgument, msg: "remote_tree",
		},
		{
			name: "opaque Commit sent with Send",
			do: func(w *world) error {
				w.t.Cleanup(func() { o.alive(w) })
				pm, _, _, _ := w.commit(o.trudy, mls.CommitOptions{})
				_, err := o.trudy.Groups.Send(bg, connect.NewRequest(&mlsdsv1.SendRequest{Message: testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})}))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "remote_tree",
		},
		{
			// The bundle would drop alice from the roster; the signed
			// declaration the members check says nothing of it.
			name: "opaque Commit whose bundle lists differ from its declaration",
			do: func(w *world) error {
				return o.send(w, mls.CommitOptions{AuthenticatedData: declare(ds.RosterChange{Removed: []string{"eve"}})},
					func(req *mlsdsv1.SendCommitBundleRequest) { req.Removed = []string{"alice"} })
			},
			code: connect.CodeInvalidArgument, msg: "disagree with the Commit's roster declaration",
		},
		{
			name: "opaque Commit with bundle lists and no declaration",
			do: func(w *world) error {
				return o.send(w, mls.CommitOptions{}, func(req *mlsdsv1.SendCommitBundleRequest) { req.Removed = []string{"alice"} })
			},
			code: connect.CodeInvalidArgument, msg: "declare the roster change",
		},
		{
			// Eve was never a member and joins through no Welcome: the
			// declaration alone would let her read the group.
			name: "opaque Commit declaring a stranger added without a Welcome",
			do: func(w *world) error {
				return o.send(w, mls.CommitOptions{AuthenticatedData: declare(ds.RosterChange{Added: []string{"eve"}})},
					func(req *mlsdsv1.SendCommitBundleRequest) { req.Added = []string{"eve"} })
			},
			code: connect.CodeInvalidArgument, msg: "no joiner of the bundle's Welcome",
		},
		{
			name: "opaque Commit whose Welcome joiner is not declared",
			do: func(w *world) error {
				return o.send(w, mls.CommitOptions{Adds: []*mls.KeyPackage{o.bobKP}}, nil)
			},
			code: connect.CodeInvalidArgument, msg: "does not list as added",
		},
		{
			name: "opaque Commit with a malformed declaration",
			do: func(w *world) error {
				return o.send(w, mls.CommitOptions{AuthenticatedData: []byte("hello")}, nil)
			},
			code: connect.CodeInvalidArgument, msg: "malformed roster declaration",
		},
		{
			name: "opaque Commit with a declaration missing its ReInit field",
			do: func(w *world) error {
				ad := declare(ds.RosterChange{})
				return o.send(w, mls.CommitOptions{AuthenticatedData: ad[:len(ad)-1]}, nil)
			},
			code: connect.CodeInvalidArgument, msg: "malformed roster declaration",
		},
		{
			// Without the declared ReInit group_id the one successor
			// link of the closed group would be trudy's, and alice's
			// real successor refused.
			name: "member links another group than the declared ReInit's to a closed opaque group",
			do: func(w *world) error {
				_, err := o.trudy.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
					GroupId: testkit.RandBytes(16), Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, PredecessorGroupId: o.frozen}))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "names group", detail: section("11.2"),
		},
		{
			name: "member links a successor to an opaque group no ReInit closed",
			do: func(w *world) error {
				_, err := o.trudy.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
					GroupId: o.succ, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, PredecessorGroupId: o.gid}))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "ReInit", detail: section("11.2"),
		},
	}
}
