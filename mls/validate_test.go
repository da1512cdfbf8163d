package mls

import (
	"bytes"
	"testing"
	"time"
)

// testMember is a client with real keys: a signature key pair, and the
// HPKE key pairs of its KeyPackage's init_key and leaf encryption_key.
type testMember struct {
	cs       CipherSuite
	name     string
	sigPriv  []byte
	sigPub   []byte
	encPriv  []byte
	initPriv []byte
	kp       *KeyPackage
}

// testLifetimeStart is the not_before of test KeyPackages; testNow lies
// inside their lifetime.
var (
	testLifetimeStart = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	testNow           = testLifetimeStart.Add(24 * time.Hour)
)

func testCapabilities(cs CipherSuite) Capabilities {
	return Capabilities{
		Versions:     []ProtocolVersion{ProtocolVersionMLS10},
		CipherSuites: []CipherSuite{cs},
		Credentials:  []CredentialType{CredentialTypeBasic},
	}
}

// newTestMember makes a member with fresh keys and a signed KeyPackage
// valid for 30 days from testLifetimeStart. edit, if given, changes the
// KeyPackage before the leaf and the KeyPackage are signed.
func newTestMember(t testing.TB, cs CipherSuite, name string, edit ...func(*KeyPackage)) *testMember {
	t.Helper()
	m := &testMember{cs: cs, name: name}
	var err error
	if m.sigPriv, m.sigPub, err = cs.GenerateSignatureKeyPair(); err != nil {
		t.Fatal(err)
	}
	encPriv, encPub, err := cs.GenerateKEMKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	initPriv, initPub, err := cs.GenerateKEMKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	m.encPriv, m.initPriv = encPriv, initPriv
	start := uint64(testLifetimeStart.Unix())
	m.kp = &KeyPackage{
		Version:     ProtocolVersionMLS10,
		CipherSuite: cs,
		InitKey:     initPub,
		LeafNode: LeafNode{
			EncryptionKey:  encPub,
			SignatureKey:   m.sigPub,
			Credential:     Credential{CredentialType: CredentialTypeBasic, Identity: []byte(name)},
			Capabilities:   testCapabilities(cs),
			LeafNodeSource: LeafNodeSourceKeyPackage,
			Lifetime:       &Lifetime{NotBefore: start, NotAfter: start + 30*24*3600},
		},
	}
	for _, f := range edit {
		f(m.kp)
	}
	m.resign(t)
	return m
}

// resign signs the KeyPackage's leaf and then the KeyPackage again.
func (m *testMember) resign(t testing.TB) {
	t.Helper()
	if err := m.kp.LeafNode.Sign(m.cs, m.sigPriv, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := m.kp.Sign(m.sigPriv); err != nil {
		t.Fatal(err)
	}
}

// groupLeaf returns a LeafNode of source update or commit for leaf i of
// group groupID, with a fresh encryption key, signed by m.
func (m *testMember) groupLeaf(t testing.TB, source LeafNodeSource, groupID []byte, i LeafIndex, edit ...func(*LeafNode)) *LeafNode {
	t.Helper()
	_, encPub, err := m.cs.GenerateKEMKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	ln := m.kp.LeafNode
	ln.EncryptionKey = encPub
	ln.LeafNodeSource = source
	ln.Lifetime = nil
	ln.ParentHash = nil
	for _, f := range edit {
		f(&ln)
	}
	if err := ln.Sign(m.cs, m.sigPriv, groupID, i); err != nil {
		t.Fatal(err)
	}
	return &ln
}

// TestValidateKeyPackage breaks each rule of §10.1 (and the §7.3 rules for
// its leaf) in a real, signed KeyPackage, one at a time.
func TestValidateKeyPackage(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	good := newTestMember(t, cs, "alice")
	if err := ValidateKeyPackage(good.kp, testNow, 90*24*time.Hour); err != nil {
		t.Fatalf("valid KeyPackage rejected: %v", err)
	}
	if err := ValidateKeyPackage(good.kp, time.Time{}, 0); err != nil {
		t.Fatalf("valid KeyPackage rejected without clock and maximum: %v", err)
	}
	_, otherKEM, _ := cs.GenerateKEMKeyPair()

	cases := []struct {
		name    string
		section string
		edit    func(*KeyPackage) // applied before signing
		after   func(*testMember) // applied after signing
		now     time.Time         // zero: testNow
		max     time.Duration     // zero: 90 days
	}{
		{name: "version", section: "10.1", edit: func(kp *KeyPackage) { kp.Version = 2 }},
		{name: "unsupported suite", section: "10.1", after: func(m *testMember) { m.kp.CipherSuite = 0x0a0a }},
		{name: "init_key not an HPKE key", section: "10", edit: func(kp *KeyPackage) { kp.InitKey = []byte("not a key") }},
		{name: "encryption_key not an HPKE key", section: "7.2", edit: func(kp *KeyPackage) { kp.LeafNode.EncryptionKey = []byte{1, 2, 3} }},
		{name: "leaf source update", section: "7.3", edit: func(kp *KeyPackage) {
			kp.LeafNode.LeafNodeSource = LeafNodeSourceUpdate
			kp.LeafNode.Lifetime = nil
		}},
		{name: "leaf signature", section: "7.3", after: func(m *testMember) {
			m.kp.LeafNode.Signature[0] ^= 1
			if err := m.kp.Sign(m.sigPriv); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "KeyPackage signature", section: "10.1", after: func(m *testMember) { m.kp.Signature[0] ^= 1 }},
		{name: "KeyPackage signed by another key", section: "10.1", after: func(m *testMember) {
			other, _, _ := cs.GenerateSignatureKeyPair()
			if err := m.kp.Sign(other); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "expired", section: "7.3", now: testLifetimeStart.Add(31 * 24 * time.Hour)},
		{name: "not yet valid", section: "7.3", now: testLifetimeStart.Add(-time.Hour)},
		{name: "lifetime above maximum", section: "7.2", max: 7 * 24 * time.Hour},
		{name: "lifetime inverted", section: "7.2", edit: func(kp *KeyPackage) {
			kp.LeafNode.Lifetime = &Lifetime{NotBefore: kp.LeafNode.Lifetime.NotAfter, NotAfter: kp.LeafNode.Lifetime.NotBefore}
		}},
		{name: "leaf extension not in capabilities", section: "7.3", edit: func(kp *KeyPackage) {
			kp.LeafNode.Extensions = Extensions{{ExtensionType: 0xff01, ExtensionData: []byte("x")}}
		}},
		{name: "leaf extension listed twice", section: "13.4", edit: func(kp *KeyPackage) {
			kp.LeafNode.Capabilities.Extensions = []ExtensionType{0xff01}
			kp.LeafNode.Extensions = Extensions{{ExtensionType: 0xff01}, {ExtensionType: 0xff01, ExtensionData: []byte("x")}}
		}},
		{name: "KeyPackage extension listed twice", section: "13.4", edit: func(kp *KeyPackage) {
			kp.Extensions = Extensions{{ExtensionType: 0x4a4a}, {ExtensionType: 0x4a4a}}
		}},
		{name: "credential type not in capabilities", section: "7.2", edit: func(kp *KeyPackage) {
			kp.LeafNode.Capabilities.Credentials = []CredentialType{CredentialTypeX509}
		}},
		{name: "init_key equals encryption_key", section: "10.1", edit: func(kp *KeyPackage) { kp.InitKey = kp.LeafNode.EncryptionKey }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var edits []func(*KeyPackage)
			if c.edit != nil {
				edits = append(edits, c.edit)
			}
			m := newTestMember(t, cs, "alice", edits...)
			if c.after != nil {
				c.after(m)
			}
			now, max := testNow, 90*24*time.Hour
			if !c.now.IsZero() {
				now = c.now
			}
			if c.max != 0 {
				max = c.max
			}
			assertSection(t, ValidateKeyPackage(m.kp, now, max), c.section)
		})
	}

	// Listed extension types and GREASE values are fine. Unknown
	// KeyPackage extensions are ignored whether the capabilities list them
	// or not (§10, §13.4): 0x4a4a (19018) is GREASE, 0xff02 a private-use
	// type, neither listed.
	ok := newTestMember(t, cs, "bob", func(kp *KeyPackage) {
		kp.LeafNode.Capabilities.Extensions = []ExtensionType{0xff01, 0x0a0a}
		kp.LeafNode.Extensions = Extensions{{ExtensionType: 0xff01}, {ExtensionType: ExtensionTypeApplicationID, ExtensionData: []byte{0}}}
		kp.Extensions = Extensions{{ExtensionType: 0x0a0a}, {ExtensionType: 0x4a4a, ExtensionData: []byte("grease")}, {ExtensionType: 0xff02}}
		kp.InitKey = otherKEM
	})
	if err := ValidateKeyPackage(ok.kp, testNow, 0); err != nil {
		t.Fatalf("KeyPackage with unknown or listed extensions rejected: %v", err)
	}
}

// TestValidateKeyPackageSuites signs and validates a KeyPackage in every
// supported cipher suite.
func TestValidateKeyPackageSuites(t *testing.T) {
	for cs := CipherSuite(1); cs <= 7; cs++ {
		m := newTestMember(t, cs, "carol")
		if err := ValidateKeyPackage(m.kp, testNow, 0); err != nil {
			t.Errorf("suite %v: %v", cs, err)
		}
		m.kp.Signature[len(m.kp.Signature)/2] ^= 1
		if err := ValidateKeyPackage(m.kp, testNow, 0); err == nil {
			t.Errorf("suite %v: corrupted signature accepted", cs)
		}
	}
}

// twoMemberTree returns a tree whose leaves 0 and 1 are a and b.
func twoMemberTree(t *testing.T, a, b *testMember) *RatchetTree {
	t.Helper()
	tree, err := NewRatchetTree(a.cs, []*Node{{Leaf: &a.kp.LeafNode}, nil, {Leaf: &b.kp.LeafNode}})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// TestValidateLeafNode breaks each rule of §7.3 that depends on the group
// a leaf is in, one at a time.
func TestValidateLeafNode(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	group := []byte("group")
	alice := newTestMember(t, cs, "alice")
	bob := newTestMember(t, cs, "bob")
	tree := twoMemberTree(t, alice, bob)
	updateCtx := LeafNodeContext{Source: LeafNodeSourceUpdate, GroupID: group, LeafIndex: 1, Tree: tree}

	// Bob updating his own leaf, keeping his signature key, is valid.
	if err := ValidateLeafNode(cs, bob.groupLeaf(t, LeafNodeSourceUpdate, group, 1), updateCtx); err != nil {
		t.Fatalf("valid Update leaf rejected: %v", err)
	}
	// A new member's KeyPackage leaf is valid too.
	carol := newTestMember(t, cs, "carol")
	if err := ValidateLeafNode(cs, &carol.kp.LeafNode, LeafNodeContext{Source: LeafNodeSourceKeyPackage, Tree: tree, Now: testNow}); err != nil {
		t.Fatalf("valid KeyPackage leaf rejected: %v", err)
	}

	required := func(rc RequiredCapabilities) Extensions {
		return Extensions{{ExtensionType: ExtensionTypeRequiredCapabilities, ExtensionData: mustEncode(&rc)}}
	}
	x509 := func(ln *LeafNode) {
		ln.Credential = Credential{CredentialType: CredentialTypeX509, Certificates: [][]byte{[]byte("cert")}}
		ln.Capabilities.Credentials = []CredentialType{CredentialTypeBasic, CredentialTypeX509}
	}
	cases := []struct {
		name string
		leaf func() *LeafNode
		ctx  func() LeafNodeContext
	}{
		{"signed for another group", func() *LeafNode { return bob.groupLeaf(t, LeafNodeSourceUpdate, []byte("other"), 1) }, nil},
		{"signed for another leaf", func() *LeafNode { return bob.groupLeaf(t, LeafNodeSourceUpdate, group, 0) }, nil},
		{"source commit where update is due", func() *LeafNode { return bob.groupLeaf(t, LeafNodeSourceCommit, group, 1) }, nil},
		{"required extension missing", nil, func() LeafNodeContext {
			c := updateCtx
			c.Extensions = required(RequiredCapabilities{ExtensionTypes: []ExtensionType{0xff10}})
			return c
		}},
		{"required proposal missing", nil, func() LeafNodeContext {
			c := updateCtx
			c.Extensions = required(RequiredCapabilities{ProposalTypes: []ProposalType{0xff11}})
			return c
		}},
		{"required credential missing", nil, func() LeafNodeContext {
			c := updateCtx
			c.Extensions = required(RequiredCapabilities{CredentialTypes: []CredentialType{CredentialTypeX509}})
			return c
		}},
		{"credential type unsupported by a member", func() *LeafNode { return bob.groupLeaf(t, LeafNodeSourceUpdate, group, 1, x509) }, nil},
		{"leaf does not support a credential type in use", func() *LeafNode {
			return bob.groupLeaf(t, LeafNodeSourceUpdate, group, 1, func(ln *LeafNode) {
				ln.Capabilities.Credentials = []CredentialType{CredentialTypeX509}
				ln.Credential = Credential{CredentialType: CredentialTypeX509, Certificates: [][]byte{[]byte("cert")}}
			})
		}, func() LeafNodeContext {
			// Alice supports x509, so only the other direction fails.
			a := newTestMember(t, cs, "alice", func(kp *KeyPackage) {
				kp.LeafNode.Capabilities.Credentials = []CredentialType{CredentialTypeBasic, CredentialTypeX509}
			})
			c := updateCtx
			c.Tree = twoMemberTree(t, a, bob)
			return c
		}},
		{"extension not in capabilities", func() *LeafNode {
			return bob.groupLeaf(t, LeafNodeSourceUpdate, group, 1, func(ln *LeafNode) { ln.Extensions = Extensions{{ExtensionType: 0xff20}} })
		}, nil},
		{"encryption_key used by another member", func() *LeafNode {
			return bob.groupLeaf(t, LeafNodeSourceUpdate, group, 1, func(ln *LeafNode) { ln.EncryptionKey = alice.kp.LeafNode.EncryptionKey })
		}, nil},
		{"signature_key used by another member", func() *LeafNode {
			// Bob's leaf signed with Alice's key pair.
			ln := bob.kp.LeafNode
			ln.LeafNodeSource, ln.Lifetime = LeafNodeSourceUpdate, nil
			_, ln.EncryptionKey, _ = cs.GenerateKEMKeyPair()
			ln.SignatureKey = alice.sigPub
			if err := ln.Sign(cs, alice.sigPriv, group, 1); err != nil {
				t.Fatal(err)
			}
			return &ln
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			leaf := bob.groupLeaf(t, LeafNodeSourceUpdate, group, 1)
			if c.leaf != nil {
				leaf = c.leaf()
			}
			ctx := updateCtx
			if c.ctx != nil {
				ctx = c.ctx()
			}
			assertSection(t, ValidateLeafNode(cs, leaf, ctx), "7.3")
		})
	}

	t.Run("key_package lifetime", func(t *testing.T) {
		ctx := LeafNodeContext{Source: LeafNodeSourceKeyPackage, Tree: tree, Now: testLifetimeStart.Add(-time.Second)}
		assertSection(t, ValidateLeafNode(cs, &carol.kp.LeafNode, ctx), "7.3")
		ctx = LeafNodeContext{Source: LeafNodeSourceKeyPackage, Tree: tree, MaxLifetime: time.Hour}
		assertSection(t, ValidateLeafNode(cs, &carol.kp.LeafNode, ctx), "7.2")
	})
	t.Run("key_package leaf reusing a member's keys", func(t *testing.T) {
		// A KeyPackage leaf replaces nobody, so even the leaf at LeafIndex
		// counts against it.
		ctx := LeafNodeContext{Source: LeafNodeSourceKeyPackage, Tree: tree, LeafIndex: 1}
		assertSection(t, ValidateLeafNode(cs, &bob.kp.LeafNode, ctx), "7.3")
	})
	t.Run("no tree: group checks skipped", func(t *testing.T) {
		leaf := bob.groupLeaf(t, LeafNodeSourceUpdate, group, 1, func(ln *LeafNode) { ln.EncryptionKey = alice.kp.LeafNode.EncryptionKey })
		if err := ValidateLeafNode(cs, leaf, LeafNodeContext{Source: LeafNodeSourceUpdate, GroupID: group, LeafIndex: 1}); err != nil {
			t.Fatalf("without a tree, uniqueness cannot be checked: %v", err)
		}
	})
	if !bytes.Equal(tree.Leaf(1).SignatureKey, bob.sigPub) {
		t.Fatal("ValidateLeafNode modified the tree")
	}
}
