package server_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// greaseKeyPackage returns a KeyPackage of m with GREASE values (RFC 9420
// §13.5) as another implementation might send it: one in each
// capabilities list, a GREASE extension in LeafNode.extensions (listed, as
// §7.3 requires), and in KeyPackage.extensions one of type 0x4a4a (19018)
// that the capabilities do not list, which a receiver ignores (§13.4).
func greaseKeyPackage(m *member) ([]byte, *mls.KeyPackage) {
	m.t.Helper()
	now := uint64(time.Now().Unix())
	kp, _, err := mls.NewKeyPackage(suite, m.cred.Identity, m.sigPriv, now-3600, now+7*24*3600)
	if err != nil {
		m.t.Fatal(err)
	}
	caps := &kp.LeafNode.Capabilities
	caps.CipherSuites = append(caps.CipherSuites, 0x1a1a)
	caps.Extensions = append(caps.Extensions, 0x2a2a)
	caps.Proposals = append(caps.Proposals, 0x3a3a)
	caps.Credentials = append(caps.Credentials, 0xaaaa)
	kp.LeafNode.Extensions = mls.Extensions{{ExtensionType: 0x2a2a, ExtensionData: []byte("leaf")}}
	kp.Extensions = mls.Extensions{{ExtensionType: 0x4a4a, ExtensionData: randBytes(11)}}
	if err := kp.LeafNode.Sign(suite, m.sigPriv, nil, 0); err != nil {
		m.t.Fatal(err)
	}
	if err := kp.Sign(m.sigPriv); err != nil {
		m.t.Fatal(err)
	}
	return mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp}), kp
}

// TestGreaseKeyPackages: the KeyPackage directory accepts KeyPackages with
// GREASE values in every position §13.5 allows, from another
// implementation's hand and from mls.NewKeyPackageWith; a transparent
// group adds both with a Commit, and the served tree keeps them.
func TestGreaseKeyPackages(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	ctx := context.Background()

	bobKP, _ := greaseKeyPackage(bob)
	if _, err := bob.kps.UploadKeyPackages(ctx, connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
		KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: bobKP}}})); err != nil {
		t.Fatalf("upload of a KeyPackage with an unlisted GREASE extension: %v", err)
	}
	now := uint64(time.Now().Unix())
	ckp, _, err := mls.NewKeyPackageWith(suite, []byte("carol"), carol.sigPriv, now-3600, now+7*24*3600, mls.KeyPackageOptions{Grease: true})
	if err != nil {
		t.Fatal(err)
	}
	carolKP := mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: ckp})
	if _, err := carol.kps.UploadKeyPackages(ctx, connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
		KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: carolKP}}})); err != nil {
		t.Fatalf("upload of a KeyPackage of NewKeyPackageWith(Grease): %v", err)
	}

	gid := groupID("grease")
	g0, gi, tree := alice.newTransparentGroup(gid)
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi, RatchetTree: tree})); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	var kps []*mls.KeyPackage
	for _, id := range []string{"bob", "carol"} {
		msg, err := mls.ParseMLSMessage(alice.claim(id))
		if err != nil {
			t.Fatal(err)
		}
		kps = append(kps, msg.KeyPackage)
	}
	if !bytes.Equal(greaseMarshal(t, kps[0]), greaseMarshal(t, greaseParseKP(t, bobKP))) {
		t.Fatal("the claimed KeyPackage of bob is not the one uploaded")
	}
	commit, welcome, gi1, _ := alice.commitAdd(g0, kps...)
	if _, err := alice.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
		Commit: commit, Welcome: welcome, GroupInfo: gi1})); err != nil {
		t.Fatalf("Commit adding KeyPackages with GREASE values: %v", err)
	}
	info, err := alice.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := mls.UnmarshalRatchetTree(suite, info.Msg.RatchetTree)
	if err != nil {
		t.Fatal(err)
	}
	if rt.LeafCount() < 3 {
		t.Fatalf("served tree has %d leaves, want 3", rt.LeafCount())
	}
	for i, kp := range kps {
		ln := rt.Leaf(mls.LeafIndex(i + 1))
		if ln == nil || !bytes.Equal(greaseMarshal(t, ln), greaseMarshal(t, &kp.LeafNode)) {
			t.Fatalf("served leaf %d is not the added KeyPackage's leaf", i+1)
		}
	}
}

type greaseMarshaler interface{ MarshalBinary() ([]byte, error) }

func greaseMarshal(t *testing.T, v greaseMarshaler) []byte {
	t.Helper()
	b, err := v.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func greaseParseKP(t *testing.T, data []byte) *mls.KeyPackage {
	t.Helper()
	msg, err := mls.ParseMLSMessage(data)
	if err != nil {
		t.Fatal(err)
	}
	return msg.KeyPackage
}
