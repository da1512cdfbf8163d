package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// The hostile-input tests of issue 7: crafted attacks through the real
// server, each refused with an exact code and detail, and each leaving the
// store as it was.

// storeView is what a client can see of the store: a group's head, its
// state, its messages and roster, and the KeyPackages of some clients
// (last-resort ones included).
type storeView struct {
	Epoch       uint64
	GroupInfo   []byte
	RatchetTree []byte
	LastSeq     uint64
	Messages    int
	Roster      []string
	KeyPackages map[string][]string
}

// view reads the store through obs, a member of each group.
func view(t testing.TB, obs *member, groups [][]byte, owners ...*member) map[string]storeView {
	t.Helper()
	ctx := context.Background()
	out := make(map[string]storeView)
	kps := make(map[string][]string)
	for _, o := range owners {
		res, err := o.kps.ListKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ListKeyPackagesRequest{}))
		if err != nil {
			t.Fatalf("ListKeyPackages(%s): %v", o.id, err)
		}
		for _, i := range res.Msg.KeyPackages {
			kps[o.id] = append(kps[o.id], fmt.Sprintf("%x/%v", i.Ref, i.LastResort))
		}
	}
	for _, gid := range groups {
		var v storeView
		gi, err := obs.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
		if err != nil {
			t.Fatalf("GetGroupInfo: %v", err)
		}
		v.Epoch, v.GroupInfo, v.RatchetTree = gi.Msg.Epoch, gi.Msg.GroupInfo, gi.Msg.RatchetTree
		for from := uint64(1); ; {
			page, err := obs.fetch(gid, from, 1000)
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			for _, m := range page.Messages {
				v.LastSeq = m.GroupSeq
			}
			v.Messages += len(page.Messages)
			if len(page.Messages) < 1000 {
				break
			}
			from = page.NextSeq
		}
		ro, err := obs.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid}))
		if err != nil {
			t.Fatalf("GetRoster: %v", err)
		}
		v.Roster = ro.Msg.ClientIds
		v.KeyPackages = kps
		out[string(gid)] = v
	}
	return out
}

func assertUnchanged(t testing.TB, before, after map[string]storeView) {
	t.Helper()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("the refused request changed the store:\nbefore %+v\nafter  %+v", before, after)
	}
}

// publicCommit signs c as a Commit in g's epoch from sender with signer's
// key, with random confirmation and membership tags (§6.2: the DS cannot
// check them), and returns it as an MLSMessage and its PublicMessage.
func publicCommit(t testing.TB, signer []byte, g *tgroup, sender mls.LeafIndex, c *mls.Commit) ([]byte, *mls.PublicMessage) {
	t.Helper()
	gc := g.st.GroupContext()
	ac := &mls.AuthenticatedContent{
		WireFormat: mls.WireFormatPublicMessage,
		Content: mls.FramedContent{
			GroupID: gc.GroupID, Epoch: gc.Epoch,
			Sender:      mls.Sender{SenderType: mls.SenderTypeMember, LeafIndex: sender},
			ContentType: mls.ContentTypeCommit, Commit: c,
		},
	}
	if err := ac.Sign(suite, signer, &gc); err != nil {
		t.Fatal(err)
	}
	ac.Auth.ConfirmationTag = randBytes(suite.HashSize())
	pm := &mls.PublicMessage{Content: ac.Content, Auth: ac.Auth, MembershipTag: randBytes(suite.HashSize())}
	return mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm}), pm
}

func addCommit(kps ...*mls.KeyPackage) *mls.Commit {
	c := &mls.Commit{}
	for _, kp := range kps {
		c.Proposals = append(c.Proposals, mls.ProposalOrRef{Type: mls.ProposalOrRefTypeProposal,
			Proposal: &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}}})
	}
	return c
}

// pathCommit builds an empty Commit of m with an UpdatePath (§12.4: an
// empty proposal list needs one): fresh keys for m's leaf and each node of
// its filtered direct path, one HPKE ciphertext per node of each copath
// child's resolution (§7.6), and the leaf's parent_hash computed from the
// tree (§7.9.1), or random bytes if badParentHash. The leaf is signed
// either way, so that only the parent hash can be at fault.
func (m *member) pathCommit(g *tgroup, badParentHash bool) []byte {
	t := m.t
	t.Helper()
	tree := g.st.Tree()
	gc := g.st.GroupContext()
	leaf := *tree.Leaf(g.leaf)
	_, leafPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	leaf.EncryptionKey = leafPub
	leaf.LeafNodeSource = mls.LeafNodeSourceCommit
	leaf.Lifetime = nil
	leaf.Signature = nil
	path := &mls.UpdatePath{}
	copath := tree.Copath(g.leaf)
	for _, sib := range copath {
		res := tree.Resolution(sib)
		if len(res) == 0 {
			continue // not on the filtered direct path
		}
		_, pub, err := suite.GenerateKEMKeyPair()
		if err != nil {
			t.Fatal(err)
		}
		n := mls.UpdatePathNode{EncryptionKey: pub}
		for _, r := range res {
			kem, ct, err := suite.EncryptWithLabel(tree.EncryptionKey(r), "UpdatePathNode", randBytes(16), randBytes(32))
			if err != nil {
				t.Fatal(err)
			}
			n.EncryptedPathSecret = append(n.EncryptedPathSecret, mls.HPKECiphertext{KEMOutput: kem, Ciphertext: ct})
		}
		path.Nodes = append(path.Nodes, n)
	}
	if len(path.Nodes) == 0 {
		t.Fatal("pathCommit needs a group of at least two members")
	}
	if leaf.ParentHash, err = tree.PathParentHash(g.leaf, path); err != nil {
		t.Fatal(err)
	}
	if badParentHash {
		leaf.ParentHash = randBytes(len(leaf.ParentHash))
	}
	if err := leaf.Sign(suite, m.sigPriv, gc.GroupID, g.leaf); err != nil {
		t.Fatal(err)
	}
	path.LeafNode = leaf
	msg, _ := publicCommit(t, m.sigPriv, g, g.leaf, &mls.Commit{Path: path})
	return msg
}

// keyPackageWith builds a KeyPackage of m whose LeafNode edit changes
// before both are signed.
func (m *member) keyPackageWith(edit func(*mls.KeyPackage)) []byte {
	t := m.t
	t.Helper()
	_, kp := m.keyPackage()
	edit(kp)
	if err := kp.LeafNode.Sign(suite, m.sigPriv, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := kp.Sign(m.sigPriv); err != nil {
		t.Fatal(err)
	}
	return mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp})
}

func noDetails(t testing.TB, ce *connect.Error) {
	t.Helper()
	if n := len(ce.Details()); n != 0 {
		t.Fatalf("error %q carries %d details, want none", ce.Message(), n)
	}
}

func wantMessage(t testing.TB, ce *connect.Error, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(ce.Message(), p) {
			t.Fatalf("error %q does not say %q", ce.Message(), p)
		}
	}
}

func wantInvalid(section string, reason ...string) func(testing.TB, *connect.Error) {
	return func(t testing.TB, ce *connect.Error) {
		t.Helper()
		d := detail[mlsdsv1.InvalidMessage](t, ce)
		if d.RfcSection != section {
			t.Fatalf("invalid_message %+v, want RFC section %q", d, section)
		}
		for _, r := range reason {
			if !strings.Contains(d.Reason, r) {
				t.Fatalf("invalid_message reason %q does not say %q", d.Reason, r)
			}
		}
	}
}

// TestHostileInput is the table of crafted attacks. The fixture: alice
// created a transparent group and added bob with a real Commit (the group
// is at epoch 1, seq 1); alice and bob share an opaque group too; carol is
// registered, holds KeyPackages, and is in neither group.
func TestHostileInput(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	carol.uploadKeyPackages(2, true)

	tgid := groupID("hostile-t")
	g0, gi, tree := alice.newTransparentGroup(tgid)
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: tgid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi, RatchetTree: tree})); err != nil {
		t.Fatal(err)
	}
	commit1, welcome1, gi1, g1 := alice.commitAdd(g0, mustKP(t, alice, bob))
	first, err := alice.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: commit1, Welcome: welcome1, GroupInfo: gi1}))
	if err != nil {
		t.Fatal(err)
	}
	bobLeaf := leafOf(t, g1, "bob")
	bobView := &tgroup{st: g1.st, leaf: bobLeaf}
	ogid := groupID("hostile-o")
	alice.createOpaqueGroup(ogid, bob)
	alice.mustSend(privateMessage(t, ogid, 0, mls.ContentTypeApplication, 64))

	groups := [][]byte{tgid, ogid}
	owners := []*member{alice, bob, carol}
	carolKP := mustKP(t, alice, carol) // claimed: only each case's own fault is at fault

	send := func(m *member, msg []byte) func() error {
		return func() error { _, err := m.send(msg); return err }
	}
	// Commits go in a bundle with the new epoch's GroupInfo. Each one
	// below is refused before its GroupInfo is looked at, so any will do:
	// gi1 (that of epoch 1) stands in.
	bundle := func(m *member, commit []byte) func() error {
		return func() error { _, err := m.sendBundle(commit, gi1); return err }
	}
	upload := func(m *member, data []byte) func() error {
		return func() error {
			_, err := m.kps.UploadKeyPackages(ctx, connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
				KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: data}}}))
			return err
		}
	}

	// Messages for the cases that need some preparation.
	asAlice, _ := publicCommit(t, bob.sigPriv, bobView, 0, addCommit(carolKP)) // bob claims alice's leaf
	carolAsLeaf0, _ := publicCommit(t, carol.sigPriv, g1, 0, addCommit(carolKP))
	bobProposalAsAlice := func() []byte {
		gc := g1.st.GroupContext()
		ac := &mls.AuthenticatedContent{WireFormat: mls.WireFormatPublicMessage, Content: mls.FramedContent{
			GroupID: tgid, Epoch: 1, Sender: mls.Sender{SenderType: mls.SenderTypeMember, LeafIndex: 0},
			ContentType: mls.ContentTypeProposal,
			Proposal:    &mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: bobLeaf}}}}
		if err := ac.Sign(suite, bob.sigPriv, &gc); err != nil {
			t.Fatal(err)
		}
		return mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: &mls.PublicMessage{
			Content: ac.Content, Auth: ac.Auth, MembershipTag: randBytes(suite.HashSize())}})
	}()
	// The epoch-0 Commit again, signed again with new random tags: other
	// bytes, same content.
	var old mls.MLSMessage
	if err := old.UnmarshalBinary(commit1); err != nil {
		t.Fatal(err)
	}
	resigned, _ := publicCommit(t, alice.sigPriv, g0, 0, old.PublicMessage.Content.Commit)
	if bytes.Equal(resigned, commit1) {
		t.Fatal("the re-signed Commit has the same bytes")
	}
	forged, forgedPM := publicCommit(t, alice.sigPriv, g1, 0, addCommit(carolKP))
	forgedPM.Auth.Signature[7] ^= 0x20
	forged = mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: forgedPM})
	wrongKey, _ := publicCommit(t, carol.sigPriv, g1, 0, addCommit(carolKP)) // alice's leaf, carol's key
	_, tamperedPM := publicCommit(t, alice.sigPriv, g1, 0, addCommit(carolKP))
	tamperedPM.Content.Commit = addCommit(mustKP(t, alice, carol)) // another KeyPackage after signing
	tampered := mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: tamperedPM})
	badParent := alice.pathCommit(g1, true)
	// bob, a member, added again with a fresh KeyPackage (distinct keys, so
	// valid MLS), and carol added twice in one Commit: one client would
	// hold two leaves. (Found by FuzzSend: the store refused the second
	// membership and the client saw an internal error.)
	// (The KeyPackages carry other signature keys: with the same key MLS
	// itself refuses them, §12.2. A client has one registered key, so the
	// binding of leaves to clients refuses them first: RFC 9750 §5.)
	_, bob2 := e.newMember("bob").keyPackage()
	_, carol2 := e.newMember("carol").keyPackage()
	secondLeaf, _ := publicCommit(t, alice.sigPriv, g1, 0, addCommit(bob2))
	twice, _ := publicCommit(t, alice.sigPriv, g1, 0, addCommit(carolKP, carol2))
	now := uint64(time.Now().Unix())
	expired := carol.keyPackageWith(func(kp *mls.KeyPackage) {
		kp.LeafNode.Lifetime = &mls.Lifetime{NotBefore: now - 10*24*3600, NotAfter: now - 24*3600}
	})
	notYet := carol.keyPackageWith(func(kp *mls.KeyPackage) {
		kp.LeafNode.Lifetime = &mls.Lifetime{NotBefore: now + 24*3600, NotAfter: now + 2*24*3600}
	})
	// A KeyPackage naming bob, signed with carol's own key.
	bobCred := carol.keyPackageWith(func(kp *mls.KeyPackage) { kp.LeafNode.Credential = bob.cred })
	// A PublicMessage whose group_id claims 2^30-1 bytes (a 4-byte varint,
	// §2.1.2) of which 8 follow.
	hugeVector := append([]byte{0, 1, 0, 1}, 0xbf, 0xff, 0xff, 0xff)
	hugeVector = append(hugeVector, randBytes(8)...)
	// A Commit whose proposals vector claims one byte more than the
	// message holds: the inner vector runs past the outer one.
	overrun := func() []byte {
		b := bytes.Clone(commit1)
		// The commit's proposals vector follows the content type (1 byte)
		// after the group id, epoch and sender; find it by re-encoding.
		var pm mls.MLSMessage
		if err := pm.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		c, err := pm.PublicMessage.Content.Commit.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(b, c)
		if i < 0 || c[0]&0xc0 != 0x40 {
			t.Fatalf("cannot find the Commit's 2-byte proposals length in the message (%x)", c[:2])
		}
		n := binary.BigEndian.Uint16(c[:2])&0x3fff + uint16(len(b)-i)
		binary.BigEndian.PutUint16(b[i:], 0x4000|n)
		return b
	}()

	cases := []struct {
		name  string
		call  func() error
		code  connect.Code
		check func(testing.TB, *connect.Error)
	}{
		{"as another client: Commit from alice's leaf, by bob", bundle(bob, asAlice), connect.CodePermissionDenied,
			func(t testing.TB, ce *connect.Error) {
				noDetails(t, ce)
				wantMessage(t, ce, `leaf 0 does not belong to "bob"`)
			}},
		{"as another client: Proposal from alice's leaf, by bob", send(bob, bobProposalAsAlice), connect.CodePermissionDenied,
			func(t testing.TB, ce *connect.Error) {
				noDetails(t, ce)
				wantMessage(t, ce, `leaf 0 does not belong to "bob"`)
			}},
		{"as another client: KeyPackage naming bob, uploaded by carol", upload(carol, bobCred), connect.CodePermissionDenied,
			func(t testing.TB, ce *connect.Error) {
				noDetails(t, ce)
				wantMessage(t, ce, `names "bob", not the uploading client "carol"`)
			}},
		{"not in the group: application message, transparent", send(carol, privateMessage(t, tgid, 1, mls.ContentTypeApplication, 32)),
			connect.CodePermissionDenied, func(t testing.TB, ce *connect.Error) { detail[mlsdsv1.NotMember](t, ce) }},
		{"not in the group: application message, opaque", send(carol, privateMessage(t, ogid, 0, mls.ContentTypeApplication, 32)),
			connect.CodePermissionDenied, func(t testing.TB, ce *connect.Error) { detail[mlsdsv1.NotMember](t, ce) }},
		{"not in the group: Commit, opaque", send(carol, privateMessage(t, ogid, 0, mls.ContentTypeCommit, 32)),
			connect.CodePermissionDenied, func(t testing.TB, ce *connect.Error) { detail[mlsdsv1.NotMember](t, ce) }},
		// Membership is checked first: an outsider learns nothing of the
		// group's tree.
		{"not in the group: Commit signed with her own key, as leaf 0", bundle(carol, carolAsLeaf0), connect.CodePermissionDenied,
			func(t testing.TB, ce *connect.Error) { detail[mlsdsv1.NotMember](t, ce) }},
		{"replay: the epoch-0 Commit re-signed with new tags", bundle(alice, resigned), connect.CodeAborted,
			func(t testing.TB, ce *connect.Error) {
				if d := detail[mlsdsv1.WrongEpoch](t, ce); d.ExpectedEpoch != 1 || d.FetchFromSeq != first.Msg.Receipt.GroupSeq {
					t.Fatalf("wrong_epoch %+v, want expected 1 from seq %d", d, first.Msg.Receipt.GroupSeq)
				}
			}},
		{"forged signature: one bit flipped", bundle(alice, forged), connect.CodeInvalidArgument,
			wantInvalid("6.1", "signature does not verify")},
		{"forged signature: alice's leaf, carol's key", bundle(alice, wrongKey), connect.CodeInvalidArgument,
			wantInvalid("6.1", "signature does not verify")},
		{"forged signature: proposals changed after signing", bundle(alice, tampered), connect.CodeInvalidArgument,
			wantInvalid("6.1", "signature does not verify")},
		{"UpdatePath with a bad parent hash", bundle(alice, badParent), connect.CodeInvalidArgument,
			wantInvalid("7.9.2", "parent_hash")},
		{"a second leaf for a member", bundle(alice, secondLeaf), connect.CodePermissionDenied,
			func(t testing.TB, ce *connect.Error) {
				noDetails(t, ce)
				wantMessage(t, ce, `credential names "bob" but its signature key is not one bob registered`)
			}},
		{"one client added twice", bundle(alice, twice), connect.CodePermissionDenied,
			func(t testing.TB, ce *connect.Error) {
				noDetails(t, ce)
				wantMessage(t, ce, `credential names "carol" but its signature key is not one carol registered`)
			}},
		{"KeyPackage with an expired lifetime", upload(carol, expired), connect.CodeInvalidArgument,
			wantInvalid("7.3", "lifetime ended")},
		{"KeyPackage with a lifetime in the future", upload(carol, notYet), connect.CodeInvalidArgument,
			wantInvalid("7.3", "after the current time")},
		{"vector claiming 2^30 bytes", send(alice, hugeVector), connect.CodeInvalidArgument,
			func(t testing.TB, ce *connect.Error) {
				if d := detail[mlsdsv1.InvalidMessage](t, ce); d.Reason == "" {
					t.Fatal("invalid_message without a reason")
				}
			}},
		{"inner vector running past the message", bundle(alice, overrun), connect.CodeInvalidArgument,
			func(t testing.TB, ce *connect.Error) { detail[mlsdsv1.InvalidMessage](t, ce) }},
		{"the Commit truncated by one byte", bundle(alice, commit1[:len(commit1)-1]), connect.CodeInvalidArgument,
			func(t testing.TB, ce *connect.Error) { detail[mlsdsv1.InvalidMessage](t, ce) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := view(t, alice, groups, owners...)
			ce := connectErr(t, c.call(), c.code)
			c.check(t, ce)
			assertUnchanged(t, before, view(t, alice, groups, owners...))
		})
	}

	t.Run("replay: identical bytes", func(t *testing.T) {
		before := view(t, alice, groups, owners...)
		for _, m := range []*member{alice, bob} {
			// Identical bytes give the first receipt, whoever sends them
			// (the store keys them by group and hash) and by either call.
			r, err := m.send(commit1)
			if err != nil {
				t.Fatalf("%s resending: %v", m.id, err)
			}
			if !proto.Equal(r, first.Msg.Receipt) {
				t.Fatalf("receipt %v, want the first one %v", r, first.Msg.Receipt)
			}
		}
		assertUnchanged(t, before, view(t, alice, groups, owners...))
	})

	t.Run("every truncation of a Commit", func(t *testing.T) {
		before := view(t, alice, groups, owners...)
		c, _ := publicCommit(t, alice.sigPriv, g1, 0, addCommit(carolKP))
		for n := range len(c) {
			_, err := alice.sendBundle(c[:n], gi1)
			ce := connectErr(t, err, connect.CodeInvalidArgument)
			detail[mlsdsv1.InvalidMessage](t, ce)
		}
		assertUnchanged(t, before, view(t, alice, groups, owners...))
	})

	t.Run("deeply nested protobuf", func(t *testing.T) {
		// A SendRequest whose unknown field 15 is a group nested 100,000
		// deep: the decoder must refuse it rather than recurse.
		const depth = 100_000
		var body []byte
		for range depth {
			body = append(body, 15<<3|3) // start group, field 15
		}
		for range depth {
			body = append(body, 15<<3|4) // end group
		}
		before := view(t, alice, groups, owners...)
		code, msg := rawConnect(t, e, alice, "/"+mlsdsv1connect.GroupServiceName+"/Send", bytes.NewReader(body), int64(len(body)))
		if code != connect.CodeInvalidArgument {
			t.Fatalf("code %v (%s), want invalid_argument", code, msg)
		}
		assertUnchanged(t, before, view(t, alice, groups, owners...))
	})

	t.Run("invalid UTF-8 in a string field", func(t *testing.T) {
		// CreateGroupRequest{group_id: "x", mode: OPAQUE, members: ["\xff"]}
		// as no honest client library would encode it.
		body := []byte{1<<3 | 2, 1, 'x', 2 << 3, 2, 5<<3 | 2, 1, 0xff}
		code, msg := rawConnect(t, e, alice, "/"+mlsdsv1connect.GroupServiceName+"/CreateGroup", bytes.NewReader(body), int64(len(body)))
		if code != connect.CodeInvalidArgument || !strings.Contains(msg, "UTF-8") {
			t.Fatalf("code %v (%s), want invalid_argument naming UTF-8", code, msg)
		}
		_, err := alice.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: []byte("x")}))
		detail[mlsdsv1.NotMember](t, connectErr(t, err, connect.CodePermissionDenied)) // no such group
	})

	t.Run("100 MB body", func(t *testing.T) {
		// The request cap is Config.MaxRequestBytes (4*MaxMessageSize+64
		// KiB, 4.06 MiB by default), enforced by connect.WithReadMaxBytes.
		// Each body below announces or carries 100 MB but stalls after
		// the cap plus 1 MiB: the server must answer while it is stalled,
		// that is without reading the rest.
		const size = 100 << 20
		const stall = 4<<20 + 64<<10 + 1<<20
		before := view(t, alice, groups, owners...)
		for _, withLength := range []bool{true, false} {
			r := newStallingReader(size, stall, nil)
			length := int64(-1)
			if withLength {
				length = size
			}
			code, msg := rawConnect(t, e, alice, "/"+mlsdsv1connect.GroupServiceName+"/Send", r, length)
			r.release()
			if code != connect.CodeResourceExhausted {
				t.Fatalf("content-length %v: code %v (%s), want resource_exhausted", withLength, code, msg)
			}
			t.Logf("content-length %v: refused after the client wrote %d of %d bytes", withLength, r.read.Load(), size)
		}
		// gRPC: the envelope announces 100 MB.
		r := newStallingReader(size, stall, binary.BigEndian.AppendUint32([]byte{0}, size))
		defer r.release()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+"/"+mlsdsv1connect.GroupServiceName+"/Send", r)
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("TE", "trailers")
		req.Header.Set("Authorization", "Bearer "+alice.token)
		res, err := e.http.Do(req)
		if err != nil {
			t.Fatalf("gRPC: %v (the server waited for more of the body)", err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		st := res.Trailer.Get("Grpc-Status")
		if st == "" {
			st = res.Header.Get("Grpc-Status")
		}
		if st != fmt.Sprint(int(connect.CodeResourceExhausted)) {
			t.Fatalf("gRPC: grpc-status %q (%s), want %d", st, res.Header.Get("Grpc-Message")+res.Trailer.Get("Grpc-Message"), connect.CodeResourceExhausted)
		}
		t.Logf("gRPC: refused after the client wrote %d of %d bytes", r.read.Load(), size)
		assertUnchanged(t, before, view(t, alice, groups, owners...))
	})

	// Control: the bad-parent-hash case differs from an accepted Commit in
	// the parent hash alone.
	t.Run("control: the same UpdatePath with the right parent hash", func(t *testing.T) {
		c := alice.pathCommit(g1, false)
		r, err := alice.sendBundle(c, alice.groupInfoAfter(g1, c))
		if err != nil {
			t.Fatal(err)
		}
		if r.Epoch != 1 || r.GroupSeq != first.Msg.Receipt.GroupSeq+1 {
			t.Fatalf("receipt %+v, want epoch 1 at seq %d", r, first.Msg.Receipt.GroupSeq+1)
		}
	})
}

// stallingReader yields prefix then zeros up to n bytes in all, without
// holding them, but blocks after stall bytes until release: a client that
// is slow to send the rest of a huge body.
type stallingReader struct {
	n, stall int64
	prefix   []byte
	read     atomic.Int64
	released chan struct{}
	once     sync.Once
}

func newStallingReader(n, stall int64, prefix []byte) *stallingReader {
	return &stallingReader{n: n, stall: stall, prefix: prefix, released: make(chan struct{})}
}

func (r *stallingReader) release() { r.once.Do(func() { close(r.released) }) }

// Close releases a stalled Read: the transport closes the body once the
// server has answered.
func (r *stallingReader) Close() error {
	r.release()
	return nil
}

func (r *stallingReader) Read(p []byte) (int, error) {
	off := r.read.Load()
	if off >= r.stall {
		<-r.released
		return 0, errors.New("the test gave up on this body")
	}
	if off >= r.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n-off, r.stall-off)]
	clear(p)
	if off < int64(len(r.prefix)) {
		copy(p, r.prefix[off:])
	}
	r.read.Add(int64(len(p)))
	return len(p), nil
}

// rawConnect posts body to a unary procedure with the Connect protocol
// (binary protobuf) as m, and returns the Connect code of the answer (0
// for success) and its message.
func rawConnect(t testing.TB, e *testEnv, m *member, procedure string, body io.Reader, length int64) (connect.Code, string) {
	t.Helper()
	// A call that waits for a stalled body fails here rather than hang.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url+procedure, body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = length
	req.Header.Set("Content-Type", "application/proto")
	req.Header.Set("Authorization", "Bearer "+m.token)
	res, err := e.http.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v (did the server wait for the rest of the body?)", procedure, err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode == http.StatusOK {
		return 0, ""
	}
	// The Connect protocol's error body is JSON {"code": "...", "message": "..."}.
	var code connect.Code
	s := string(data)
	if i := strings.Index(s, `"code":"`); i >= 0 {
		name := s[i+len(`"code":"`):]
		name = name[:strings.IndexByte(name, '"')]
		if err := code.UnmarshalText([]byte(name)); err != nil {
			t.Fatalf("unknown code %q in %s", name, s)
		}
		return code, s
	}
	t.Fatalf("HTTP %d without a Connect error: %q", res.StatusCode, s)
	return 0, ""
}

// TestHostileClaimFlood: a flood of claims against one target. The limit
// per target holds (every claim beyond its burst is refused with
// rate_limited and a retry_after), no claim consumes the last-resort
// KeyPackage, and once the window has passed the target can still be
// added. The issue asks for 10^6 claims; this test makes 30,000 (about 6
// seconds on the 2-core machine) from 8 claimers at once. The limiter
// is per target, so beyond the burst the count changes nothing but the
// run time.
func TestHostileClaimFlood(t *testing.T) {
	const claims, claimers, perMinute = 30_000, 8, 60
	var skew atomic.Int64 // the server's clock runs ahead by this much
	e := startEnv(t, func(c *ds.Config, _ *server.Config) {
		c.ClaimsPerTargetPerMinute = perMinute
		c.ClaimsPerMinute = -1 // only the limit per target
		c.RequestsPerSecond = -1
		c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	target := e.client("target")
	refs := target.uploadKeyPackages(3, true)
	lastResort := refs[3]
	cs := make([]*member, claimers)
	for i := range cs {
		cs[i] = e.client(fmt.Sprintf("claimer-%d", i))
	}
	var (
		wg                  sync.WaitGroup
		next                atomic.Int64
		ok, limited         atomic.Int64
		gotLastResort       atomic.Int64
		mu                  sync.Mutex
		unexpected          []error
		regularClaimedTwice = map[string]bool{}
	)
	start := time.Now()
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= claims {
				res, err := c.kps.ClaimKeyPackages(context.Background(), claimReq("target"))
				if err == nil {
					ok.Add(1)
					k := res.Msg.KeyPackages[0]
					if k.LastResort {
						gotLastResort.Add(1)
					} else {
						mu.Lock()
						if regularClaimedTwice[string(k.Ref)] {
							unexpected = append(unexpected, fmt.Errorf("KeyPackage %x handed out twice", k.Ref))
						}
						regularClaimedTwice[string(k.Ref)] = true
						mu.Unlock()
					}
					continue
				}
				var ce *connect.Error
				if errors.As(err, &ce) && ce.Code() == connect.CodeResourceExhausted {
					for _, d := range ce.Details() {
						if v, _ := d.Value(); v != nil {
							if rl, isRL := v.(*mlsdsv1.RateLimited); isRL && rl.RetryAfter.AsDuration() > 0 {
								limited.Add(1)
								err = nil
							}
						}
					}
				}
				if err != nil {
					mu.Lock()
					unexpected = append(unexpected, err)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(unexpected) > 0 {
		t.Fatalf("%d unexpected outcomes, first: %v", len(unexpected), unexpected[0])
	}
	// The bucket starts full (burst = perMinute) and refills at one per
	// second: a run of d seconds lets through at most perMinute + d + 1.
	if ok.Load()+limited.Load() != claims {
		t.Fatalf("%d granted + %d limited != %d claims", ok.Load(), limited.Load(), claims)
	}
	if bound := perMinute + int64(elapsed/time.Second) + 1; ok.Load() > bound {
		t.Fatalf("%d claims granted out of %d in %v; the limit of %d per minute allows %d", ok.Load(), claims, elapsed, perMinute, bound)
	}
	t.Logf("%d claims: %d granted (%d last-resort), %d rate limited", claims, ok.Load(), gotLastResort.Load(), limited.Load())

	// The last-resort KeyPackage is still there, and after the window the
	// target can be claimed again: the last-resort one, since the three
	// regular ones went first.
	list, err := target.kps.ListKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.ListKeyPackagesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Msg.KeyPackages) != 1 || !bytes.Equal(list.Msg.KeyPackages[0].Ref, lastResort) || !list.Msg.KeyPackages[0].LastResort {
		t.Fatalf("target holds %v, want only its last-resort KeyPackage", list.Msg.KeyPackages)
	}
	skew.Store(int64(2 * time.Minute))
	res, err := cs[0].kps.ClaimKeyPackages(context.Background(), claimReq("target"))
	if err != nil {
		t.Fatalf("claim after the window: %v", err)
	}
	if k := res.Msg.KeyPackages[0]; !k.LastResort || !bytes.Equal(k.Ref, lastResort) {
		t.Fatalf("claim after the window got %x (last resort %v), want the last-resort KeyPackage", k.Ref, k.LastResort)
	}
}

// TestHostileSlowConsumer: a client opens Subscribe and never reads. The
// server buffers at most SubscriptionBuffer events for it (plus what the
// HTTP/2 flow-control window holds), ends the subscription after
// SlowConsumerTimeout, and loses nothing: a new subscription replays
// everything not acknowledged.
func TestHostileSlowConsumer(t *testing.T) {
	const buffer, messages, size = 8, 400, 1024
	e := startEnv(t, func(c *ds.Config, _ *server.Config) {
		c.SubscriptionBuffer = buffer
		c.SlowConsumerTimeout = 50 * time.Millisecond
	})
	alice := e.client("alice")
	// bob's transport grants the server a 64 KiB window per stream and
	// connection, so that the stream stalls after about 60 messages.
	tr := &http.Transport{ForceAttemptHTTP2: true, HTTP2: &http.HTTP2Config{
		MaxReceiveBufferPerStream: 64 << 10, MaxReceiveBufferPerConnection: 64 << 10}}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	slow := &testEnv{t: t, url: e.url, http: &http.Client{Transport: tr}}
	bob := slow.client("bob")
	gid := groupID("slow")
	alice.createOpaqueGroup(gid, bob)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := bob.delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for range messages {
		alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, size))
	}
	// bob reads nothing for a while: the server's subscription fills its
	// buffer and gives up. (A wait, not a speed check: the timeout is
	// 50ms and the wait 40 times that.)
	time.Sleep(2 * time.Second)
	var got int
	for stream.Receive() {
		if stream.Msg().GetMessage() != nil {
			got++
		}
	}
	// The server ends the stream: with an Unavailable answer when it can
	// still write one, or by resetting it when its write deadline cuts a
	// write the full flow-control window blocked (the client sees
	// INTERNAL_ERROR then).
	switch code := connect.CodeOf(stream.Err()); code {
	case connect.CodeUnavailable:
		wantMessage(t, connectErr(t, stream.Err(), connect.CodeUnavailable), "subscription ended by the server")
	case connect.CodeInternal:
		if !strings.Contains(stream.Err().Error(), "INTERNAL_ERROR") {
			t.Fatalf("the stalled stream ended with %v, want a reset stream or Unavailable", stream.Err())
		}
	default:
		t.Fatalf("the stalled stream ended with %v, want Unavailable or a reset stream", stream.Err())
	}
	stream.Close()
	// Bounded: the stream delivered what the window and the buffer held,
	// not all messages.
	if got >= messages {
		t.Fatalf("the stalled stream delivered all %d messages: the server buffered without bound", got)
	}
	t.Logf("the stalled stream delivered %d of %d messages before it was ended", got, messages)

	// Nothing was acknowledged, so a new subscription replays all of them.
	sub := bob.subscribe()
	if n := len(sub.waitCaughtUp(t)); n != messages {
		t.Fatalf("the new subscription replayed %d messages, want %d", n, messages)
	}
}

// TestHostileSlowHeaders: clients that send a request one byte at a time
// and never finish in time are disconnected, however steadily the bytes
// trickle in: HTTP/1.1 headers once ReadHeaderTimeout has passed; the h2c
// preface trickled and followed by no SETTINGS frame; and over HTTP/2 a
// HEADERS frame that never completes (it opens no stream, so the
// connection is idle) once IdleTimeout has passed.
func TestHostileSlowHeaders(t *testing.T) {
	e := startEnv(t, func(_ *ds.Config, c *server.Config) {
		c.ReadHeaderTimeout = 200 * time.Millisecond
		c.IdleTimeout = 300 * time.Millisecond
	})
	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	settings := string([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0})      // empty SETTINGS
	headers := string([]byte{0, 0x3e, 0x80, 1, 4, 0, 0, 0, 1}) // HEADERS, 16,000 bytes, END_HEADERS, stream 1
	for _, c := range []struct {
		name, sent, trickled string
	}{
		{"HTTP/1.1 headers", "", "POST /" + mlsdsv1connect.GroupServiceName + "/Send HTTP/1.1\r\nHost: x\r\nX-Pad: "},
		{"h2c preface", "", preface},
		{"HTTP/2 HEADERS frame", preface + settings, headers},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write([]byte(c.sent)); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			var written atomic.Int64
			data := []byte(c.trickled + strings.Repeat("a", 100_000))
			go func() {
				for _, b := range data {
					select {
					case <-stop:
						return
					case <-time.After(5 * time.Millisecond):
					}
					if _, err := conn.Write([]byte{b}); err != nil {
						return
					}
					written.Add(1)
				}
			}()
			conn.SetReadDeadline(time.Now().Add(60 * time.Second))
			_, err = io.Copy(io.Discard, conn) // the server's SETTINGS, if any, then EOF
			close(stop)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the server kept the connection open for 60s while the request trickled in")
			}
			// 100,000 bytes at one per 5ms would take over 8 minutes.
			if n := written.Load(); n >= int64(len(data)) {
				t.Fatalf("the whole request was written (%d bytes) before the server hung up", n)
			}
			t.Logf("disconnected after %d trickled bytes", written.Load())
		})
	}
}
