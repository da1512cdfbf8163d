package security

import (
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/internal/testkit"
	"github.com/mlsds/mlsds/mls"
)

// The rows of the table for CreateGroup with a Welcome and for the link
// from a group a committed ReInit closed to its successor (RFC 9420
// §11.2, ds/creategroup_welcome.go, ds/successor.go).

// reinitWorld holds what those rows need, made before the table runs (a
// claim changes the store, so no row may claim): a transparent group of
// alice and mallory that alice closed with a ReInit naming succ, a
// KeyPackage of bob that eve claimed and one of alice that mallory
// claimed.
type reinitWorld struct {
	frozen  []byte // the closed group
	succ    []byte // the group id its ReInit names
	bobKP   []byte // claimed by eve, unused
	aliceKP []byte // claimed by mallory, unused
}

func newReinitWorld(w *world) *reinitWorld {
	t := w.t
	t.Helper()
	r := &reinitWorld{frozen: testkit.RandBytes(16), succ: testkit.RandBytes(16)}
	kp, priv := w.alice.KeyPackage()
	g, err := mls.NewGroup(r.frozen, kp, priv)
	if err != nil {
		t.Fatal(err)
	}
	alice := &member{Client: w.alice.Client, g: g}
	gi, err := g.GroupInfo(true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.alice.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: r.frozen, GroupInfo: testkit.Message(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})})); err != nil {
		t.Fatalf("creating the group to reinitialize: %v", err)
	}
	w.mallory.Upload(1)
	pm, _, gi1, next := w.commit(alice, mls.CommitOptions{Adds: w.claim(w.alice.Client, "mallory")})
	if _, err := w.alice.Groups.SendCommitBundle(bg, connect.NewRequest(w.bundle(pm, nil, gi1))); err != nil {
		t.Fatalf("adding mallory: %v", err)
	}
	alice.g = next
	ri := &mls.ReInit{GroupID: r.succ, Version: mls.ProtocolVersionMLS10, CipherSuite: testkit.Suite}
	pm, _, gi2, _ := w.commit(alice, mls.CommitOptions{ReInit: ri})
	if _, err := w.alice.Groups.SendCommitBundle(bg, connect.NewRequest(w.bundle(pm, nil, gi2))); err != nil {
		t.Fatalf("the ReInit Commit: %v", err)
	}
	w.bob.Upload(1)
	res, err := w.eve.KPs.ClaimKeyPackages(bg, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{ClientIds: []string{"bob"}, CipherSuite: uint32(testkit.Suite)}))
	if err != nil || len(res.Msg.KeyPackages) != 1 {
		t.Fatalf("eve claims a KeyPackage of bob: %v", err)
	}
	r.bobKP = res.Msg.KeyPackages[0].KeyPackage
	w.alice.Upload(1)
	res, err = w.mallory.KPs.ClaimKeyPackages(bg, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{ClientIds: []string{"alice"}, CipherSuite: uint32(testkit.Suite)}))
	if err != nil || len(res.Msg.KeyPackages) != 1 {
		t.Fatalf("mallory claims a KeyPackage of alice: %v", err)
	}
	r.aliceKP = res.Msg.KeyPackages[0].KeyPackage
	return r
}

// soloGroup is a transparent group of c alone at epoch 0, with id gid.
func soloGroup(w *world, c *testkit.Client, gid []byte) *mlsdsv1.CreateGroupRequest {
	kp, priv := c.KeyPackage()
	g, err := mls.NewGroup(gid, kp, priv)
	if err != nil {
		w.t.Fatal(err)
	}
	gi, err := g.GroupInfo(true)
	if err != nil {
		w.t.Fatal(err)
	}
	return &mlsdsv1.CreateGroupRequest{GroupId: gid, GroupInfo: testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})}
}

// welcomeTo is a real Welcome of a group of c that adds the owners of kps.
func welcomeTo(w *world, c *testkit.Client, kps ...*mls.KeyPackage) []byte {
	kp, priv := c.KeyPackage()
	g, err := mls.NewGroup(testkit.RandBytes(16), kp, priv)
	if err != nil {
		w.t.Fatal(err)
	}
	_, welcome, err := g.Commit(kps, nil)
	if err != nil {
		w.t.Fatal(err)
	}
	return testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: welcome})
}

func kpMessage(w *world, kp *mls.KeyPackage) []byte {
	return testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp})
}

// section checks the InvalidMessage detail's RFC section.
func section(s string) func(*testing.T, *connect.Error) {
	return func(t *testing.T, ce *connect.Error) {
		t.Helper()
		for _, d := range ce.Details() {
			if v, err := d.Value(); err == nil {
				if im, ok := v.(*mlsdsv1.InvalidMessage); ok {
					if im.RfcSection != s {
						t.Errorf("error %v: section %q, want %q", ce, im.RfcSection, s)
					}
					return
				}
			}
		}
		t.Errorf("error %v carries no InvalidMessage detail", ce)
	}
}

func (r *reinitWorld) attacks() []attack {
	return []attack{
		{
			name: "CreateGroup with a Welcome naming a KeyPackage not in key_packages",
			do: func(w *world) error {
				other, _ := forgedKeyPackage(w.t, "bob", nil)
				_, err := w.eve.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
					GroupId: testkit.RandBytes(16), Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, Members: []string{"bob"},
					KeyPackages: [][]byte{r.bobKP}, Welcome: welcomeTo(w, w.eve, other)}))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "none of key_packages", detail: section("12.4.3.1"),
		},
		{
			name: "CreateGroup with a Welcome to a KeyPackage its client never published",
			do: func(w *world) error {
				forged, _ := forgedKeyPackage(w.t, "bob", nil)
				_, err := w.eve.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
					GroupId: testkit.RandBytes(16), Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, Members: []string{"bob"},
					KeyPackages: [][]byte{kpMessage(w, forged)}, Welcome: welcomeTo(w, w.eve, forged)}))
				return err
			},
			code: connect.CodePermissionDenied, msg: "bob",
		},
		{
			name: "CreateGroup with a Welcome to a KeyPackage another group used",
			do: func(w *world) error {
				_, err := w.eve.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
					GroupId: testkit.RandBytes(16), Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, Members: []string{"carol"},
					KeyPackages: [][]byte{kpMessage(w, w.usedKP)}, Welcome: welcomeTo(w, w.eve, w.usedKP)}))
				return err
			},
			code: connect.CodeFailedPrecondition, msg: "already used",
		},
		{
			// The second KeyPackage carries the leaf of bob's real one
			// with another init key (its signature is no longer bob's).
			// The tree's check sees one of them; the Welcome names
			// both, and the route to bob would name the forged one.
			name: "CreateGroup with a Welcome and two KeyPackages for one leaf",
			do: func(w *world) error {
				m, err := mls.ParseMLSMessage(r.bobKP)
				if err != nil {
					w.t.Fatal(err)
				}
				real := m.KeyPackage
				kp, priv := w.eve.KeyPackage()
				g, err := mls.NewGroup(testkit.RandBytes(16), kp, priv)
				if err != nil {
					w.t.Fatal(err)
				}
				_, welcome, err := g.Commit([]*mls.KeyPackage{real}, nil)
				if err != nil {
					w.t.Fatal(err)
				}
				if err := g.MergePendingCommit(); err != nil {
					w.t.Fatal(err)
				}
				gi, err := g.GroupInfo(true)
				if err != nil {
					w.t.Fatal(err)
				}
				twin := *real
				twin.InitKey = testkit.RandBytes(len(real.InitKey))
				ref, err := twin.Ref()
				if err != nil {
					w.t.Fatal(err)
				}
				welcome.Secrets = append([]mls.EncryptedGroupSecrets{{NewMember: ref, EncryptedGroupSecrets: welcome.Secrets[0].EncryptedGroupSecrets}}, welcome.Secrets...)
				_, err = w.eve.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
					GroupId:     g.GroupID(),
					GroupInfo:   testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}),
					KeyPackages: [][]byte{kpMessage(w, &twin), r.bobKP},
					Welcome:     testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: welcome})}))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "an earlier one came in through",
		},
		{
			name: "stranger names another's group as predecessor",
			do: func(w *world) error {
				create := func(pred []byte) error {
					req := soloGroup(w, w.eve, r.succ)
					req.PredecessorGroupId = pred
					_, err := w.eve.Groups.CreateGroup(bg, connect.NewRequest(req))
					return err
				}
				err := create(r.frozen)
				sameAnswer(w.t, "CreateGroup with a real vs a missing predecessor", err, create(ghost), r.frozen, ghost)
				sameAnswer(w.t, "CreateGroup with a live vs a missing predecessor", create(w.gid), create(ghost), w.gid, ghost)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "member links a successor to a group no ReInit closed",
			do: func(w *world) error {
				req := soloGroup(w, w.mallory.Client, testkit.RandBytes(16))
				req.PredecessorGroupId = w.gid
				_, err := w.mallory.Groups.CreateGroup(bg, connect.NewRequest(req))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "ReInit", detail: section("11.2"),
		},
		{
			// Without the roster check the one link of the closed group
			// would be mallory's, and alice's real successor refused.
			name: "member takes the successor link with a group of her own",
			do: func(w *world) error {
				req := soloGroup(w, w.mallory.Client, r.succ)
				req.PredecessorGroupId = r.frozen
				_, err := w.mallory.Groups.CreateGroup(bg, connect.NewRequest(req))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "same members", detail: section("11.2"),
		},
		{
			// The members are right, but alice would never get in: the
			// link would be taken by a group nobody else can join.
			name: "member takes the successor link with every member and no Welcome",
			do: func(w *world) error {
				m, err := mls.ParseMLSMessage(r.aliceKP)
				if err != nil {
					w.t.Fatal(err)
				}
				kp, priv := w.mallory.KeyPackage()
				g, err := mls.NewGroup(r.succ, kp, priv)
				if err != nil {
					w.t.Fatal(err)
				}
				if _, _, err := g.Commit([]*mls.KeyPackage{m.KeyPackage}, nil); err != nil {
					w.t.Fatal(err)
				}
				if err := g.MergePendingCommit(); err != nil {
					w.t.Fatal(err)
				}
				gi, err := g.GroupInfo(true)
				if err != nil {
					w.t.Fatal(err)
				}
				_, err = w.mallory.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
					GroupId: r.succ, PredecessorGroupId: r.frozen, KeyPackages: [][]byte{r.aliceKP},
					GroupInfo: testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})}))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "no Welcome", detail: section("11.2"),
		},
		{
			name: "deniable group with a predecessor",
			do: func(w *world) error {
				_, err := w.alice.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
					GroupId: testkit.RandBytes(16), Mode: mlsdsv1.GroupMode_GROUP_MODE_DENIABLE, MembershipKey: make([]byte, ds.MembershipKeySize),
					PredecessorGroupId: r.frozen}))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "predecessor",
		},
		{
			name: "member proposes a resumption PSK of usage reinit (§12.1.4)",
			do: func(w *world) error {
				// mallory's own library refuses to make it: she signs it
				// herself (the server cannot check the membership tag).
				g := w.mallory.g
				gc := g.GroupContext()
				ac := &mls.AuthenticatedContent{WireFormat: mls.WireFormatPublicMessage, Content: mls.FramedContent{
					GroupID: w.gid, Epoch: g.Epoch(), Sender: mls.Sender{SenderType: mls.SenderTypeMember, LeafIndex: g.Self()},
					ContentType: mls.ContentTypeProposal, Proposal: &mls.Proposal{ProposalType: mls.ProposalTypePSK, PreSharedKey: &mls.PreSharedKey{PSK: mls.PreSharedKeyID{
						PSKType: mls.PSKTypeResumption, Usage: mls.ResumptionPSKUsageReInit, PSKGroupID: w.gid, PSKEpoch: g.Epoch(),
						PSKNonce: testkit.RandBytes(testkit.Suite.HashSize())}}}}}
				if err := ac.Sign(testkit.Suite, w.mallory.SigPriv, &gc); err != nil {
					w.t.Fatal(err)
				}
				pm, err := mls.ProtectPublic(ac, testkit.RandBytes(testkit.Suite.HashSize()), &gc)
				if err != nil {
					w.t.Fatal(err)
				}
				msg := &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm}
				_, err = w.mallory.Groups.Send(bg, connect.NewRequest(&mlsdsv1.SendRequest{Message: testkit.Message(w.t, msg)}))
				return err
			},
			code: connect.CodeInvalidArgument, msg: "reinit", detail: section("12.1.4"),
		},
	}
}
