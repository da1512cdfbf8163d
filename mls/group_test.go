package mls

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// wire sends v through its encoding, as the Delivery Service would.
func wirePublic(t *testing.T, m *PublicMessage) *PublicMessage {
	t.Helper()
	out := new(PublicMessage)
	if err := out.UnmarshalBinary(mustEncode(m)); err != nil {
		t.Fatal(err)
	}
	return out
}

func wirePrivate(t *testing.T, m *PrivateMessage) *PrivateMessage {
	t.Helper()
	out := new(PrivateMessage)
	if err := out.UnmarshalBinary(mustEncode(m)); err != nil {
		t.Fatal(err)
	}
	return out
}

func wireWelcome(t *testing.T, w *Welcome) *Welcome {
	t.Helper()
	out := new(Welcome)
	if err := out.UnmarshalBinary(mustEncode(w)); err != nil {
		t.Fatal(err)
	}
	return out
}

type groupMember struct {
	name string
	kp   *KeyPackage
	priv *KeyPackagePrivate
	g    *Group
}

func newGroupMember(t *testing.T, cs CipherSuite, name string) *groupMember {
	t.Helper()
	kp, priv, err := NewKeyPackage(cs, []byte(name), nil, 0, 1<<62)
	if err != nil {
		t.Fatal(err)
	}
	if err := kp.VerifySignature(); err != nil {
		t.Fatalf("%s: own KeyPackage does not verify: %v", name, err)
	}
	return &groupMember{name: name, kp: kp, priv: priv}
}

// sameEpoch checks that all members agree on epoch, GroupContext and
// epoch_authenticator.
func sameEpoch(t *testing.T, ms ...*groupMember) {
	t.Helper()
	gc0 := ms[0].g.GroupContext()
	for _, m := range ms[1:] {
		gc := m.g.GroupContext()
		if !bytes.Equal(mustEncode(&gc), mustEncode(&gc0)) {
			t.Fatalf("%s and %s disagree on the GroupContext (epochs %d, %d)", ms[0].name, m.name, gc0.Epoch, gc.Epoch)
		}
		if !bytes.Equal(m.g.EpochAuthenticator(), ms[0].g.EpochAuthenticator()) {
			t.Fatalf("%s and %s disagree on the epoch_authenticator of epoch %d", ms[0].name, m.name, gc.Epoch)
		}
		a, _ := m.g.Export("test", nil, 16)
		b, _ := ms[0].g.Export("test", nil, 16)
		if !bytes.Equal(a, b) {
			t.Fatalf("%s and %s export different secrets", ms[0].name, m.name)
		}
	}
}

// exchange has every member send to every other, each message decrypted
// by all the others.
func exchange(t *testing.T, n int, ms ...*groupMember) {
	t.Helper()
	for round := range n {
		for _, from := range ms {
			text := fmt.Appendf(nil, "%s says %d in epoch %d", from.name, round, from.g.Epoch())
			pm, err := from.g.Seal(text, []byte("aad"))
			if err != nil {
				t.Fatalf("%s: Seal: %v", from.name, err)
			}
			for _, to := range ms {
				if to == from {
					continue
				}
				sender, got, err := to.g.Open(wirePrivate(t, pm))
				if err != nil {
					t.Fatalf("%s opening from %s: %v", to.name, from.name, err)
				}
				if sender != from.g.Self() || !bytes.Equal(got, text) {
					t.Fatalf("%s got %q from leaf %d, want %q from %d", to.name, got, sender, text, from.g.Self())
				}
			}
		}
	}
}

func TestGroupThreeMembers(t *testing.T) {
	for _, cs := range []CipherSuite{MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, MLS_128_DHKEMP256_AES128GCM_SHA256_P256, MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448} {
		t.Run(cs.String(), func(t *testing.T) { testGroupThreeMembers(t, cs) })
	}
}

func testGroupThreeMembers(t *testing.T, cs CipherSuite) {
	alice, bob, carol := newGroupMember(t, cs, "alice"), newGroupMember(t, cs, "bob"), newGroupMember(t, cs, "carol")
	var err error
	if alice.g, err = NewGroup([]byte("group of three"), alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}

	// Alice adds Bob.
	commit, welcome, err := alice.g.Commit([]*KeyPackage{bob.kp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if welcome == nil || len(welcome.Secrets) != 1 {
		t.Fatal("adding Bob gave no Welcome for him")
	}
	if alice.g.Epoch() != 0 {
		t.Fatal("Commit moved the group before MergePendingCommit")
	}
	_ = commit
	if err := alice.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	if bob.g, err = JoinGroup(wireWelcome(t, welcome), bob.kp, bob.priv, nil, nil); err != nil {
		t.Fatalf("Bob joins: %v", err)
	}
	sameEpoch(t, alice, bob)
	exchange(t, 3, alice, bob)

	// Bob adds Carol; Alice processes the Commit.
	commit, welcome, err = bob.g.Commit([]*KeyPackage{carol.kp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	effect, err := alice.g.HandleCommit(wirePublic(t, commit))
	if err != nil {
		t.Fatalf("Alice processes Bob's Commit: %v", err)
	}
	if len(effect.Added) != 1 || !bytes.Equal(effect.Added[0].Identity, []byte("carol")) {
		t.Fatalf("effect of adding Carol: %+v", effect.Added)
	}
	if err := bob.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	if carol.g, err = JoinGroup(wireWelcome(t, welcome), carol.kp, carol.priv, nil, nil); err != nil {
		t.Fatalf("Carol joins: %v", err)
	}
	if carol.g.Self() != 2 {
		t.Fatalf("Carol is at leaf %d, want 2", carol.g.Self())
	}
	sameEpoch(t, alice, bob, carol)
	exchange(t, 3, alice, bob, carol)

	// Alice and Carol save and restore their state mid-epoch. Had Alice's
	// sending ratchet been reset, Bob would refuse her next messages as
	// reused generations.
	reloadGroup(t, alice)
	reloadGroup(t, carol)
	sameEpoch(t, alice, bob, carol)
	exchange(t, 2, alice, bob, carol)

	// Carol commits with only a path (an empty Commit refreshes keys).
	commit, welcome, err = carol.g.Commit(nil, nil)
	if err != nil || welcome != nil {
		t.Fatalf("empty Commit: welcome %v, err %v", welcome != nil, err)
	}
	for _, m := range []*groupMember{alice, bob} {
		if _, err := m.g.HandleCommit(wirePublic(t, commit)); err != nil {
			t.Fatalf("%s processes Carol's Commit: %v", m.name, err)
		}
	}
	carol.g.MergePendingCommit()
	sameEpoch(t, alice, bob, carol)
	exchange(t, 2, alice, bob, carol)

	// A message of this epoch that arrives after the next Commit.
	old, err := alice.g.Seal([]byte("late"), nil)
	if err != nil {
		t.Fatal(err)
	}

	// Alice removes Bob.
	commit, _, err = alice.g.Commit(nil, []LeafIndex{bob.g.Self()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := carol.g.HandleCommit(wirePublic(t, commit)); err != nil {
		t.Fatalf("Carol processes the removal: %v", err)
	}
	effect, err = bob.g.HandleCommit(wirePublic(t, commit))
	if err != nil || len(effect.Removed) != 1 {
		t.Fatalf("Bob processes his removal: %v", err)
	}
	alice.g.MergePendingCommit()
	sameEpoch(t, alice, carol)
	exchange(t, 2, alice, carol)
	if _, err := bob.g.Seal([]byte("still here?"), nil); !errors.Is(err, ErrNotMember) {
		t.Fatalf("removed Bob seals: %v", err)
	}
	pm, _ := alice.g.Seal([]byte("after Bob"), nil)
	if _, _, err := bob.g.Open(pm); !errors.Is(err, ErrNotMember) {
		t.Fatalf("removed Bob opens: %v", err)
	}
	// The late message of the previous epoch still opens (see
	// TestGroupPastEpochs), once.
	if sender, data, err := carol.g.Open(wirePrivate(t, old)); err != nil || sender != alice.g.Self() || string(data) != "late" {
		t.Fatalf("message from the previous epoch: %v", err)
	}
	if _, _, err := carol.g.Open(wirePrivate(t, old)); !errors.Is(err, ErrGenerationUsed) {
		t.Fatalf("message from the previous epoch, replayed: %v", err)
	}

	// Dave joins by external Commit from a GroupInfo Carol publishes, and
	// takes Bob's blank leaf.
	dave := newGroupMember(t, cs, "dave")
	gi, err := carol.g.GroupInfo(true)
	if err != nil {
		t.Fatal(err)
	}
	var giWire GroupInfo
	if err := giWire.UnmarshalBinary(mustEncode(gi)); err != nil {
		t.Fatal(err)
	}
	dave.g, commit, err = JoinExternal(&giWire, nil, dave.kp, dave.priv)
	if err != nil {
		t.Fatalf("Dave joins externally: %v", err)
	}
	if dave.g.Self() != 1 {
		t.Fatalf("Dave is at leaf %d, want Bob's old leaf 1", dave.g.Self())
	}
	for _, m := range []*groupMember{alice, carol} {
		effect, err := m.g.HandleCommit(wirePublic(t, commit))
		if err != nil {
			t.Fatalf("%s processes Dave's external Commit: %v", m.name, err)
		}
		if !effect.External || len(effect.Added) != 1 || !bytes.Equal(effect.Added[0].Identity, []byte("dave")) {
			t.Fatalf("%s: effect of the external Commit: %+v", m.name, effect)
		}
	}
	sameEpoch(t, alice, carol, dave)
	exchange(t, 2, alice, carol, dave)

	// Dave commits in turn: the others follow.
	commit, _, err = dave.g.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*groupMember{alice, carol} {
		if _, err := m.g.HandleCommit(wirePublic(t, commit)); err != nil {
			t.Fatalf("%s processes Dave's Commit: %v", m.name, err)
		}
	}
	dave.g.MergePendingCommit()
	sameEpoch(t, alice, carol, dave)
	exchange(t, 1, alice, carol, dave)
}

// TestGroupRejectsTamperedCommit checks that a member refuses a Commit
// whose confirmation tag or membership tag is wrong, and stays usable.
func TestGroupRejectsTamperedCommit(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	alice, bob := newGroupMember(t, cs, "alice"), newGroupMember(t, cs, "bob")
	var err error
	if alice.g, err = NewGroup([]byte("tamper"), alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}
	_, welcome, err := alice.g.Commit([]*KeyPackage{bob.kp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	alice.g.MergePendingCommit()
	if bob.g, err = JoinGroup(welcome, bob.kp, bob.priv, nil, nil); err != nil {
		t.Fatal(err)
	}
	commit, _, err := alice.g.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	bad := wirePublic(t, commit)
	bad.MembershipTag[0] ^= 1
	if _, err := bob.g.HandleCommit(bad); !errors.Is(err, ErrBadMembershipTag) {
		t.Fatalf("wrong membership tag: %v", err)
	}
	// Alice decides against her Commit; her state is unchanged.
	alice.g.DiscardPendingCommit()
	if err := alice.g.MergePendingCommit(); err == nil {
		t.Fatal("merged a discarded Commit")
	}
	sameEpoch(t, alice, bob)
	exchange(t, 1, alice, bob)
}

// TestGroupPassiveVectors plays the joiner of every passive-client vector
// with the Group API: JoinGroup from the Welcome, then Process for each
// proposal and Commit, PublicMessage or PrivateMessage, comparing the epoch_authenticator of every
// epoch, the initial one included. Counted per entry.
func TestGroupPassiveVectors(t *testing.T) {
	for _, file := range []string{"passive-client-welcome.json", "passive-client-handling-commit.json", "passive-client-random.json"} {
		t.Run(file, func(t *testing.T) {
			var vs []passiveVector
			loadVectors(t, file, &vs)
			count := newVectorCount(file + " (Group)")
			epochs, private := 0, 0
			for i := range vs {
				v := &vs[i]
				if !v.CipherSuite.Supported() {
					count.skip("cipher suite not supported")
					continue
				}
				n, p, skip, err := runGroupPassive(v)
				epochs += n
				private += p
				switch {
				case err != nil:
					t.Errorf("entry %d (suite %d): %v", i, v.CipherSuite, err)
				case skip != "":
					count.skip(skip)
				default:
					count.pass()
				}
			}
			t.Logf("%s: %d epochs followed by Group.Process (%d handshake messages were PrivateMessages), each epoch_authenticator matched", file, epochs, private)
			count.report(t)
		})
	}
}

func runGroupPassive(v *passiveVector) (epochs, private int, skip string, err error) {
	cs := v.CipherSuite
	kpMsg, err := ParseMLSMessage(v.KeyPackage)
	if err != nil || kpMsg.KeyPackage == nil {
		return 0, 0, "", fmt.Errorf("key_package: %v", err)
	}
	wMsg, err := ParseMLSMessage(v.Welcome)
	if err != nil || wMsg.Welcome == nil {
		return 0, 0, "", fmt.Errorf("welcome: %v", err)
	}
	psks := map[string][]byte{}
	for _, p := range v.ExternalPSKs {
		psks[string(p.PSKID)] = p.PSK
	}
	var tree *RatchetTree
	if len(v.RatchetTree) > 0 {
		if tree, err = UnmarshalRatchetTree(cs, v.RatchetTree); err != nil {
			return 0, 0, "", err
		}
	}
	priv := &KeyPackagePrivate{InitPriv: padP521(cs, v.InitPriv), EncryptionPriv: padP521(cs, v.EncryptionPriv), SignaturePriv: v.SignaturePriv}
	g, err := JoinGroup(wMsg.Welcome, kpMsg.KeyPackage, priv, tree, psks)
	if err != nil {
		return 0, 0, "", fmt.Errorf("JoinGroup: %v", err)
	}
	if !bytes.Equal(g.EpochAuthenticator(), v.InitialEpochAuthenticator) {
		return 0, 0, "", fmt.Errorf("initial epoch_authenticator differs")
	}
	for e, ep := range v.Epochs {
		for _, raw := range ep.Proposals {
			m, err := ParseMLSMessage(raw)
			if err != nil {
				return epochs, private, "", err
			}
			if m.PrivateMessage != nil {
				private++
			}
			if pr, err := g.Process(m); err != nil {
				return epochs, private, "", fmt.Errorf("epoch %d: proposal: %v", e, err)
			} else if pr.ContentType != ContentTypeProposal || pr.ProposalRef == nil {
				return epochs, private, "", fmt.Errorf("epoch %d: a proposal processed as %+v", e, pr)
			}
		}
		m, err := ParseMLSMessage(ep.Commit)
		if err != nil {
			return epochs, private, "", err
		}
		if m.PrivateMessage != nil {
			private++
		}
		if pr, err := g.Process(m); err != nil {
			return epochs, private, "", fmt.Errorf("epoch %d: Commit: %v", e, err)
		} else if pr.ContentType != ContentTypeCommit || pr.Commit == nil {
			return epochs, private, "", fmt.Errorf("epoch %d: a Commit processed as %+v", e, pr)
		}
		if !bytes.Equal(g.EpochAuthenticator(), ep.EpochAuthenticator) {
			return epochs, private, "", fmt.Errorf("epoch %d: epoch_authenticator differs", g.Epoch())
		}
		epochs++
	}
	return epochs, private, "", nil
}

// reloadGroup saves and restores m's Group, checking that the encoding is
// stable.
func reloadGroup(t *testing.T, m *groupMember) {
	t.Helper()
	data, err := m.g.MarshalBinary()
	if err != nil {
		t.Fatalf("%s: MarshalBinary: %v", m.name, err)
	}
	g, err := UnmarshalGroup(data)
	if err != nil {
		t.Fatalf("%s: UnmarshalGroup: %v", m.name, err)
	}
	again, err := g.MarshalBinary()
	if err != nil || !bytes.Equal(again, data) {
		t.Fatalf("%s: restored state encodes differently (%v)", m.name, err)
	}
	if _, err := UnmarshalGroup(data[:len(data)-1]); err == nil {
		t.Fatalf("%s: truncated state was accepted", m.name)
	}
	m.g = g
}

func BenchmarkNewKeyPackage(b *testing.B) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	for b.Loop() {
		if _, _, err := NewKeyPackage(cs, []byte("bench"), nil, 0, 1<<62); err != nil {
			b.Fatal(err)
		}
	}
}

// benchGroup builds a group of n members created by one Commit of the
// first, and returns the creator and the member at the last leaf, which
// joined from the Welcome.
func benchGroup(b *testing.B, n int) (creator, last *Group) {
	b.Helper()
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	kp, priv, err := NewKeyPackage(cs, []byte("member 0"), nil, 0, 1<<62)
	if err != nil {
		b.Fatal(err)
	}
	creator, err = NewGroup([]byte("bench group"), kp, priv)
	if err != nil {
		b.Fatal(err)
	}
	kps := make([]*KeyPackage, n-1)
	var lastPriv *KeyPackagePrivate
	for i := range kps {
		if kps[i], lastPriv, err = NewKeyPackage(cs, fmt.Appendf(nil, "member %d", i+1), nil, 0, 1<<62); err != nil {
			b.Fatal(err)
		}
	}
	_, welcome, err := creator.Commit(kps, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := creator.MergePendingCommit(); err != nil {
		b.Fatal(err)
	}
	if last, err = JoinGroup(welcome, kps[n-2], lastPriv, nil, nil); err != nil {
		b.Fatal(err)
	}
	return creator, last
}

// BenchmarkCommit measures creating a Commit with an UpdatePath (no
// proposals) and processing it as another member, by group size.
func BenchmarkCommit(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("create/members=%d", n), func(b *testing.B) {
			creator, _ := benchGroup(b, n)
			for b.Loop() {
				if _, _, err := creator.Commit(nil, nil); err != nil {
					b.Fatal(err)
				}
				creator.DiscardPendingCommit()
			}
		})
		b.Run(fmt.Sprintf("process/members=%d", n), func(b *testing.B) {
			creator, last := benchGroup(b, n)
			msg, _, err := creator.Commit(nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				// HandleCommit replaces the receiver's fields only, so a
				// shallow copy of the member processes the same Commit
				// each time.
				r := *last
				if _, err := r.HandleCommit(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSealOpen1KiB measures encrypting and decrypting a 1 KiB
// application message between two members.
func BenchmarkSealOpen1KiB(b *testing.B) {
	alice, bob := benchGroup(b, 2)
	msg := make([]byte, 1024)
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		pm, err := alice.Seal(msg, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := bob.Open(pm); err != nil {
			b.Fatal(err)
		}
	}
}

// TestGroupProposalsByReference has Bob leave by proposing his own
// removal and Carol propose an Add; Alice commits both by reference, with
// a Welcome for the new member.
func TestGroupProposalsByReference(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	alice, bob, carol, dave := newGroupMember(t, cs, "alice"), newGroupMember(t, cs, "bob"), newGroupMember(t, cs, "carol"), newGroupMember(t, cs, "dave")
	var err error
	if alice.g, err = NewGroup([]byte("by reference"), alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}
	_, welcome, err := alice.g.Commit([]*KeyPackage{bob.kp, carol.kp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	alice.g.MergePendingCommit()
	for _, m := range []*groupMember{bob, carol} {
		if m.g, err = JoinGroup(wireWelcome(t, welcome), m.kp, m.priv, nil, nil); err != nil {
			t.Fatalf("%s joins: %v", m.name, err)
		}
	}
	sameEpoch(t, alice, bob, carol)

	leave, err := bob.g.Propose(&Proposal{ProposalType: ProposalTypeRemove, Remove: &Remove{Removed: bob.g.Self()}})
	if err != nil {
		t.Fatal(err)
	}
	add, err := carol.g.Propose(&Proposal{ProposalType: ProposalTypeAdd, Add: &Add{KeyPackage: *dave.kp}})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*groupMember{alice, bob, carol} {
		for _, p := range []*PublicMessage{leave, add} {
			if p.Content.Sender.LeafIndex == m.g.Self() {
				continue
			}
			if _, err := m.g.HandleProposal(wirePublic(t, p)); err != nil {
				t.Fatalf("%s: HandleProposal: %v", m.name, err)
			}
		}
	}
	// Bob cannot commit his own removal; his Commit leaves it out.
	if _, _, err := bob.g.Commit(nil, nil); err != nil {
		t.Fatalf("Bob's Commit without his removal: %v", err)
	}
	bob.g.DiscardPendingCommit()

	commit, welcome, err := alice.g.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	refs := 0
	for _, p := range commit.Content.Commit.Proposals {
		if p.Type == ProposalOrRefTypeReference {
			refs++
		}
	}
	if refs != 2 || welcome == nil {
		t.Fatalf("Commit has %d proposals by reference (want 2), welcome %v", refs, welcome != nil)
	}
	// The Delivery Service echoes Alice's Commit back to her: that merges it.
	if effect, err := alice.g.HandleCommit(wirePublic(t, commit)); err != nil || len(effect.Added) != 1 || len(effect.Removed) != 1 {
		t.Fatalf("Alice's own Commit echoed: %v", err)
	}
	if _, err := carol.g.HandleCommit(wirePublic(t, commit)); err != nil {
		t.Fatalf("Carol: %v", err)
	}
	effect, err := bob.g.HandleCommit(wirePublic(t, commit))
	if err != nil || len(effect.Removed) != 1 || effect.Removed[0].Leaf != 1 {
		t.Fatalf("Bob processes his leave: %v", err)
	}
	if dave.g, err = JoinGroup(wireWelcome(t, welcome), dave.kp, dave.priv, nil, nil); err != nil {
		t.Fatalf("Dave joins: %v", err)
	}
	sameEpoch(t, alice, carol, dave)
	exchange(t, 1, alice, carol, dave)
	var ids []string
	for _, m := range dave.g.Members() {
		ids = append(ids, fmt.Sprintf("%d:%s", m.Leaf, m.Identity))
	}
	if got := fmt.Sprint(ids); got != "[0:alice 1:dave 2:carol]" {
		t.Fatalf("members %s", got)
	}
}

// TestGroupPSKAndExtensions commits an external PSK and new GroupContext
// extensions together with an Add: the existing member needs the PSK to
// follow, the new member gets it named in its Welcome.
func TestGroupPSKAndExtensions(t *testing.T) {
	cs := MLS_128_DHKEMP256_AES128GCM_SHA256_P256
	alice, bob, carol := newGroupMember(t, cs, "alice"), newGroupMember(t, cs, "bob"), newGroupMember(t, cs, "carol")
	var err error
	if alice.g, err = NewGroup([]byte("psk"), alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}
	_, welcome, err := alice.g.Commit([]*KeyPackage{bob.kp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	alice.g.MergePendingCommit()
	if bob.g, err = JoinGroup(welcome, bob.kp, bob.priv, nil, nil); err != nil {
		t.Fatal(err)
	}
	pskID, psk := []byte("shared psk"), []byte("0123456789abcdef0123456789abcdef")
	if _, _, err := alice.g.CommitWith(CommitOptions{ExternalPSKs: [][]byte{pskID}}); err == nil {
		t.Fatal("committed a PSK the committer does not have")
	}
	alice.g.AddExternalPSK(pskID, psk)
	exts := Extensions{{ExtensionType: ExtensionTypeRequiredCapabilities, ExtensionData: mustEncode(&RequiredCapabilities{})}}
	commit, welcome, err := alice.g.CommitWith(CommitOptions{Adds: []*KeyPackage{carol.kp}, ExternalPSKs: [][]byte{pskID}, Extensions: &exts})
	if err != nil {
		t.Fatal(err)
	}
	alice.g.MergePendingCommit()
	if _, err := bob.g.HandleCommit(wirePublic(t, commit)); err == nil {
		t.Fatal("Bob followed a Commit with a PSK he does not have")
	}
	bob.g.AddExternalPSK(pskID, psk)
	effect, err := bob.g.HandleCommit(wirePublic(t, commit))
	if err != nil {
		t.Fatalf("Bob, with the PSK: %v", err)
	}
	if len(effect.PSKs) != 1 || !effect.GroupContextExtensions {
		t.Fatalf("effect: %+v", effect)
	}
	if _, err := JoinGroup(wireWelcome(t, welcome), carol.kp, carol.priv, nil, nil); err == nil {
		t.Fatal("Carol joined without the PSK")
	}
	if carol.g, err = JoinGroup(wireWelcome(t, welcome), carol.kp, carol.priv, nil, map[string][]byte{string(pskID): psk}); err != nil {
		t.Fatalf("Carol joins: %v", err)
	}
	gc := carol.g.GroupContext()
	if len(gc.Extensions) != 1 || gc.Extensions[0].ExtensionType != ExtensionTypeRequiredCapabilities {
		t.Fatalf("GroupContext extensions %+v", gc.Extensions)
	}
	sameEpoch(t, alice, bob, carol)
	exchange(t, 1, alice, bob, carol)
}

// TestGroupUpdateProposal has Bob propose a new leaf key, save and restore
// his state, and follow Alice's Commit of the Update with the new key.
func TestGroupUpdateProposal(t *testing.T) {
	cs := MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519
	alice, bob, carol := newGroupMember(t, cs, "alice"), newGroupMember(t, cs, "bob"), newGroupMember(t, cs, "carol")
	var err error
	if alice.g, err = NewGroup([]byte("update"), alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}
	_, welcome, err := alice.g.Commit([]*KeyPackage{bob.kp, carol.kp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	alice.g.MergePendingCommit()
	for _, m := range []*groupMember{bob, carol} {
		if m.g, err = JoinGroup(welcome, m.kp, m.priv, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	oldKey := bob.g.Tree().Leaf(bob.g.Self()).EncryptionKey
	update, err := bob.g.ProposeUpdate()
	if err != nil {
		t.Fatal(err)
	}
	reloadGroup(t, bob)
	for _, m := range []*groupMember{alice, carol} {
		if _, err := m.g.HandleProposal(wirePublic(t, update)); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
	}
	commit, _, err := alice.g.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	alice.g.MergePendingCommit()
	for _, m := range []*groupMember{bob, carol} {
		effect, err := m.g.HandleCommit(wirePublic(t, commit))
		if err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		if len(effect.Updated) != 2 {
			t.Fatalf("%s: %d members updated, want Bob and the committer", m.name, len(effect.Updated))
		}
	}
	if bytes.Equal(bob.g.Tree().Leaf(bob.g.Self()).EncryptionKey, oldKey) {
		t.Fatal("Bob's leaf key did not change")
	}
	sameEpoch(t, alice, bob, carol)
	exchange(t, 1, alice, bob, carol)
	// The next Commit encrypts to Bob's new leaf key.
	commit, _, err = carol.g.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	carol.g.MergePendingCommit()
	for _, m := range []*groupMember{alice, bob} {
		if _, err := m.g.HandleCommit(wirePublic(t, commit)); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
	}
	sameEpoch(t, alice, bob, carol)
}
