package mls

import (
	"bytes"
	"errors"
	"testing"
)

// twoMembers makes a group of alice and bob, both at epoch 1.
func twoMembers(t *testing.T) (alice, bob *groupMember) {
	t.Helper()
	cs := CipherSuite(1)
	alice, bob = newGroupMember(t, cs, "alice"), newGroupMember(t, cs, "bob")
	var err error
	if alice.g, err = NewGroup([]byte("lease"), alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}
	_, welcome, err := alice.g.Commit([]*KeyPackage{bob.kp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	if bob.g, err = JoinGroup(wireWelcome(t, welcome), bob.kp, bob.priv, nil, nil); err != nil {
		t.Fatal(err)
	}
	return alice, bob
}

// TestOpenForgedFarGeneration: a member knows the epoch's secrets, so it
// can encrypt for any leaf at any generation. Bob forges a message of
// alice's leaf at generation MaxForward, signed with his own key: alice's
// peer (a copy of bob's state, as a third member would see it) refuses it
// for its signature, and its state is byte for byte what it was: no
// ratchet moved, no skipped key kept. Alice's genuine first message then
// opens.
func TestOpenForgedFarGeneration(t *testing.T) {
	alice, bob := twoMembers(t)
	before, err := bob.g.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// The forger works on its own copy of the epoch's secrets.
	forger, err := UnmarshalGroup(before)
	if err != nil {
		t.Fatal(err)
	}
	for range DefaultMaxForward {
		if _, _, _, err := forger.st.NextKey(alice.g.Self(), ApplicationRatchet); err != nil {
			t.Fatal(err)
		}
	}
	gc := forger.GroupContext()
	forged, err := sealApplication(gc, alice.g.Self(), bob.g.sigPriv, forger.es.SenderDataSecret, forger.st, []byte("forged"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = bob.g.Open(wirePrivate(t, forged))
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Section != "6.1" {
		t.Fatalf("a message of alice's leaf signed by bob: %v, want a 6.1 ValidationError", err)
	}
	after, err := bob.g.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("a message with a bad signature changed the receiver's state")
	}
	if n := bob.g.st.Retained(); n != 0 {
		t.Errorf("%d skipped keys kept after a forged message", n)
	}
	// Alice's real message of generation 0 still opens, and a replay of it
	// does not.
	pm, err := alice.g.Seal([]byte("genuine"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, data, err := bob.g.Open(wirePrivate(t, pm)); err != nil || string(data) != "genuine" {
		t.Fatalf("alice's genuine message: %q, %v", data, err)
	}
	if _, _, err := bob.g.Open(wirePrivate(t, pm)); !errors.Is(err, ErrGenerationUsed) {
		t.Errorf("a replay of alice's message: %v, want ErrGenerationUsed", err)
	}
	// A genuine message far ahead does move the ratchet and keeps the keys
	// it skipped.
	for range 10 {
		if _, _, _, err := alice.g.st.NextKey(alice.g.Self(), ApplicationRatchet); err != nil {
			t.Fatal(err)
		}
	}
	pm, err = alice.g.Seal([]byte("later"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := bob.g.Open(wirePrivate(t, pm)); err != nil {
		t.Fatal(err)
	}
	if n := bob.g.st.Retained(); n != 10 {
		t.Errorf("%d skipped keys kept after a genuine message 10 generations ahead, want 10", n)
	}
}

// TestSecretTreeRetainedCap: skipped keys are capped over all ratchets;
// past the cap the ratchets that keep the most lose their oldest keys
// first, so one sender cannot push out the others'.
func TestSecretTreeRetainedCap(t *testing.T) {
	cs := CipherSuite(1)
	tree, err := NewSecretTree(cs, make([]byte, cs.HashSize()), 4)
	if err != nil {
		t.Fatal(err)
	}
	tree.MaxRetained = 50
	if _, _, err := tree.Key(0, ApplicationRatchet, 10); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tree.Key(1, ApplicationRatchet, 100); err != nil {
		t.Fatal(err)
	}
	if n := tree.Retained(); n != 50 {
		t.Fatalf("%d keys retained, want the cap 50", n)
	}
	if n := len(tree.ratchets[0].application.retained); n != 10 {
		t.Errorf("the quiet sender lost keys: %d of 10 kept", n)
	}
	r := &tree.ratchets[1].application
	if len(r.retained) != 40 {
		t.Errorf("the sender that skipped far keeps %d keys, want 40", len(r.retained))
	}
	for g := uint32(60); g < 100; g++ {
		if _, ok := r.retained[g]; !ok {
			t.Errorf("generation %d, among the newest, was dropped", g)
		}
	}
	if _, _, err := tree.Key(1, ApplicationRatchet, 59); !errors.Is(err, ErrGenerationUsed) {
		t.Errorf("an evicted generation: %v, want ErrGenerationUsed", err)
	}
	// Two equal senders share the cap.
	if _, _, err := tree.Key(2, ApplicationRatchet, 40); err != nil {
		t.Fatal(err)
	}
	if n := tree.Retained(); n != 50 {
		t.Errorf("%d keys retained, want the cap 50", n)
	}
	// A lease that is dropped leaves the ratchet as it was.
	l, err := tree.lease(3, HandshakeRatchet, 500)
	if err != nil {
		t.Fatal(err)
	}
	l.discard()
	if _, started := tree.ratchets[3]; started {
		t.Error("a discarded lease started the leaf's ratchets")
	}
	if _, _, err := tree.Key(3, HandshakeRatchet, 0); err != nil {
		t.Errorf("generation 0 after a discarded lease: %v", err)
	}
}
