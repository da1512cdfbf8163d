package mls

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

const (
	reinitOld = MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	reinitNew = MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519
)

// reinitExts are the GroupContext extensions the tests' ReInit asks for.
func reinitExts() Extensions {
	return Extensions{{ExtensionType: ExtensionTypeRequiredCapabilities, ExtensionData: mustEncode(&RequiredCapabilities{CredentialTypes: []CredentialType{CredentialTypeBasic}})}}
}

// frozenGroup makes a group of the named members and has the first commit
// a ReInit to reinitNew that everyone processes.
func frozenGroup(t *testing.T, names ...string) ([]*groupMember, *ReInit) {
	t.Helper()
	ms := newMemberGroup(t, reinitOld, "reinit old", names...)
	commitAll(t, ms[0], ms[1:]...) // epoch 2: the resumption PSKs of epochs 1 and 2 differ
	ri := &ReInit{GroupID: []byte("reinit new"), Version: ProtocolVersionMLS10, CipherSuite: reinitNew, Extensions: reinitExts()}
	msg, _, err := ms[0].g.CommitMessage(CommitOptions{ReInit: ri})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[1:] {
		if _, err := m.g.Process(wireMLS(t, msg)); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
	}
	if err := ms[0].g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if _, frozen := m.g.Frozen(); !frozen {
			t.Fatalf("%s is not frozen", m.name)
		}
	}
	return ms, ri
}

// freshKeyPackages gives each member a new KeyPackage of cs for the new
// group, keeping the old state in g.
func freshKeyPackages(t *testing.T, cs CipherSuite, ms ...*groupMember) []*groupMember {
	t.Helper()
	out := make([]*groupMember, len(ms))
	for i, m := range ms {
		n := newGroupMember(t, cs, m.name)
		n.g = m.g
		out[i] = n
	}
	return out
}

func kpsOf(ms ...*groupMember) []*KeyPackage {
	var kps []*KeyPackage
	for _, m := range ms {
		kps = append(kps, m.kp)
	}
	return kps
}

// wantSection checks that err is a *ValidationError of section.
func wantSection(t *testing.T, what string, err error, section string) {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("%s: got %v, want a *ValidationError of §%s", what, err, section)
	}
	if ve.Section != section {
		t.Fatalf("%s: got §%s (%v), want §%s", what, ve.Section, err, section)
	}
	t.Logf("%s: %v", what, err)
}

// TestReInitSuccessor reinitializes a group of three into a new cipher
// suite with new extensions (§11.2): the lowest member creates the
// successor, the others join it from the Welcome with the old group's
// resumption PSK, and all three end in epoch 1 of the new group with the
// same epoch_authenticator, exchanging messages and Commits.
func TestReInitSuccessor(t *testing.T) {
	old, ri := frozenGroup(t, "alice", "bob", "carol")
	lastEpoch := old[0].g.Epoch()
	ms := freshKeyPackages(t, reinitNew, old...)
	alice, bob, carol := ms[0], ms[1], ms[2]

	if _, _, err := old[0].g.ReInitGroup(alice.kp, alice.priv, kpsOf(bob)); err == nil {
		t.Fatal("a successor without carol was created")
	}
	ng, welcome, err := alice.g.ReInitGroup(alice.kp, alice.priv, kpsOf(bob, carol))
	if err != nil {
		t.Fatal(err)
	}
	if _, frozen := alice.g.Frozen(); !frozen {
		t.Fatal("the old group is no longer frozen")
	}
	alice.g = ng
	// The Welcome needs the old group's resumption PSK.
	if _, err := JoinGroup(wireWelcome(t, welcome), bob.kp, bob.priv, nil, nil); err == nil {
		t.Fatal("joined the successor without the resumption PSK")
	} else {
		wantSection(t, "join without the PSK", err, "12.4.3.1")
	}
	for _, m := range []*groupMember{bob, carol} {
		g, err := m.g.JoinSuccessor(wireWelcome(t, welcome), m.kp, m.priv, nil)
		if err != nil {
			t.Fatalf("%s joins the successor: %v", m.name, err)
		}
		m.g = g
	}
	sameEpoch(t, alice, bob, carol)
	gc := alice.g.GroupContext()
	if gc.Epoch != 1 || !bytes.Equal(gc.GroupID, ri.GroupID) || gc.CipherSuite != reinitNew ||
		!bytes.Equal(mustEncode(&gc.Extensions), mustEncode(&ri.Extensions)) {
		t.Fatalf("successor GroupContext %+v does not match the ReInit", gc)
	}
	// The PSK the Welcome names is the old group's last one, of usage reinit.
	ref, _ := bob.kp.Ref()
	gs, _, err := openWelcome(welcome, ref, bob.priv.InitPriv, map[string][]byte{ResumptionPSKKey(old[0].g.GroupID(), lastEpoch): old[1].g.es.ResumptionPSK})
	if err != nil {
		t.Fatal(err)
	}
	if len(gs.PSKs) != 1 || gs.PSKs[0].Usage != ResumptionPSKUsageReInit || gs.PSKs[0].PSKEpoch != lastEpoch || len(gs.PSKs[0].PSKNonce) != reinitNew.HashSize() {
		t.Fatalf("Welcome PSKs %+v", gs.PSKs)
	}
	// WelcomeLink tells a joiner which group the Welcome continues.
	link, err := WelcomeLink(welcome, carol.kp, carol.priv)
	if err != nil || link == nil || link.Usage != ResumptionPSKUsageReInit || !bytes.Equal(link.PSKGroupID, old[0].g.GroupID()) || link.PSKEpoch != lastEpoch {
		t.Fatalf("WelcomeLink = %+v, %v", link, err)
	}
	plain := newMemberGroup(t, reinitOld, "plain", "x")
	y := newGroupMember(t, reinitOld, "y")
	if _, w, err := plain[0].g.Commit([]*KeyPackage{y.kp}, nil); err != nil {
		t.Fatal(err)
	} else if link, err := WelcomeLink(w, y.kp, y.priv); err != nil || link != nil {
		t.Fatalf("WelcomeLink of a plain Welcome = %+v, %v", link, err)
	}
	exchange(t, 2, alice, bob, carol)
	reloadGroup(t, bob)
	commitAll(t, carol, alice, bob)
	sameEpoch(t, alice, bob, carol)
	exchange(t, 1, alice, bob, carol)
}

// TestBranch branches two of three members into a subgroup (§11.3): both
// end in epoch 1 with the same secrets, the third cannot join, and the
// old group goes on.
func TestBranch(t *testing.T) {
	old := newMemberGroup(t, reinitOld, "branch old", "alice", "bob", "carol")
	commitAll(t, old[1], old[0], old[2])
	ms := freshKeyPackages(t, reinitOld, old[0], old[1])
	alice, bob := ms[0], ms[1]
	ng, welcome, err := alice.g.Branch([]byte("branch new"), alice.kp, alice.priv, kpsOf(bob))
	if err != nil {
		t.Fatal(err)
	}
	bg, err := bob.g.JoinBranch(wireWelcome(t, welcome), bob.kp, bob.priv, nil)
	if err != nil {
		t.Fatal(err)
	}
	alice.g, bob.g = ng, bg
	sameEpoch(t, alice, bob)
	if gc := alice.g.GroupContext(); gc.Epoch != 1 || string(gc.GroupID) != "branch new" || len(alice.g.Members()) != 2 {
		t.Fatalf("branch: epoch %d, group %q, %d members", gc.Epoch, gc.GroupID, len(alice.g.Members()))
	}
	exchange(t, 1, alice, bob)
	commitAll(t, bob, alice)
	exchange(t, 1, alice, bob)

	carol := freshKeyPackages(t, reinitOld, old[2])[0]
	if _, err := carol.g.JoinBranch(wireWelcome(t, welcome), carol.kp, carol.priv, nil); err == nil {
		t.Fatal("carol joined a branch she was not invited to")
	}
	// The old group is not touched.
	exchange(t, 1, old...)
	commitAll(t, old[2], old[0], old[1])
	exchange(t, 1, old...)
}

// linkedWelcome builds a new group as newLinked does, but with the parts
// a test chooses, so that joiners can be shown bad Welcomes that an honest
// creator would not make.
type linkedWelcome struct {
	from    *groupMember // a member of the old group
	groupID []byte
	exts    Extensions
	usage   ResumptionPSKUsage
	epoch   uint64 // psk_epoch
	creator *groupMember
	others  []*KeyPackage
	// second adds the others in a second Commit, whose Welcome (of epoch
	// 2) still names the link PSK.
	second bool
	// psks, if not nil, gives the PSKs the Welcome lists instead of the
	// link PSK alone.
	psks func(link PreSharedKeyID) []PreSharedKeyID
	// secret, if not nil, is the value the creator takes for the link
	// PSK: a creator who is not a member of the old group's epoch.
	secret []byte
}

func (c linkedWelcome) build(t *testing.T) *Welcome {
	t.Helper()
	old := c.from.g
	cs := c.creator.kp.CipherSuite
	store := old.psks
	if c.secret != nil {
		store = make(map[string][]byte)
		for k, v := range old.psks {
			store[k] = v
		}
		store[ResumptionPSKKey(old.GroupID(), c.epoch)] = c.secret
	}
	ng, err := newInitialGroup(c.groupID, c.exts, c.creator.kp, c.creator.priv, store)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, cs.HashSize())
	rand.Read(nonce)
	link := PreSharedKeyID{PSKType: PSKTypeResumption, Usage: c.usage, PSKGroupID: old.GroupID(), PSKEpoch: c.epoch, PSKNonce: nonce}
	adds := c.others
	if c.second {
		if _, _, err := ng.CommitMessage(CommitOptions{link: &link}); err != nil {
			t.Fatal(err)
		}
		if err := ng.MergePendingCommit(); err != nil {
			t.Fatal(err)
		}
		if _, _, err = ng.CommitMessage(CommitOptions{Adds: adds}); err != nil {
			t.Fatal(err)
		}
	} else if _, _, err = ng.CommitMessage(CommitOptions{Adds: adds, link: &link}); err != nil {
		t.Fatal(err)
	}
	ids := []PreSharedKeyID{link}
	if c.psks != nil {
		ids = c.psks(link)
	}
	list := make([]PSK, len(ids))
	for i := range ids {
		list[i] = PSK{ID: ids[i], Secret: store[pskLookupKey(&ids[i])]}
	}
	pskSecret, err := PSKSecret(cs, list)
	if err != nil {
		t.Fatal(err)
	}
	var joiners []LeafIndex
	for i := range adds {
		joiners = append(joiners, LeafIndex(i+1))
	}
	w, err := ng.welcome(ng.pending.next, adds, joiners, ids, pskSecret, true)
	if err != nil {
		t.Fatal(err)
	}
	return wireWelcome(t, w)
}

// TestReInitJoinRefusals shows a member of a frozen group Welcomes that
// do not continue it as §11.2 and §12.4.3.1 say; each is refused with a
// *ValidationError of the right section and leaves the old group as it
// was. The honest Welcome built the same way is accepted.
func TestReInitJoinRefusals(t *testing.T) {
	old, ri := frozenGroup(t, "alice", "bob", "carol")
	last := old[0].g.Epoch()
	ms := freshKeyPackages(t, reinitNew, old...)
	alice, bob, carol := ms[0], ms[1], ms[2]
	base := linkedWelcome{from: old[0], groupID: ri.GroupID, exts: reinitExts(), usage: ResumptionPSKUsageReInit, epoch: last,
		creator: alice, others: kpsOf(bob, carol)}

	oldSuite := freshKeyPackages(t, reinitOld, old...)
	dave := newGroupMember(t, reinitNew, "dave")
	cases := []struct {
		name    string
		section string
		edit    func(c *linkedWelcome)
	}{
		{"PSK of an earlier epoch", "11.2", func(c *linkedWelcome) { c.epoch = last - 1 }},
		{"PSK of usage branch", "11.2", func(c *linkedWelcome) { c.usage = ResumptionPSKUsageBranch }},
		{"PSK of another group", "11.2", func(c *linkedWelcome) {
			c.psks = func(l PreSharedKeyID) []PreSharedKeyID { l.PSKGroupID = []byte("other"); return []PreSharedKeyID{l} }
		}},
		{"no link PSK", "11.2", func(c *linkedWelcome) {
			c.psks = func(PreSharedKeyID) []PreSharedKeyID { return nil }
		}},
		{"two link PSKs", "12.4.3.1", func(c *linkedWelcome) {
			c.psks = func(l PreSharedKeyID) []PreSharedKeyID {
				b := l
				b.Usage, b.PSKEpoch = ResumptionPSKUsageBranch, last-1
				return []PreSharedKeyID{l, b}
			}
		}},
		{"cipher suite other than the ReInit's", "11.2", func(c *linkedWelcome) {
			c.creator, c.others = oldSuite[0], kpsOf(oldSuite[1], oldSuite[2])
		}},
		{"group_id other than the ReInit's", "11.2", func(c *linkedWelcome) { c.groupID = []byte("elsewhere") }},
		{"extensions other than the ReInit's", "11.2", func(c *linkedWelcome) { c.exts = nil }},
		{"extra member", "11.2", func(c *linkedWelcome) { c.others = kpsOf(bob, carol, dave) }},
		{"missing member", "11.2", func(c *linkedWelcome) { c.others = kpsOf(bob) }},
		{"epoch 2", "11.2", func(c *linkedWelcome) { c.second = true }},
	}
	before, _ := old[1].g.MarshalBinary()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tc.edit(&c)
			w := c.build(t)
			joiner := bob
			if c.creator == oldSuite[0] {
				joiner = oldSuite[1]
			}
			_, err := old[1].g.JoinSuccessor(w, joiner.kp, joiner.priv, nil)
			wantSection(t, tc.name, err, tc.section)
			if after, _ := old[1].g.MarshalBinary(); !bytes.Equal(before, after) {
				t.Fatal("the refused Welcome changed the old group")
			}
		})
	}
	// The same construction without an edit is accepted.
	if _, err := old[1].g.JoinSuccessor(base.build(t), bob.kp, bob.priv, nil); err != nil {
		t.Fatalf("honest Welcome: %v", err)
	}
	// A Welcome of epoch 2 naming a link PSK is refused by JoinGroup too.
	c := base
	c.second = true
	psks := map[string][]byte{ResumptionPSKKey(old[0].g.GroupID(), last): old[1].g.es.ResumptionPSK}
	_, err := JoinGroup(c.build(t), bob.kp, bob.priv, nil, psks)
	wantSection(t, "JoinGroup into epoch 2", err, "11.2")
	// A member of a group that is not frozen has no successor to join.
	live := newMemberGroup(t, reinitOld, "live", "x", "y")
	if _, err := live[1].g.JoinSuccessor(base.build(t), bob.kp, bob.priv, nil); !errors.Is(err, ErrNotFrozen) {
		t.Fatalf("JoinSuccessor of a live group: %v", err)
	}
}

// TestReInitJoinWithoutPSK: a client that is not a member of the frozen
// epoch (it knows the old group's id and epoch, not its resumption_psk)
// makes a successor Welcome that names the link PSK correctly and passes
// every other check, to pull the old members into a group it controls.
// The joiner cannot open it, and its old group stays as it was; the same
// Welcome made with the real PSK is accepted.
func TestReInitJoinWithoutPSK(t *testing.T) {
	old, ri := frozenGroup(t, "alice", "bob", "carol")
	ms := freshKeyPackages(t, reinitNew, old...)
	alice, bob, carol := ms[0], ms[1], ms[2]
	c := linkedWelcome{from: old[0], groupID: ri.GroupID, exts: reinitExts(), usage: ResumptionPSKUsageReInit, epoch: old[0].g.Epoch(),
		creator: alice, others: kpsOf(bob, carol), secret: make([]byte, reinitNew.HashSize())}
	before, _ := old[1].g.MarshalBinary()
	if _, err := old[1].g.JoinSuccessor(c.build(t), bob.kp, bob.priv, nil); err == nil {
		t.Fatal("a successor Welcome made without the old group's resumption PSK was joined")
	}
	if after, _ := old[1].g.MarshalBinary(); !bytes.Equal(before, after) {
		t.Fatal("the refused Welcome changed the old group")
	}
	c.secret = nil
	if _, err := old[1].g.JoinSuccessor(c.build(t), bob.kp, bob.priv, nil); err != nil {
		t.Fatalf("the same Welcome with the real PSK: %v", err)
	}
}

// TestReInitGroupRefusals: the creator of a successor must bring exactly
// the old members, in the ReInit's suite, itself included.
func TestReInitGroupRefusals(t *testing.T) {
	old, _ := frozenGroup(t, "alice", "bob", "carol")
	ms := freshKeyPackages(t, reinitNew, old...)
	alice, bob, carol := ms[0], ms[1], ms[2]
	oldSuite := freshKeyPackages(t, reinitOld, old...)
	dave := newGroupMember(t, reinitNew, "dave")
	cases := []struct {
		name    string
		creator *groupMember
		others  []*KeyPackage
	}{
		{"KeyPackage of the old suite", alice, kpsOf(bob, oldSuite[2])},
		{"creator KeyPackage of the old suite", oldSuite[0], kpsOf(bob, carol)},
		{"extra member", alice, kpsOf(bob, carol, dave)},
		{"missing member", alice, kpsOf(bob)},
		{"member twice", alice, kpsOf(bob, bob)},
		{"creator with another identity", dave, kpsOf(bob, carol)},
	}
	for _, tc := range cases {
		_, _, err := alice.g.ReInitGroup(tc.creator.kp, tc.creator.priv, tc.others)
		wantSection(t, tc.name, err, "11.2")
	}
	live := newMemberGroup(t, reinitOld, "live", "x", "y")
	if _, _, err := live[0].g.ReInitGroup(alice.kp, alice.priv, nil); !errors.Is(err, ErrNotFrozen) {
		t.Fatalf("ReInitGroup of a live group: %v", err)
	}
}

// TestBranchRefusals: a branch's members must be members of the old group,
// in its suite, and a joiner refuses Welcomes that are not a branch of
// its group (§11.3).
func TestBranchRefusals(t *testing.T) {
	old := newMemberGroup(t, reinitOld, "branch old", "alice", "bob", "carol")
	commitAll(t, old[0], old[1], old[2])
	ms := freshKeyPackages(t, reinitOld, old...)
	alice, bob, carol := ms[0], ms[1], ms[2]
	dave := newGroupMember(t, reinitOld, "dave")
	newSuite := freshKeyPackages(t, reinitNew, old...)

	for _, tc := range []struct {
		name    string
		creator *groupMember
		others  []*KeyPackage
	}{
		{"stranger", alice, kpsOf(bob, dave)},
		{"member twice", alice, kpsOf(bob, bob)},
		{"other suite", alice, kpsOf(newSuite[1])},
		{"creator with another identity", bob, kpsOf(carol)},
	} {
		_, _, err := alice.g.Branch([]byte("b"), tc.creator.kp, tc.creator.priv, tc.others)
		wantSection(t, tc.name, err, "11.3")
	}
	if _, _, err := alice.g.Branch(alice.g.GroupID(), alice.kp, alice.priv, nil); err == nil {
		t.Fatal("a branch with the old group's id was created")
	}

	base := linkedWelcome{from: old[0], groupID: []byte("branch"), exts: old[0].g.GroupContext().Extensions, usage: ResumptionPSKUsageBranch,
		epoch: old[0].g.Epoch(), creator: alice, others: kpsOf(bob)}
	for _, tc := range []struct {
		name    string
		section string
		edit    func(c *linkedWelcome)
	}{
		{"stranger in the branch", "11.3", func(c *linkedWelcome) { c.others = kpsOf(bob, dave) }},
		{"other suite", "11.3", func(c *linkedWelcome) { c.creator, c.others = newSuite[0], kpsOf(newSuite[1]) }},
		{"epoch 2", "11.3", func(c *linkedWelcome) { c.second = true }},
		{"usage reinit", "11.3", func(c *linkedWelcome) { c.usage = ResumptionPSKUsageReInit }},
		{"PSK of a future epoch", "11.3", func(c *linkedWelcome) {
			c.psks = func(l PreSharedKeyID) []PreSharedKeyID { l.PSKEpoch++; return []PreSharedKeyID{l} }
		}},
		{"PSK of an epoch not kept", "12.4.3.1", func(c *linkedWelcome) {
			c.psks = func(l PreSharedKeyID) []PreSharedKeyID { l.PSKEpoch = 0; return []PreSharedKeyID{l} }
		}},
	} {
		c := base
		tc.edit(&c)
		joiner := bob
		if c.creator == newSuite[0] {
			joiner = newSuite[1]
		}
		_, err := old[1].g.JoinBranch(c.build(t), joiner.kp, joiner.priv, nil)
		wantSection(t, tc.name, err, tc.section)
	}
	if _, err := old[1].g.JoinBranch(base.build(t), bob.kp, bob.priv, nil); err != nil {
		t.Fatalf("honest branch Welcome: %v", err)
	}
}

// TestInitialCommitLinkPSK: a PreSharedKey proposal of usage reinit or
// branch is valid in the Commit that leaves epoch 0, where a successor or
// branch is set up (§11.2, §11.3, §12.1.4), once; later it is not.
func TestInitialCommitLinkPSK(t *testing.T) {
	psk := func(u ResumptionPSKUsage) ProposalOrRef {
		return porValue(&Proposal{ProposalType: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: PreSharedKeyID{
			PSKType: PSKTypeResumption, Usage: u, PSKGroupID: []byte("old"), PSKEpoch: 7, PSKNonce: dsRandom(dsSuite.HashSize())}}})
	}
	g := newDSGroup(t, dsSuite, 1)
	_, _, err := g.s.HandleCommit(g.commit(0, psk(ResumptionPSKUsageReInit), psk(ResumptionPSKUsageBranch)).withPath().msg())
	wantSection(t, "two link PSKs", err, "12.4.3.1")
	effect := g.apply(g.commit(0, psk(ResumptionPSKUsageBranch), g.add(newTestMember(t, dsSuite, "member-1"))).withPath().msg())
	if len(effect.PSKs) != 1 || effect.PSKs[0].Usage != ResumptionPSKUsageBranch {
		t.Fatalf("effect PSKs %+v", effect.PSKs)
	}
	_, _, err = g.s.HandleCommit(g.commit(0, psk(ResumptionPSKUsageBranch)).withPath().msg())
	wantSection(t, "link PSK after epoch 0", err, "12.1.4")
}
