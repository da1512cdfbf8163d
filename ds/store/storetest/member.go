package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// Member is a client with a real signature key pair, for tests and
// benchmarks that run a ds.Service and need a client's KeyPackages: to
// create a group with initial members, each must consent with a
// KeyPackage it published (see ds.CreateGroup.KeyPackages).
type Member struct {
	ID              string
	SigPriv, SigPub []byte
}

// NewMember makes a client id with a fresh key pair of the package's
// cipher suite; it registers nothing.
func NewMember(tb testing.TB, id string) *Member {
	tb.Helper()
	priv, pub, err := suite.GenerateSignatureKeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	return &Member{ID: id, SigPriv: priv, SigPub: pub}
}

// Client is m as a ds.Client to register, of user userID.
func (m *Member) Client(userID string) ds.Client {
	return ds.Client{ID: m.ID, UserID: userID, CipherSuite: suite, SignatureKey: m.SigPub}
}

// KeyPackage returns a fresh KeyPackage of m valid around now, as an
// MLSMessage (RFC 9420 §10).
func (m *Member) KeyPackage(tb testing.TB, now time.Time) []byte {
	tb.Helper()
	_, initPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	_, encPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	kp := &mls.KeyPackage{
		Version:     mls.ProtocolVersionMLS10,
		CipherSuite: suite,
		InitKey:     initPub,
		LeafNode: mls.LeafNode{
			EncryptionKey: encPub,
			SignatureKey:  m.SigPub,
			Credential:    mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(m.ID)},
			Capabilities: mls.Capabilities{
				Versions:     []mls.ProtocolVersion{mls.ProtocolVersionMLS10},
				CipherSuites: []mls.CipherSuite{suite},
				Credentials:  []mls.CredentialType{mls.CredentialTypeBasic},
			},
			LeafNodeSource: mls.LeafNodeSourceKeyPackage,
			Lifetime:       &mls.Lifetime{NotBefore: uint64(now.Add(-time.Hour).Unix()), NotAfter: uint64(now.Add(24 * time.Hour).Unix())},
		},
	}
	if err := kp.LeafNode.Sign(suite, m.SigPriv, nil, 0); err != nil {
		tb.Fatal(err)
	}
	if err := kp.Sign(m.SigPriv); err != nil {
		tb.Fatal(err)
	}
	data, err := (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp}).MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// Consent publishes a fresh KeyPackage of each member through svc and
// returns them, to pass as ds.CreateGroup.KeyPackages for an opaque group
// whose initial members (besides the creator) they are.
func Consent(tb testing.TB, svc *ds.Service, members ...*Member) [][]byte {
	tb.Helper()
	var out [][]byte
	for _, m := range members {
		data := m.KeyPackage(tb, time.Now())
		if _, err := svc.UploadKeyPackages(context.Background(), m.ID, []ds.KeyPackageUpload{{Data: data}}); err != nil {
			tb.Fatalf("UploadKeyPackages(%s): %v", m.ID, err)
		}
		out = append(out, data)
	}
	return out
}
