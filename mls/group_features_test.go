package mls

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// newMemberGroup creates a group of the named members: the first creates it
// and adds the others in one Commit; all join from the Welcome.
func newMemberGroup(t *testing.T, cs CipherSuite, groupID string, names ...string) []*groupMember {
	t.Helper()
	ms := make([]*groupMember, len(names))
	var kps []*KeyPackage
	for i, n := range names {
		ms[i] = newGroupMember(t, cs, n)
		if i > 0 {
			kps = append(kps, ms[i].kp)
		}
	}
	var err error
	if ms[0].g, err = NewGroup([]byte(groupID), ms[0].kp, ms[0].priv); err != nil {
		t.Fatal(err)
	}
	if len(kps) == 0 {
		return ms
	}
	_, welcome, err := ms[0].g.Commit(kps, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ms[0].g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[1:] {
		if m.g, err = JoinGroup(wireWelcome(t, welcome), m.kp, m.priv, nil, nil); err != nil {
			t.Fatalf("%s joins: %v", m.name, err)
		}
	}
	sameEpoch(t, ms...)
	return ms
}

// wireMLS sends m through its encoding.
func wireMLS(t *testing.T, m *MLSMessage) *MLSMessage {
	t.Helper()
	out, err := ParseMLSMessage(mustEncode(m))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// commitAll has from make an empty Commit (a key refresh) that the others
// process, and merges it.
func commitAll(t *testing.T, from *groupMember, others ...*groupMember) {
	t.Helper()
	msg, _, err := from.g.CommitMessage(CommitOptions{})
	if err != nil {
		t.Fatalf("%s commits: %v", from.name, err)
	}
	for _, m := range others {
		if _, err := m.g.Process(wireMLS(t, msg)); err != nil {
			t.Fatalf("%s processes %s's Commit: %v", m.name, from.name, err)
		}
	}
	if err := from.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
}

func sealed(t *testing.T, m *groupMember, text string) *PrivateMessage {
	t.Helper()
	pm, err := m.g.Seal([]byte(text), nil)
	if err != nil {
		t.Fatalf("%s seals: %v", m.name, err)
	}
	return wirePrivate(t, pm)
}

// TestGroupPastEpochs checks that application messages of the last two
// epochs still open after the Commits that followed them, also after the
// receiver's state was saved and restored, that older ones are refused
// with an epoch mismatch, that SetPastEpochs(0) deletes the secrets, and
// that a removed member can still read the epoch it was removed in.
func TestGroupPastEpochs(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	ms := newMemberGroup(t, cs, "past epochs", "alice", "bob", "carol")
	alice, bob, carol := ms[0], ms[1], ms[2]
	if got := bob.g.PastEpochs(); len(got) != 0 {
		t.Fatalf("a new member keeps past epochs %v", got)
	}

	// Alice sends one message in each of epochs 1 to 4, held back by the
	// network until Bob has processed the Commit to epoch 5.
	var late []*PrivateMessage
	for range 4 {
		late = append(late, sealed(t, alice, fmt.Sprintf("sent in epoch %d", alice.g.Epoch())))
		commitAll(t, carol, alice, bob)
	}
	if bob.g.Epoch() != 5 {
		t.Fatalf("Bob is in epoch %d", bob.g.Epoch())
	}
	if got := fmt.Sprint(bob.g.PastEpochs()); got != "[4 3]" {
		t.Fatalf("Bob keeps epochs %s, want [4 3]", got)
	}
	reloadGroup(t, bob)
	if got := fmt.Sprint(bob.g.PastEpochs()); got != "[4 3]" {
		t.Fatalf("after reload, Bob keeps epochs %s, want [4 3]", got)
	}
	for i, pm := range late {
		sender, data, err := bob.g.Open(pm)
		if pm.Epoch < 3 {
			var mismatch *EpochMismatchError
			var verr *ValidationError
			if !errors.As(err, &mismatch) || !errors.As(err, &verr) || mismatch.Got != pm.Epoch || mismatch.Current != 5 {
				t.Fatalf("message of epoch %d, 3 or more epochs old: %v", pm.Epoch, err)
			}
			continue
		}
		if err != nil || sender != alice.g.Self() || string(data) != fmt.Sprintf("sent in epoch %d", i+1) {
			t.Fatalf("message of epoch %d: %q from %d, %v", pm.Epoch, data, sender, err)
		}
	}
	// The keys of past epochs are deleted once used (§9.2), also after a
	// reload: saving the state did not resurrect them.
	if _, _, err := bob.g.Open(late[3]); !errors.Is(err, ErrGenerationUsed) {
		t.Fatalf("replay of a past epoch's message: %v", err)
	}
	// Process opens past epochs' messages too and says which epoch.
	pm := sealed(t, alice, "epoch 5")
	commitAll(t, alice, bob, carol)
	pr, err := carol.g.Process(&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatPrivateMessage, PrivateMessage: pm})
	if err != nil || pr.Epoch != 5 || pr.ContentType != ContentTypeApplication || string(pr.ApplicationData) != "epoch 5" ||
		pr.Sender != (Sender{SenderType: SenderTypeMember, LeafIndex: alice.g.Self()}) {
		t.Fatalf("Process of a message of the previous epoch: %+v, %v", pr, err)
	}
	// A message of a future epoch is not opened either.
	ahead := *sealed(t, alice, "ahead")
	ahead.Epoch += 1
	var mismatch *EpochMismatchError
	if _, _, err := carol.g.Open(&ahead); !errors.As(err, &mismatch) {
		t.Fatalf("message of a future epoch: %v", err)
	}

	// Keeping no past epochs deletes their secrets at once.
	kept := carol.g.past
	pm = sealed(t, alice, "epoch 6")
	commitAll(t, bob, alice, carol)
	carol.g.SetPastEpochs(0)
	if len(carol.g.PastEpochs()) != 0 {
		t.Fatal("SetPastEpochs(0) kept epochs")
	}
	for _, p := range kept {
		if p.senderDataSecret != nil || p.st != nil {
			t.Fatalf("secrets of dropped epoch %d are still referenced", p.gc.Epoch)
		}
	}
	if _, _, err := carol.g.Open(pm); !errors.As(err, &mismatch) {
		t.Fatalf("message of a dropped epoch: %v", err)
	}
	// The setting survives a reload and new epochs.
	reloadGroup(t, carol)
	commitAll(t, alice, bob, carol)
	if len(carol.g.PastEpochs()) != 0 {
		t.Fatal("SetPastEpochs(0) forgotten")
	}

	// Bob is removed; the message Alice sent just before still opens for
	// him, one of the new epoch does not.
	before := sealed(t, alice, "last words")
	msg, _, err := alice.g.CommitMessage(CommitOptions{Removes: []LeafIndex{bob.g.Self()}})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*groupMember{bob, carol} {
		if _, err := m.g.Process(wireMLS(t, msg)); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
	}
	alice.g.MergePendingCommit()
	if _, data, err := bob.g.Open(before); err != nil || string(data) != "last words" {
		t.Fatalf("removed Bob opens a message of his last epoch: %q, %v", data, err)
	}
	if _, _, err := bob.g.Open(sealed(t, alice, "after")); !errors.Is(err, ErrNotMember) {
		t.Fatalf("removed Bob opens a message of the new epoch: %v", err)
	}
}

// TestUnmarshalGroupFormat checks that a state saved in format 1 still
// loads, and that one of an unknown format is refused with an error naming
// the format.
func TestUnmarshalGroupFormat(t *testing.T) {
	ms := newMemberGroup(t, MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, "format", "alice")
	data, err := ms[0].g.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if data[0] != 0 || data[1] != groupStateFormat {
		t.Fatalf("state starts with %x, want format %d", data[:2], groupStateFormat)
	}
	// Format 1 is format 2 without the trailing fields: for a state with
	// no past epochs and no sent private proposals, 4+2+1+1 bytes.
	v1 := append([]byte{0, 1}, data[2:len(data)-8]...)
	g, err := UnmarshalGroup(v1)
	if err != nil {
		t.Fatalf("format 1: %v", err)
	}
	if g.HandshakeWireFormat() != WireFormatPublicMessage || g.keepPast != DefaultPastEpochs || g.Epoch() != ms[0].g.Epoch() {
		t.Fatal("format 1 state restored with other settings")
	}
	if again, _ := g.MarshalBinary(); !bytes.Equal(again, data) {
		t.Fatal("format 1 state does not re-encode as the format 2 one")
	}
	data[1] = 9
	_, err = UnmarshalGroup(data)
	if !errors.Is(err, ErrDecode) || !bytes.Contains([]byte(err.Error()), []byte("format 9")) {
		t.Fatalf("unknown format: %v", err)
	}
}

// TestGroupPrivateHandshakes runs a group whose proposals and Commits are
// all PrivateMessages: adds, an Update proposal, a Remove proposal and
// Commits by reference and by value, each member also receiving its own
// messages back as a Delivery Service echoes them. A tampered ciphertext
// is refused and changes nothing; a signature made over the
// public_message wire format does not verify for a PrivateMessage.
func TestGroupPrivateHandshakes(t *testing.T) {
	for _, cs := range []CipherSuite{MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, MLS_256_DHKEMP521_AES256GCM_SHA512_P521} {
		t.Run(cs.String(), func(t *testing.T) { testGroupPrivateHandshakes(t, cs) })
	}
}

func testGroupPrivateHandshakes(t *testing.T, cs CipherSuite) {
	alice, bob, carol, dave := newGroupMember(t, cs, "alice"), newGroupMember(t, cs, "bob"), newGroupMember(t, cs, "carol"), newGroupMember(t, cs, "dave")
	var err error
	if alice.g, err = NewGroup([]byte("private handshakes"), alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}
	if err := alice.g.SetHandshakeWireFormat(WireFormatWelcome); err == nil {
		t.Fatal("Welcome accepted as handshake wire format")
	}
	private := func(m *groupMember) {
		t.Helper()
		if err := m.g.SetHandshakeWireFormat(WireFormatPrivateMessage); err != nil {
			t.Fatal(err)
		}
	}
	private(alice)
	if _, _, err := alice.g.Commit([]*KeyPackage{bob.kp}, nil); err == nil {
		t.Fatal("Commit, which returns a PublicMessage, ignored the private handshake setting")
	}
	// deliver hands msg to every member in ms, the sender included, as
	// the Delivery Service does, and checks they agree afterwards.
	deliver := func(msg *MLSMessage, ms ...*groupMember) []*Processed {
		t.Helper()
		if msg.WireFormat != WireFormatPrivateMessage || msg.PrivateMessage == nil {
			t.Fatalf("handshake sent as wire format %d", msg.WireFormat)
		}
		var out []*Processed
		for _, m := range ms {
			pr, err := m.g.Process(wireMLS(t, msg))
			if err != nil {
				t.Fatalf("%s processes a %d message: %v", m.name, msg.PrivateMessage.ContentType, err)
			}
			if pr.WireFormat != WireFormatPrivateMessage {
				t.Fatalf("%s: processed as wire format %d", m.name, pr.WireFormat)
			}
			out = append(out, pr)
		}
		return out
	}

	// Alice adds Bob.
	msg, welcome, err := alice.g.CommitMessage(CommitOptions{Adds: []*KeyPackage{bob.kp}})
	if err != nil {
		t.Fatal(err)
	}
	if pr := deliver(msg, alice)[0]; pr.Commit == nil || len(pr.Commit.Added) != 1 || pr.Sender.LeafIndex != 0 {
		t.Fatalf("Alice's own Commit echoed: %+v", pr)
	}
	if bob.g, err = JoinGroup(wireWelcome(t, welcome), bob.kp, bob.priv, nil, nil); err != nil {
		t.Fatal(err)
	}
	private(bob)
	sameEpoch(t, alice, bob)

	// Bob adds Carol and Dave; Alice follows the encrypted Commit.
	msg, welcome, err = bob.g.CommitMessage(CommitOptions{Adds: []*KeyPackage{carol.kp, dave.kp}})
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range deliver(msg, alice, bob) {
		if pr.ContentType != ContentTypeCommit || pr.Sender.LeafIndex != 1 || len(pr.Commit.Added) != 2 {
			t.Fatalf("Bob's Commit processed as %+v", pr)
		}
	}
	for _, m := range []*groupMember{carol, dave} {
		if m.g, err = JoinGroup(wireWelcome(t, welcome), m.kp, m.priv, nil, nil); err != nil {
			t.Fatal(err)
		}
		private(m)
	}
	all := []*groupMember{alice, bob, carol, dave}
	sameEpoch(t, all...)
	exchange(t, 1, all...)

	// Carol proposes an Update and Dave proposes to leave; Alice commits
	// both by reference.
	oldCarolKey := carol.g.Tree().Leaf(carol.g.Self()).EncryptionKey
	update, err := carol.g.ProposeUpdateMessage()
	if err != nil {
		t.Fatal(err)
	}
	leave, ref, err := dave.g.ProposeMessage(&Proposal{ProposalType: ProposalTypeRemove, Remove: &Remove{Removed: dave.g.Self()}})
	if err != nil {
		t.Fatal(err)
	}
	reloadGroup(t, carol) // her Update key and the record of her sent proposal survive
	for i, pr := range deliver(update, all...) {
		if pr.ContentType != ContentTypeProposal || pr.Proposal == nil || pr.Proposal.ProposalType != ProposalTypeUpdate || pr.Sender.LeafIndex != carol.g.Self() {
			t.Fatalf("%s: Carol's Update processed as %+v", all[i].name, pr)
		}
	}
	for i, pr := range deliver(leave, all...) {
		if !bytes.Equal(pr.ProposalRef, ref) {
			t.Fatalf("%s: Dave's proposal has reference %x, he computed %x", all[i].name, pr.ProposalRef, ref)
		}
	}
	msg, _, err = alice.g.CommitMessage(CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r := alice.g.pending.effect.Removed; len(r) != 1 || r[0].Leaf != dave.g.Self() {
		t.Fatal("Alice's Commit does not remove Dave")
	}
	for i, pr := range deliver(msg, all...) {
		if len(pr.Commit.Updated) != 2 || len(pr.Commit.Removed) != 1 {
			t.Fatalf("%s: effect %+v", all[i].name, pr.Commit)
		}
	}
	if _, err := dave.g.Seal([]byte("?"), nil); !errors.Is(err, ErrNotMember) {
		t.Fatalf("Dave after leaving: %v", err)
	}
	if bytes.Equal(carol.g.Tree().Leaf(carol.g.Self()).EncryptionKey, oldCarolKey) {
		t.Fatal("Carol's Update was not applied")
	}
	all = all[:3]
	sameEpoch(t, all...)
	exchange(t, 1, all...)

	// Bob removes Carol by value; the Commit is tampered with on the way to
	// Alice, who refuses it and stays where she was.
	msg, _, err = bob.g.CommitMessage(CommitOptions{Removes: []LeafIndex{carol.g.Self()}})
	if err != nil {
		t.Fatal(err)
	}
	epoch, auth := alice.g.Epoch(), alice.g.EpochAuthenticator()
	for _, field := range []string{"ciphertext", "sender data"} {
		bad := wireMLS(t, msg)
		if field == "ciphertext" {
			bad.PrivateMessage.Ciphertext[len(bad.PrivateMessage.Ciphertext)/2] ^= 0x40
		} else {
			bad.PrivateMessage.EncryptedSenderData[0] ^= 1
		}
		_, err := alice.g.Process(bad)
		var verr *ValidationError
		if !errors.Is(err, ErrDecryptionFailed) || !errors.As(err, &verr) {
			t.Fatalf("Commit with tampered %s: %v", field, err)
		}
		if alice.g.Epoch() != epoch || !bytes.Equal(alice.g.EpochAuthenticator(), auth) {
			t.Fatalf("tampered %s moved Alice", field)
		}
	}
	// The genuine Commit still goes through: the tampered one did not use
	// up its key.
	deliver(msg, alice, bob, carol)
	all = all[:2]
	sameEpoch(t, all...)
	exchange(t, 1, all...)

	// A PrivateMessage whose signature was made over the public_message
	// wire format does not verify: the wire format is signed (§6.1).
	gc := bob.g.GroupContext()
	ac := &AuthenticatedContent{
		WireFormat: WireFormatPublicMessage,
		Content: FramedContent{GroupID: gc.GroupID, Epoch: gc.Epoch, Sender: Sender{SenderType: SenderTypeMember, LeafIndex: bob.g.Self()},
			ContentType: ContentTypeProposal, Proposal: &Proposal{ProposalType: ProposalTypeRemove, Remove: &Remove{Removed: alice.g.Self()}}},
	}
	if err := ac.Sign(cs, bob.priv.SignaturePriv, &gc); err != nil {
		t.Fatal(err)
	}
	ac.WireFormat = WireFormatPrivateMessage
	pm, err := ProtectPrivate(ac, bob.g.es.SenderDataSecret, bob.g.st, 0)
	if err != nil {
		t.Fatal(err)
	}
	var verr *ValidationError
	if _, err := alice.g.Process(&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatPrivateMessage, PrivateMessage: pm}); !errors.As(err, &verr) || verr.Section != "6.1" {
		t.Fatalf("proposal signed for another wire format: %v", err)
	}
	if len(alice.g.pub.PendingProposals()) != 0 {
		t.Fatal("the refused proposal was kept")
	}
	// Other wire formats are not messages of the group.
	if _, err := alice.g.Process(&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatWelcome, Welcome: welcome}); err == nil {
		t.Fatal("Process accepted a Welcome")
	}
}

// TestGroupProcessPublic checks Process on PublicMessage proposals and
// Commits and on application messages, against what it reports.
func TestGroupProcessPublic(t *testing.T) {
	ms := newMemberGroup(t, MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519, "process", "alice", "bob")
	alice, bob := ms[0], ms[1]
	p, ref, err := bob.g.ProposeMessage(&Proposal{ProposalType: ProposalTypeRemove, Remove: &Remove{Removed: bob.g.Self()}})
	if err != nil || p.WireFormat != WireFormatPublicMessage {
		t.Fatalf("ProposeMessage: %v", err)
	}
	pr, err := alice.g.Process(wireMLS(t, p))
	if err != nil || pr.ContentType != ContentTypeProposal || !bytes.Equal(pr.ProposalRef, ref) || pr.Proposal.ProposalType != ProposalTypeRemove || pr.Sender.LeafIndex != 1 {
		t.Fatalf("proposal: %+v, %v", pr, err)
	}
	app := sealed(t, bob, "bye")
	pr, err = alice.g.Process(&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatPrivateMessage, PrivateMessage: app})
	if err != nil || pr.ContentType != ContentTypeApplication || string(pr.ApplicationData) != "bye" {
		t.Fatalf("application: %+v, %v", pr, err)
	}
	c, _, err := alice.g.CommitMessage(CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		pr, err := m.g.Process(wireMLS(t, c))
		if err != nil || pr.ContentType != ContentTypeCommit || pr.Commit == nil || len(pr.Commit.Removed) != 1 || pr.Epoch != 1 {
			t.Fatalf("%s: Commit: %+v, %v", m.name, pr, err)
		}
	}
	if alice.g.Epoch() != 2 {
		t.Fatal("Alice's echoed Commit was not merged")
	}
}

// TestGroupCommitReceivedPSKAndExtensions has Bob propose an external PSK,
// one Alice does not have, and new GroupContext extensions; Alice's plain
// Commit carries by reference the ones she can commit, and both end in
// the same epoch.
func TestGroupCommitReceivedPSKAndExtensions(t *testing.T) {
	cs := MLS_128_DHKEMP256_AES128GCM_SHA256_P256
	ms := newMemberGroup(t, cs, "psk by reference", "alice", "bob", "carol")
	alice, bob, carol := ms[0], ms[1], ms[2]
	pskID, psk := []byte("by reference"), bytes.Repeat([]byte{7}, 32)
	for _, m := range ms {
		m.g.AddExternalPSK(pskID, psk)
	}
	bob.g.AddExternalPSK([]byte("Bob's only"), psk)
	nonce := func() []byte { return bytes.Repeat([]byte{byte(len(pskID))}, cs.HashSize()) }
	exts := Extensions{{ExtensionType: ExtensionTypeRequiredCapabilities, ExtensionData: mustEncode(&RequiredCapabilities{})}}
	var msgs []*MLSMessage
	for _, p := range []*Proposal{
		{ProposalType: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: PreSharedKeyID{PSKType: PSKTypeExternal, PSKID: pskID, PSKNonce: nonce()}}},
		{ProposalType: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: PreSharedKeyID{PSKType: PSKTypeExternal, PSKID: []byte("Bob's only"), PSKNonce: nonce()}}},
		{ProposalType: ProposalTypeGroupContextExtensions, GroupContextExtensions: &GroupContextExtensions{Extensions: exts}},
		{ProposalType: ProposalTypeGroupContextExtensions, GroupContextExtensions: &GroupContextExtensions{}},
	} {
		m, _, err := bob.g.ProposeMessage(p)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	for _, m := range []*groupMember{alice, carol} {
		for _, p := range msgs {
			if _, err := m.g.Process(wireMLS(t, p)); err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
		}
	}
	commit, _, err := alice.g.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(commit.Content.Commit.Proposals); n != 2 {
		t.Fatalf("Commit lists %d proposals, want the PSK Alice has and the first extensions", n)
	}
	for _, p := range commit.Content.Commit.Proposals {
		if p.Type != ProposalOrRefTypeReference {
			t.Fatal("a received proposal committed by value")
		}
	}
	alice.g.MergePendingCommit()
	for _, m := range []*groupMember{bob, carol} {
		effect, err := m.g.HandleCommit(wirePublic(t, commit))
		if err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		if len(effect.PSKs) != 1 || !bytes.Equal(effect.PSKs[0].PSKID, pskID) || !effect.GroupContextExtensions {
			t.Fatalf("%s: effect %+v", m.name, effect)
		}
	}
	if gc := carol.g.GroupContext(); len(gc.Extensions) != 1 || gc.Extensions[0].ExtensionType != ExtensionTypeRequiredCapabilities {
		t.Fatalf("GroupContext extensions %+v", gc.Extensions)
	}
	sameEpoch(t, alice, bob, carol)

	// Without the PSK, a member cannot follow a Commit that uses it.
	p, _, err := bob.g.ProposeMessage(&Proposal{ProposalType: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: PreSharedKeyID{PSKType: PSKTypeExternal, PSKID: []byte("Bob's only"), PSKNonce: nonce()}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := carol.g.Process(wireMLS(t, p)); err != nil {
		t.Fatal(err)
	}
	c, _, err := bob.g.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := carol.g.HandleCommit(wirePublic(t, c)); err == nil {
		t.Fatal("Carol followed a Commit with a PSK she lacks")
	}
	carol.g.AddExternalPSK([]byte("Bob's only"), psk)
	if _, err := carol.g.HandleCommit(wirePublic(t, c)); err != nil {
		t.Fatalf("Carol, with the PSK: %v", err)
	}
	bob.g.MergePendingCommit()
	sameEpoch(t, bob, carol)
}

// TestGroupReInit has Bob propose to reinitialize the group; Alice's next
// Commit carries that ReInit alone, by reference, and closes the group for
// everyone (§11.2): no more sending, no more handshakes. A ReInit by value
// is a Commit of that proposal alone.
func TestGroupReInit(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	ms := newMemberGroup(t, cs, "reinit", "alice", "bob", "carol")
	alice, bob, carol := ms[0], ms[1], ms[2]
	ri := &ReInit{GroupID: []byte("reinit, second life"), Version: ProtocolVersionMLS10, CipherSuite: MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519}

	if _, _, err := alice.g.CommitWith(CommitOptions{ReInit: ri, Removes: []LeafIndex{1}}); err == nil {
		t.Fatal("a ReInit with other proposals was accepted")
	}
	byValue, _, err := alice.g.CommitWith(CommitOptions{ReInit: ri})
	if err != nil {
		t.Fatal(err)
	}
	if ps := byValue.Content.Commit.Proposals; len(ps) != 1 || ps[0].Proposal == nil || ps[0].Proposal.ProposalType != ProposalTypeReInit {
		t.Fatalf("ReInit by value: proposals %+v", ps)
	}
	alice.g.DiscardPendingCommit()

	// Bob proposes it; an Add by Carol arrives too.
	p, ref, err := bob.g.ProposeMessage(&Proposal{ProposalType: ProposalTypeReInit, ReInit: ri})
	if err != nil {
		t.Fatal(err)
	}
	dave := newGroupMember(t, cs, "dave")
	add, _, err := carol.g.ProposeMessage(&Proposal{ProposalType: ProposalTypeAdd, Add: &Add{KeyPackage: *dave.kp}})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		for _, msg := range []*MLSMessage{add, p} {
			if _, err := m.g.Process(wireMLS(t, msg)); err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
		}
	}
	commit, welcome, err := alice.g.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ps := commit.Content.Commit.Proposals; len(ps) != 1 || !bytes.Equal(ps[0].Reference, ref) || welcome != nil {
		t.Fatalf("Commit after a ReInit proposal: %+v", ps)
	}
	for _, m := range ms {
		effect, err := m.g.HandleCommit(wirePublic(t, commit))
		if err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		if effect.ReInit == nil || !bytes.Equal(effect.ReInit.GroupID, ri.GroupID) {
			t.Fatalf("%s: effect %+v", m.name, effect)
		}
		if got, frozen := m.g.Frozen(); !frozen || got.CipherSuite != ri.CipherSuite {
			t.Fatalf("%s: group not frozen after the ReInit", m.name)
		}
		if _, err := m.g.Seal([]byte("x"), nil); !errors.Is(err, ErrGroupFrozen) {
			t.Fatalf("%s seals in a frozen group: %v", m.name, err)
		}
		if _, _, err := m.g.CommitMessage(CommitOptions{}); !errors.Is(err, ErrGroupFrozen) {
			t.Fatalf("%s commits in a frozen group: %v", m.name, err)
		}
		// The resumption PSK of the last epoch, for the new group (§11.2).
		if _, ok := m.g.psks[ResumptionPSKKey(m.g.GroupID(), m.g.Epoch())]; !ok {
			t.Fatalf("%s lacks the resumption PSK of the final epoch", m.name)
		}
	}
	sameEpoch(t, alice, bob, carol)
	// Nor are proposals accepted any more.
	if _, err := carol.g.Process(wireMLS(t, add)); !errors.Is(err, ErrGroupFrozen) {
		t.Fatalf("proposal in a frozen group: %v", err)
	}
}

// TestGroupResyncExternalCommit has Bob lose his state and rejoin by an
// external Commit that also removes his old leaf (§12.4.3.2): the others
// accept it and end in the same epoch as the new Bob; the old Bob learns
// he was removed. A resync that would replace another member is refused.
func TestGroupResyncExternalCommit(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	ms := newMemberGroup(t, cs, "resync", "alice", "bob", "carol")
	alice, bob, carol := ms[0], ms[1], ms[2]
	gi, err := alice.g.GroupInfo(true)
	if err != nil {
		t.Fatal(err)
	}
	var giWire GroupInfo
	if err := giWire.UnmarshalBinary(mustEncode(gi)); err != nil {
		t.Fatal(err)
	}
	// Bob's new client presents the same credential and signature key.
	kp, priv, err := NewKeyPackage(cs, []byte("bob"), bob.priv.SignaturePriv, 0, 1<<62)
	if err != nil {
		t.Fatal(err)
	}
	// Replacing Carol's leaf is refused: her credential is not Bob's.
	other := carol.g.Self()
	kp2, priv2, err := NewKeyPackage(cs, []byte("bob"), nil, 0, 1<<62)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := JoinExternalWith(&giWire, nil, kp2, priv2, JoinExternalOptions{RemoveLeaf: &other}); err == nil {
		t.Fatal("Bob resynced over Carol's leaf")
	} else if verr := (*ValidationError)(nil); !errors.As(err, &verr) || verr.Section != "12.2" {
		t.Fatalf("resync over another member: %v", err)
	}
	old := bob.g.Self()
	newBob := &groupMember{name: "new bob", kp: kp, priv: priv}
	var commit *PublicMessage
	if newBob.g, commit, err = JoinExternalWith(&giWire, nil, kp, priv, JoinExternalOptions{RemoveLeaf: &old}); err != nil {
		t.Fatalf("resync: %v", err)
	}
	if newBob.g.Self() != old {
		t.Fatalf("new Bob at leaf %d, want his old leaf %d", newBob.g.Self(), old)
	}
	for _, m := range []*groupMember{alice, carol} {
		effect, err := m.g.HandleCommit(wirePublic(t, commit))
		if err != nil {
			t.Fatalf("%s processes the resync: %v", m.name, err)
		}
		if !effect.External || len(effect.Removed) != 1 || effect.Removed[0].Leaf != old ||
			len(effect.Added) != 1 || !bytes.Equal(effect.Added[0].Identity, []byte("bob")) {
			t.Fatalf("%s: effect %+v", m.name, effect)
		}
	}
	if effect, err := bob.g.HandleCommit(wirePublic(t, commit)); err != nil || len(effect.Removed) != 1 {
		t.Fatalf("old Bob: %v", err)
	}
	if _, err := bob.g.Seal([]byte("?"), nil); !errors.Is(err, ErrNotMember) {
		t.Fatalf("old Bob after the resync: %v", err)
	}
	sameEpoch(t, alice, carol, newBob)
	if len(alice.g.Members()) != 3 {
		t.Fatalf("%d members after the resync", len(alice.g.Members()))
	}
	exchange(t, 1, alice, carol, newBob)
	commitAll(t, newBob, alice, carol)
	sameEpoch(t, alice, carol, newBob)
}
