package mls

import (
	"bytes"
	"errors"
	"testing"
)

type secretTreeVector struct {
	CipherSuite CipherSuite `json:"cipher_suite"`
	SenderData  struct {
		SenderDataSecret hexBytes `json:"sender_data_secret"`
		Ciphertext       hexBytes `json:"ciphertext"`
		Key              hexBytes `json:"key"`
		Nonce            hexBytes `json:"nonce"`
	} `json:"sender_data"`
	EncryptionSecret hexBytes `json:"encryption_secret"`
	Leaves           [][]struct {
		Generation       uint32   `json:"generation"`
		HandshakeKey     hexBytes `json:"handshake_key"`
		HandshakeNonce   hexBytes `json:"handshake_nonce"`
		ApplicationKey   hexBytes `json:"application_key"`
		ApplicationNonce hexBytes `json:"application_nonce"`
	} `json:"leaves"`
}

// TestSecretTreeVectors runs every entry of secret-tree.json: the sender
// data key and nonce for a ciphertext sample (§6.3.2), and the handshake
// and application keys and nonces of every leaf at the listed generations
// (§9), reached both as a receiver (jumping to a generation) and as a
// sender (stepping through every generation).
func TestSecretTreeVectors(t *testing.T) {
	var vs []secretTreeVector
	loadVectors(t, "secret-tree.json", &vs)
	count := newVectorCount("secret-tree.json")
	defer count.report(t)
	for i, v := range vs {
		cs := v.CipherSuite
		if !cs.Supported() {
			count.skip("cipher suite not supported")
			continue
		}
		ok := true
		key, nonce, err := senderDataKey(cs, v.SenderData.SenderDataSecret, v.SenderData.Ciphertext)
		if err != nil || !bytes.Equal(key, v.SenderData.Key) || !bytes.Equal(nonce, v.SenderData.Nonce) {
			t.Errorf("entry %d (suite %d): sender data key %x nonce %x (%v), want %x %x",
				i, cs, key, nonce, err, v.SenderData.Key, v.SenderData.Nonce)
			ok = false
		}

		n := uint32(len(v.Leaves))
		recv, err := NewSecretTree(cs, v.EncryptionSecret, n)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		send, err := NewSecretTree(cs, v.EncryptionSecret, n)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		for leaf, gens := range v.Leaves {
			l := LeafIndex(leaf)
			for _, g := range gens {
				for _, r := range []struct {
					rt         RatchetType
					key, nonce []byte
				}{
					{HandshakeRatchet, g.HandshakeKey, g.HandshakeNonce},
					{ApplicationRatchet, g.ApplicationKey, g.ApplicationNonce},
				} {
					key, nonce, err := recv.Key(l, r.rt, g.Generation)
					if err != nil || !bytes.Equal(key, r.key) || !bytes.Equal(nonce, r.nonce) {
						t.Errorf("entry %d (suite %d) leaf %d %v generation %d: key %x nonce %x (%v), want %x %x",
							i, cs, leaf, r.rt, g.Generation, key, nonce, err, r.key, r.nonce)
						ok = false
					}
					// The sender hands out every generation in turn.
					for {
						gen, key, nonce, err := send.NextKey(l, r.rt)
						if err != nil {
							t.Fatalf("entry %d: NextKey: %v", i, err)
						}
						if gen < g.Generation {
							continue
						}
						if gen != g.Generation || !bytes.Equal(key, r.key) || !bytes.Equal(nonce, r.nonce) {
							t.Errorf("entry %d (suite %d) leaf %d %v: NextKey gave generation %d key %x, want %d %x",
								i, cs, leaf, r.rt, gen, key, g.Generation, r.key)
							ok = false
						}
						break
					}
				}
			}
		}
		if ok {
			count.pass()
		}
	}
}

func newTestSecretTree(t *testing.T, n uint32) *SecretTree {
	t.Helper()
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	tree, err := NewSecretTree(cs, bytes.Repeat([]byte{0x42}, cs.HashSize()), n)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// wantTreeError checks that err is a *ValidationError of section wrapping
// target (when target is not nil).
func wantTreeError(t *testing.T, what string, err, target error, section string) {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Section != section || (target != nil && !errors.Is(err, target)) {
		t.Errorf("%s: got %v, want a §%s ValidationError wrapping %v", what, err, section, target)
	}
}

// TestSecretTreeOutOfOrder checks the receiver window of §15.3: skipped
// generations stay available once each, generations used before fail
// with ErrGenerationUsed, and the ratchets of a leaf are independent.
func TestSecretTreeOutOfOrder(t *testing.T) {
	tree := newTestSecretTree(t, 4)
	ref := newTestSecretTree(t, 4)
	want := map[uint32][]byte{}
	for g := uint32(0); g <= 7; g++ {
		_, k, _, err := ref.NextKey(1, ApplicationRatchet)
		if err != nil {
			t.Fatal(err)
		}
		want[g] = k
	}
	for _, g := range []uint32{5, 2, 7, 0, 6, 1} {
		k, _, err := tree.Key(1, ApplicationRatchet, g)
		if err != nil {
			t.Fatalf("generation %d: %v", g, err)
		}
		if !bytes.Equal(k, want[g]) {
			t.Errorf("generation %d: wrong key", g)
		}
	}
	for _, g := range []uint32{5, 2, 7, 0} {
		_, _, err := tree.Key(1, ApplicationRatchet, g)
		wantTreeError(t, "reused generation", err, ErrGenerationUsed, "9.2")
	}
	// Generations 3 and 4 were skipped and never used.
	for _, g := range []uint32{3, 4} {
		if k, _, err := tree.Key(1, ApplicationRatchet, g); err != nil || !bytes.Equal(k, want[g]) {
			t.Errorf("skipped generation %d: %v", g, err)
		}
	}
	// The handshake ratchet of the same leaf is untouched.
	if _, _, err := tree.Key(1, HandshakeRatchet, 0); err != nil {
		t.Errorf("handshake generation 0 after application traffic: %v", err)
	}
	if got := len(tree.ratchets[1].application.retained); got != 0 {
		t.Errorf("%d keys retained after every skipped generation was used", got)
	}
}

// TestSecretTreeWindow checks the MaxForward and MaxBackward limits.
func TestSecretTreeWindow(t *testing.T) {
	tree := newTestSecretTree(t, 2)
	_, _, err := tree.Key(0, ApplicationRatchet, DefaultMaxForward+1)
	wantTreeError(t, "generation beyond MaxForward", err, ErrGenerationTooFarAhead, "15.3")
	if lr := tree.ratchets[0]; lr != nil && (lr.application.next != 0 || len(lr.application.retained) != 0) {
		t.Errorf("a rejected generation moved the ratchet to %d with %d retained keys", lr.application.next, len(lr.application.retained))
	}
	_, _, err = tree.Key(0, ApplicationRatchet, 0xffffffff)
	wantTreeError(t, "generation 2^32-1 at the start of an epoch", err, ErrGenerationTooFarAhead, "15.3")
	if _, _, err := tree.Key(0, ApplicationRatchet, DefaultMaxForward); err != nil {
		t.Errorf("generation exactly MaxForward ahead: %v", err)
	}
	if got := len(tree.ratchets[0].application.retained); got != DefaultMaxBackward {
		t.Errorf("%d keys retained, want %d", got, DefaultMaxBackward)
	}

	tree = newTestSecretTree(t, 2)
	tree.MaxForward, tree.MaxBackward = 100, 10
	if _, _, err := tree.Key(0, HandshakeRatchet, 50); err != nil {
		t.Fatal(err)
	}
	// The newest is 50: generations 40..49 are kept, older ones deleted.
	_, _, err = tree.Key(0, HandshakeRatchet, 39)
	wantTreeError(t, "generation behind MaxBackward", err, ErrGenerationTooOld, "15.3")
	if _, _, err := tree.Key(0, HandshakeRatchet, 40); err != nil {
		t.Errorf("generation at the edge of MaxBackward: %v", err)
	}
	if got := len(tree.ratchets[0].handshake.retained); got > int(tree.MaxBackward) {
		t.Errorf("%d keys retained, more than MaxBackward %d", got, tree.MaxBackward)
	}
	// Jumps within MaxForward keep the retained set bounded.
	for g := uint32(150); g < 1000; g += 100 {
		if _, _, err := tree.Key(0, HandshakeRatchet, g); err != nil {
			t.Fatalf("generation %d: %v", g, err)
		}
		if got := len(tree.ratchets[0].handshake.retained); got > int(tree.MaxBackward) {
			t.Fatalf("%d keys retained after generation %d, more than MaxBackward %d", got, g, tree.MaxBackward)
		}
	}
	_, _, err = tree.Key(0, HandshakeRatchet, 950+100+2)
	wantTreeError(t, "generation beyond a lowered MaxForward", err, ErrGenerationTooFarAhead, "15.3")

	_, _, err = tree.Key(2, HandshakeRatchet, 0)
	wantTreeError(t, "leaf outside the tree", err, nil, "6.3.2")
}

// TestSecretTreeDeletion checks the deletion schedule of §9.2: once a
// leaf's ratchets exist, no secret on its path to the root is kept, only
// the copath secrets the other leaves still need; ratchet secrets move
// forward and the tree keeps only keys of skipped generations.
func TestSecretTreeDeletion(t *testing.T) {
	tree := newTestSecretTree(t, 4) // nodes 0..6, root 3
	if _, _, err := tree.Key(0, ApplicationRatchet, 0); err != nil {
		t.Fatal(err)
	}
	if got := nodeSet(tree); got != "2 5" {
		t.Errorf("after leaf 0: stored nodes %q, want \"2 5\"", got)
	}
	if _, _, _, err := tree.NextKey(3, HandshakeRatchet); err != nil {
		t.Fatal(err)
	}
	if got := nodeSet(tree); got != "2 4" {
		t.Errorf("after leaf 3: stored nodes %q, want \"2 4\"", got)
	}
	for _, l := range []LeafIndex{1, 2} {
		if _, _, _, err := tree.NextKey(l, ApplicationRatchet); err != nil {
			t.Fatal(err)
		}
	}
	if got := nodeSet(tree); got != "" {
		t.Errorf("with every leaf started: stored nodes %q, want none", got)
	}
	// A ratchet keeps one secret, not the ones before it.
	r := &tree.ratchets[0].application
	old := r.secret
	if _, _, err := tree.Key(0, ApplicationRatchet, 1); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(old, r.secret) || !bytes.Equal(old, make([]byte, len(old))) {
		t.Error("the previous ratchet secret was not wiped")
	}
}

func nodeSet(t *SecretTree) string {
	s := ""
	for x := NodeIndex(0); x < NodeIndex(nodeWidth(t.nLeaves)); x++ {
		if _, ok := t.nodes[x]; ok {
			if s != "" {
				s += " "
			}
			s += itoa(int(x))
		}
	}
	return s
}

// TestSecretTreeExhaustion checks that a ratchet stops after generation
// 2^32-1 instead of wrapping around to reused keys.
func TestSecretTreeExhaustion(t *testing.T) {
	tree := newTestSecretTree(t, 1)
	if _, _, _, err := tree.NextKey(0, ApplicationRatchet); err != nil {
		t.Fatal(err)
	}
	tree.ratchets[0].application.next = 0xffffffff // white box: skip 4 billion steps
	gen, _, _, err := tree.NextKey(0, ApplicationRatchet)
	if err != nil || gen != 0xffffffff {
		t.Fatalf("last generation: %d, %v", gen, err)
	}
	_, _, _, err = tree.NextKey(0, ApplicationRatchet)
	wantTreeError(t, "generation after 2^32-1", err, ErrRatchetExhausted, "9.1")
}

// TestSecretTreeShape checks that only ratchet-tree shapes are accepted.
func TestSecretTreeShape(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	secret := make([]byte, cs.HashSize())
	for _, n := range []uint32{0, 3, 6, 1<<31 + 1} {
		if _, err := NewSecretTree(cs, secret, n); err == nil {
			t.Errorf("%d leaves accepted", n)
		}
	}
	if _, err := NewSecretTree(cs, secret[1:], 2); err == nil {
		t.Error("encryption_secret of the wrong size accepted")
	}
	if _, err := NewSecretTree(0x7777, secret, 2); err == nil {
		t.Error("unknown cipher suite accepted")
	}
	// A large tree costs nothing up front.
	big, err := NewSecretTree(cs, secret, 1<<31)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := big.Key(1<<31-1, HandshakeRatchet, 0); err != nil {
		t.Fatal(err)
	}
	if len(big.nodes) != 31 {
		t.Errorf("%d node secrets stored after one leaf of 2^31, want the 31 on its copath", len(big.nodes))
	}
}
