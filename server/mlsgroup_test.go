package server_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// tgroup is the public view of a transparent-mode group that a test member
// keeps: the mls.PublicGroupState the server tracks too, and the member's
// own leaf. Commits are real PublicMessages signed by the member; their
// membership and confirmation tags are random, since neither the server
// nor these tests hold the epoch secrets (§6.2: the DS cannot check them).
type tgroup struct {
	st   *mls.PublicGroupState
	leaf mls.LeafIndex
}

// leafNode is a key_package LeafNode of m, as the creator of a group puts
// it in the tree (§11).
func (m *member) leafNode() *mls.LeafNode {
	m.t.Helper()
	_, encPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		m.t.Fatal(err)
	}
	now := uint64(time.Now().Unix())
	ln := &mls.LeafNode{
		EncryptionKey: encPub,
		SignatureKey:  m.sigPub,
		Credential:    m.cred,
		Capabilities: mls.Capabilities{
			Versions:     []mls.ProtocolVersion{mls.ProtocolVersionMLS10},
			CipherSuites: []mls.CipherSuite{suite},
			Credentials:  []mls.CredentialType{mls.CredentialTypeBasic},
		},
		LeafNodeSource: mls.LeafNodeSourceKeyPackage,
		Lifetime:       &mls.Lifetime{NotBefore: now - 3600, NotAfter: now + 7*24*3600},
	}
	if err := ln.Sign(suite, m.sigPriv, nil, 0); err != nil {
		m.t.Fatal(err)
	}
	return ln
}

// newTransparentGroup builds a one-member group of m at epoch 0 (§11): its
// ratchet tree, and its GroupInfo signed by m, as MLSMessage bytes.
func (m *member) newTransparentGroup(groupID []byte) (g *tgroup, groupInfo, tree []byte) {
	m.t.Helper()
	rt, err := mls.NewRatchetTree(suite, []*mls.Node{{Leaf: m.leafNode()}})
	if err != nil {
		m.t.Fatal(err)
	}
	gi := &mls.GroupInfo{
		GroupContext: mls.GroupContext{
			Version:     mls.ProtocolVersionMLS10,
			CipherSuite: suite,
			GroupID:     groupID,
			Epoch:       0,
			TreeHash:    rt.TreeHash(),
		},
		ConfirmationTag: randBytes(suite.HashSize()),
		Signer:          0,
	}
	if err := gi.Sign(m.sigPriv); err != nil {
		m.t.Fatal(err)
	}
	st, err := mls.NewPublicGroupState(gi, rt)
	if err != nil {
		m.t.Fatalf("NewPublicGroupState: %v", err)
	}
	if tree, err = rt.MarshalBinary(); err != nil {
		m.t.Fatal(err)
	}
	return &tgroup{st: st, leaf: 0}, mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}), tree
}

// commitAdd builds a Commit of m, sent as a PublicMessage in g's current
// epoch, that adds the KeyPackages kps by value, without an UpdatePath
// (§12.4: only Adds, so the path is optional). It returns the Commit, a
// Welcome to the joiners, the GroupInfo of the new epoch and the state of
// the new epoch as the server will compute it.
func (m *member) commitAdd(g *tgroup, kps ...*mls.KeyPackage) (commit, welcome, groupInfo []byte, next *tgroup) {
	m.t.Helper()
	gc := g.st.GroupContext()
	c := &mls.Commit{}
	for _, kp := range kps {
		c.Proposals = append(c.Proposals, mls.ProposalOrRef{Type: mls.ProposalOrRefTypeProposal,
			Proposal: &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}}})
	}
	ac := &mls.AuthenticatedContent{
		WireFormat: mls.WireFormatPublicMessage,
		Content: mls.FramedContent{
			GroupID:     gc.GroupID,
			Epoch:       gc.Epoch,
			Sender:      mls.Sender{SenderType: mls.SenderTypeMember, LeafIndex: g.leaf},
			ContentType: mls.ContentTypeCommit,
			Commit:      c,
		},
	}
	if err := ac.Sign(suite, m.sigPriv, &gc); err != nil {
		m.t.Fatal(err)
	}
	ac.Auth.ConfirmationTag = randBytes(suite.HashSize())
	pm := &mls.PublicMessage{Content: ac.Content, Auth: ac.Auth, MembershipTag: randBytes(suite.HashSize())}
	st, _, err := g.st.HandleCommit(pm)
	if err != nil {
		m.t.Fatalf("HandleCommit: %v", err)
	}
	commit = mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})

	// The Welcome: group secrets sealed to each joiner's init key, and a
	// GroupInfo under a welcome key this test does not derive (the server
	// only routes the Welcome by KeyPackageRef, §12.4.3.1).
	w := &mls.Welcome{CipherSuite: suite, EncryptedGroupInfo: randBytes(128)}
	for _, kp := range kps {
		ref, err := kp.Ref()
		if err != nil {
			m.t.Fatal(err)
		}
		kem, ct, err := suite.EncryptWithLabel(kp.InitKey, "Welcome", w.EncryptedGroupInfo, randBytes(32))
		if err != nil {
			m.t.Fatal(err)
		}
		w.Secrets = append(w.Secrets, mls.EncryptedGroupSecrets{NewMember: ref,
			EncryptedGroupSecrets: mls.HPKECiphertext{KEMOutput: kem, Ciphertext: ct}})
	}
	welcome = mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: w})

	groupInfo = m.signGroupInfo(st, pm, g.leaf)
	return commit, welcome, groupInfo, &tgroup{st: st, leaf: g.leaf}
}

// signGroupInfo returns the GroupInfo of next, the epoch the Commit pm
// starts, signed by m as the member at leaf, as an MLSMessage: it repeats
// pm's confirmation_tag and carries an external_pub (§12.4.3, §12.4.3.2),
// as the server requires of the GroupInfo sent with every Commit.
func (m *member) signGroupInfo(next *mls.PublicGroupState, pm *mls.PublicMessage, leaf mls.LeafIndex) []byte {
	m.t.Helper()
	_, extPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		m.t.Fatal(err)
	}
	ext, err := (&mls.ExternalPub{PublicKey: extPub}).MarshalBinary()
	if err != nil {
		m.t.Fatal(err)
	}
	gi := &mls.GroupInfo{GroupContext: next.GroupContext(), ConfirmationTag: pm.Auth.ConfirmationTag, Signer: leaf,
		Extensions: mls.Extensions{{ExtensionType: mls.ExtensionTypeExternalPub, ExtensionData: ext}}}
	if err := gi.Sign(m.sigPriv); err != nil {
		m.t.Fatal(err)
	}
	return mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
}

// groupInfoAfter returns the GroupInfo, signed by m, of the epoch that
// commit (an MLSMessage holding a PublicMessage Commit in g's epoch, from
// m's leaf) starts.
func (m *member) groupInfoAfter(g *tgroup, commit []byte) []byte {
	m.t.Helper()
	msg, err := mls.ParseMLSMessage(commit)
	if err != nil {
		m.t.Fatal(err)
	}
	next, _, err := g.st.HandleCommit(msg.PublicMessage)
	if err != nil {
		m.t.Fatalf("HandleCommit: %v", err)
	}
	return m.signGroupInfo(next, msg.PublicMessage, g.leaf)
}

// sendBundle sends commit with the GroupInfo of the new epoch.
func (m *member) sendBundle(commit, groupInfo []byte) (*mlsdsv1.Receipt, error) {
	res, err := m.groups.SendCommitBundle(context.Background(), connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
		Commit: commit, GroupInfo: groupInfo}))
	if err != nil {
		return nil, err
	}
	return res.Msg.Receipt, nil
}

// leafOf returns the leaf of the member with id in g's tree.
func leafOf(t testing.TB, g *tgroup, id string) mls.LeafIndex {
	t.Helper()
	for i, ln := range g.st.Tree().Leaves() {
		if string(ln.Credential.Identity) == id {
			return i
		}
	}
	t.Fatalf("%s holds no leaf", id)
	return 0
}
