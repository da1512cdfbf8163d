package mls

import (
	"bytes"
	"testing"
	"time"
)

// TestIsGREASE checks the GREASE table against §13.5: fifteen values,
// 0x0A0A to 0xEAEA, and not 0xFAFA.
func TestIsGREASE(t *testing.T) {
	var all []uint16
	for v := 0; v <= 0xffff; v++ {
		if isGREASE(uint16(v)) {
			all = append(all, uint16(v))
		}
	}
	want := []uint16{0x0a0a, 0x1a1a, 0x2a2a, 0x3a3a, 0x4a4a, 0x5a5a, 0x6a6a, 0x7a7a, 0x8a8a, 0x9a9a, 0xaaaa, 0xbaba, 0xcaca, 0xdada, 0xeaea}
	if len(all) != len(want) {
		t.Fatalf("%d GREASE values %04x, want %04x", len(all), all, want)
	}
	for i := range want {
		if all[i] != want[i] {
			t.Fatalf("GREASE values %04x, want %04x", all, want)
		}
	}
	got := greaseValues(15)
	seen := map[uint16]bool{}
	for _, v := range got {
		if !isGREASE(v) || seen[v] {
			t.Fatalf("greaseValues(15) = %04x: want 15 different GREASE values", got)
		}
		seen[v] = true
	}
}

// greaseCount counts the GREASE values in the fields of kp that §13.5
// lists.
type greaseCount struct {
	suites, extensions, proposals, credentials, leafExts, kpExts int
}

func countGREASE(kp *KeyPackage) greaseCount {
	var c greaseCount
	caps := &kp.LeafNode.Capabilities
	for _, v := range caps.CipherSuites {
		if isGREASE(uint16(v)) {
			c.suites++
		}
	}
	for _, v := range caps.Extensions {
		if isGREASE(uint16(v)) {
			c.extensions++
		}
	}
	for _, v := range caps.Proposals {
		if isGREASE(uint16(v)) {
			c.proposals++
		}
	}
	for _, v := range caps.Credentials {
		if isGREASE(uint16(v)) {
			c.credentials++
		}
	}
	for _, e := range kp.LeafNode.Extensions {
		if isGREASE(uint16(e.ExtensionType)) {
			c.leafExts++
		}
	}
	for _, e := range kp.Extensions {
		if isGREASE(uint16(e.ExtensionType)) {
			c.kpExts++
		}
	}
	return c
}

// newGreasyMember makes a member whose KeyPackage carries GREASE values in
// every field §13.5 lists for it, as NewKeyPackageWith makes them.
func newGreasyMember(t *testing.T, cs CipherSuite, name string) *groupMember {
	t.Helper()
	kp, priv, err := NewKeyPackageWith(cs, []byte(name), nil, 0, 1<<62, KeyPackageOptions{Grease: true})
	if err != nil {
		t.Fatal(err)
	}
	want := greaseCount{suites: 1, extensions: 2, proposals: 1, credentials: 1, leafExts: 1, kpExts: 1}
	if got := countGREASE(kp); got != want {
		t.Fatalf("%s: GREASE values in the KeyPackage: %+v, want %+v", name, got, want)
	}
	kp = wireKeyPackage(t, kp)
	return &groupMember{name: name, kp: kp, priv: priv}
}

// newForeignMember makes a member whose KeyPackage looks like one of
// another implementation that GREASEs differently: GREASE values in each
// capabilities list and in LeafNode.extensions, and a GREASE extension in
// KeyPackage.extensions (type 0x4a4a = 19018) that its capabilities do not
// list, next to an unknown, unlisted private-use one.
func newForeignMember(t *testing.T, cs CipherSuite, name string) *groupMember {
	t.Helper()
	kp, priv, err := NewKeyPackage(cs, []byte(name), nil, 0, 1<<62)
	if err != nil {
		t.Fatal(err)
	}
	caps := &kp.LeafNode.Capabilities
	caps.CipherSuites = append([]CipherSuite{0x2a2a}, caps.CipherSuites...)
	caps.Extensions = append(caps.Extensions, 0x6a6a, 0xdada)
	caps.Proposals = append(caps.Proposals, 0x3a3a, 0xeaea)
	caps.Credentials = append([]CredentialType{0x5a5a}, caps.Credentials...)
	kp.LeafNode.Extensions = Extensions{{ExtensionType: 0x6a6a, ExtensionData: []byte("leaf grease")}, {ExtensionType: 0xdada}}
	kp.Extensions = Extensions{{ExtensionType: 0x4a4a, ExtensionData: bytes.Repeat([]byte{0x4a}, 19)}, {ExtensionType: 0xff02, ExtensionData: []byte{1}}}
	if err := kp.LeafNode.Sign(cs, priv.SignaturePriv, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := kp.Sign(priv.SignaturePriv); err != nil {
		t.Fatal(err)
	}
	return &groupMember{name: name, kp: wireKeyPackage(t, kp), priv: priv}
}

func wireKeyPackage(t *testing.T, kp *KeyPackage) *KeyPackage {
	t.Helper()
	out := new(KeyPackage)
	if err := out.UnmarshalBinary(mustEncode(kp)); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestGreaseEverywhere runs a group through its life with GREASE values in
// every position §13.5 allows: KeyPackages (validated as a Delivery Service
// does, added by Commit, joined by Welcome), LeafNodes in Update proposals
// and UpdatePaths, and a GroupInfo used for an external join. Every member
// and a passive PublicGroupState (the Delivery Service's view) accept all
// of it.
func TestGreaseEverywhere(t *testing.T) {
	for _, cs := range []CipherSuite{MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, MLS_128_DHKEMP256_AES128GCM_SHA256_P256} {
		t.Run(cs.String(), func(t *testing.T) { testGreaseEverywhere(t, cs) })
	}
}

func testGreaseEverywhere(t *testing.T, cs CipherSuite) {
	alice, bob, carol := newGreasyMember(t, cs, "alice"), newForeignMember(t, cs, "bob"), newGreasyMember(t, cs, "carol")
	for _, m := range []*groupMember{alice, bob, carol} {
		if err := ValidateKeyPackage(m.kp, time.Now(), 0); err != nil {
			t.Fatalf("%s's KeyPackage: %v", m.name, err)
		}
	}
	var err error
	if alice.g, err = NewGroup([]byte("grease"), alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}
	gi, err := alice.g.GroupInfo(true)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := NewPublicGroupState(gi, nil)
	if err != nil {
		t.Fatalf("passive state from a GREASEd creator: %v", err)
	}
	// handle has the passive state and every listed member process msg.
	handle := func(msg *MLSMessage, ms ...*groupMember) {
		t.Helper()
		msg = wireMLS(t, msg)
		if msg.PublicMessage != nil && msg.PublicMessage.Content.ContentType == ContentTypeCommit {
			if ds, _, err = ds.HandleCommit(msg.PublicMessage); err != nil {
				t.Fatalf("passive state: %v", err)
			}
		} else if _, err := ds.HandleProposal(msg.PublicMessage); err != nil {
			t.Fatalf("passive state: %v", err)
		}
		for _, m := range ms {
			if _, err := m.g.Process(msg); err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
		}
	}

	// Adds of both kinds of KeyPackage, joined by Welcome.
	commit, welcome, err := alice.g.CommitMessage(CommitOptions{Adds: []*KeyPackage{bob.kp, carol.kp}})
	if err != nil {
		t.Fatalf("alice adds: %v", err)
	}
	handle(commit)
	if err := alice.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*groupMember{bob, carol} {
		if m.g, err = JoinGroup(wireWelcome(t, welcome), m.kp, m.priv, nil, nil); err != nil {
			t.Fatalf("%s joins: %v", m.name, err)
		}
	}
	sameEpoch(t, alice, bob, carol)

	// An Update proposal and an UpdatePath keep each leaf's GREASE values.
	update, err := bob.g.ProposeUpdateMessage()
	if err != nil {
		t.Fatal(err)
	}
	handle(update, alice, carol)
	commit, _, err = carol.g.CommitMessage(CommitOptions{})
	if err != nil {
		t.Fatalf("carol commits bob's Update: %v", err)
	}
	handle(commit, alice, bob)
	if err := carol.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	sameEpoch(t, alice, bob, carol)
	tree := ds.Tree()
	for _, m := range []*groupMember{alice, bob, carol} {
		leaf := tree.Leaf(m.g.Self())
		if c := countGREASE(&KeyPackage{LeafNode: *leaf}); c.extensions == 0 || c.leafExts == 0 || c.proposals == 0 || c.credentials == 0 || c.suites == 0 {
			t.Fatalf("%s's leaf lost GREASE values: %+v", m.name, c)
		}
	}

	// A GroupInfo with GREASE and unknown extensions: the passive state and
	// an external joiner ignore them.
	gi, err = alice.g.GroupInfo(true)
	if err != nil {
		t.Fatal(err)
	}
	gi.Extensions = append(Extensions{{ExtensionType: 0x7a7a, ExtensionData: []byte("groupinfo grease")}}, gi.Extensions...)
	gi.Extensions = append(gi.Extensions, Extension{ExtensionType: 0xff03})
	if err := gi.Sign(alice.priv.SignaturePriv); err != nil {
		t.Fatal(err)
	}
	wireGI := new(GroupInfo)
	if err := wireGI.UnmarshalBinary(mustEncode(gi)); err != nil {
		t.Fatal(err)
	}
	if _, err := NewPublicGroupState(wireGI, nil); err != nil {
		t.Fatalf("GroupInfo with GREASE extensions: %v", err)
	}
	// GroupInfoWith adds one itself.
	own, err := carol.g.GroupInfoWith(GroupInfoOptions{Grease: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(own.Extensions) != 2 || !isGREASE(uint16(own.Extensions[1].ExtensionType)) {
		t.Fatalf("GroupInfoWith(Grease) extensions %+v: want external_pub and a GREASE one", own.Extensions)
	}
	if _, err := NewPublicGroupState(own, ds.Tree()); err != nil {
		t.Fatalf("GroupInfo of GroupInfoWith(Grease): %v", err)
	}
	dave := newGreasyMember(t, cs, "dave")
	var ext *PublicMessage
	if dave.g, ext, err = JoinExternal(wireGI, nil, dave.kp, dave.priv); err != nil {
		t.Fatalf("dave joins by external Commit: %v", err)
	}
	handle(&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatPublicMessage, PublicMessage: ext}, alice, bob, carol)
	sameEpoch(t, alice, bob, carol, dave)
	exchange(t, 1, alice, bob, carol, dave)

	// A GroupInfo that lists an extension type twice is invalid (§13.4).
	gi.Extensions = append(gi.Extensions, Extension{ExtensionType: 0x7a7a})
	if err := gi.Sign(alice.priv.SignaturePriv); err != nil {
		t.Fatal(err)
	}
	_, err = NewPublicGroupState(gi, nil)
	assertSection(t, err, "13.4")
}

// TestGreaseRequiredCapabilities: a group may require non-default
// extension, proposal and credential types; a leaf listing them, next to
// GREASE values, is valid, and one lacking a required type is not (§7.3).
// A client's own GREASE values are no support of its own (§13.5): it
// refuses to require them of a group itself.
func TestGreaseRequiredCapabilities(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	withPrivate := func(m *groupMember) *groupMember {
		caps := &m.kp.LeafNode.Capabilities
		caps.Extensions = append(caps.Extensions, 0xff05)
		caps.Proposals = append(caps.Proposals, 0xff06)
		caps.Credentials = append(caps.Credentials, CredentialTypeX509)
		if err := m.kp.LeafNode.Sign(cs, m.priv.SignaturePriv, nil, 0); err != nil {
			t.Fatal(err)
		}
		if err := m.kp.Sign(m.priv.SignaturePriv); err != nil {
			t.Fatal(err)
		}
		return m
	}
	alice, bob := withPrivate(newGreasyMember(t, cs, "alice")), withPrivate(newForeignMember(t, cs, "bob"))
	carol := newGreasyMember(t, cs, "carol") // lists none of the required types
	var err error
	if alice.g, err = NewGroup([]byte("required"), alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}
	req := Extensions{{ExtensionType: ExtensionTypeRequiredCapabilities, ExtensionData: mustEncode(&RequiredCapabilities{
		ExtensionTypes: []ExtensionType{0xff05}, ProposalTypes: []ProposalType{0xff06}, CredentialTypes: []CredentialType{CredentialTypeBasic, CredentialTypeX509},
	})}}
	if _, _, err := alice.g.CommitMessage(CommitOptions{Extensions: &req}); err != nil {
		t.Fatalf("requiring types alice supports: %v", err)
	}
	if err := alice.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	_, welcome, err := alice.g.CommitMessage(CommitOptions{Adds: []*KeyPackage{bob.kp}})
	if err != nil {
		t.Fatalf("adding bob, who meets the requirements: %v", err)
	}
	if err := alice.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	if bob.g, err = JoinGroup(wireWelcome(t, welcome), bob.kp, bob.priv, nil, nil); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	sameEpoch(t, alice, bob)
	_, _, err = alice.g.CommitMessage(CommitOptions{Adds: []*KeyPackage{carol.kp}})
	assertSection(t, err, "7.3")

	// Alice's leaf lists a GREASE extension type; requiring it would
	// require what she does not support.
	var grease ExtensionType
	for _, e := range alice.g.Tree().Leaf(alice.g.Self()).Capabilities.Extensions {
		if isGREASE(uint16(e)) {
			grease = e
		}
	}
	bad := Extensions{{ExtensionType: ExtensionTypeRequiredCapabilities, ExtensionData: mustEncode(&RequiredCapabilities{ExtensionTypes: []ExtensionType{grease}})}}
	_, _, err = alice.g.CommitMessage(CommitOptions{Extensions: &bad})
	assertSection(t, err, "11.1")
	bad = Extensions{{ExtensionType: grease}}
	_, _, err = alice.g.CommitMessage(CommitOptions{Extensions: &bad})
	assertSection(t, err, "13.4")
}

// TestCheckOwnSupport: what a client supports itself is its leaf's
// capabilities without the GREASE values (§13.5).
func TestCheckOwnSupport(t *testing.T) {
	own := &LeafNode{Capabilities: Capabilities{
		Extensions:  []ExtensionType{0xff05, 0x0a0a},
		Proposals:   []ProposalType{0xff06, 0x1a1a},
		Credentials: []CredentialType{CredentialTypeBasic, 0x2a2a},
	}}
	rc := func(r RequiredCapabilities) Extensions {
		return Extensions{{ExtensionType: ExtensionTypeRequiredCapabilities, ExtensionData: mustEncode(&r)}}
	}
	for _, ok := range []Extensions{
		nil,
		{{ExtensionType: ExtensionTypeExternalSenders, ExtensionData: []byte{0}}, {ExtensionType: 0xff05}},
		rc(RequiredCapabilities{ExtensionTypes: []ExtensionType{0xff05, ExtensionTypeRatchetTree}, ProposalTypes: []ProposalType{0xff06, ProposalTypeAdd}, CredentialTypes: []CredentialType{CredentialTypeBasic}}),
	} {
		if err := checkOwnSupport(own, ok); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
	for _, c := range []struct {
		es      Extensions
		section string
	}{
		{Extensions{{ExtensionType: 0x0a0a}}, "13.4"},
		{Extensions{{ExtensionType: 0xff07}}, "13.4"},
		{rc(RequiredCapabilities{ExtensionTypes: []ExtensionType{0x0a0a}}), "11.1"},
		{rc(RequiredCapabilities{ProposalTypes: []ProposalType{0x1a1a}}), "11.1"},
		{rc(RequiredCapabilities{CredentialTypes: []CredentialType{0x2a2a}}), "11.1"},
	} {
		assertSection(t, checkOwnSupport(own, c.es), c.section)
	}
}
