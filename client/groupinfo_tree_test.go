package client

import (
	"bytes"
	"path/filepath"
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// servedGroupInfo returns the GroupInfo the server serves for gid, and its
// tree.
func servedGroupInfo(t *testing.T, c *tclient, gid []byte) (*mls.GroupInfo, []byte) {
	t.Helper()
	res, err := c.rpc.groups.GetGroupInfo(ctxT(t), connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
	if err != nil {
		t.Fatalf("GetGroupInfo: %v", err)
	}
	msg, err := mls.ParseMLSMessage(res.Msg.GroupInfo)
	if err != nil || msg.GroupInfo == nil {
		t.Fatalf("served group_info is no GroupInfo: %v", err)
	}
	return msg.GroupInfo, res.Msg.RatchetTree
}

// TestGroupInfoCarriesTree: the GroupInfo a Commit of the SDK uploads
// carries the ratchet tree while the encoded tree is within
// Config.GroupInfoTreeLimit, and not above it.
func TestGroupInfoCarriesTree(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()

	gi, served := servedGroupInfo(t, alice, gid)
	ext, ok := gi.Extensions.Find(mls.ExtensionTypeRatchetTree)
	if !ok {
		t.Fatal("the GroupInfo of alice's Commit has no ratchet_tree extension")
	}
	if !bytes.Equal(ext.ExtensionData, served) {
		t.Fatal("the GroupInfo's ratchet_tree is not the tree the server serves")
	}
	tree, err := mls.UnmarshalRatchetTree(gi.GroupContext.CipherSuite, ext.ExtensionData)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tree.TreeHash(), gi.GroupContext.TreeHash) {
		t.Fatal("the GroupInfo's tree does not match its tree_hash")
	}
	greaseExt := false
	for _, e := range gi.Extensions {
		greaseExt = greaseExt || isGREASEValue(uint16(e.ExtensionType))
	}
	if !greaseExt {
		t.Error("the GroupInfo of alice's Commit has no GREASE extension")
	}
	// A joiner needs nothing but this GroupInfo.
	if _, err := mls.NewPublicGroupState(gi, nil); err != nil {
		t.Fatalf("state from the GroupInfo alone: %v", err)
	}

	// Every member's leaf carries the SDK's GREASE values (RFC 9420 §13.5),
	// and the others took them.
	for i, ln := range tree.Leaves() {
		if !hasGREASE(ln) {
			t.Errorf("leaf %d (%s) has no GREASE values", i, ln.Credential.Identity)
		}
	}

	// bob, with a tree limit below any tree, commits without it.
	if err := bob.Close(); err != nil {
		t.Fatal(err)
	}
	bob = e.open("bob", filepath.Dir(bob.path), func(c *Config) { c.GroupInfoTreeLimit = 16 })
	if err := bob.Group(gid).Update(ctxT(t)); err != nil {
		t.Fatalf("Update: %v", err)
	}
	waitEpoch(t, alice, gid, 2)
	gi, served = servedGroupInfo(t, alice, gid)
	if gi.GroupContext.Epoch != 2 {
		t.Fatalf("served GroupInfo of epoch %d, want 2", gi.GroupContext.Epoch)
	}
	if _, ok := gi.Extensions.Find(mls.ExtensionTypeRatchetTree); ok {
		t.Fatal("the GroupInfo of bob's Commit carries the tree, above his limit")
	}
	if len(served) == 0 {
		t.Fatal("GetGroupInfo serves no ratchet_tree")
	}
}

// hasGREASE reports whether ln holds a GREASE value (RFC 9420 §13.5) in
// each of the fields the SDK puts one in.
func hasGREASE(ln *mls.LeafNode) bool {
	grease := isGREASEValue
	any16 := func(n int, at func(int) uint16) bool {
		for i := range n {
			if grease(at(i)) {
				return true
			}
		}
		return false
	}
	c := &ln.Capabilities
	return any16(len(c.CipherSuites), func(i int) uint16 { return uint16(c.CipherSuites[i]) }) &&
		any16(len(c.Extensions), func(i int) uint16 { return uint16(c.Extensions[i]) }) &&
		any16(len(c.Proposals), func(i int) uint16 { return uint16(c.Proposals[i]) }) &&
		any16(len(c.Credentials), func(i int) uint16 { return uint16(c.Credentials[i]) }) &&
		any16(len(ln.Extensions), func(i int) uint16 { return uint16(ln.Extensions[i].ExtensionType) })
}

// isGREASEValue reports whether v is one of the GREASE values of RFC 9420
// §13.5: 0x0A0A, 0x1A1A, ..., 0xEAEA.
func isGREASEValue(v uint16) bool { return v&0x0f0f == 0x0a0a && v>>12 == (v>>4)&0xf && v != 0xfafa }
