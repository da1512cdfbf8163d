package mls

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

// TestWelcomeVectors runs every entry of welcome.json: find the secrets for
// the KeyPackage, decrypt them with init_priv, derive the welcome key
// (§8, no PSKs), open the GroupInfo and verify its signature with
// signer_pub (§12.4.3.1).
func TestWelcomeVectors(t *testing.T) {
	var vs []struct {
		CipherSuite CipherSuite `json:"cipher_suite"`
		InitPriv    hexBytes    `json:"init_priv"`
		KeyPackage  hexBytes    `json:"key_package"`
		SignerPub   hexBytes    `json:"signer_pub"`
		Welcome     hexBytes    `json:"welcome"`
	}
	loadVectors(t, "welcome.json", &vs)
	count := newVectorCount("welcome.json")
	defer count.report(t)
	for i, v := range vs {
		if !v.CipherSuite.Supported() {
			count.skip("cipher suite not supported")
			continue
		}
		kpMsg, err := ParseMLSMessage(v.KeyPackage)
		if err != nil || kpMsg.KeyPackage == nil {
			t.Errorf("entry %d: key_package: %v", i, err)
			continue
		}
		wMsg, err := ParseMLSMessage(v.Welcome)
		if err != nil || wMsg.Welcome == nil {
			t.Errorf("entry %d: welcome: %v", i, err)
			continue
		}
		ref, err := kpMsg.KeyPackage.Ref()
		if err != nil {
			t.Errorf("entry %d: %v", i, err)
			continue
		}
		gs, gi, err := openWelcome(wMsg.Welcome, ref, v.InitPriv, nil)
		if err != nil {
			t.Errorf("entry %d (suite %d): %v", i, v.CipherSuite, err)
			continue
		}
		if len(gs.JoinerSecret) != v.CipherSuite.HashSize() {
			t.Errorf("entry %d: joiner_secret of %d bytes", i, len(gs.JoinerSecret))
			continue
		}
		if err := gi.VerifySignature(v.SignerPub); err != nil {
			t.Errorf("entry %d (suite %d): GroupInfo signature: %v", i, v.CipherSuite, err)
			continue
		}
		// The public entry points agree: with the tree in the GroupInfo
		// they verify the signature themselves; without it they say so.
		_, gi2, err := DecryptWelcome(wMsg.Welcome, ref, v.InitPriv, nil)
		if _, hasTree := gi.Extensions.Find(ExtensionTypeRatchetTree); hasTree {
			if err != nil || !bytes.Equal(mustEncode(gi2), mustEncode(gi)) {
				t.Errorf("entry %d: DecryptWelcome: %v", i, err)
				continue
			}
		} else if !errors.Is(err, ErrNoRatchetTree) {
			t.Errorf("entry %d: DecryptWelcome without a ratchet_tree extension: got %v, want ErrNoRatchetTree", i, err)
			continue
		}
		// A wrong init key must fail, not return garbage.
		bad := bytes.Clone(v.InitPriv)
		bad[len(bad)/2] ^= 1
		if _, _, err := openWelcome(wMsg.Welcome, ref, bad, nil); err == nil {
			t.Errorf("entry %d: Welcome decrypted with a wrong init key", i)
			continue
		}
		count.pass()
	}
}

// welcomeFixture builds a Welcome for one joiner with the given PSKs, the
// way a committer does (§12.4.3.1), around a GroupInfo signed by a
// one-member tree.
type welcomeFixture struct {
	cs       CipherSuite
	kpRef    KeyPackageRef
	initPriv []byte
	welcome  *Welcome
	gi       *GroupInfo
	tree     *RatchetTree
	signer   []byte // signature private key of leaf 0
}

func newWelcomeFixture(t *testing.T, cs CipherSuite, psks []PSK, withTreeExt bool) *welcomeFixture {
	t.Helper()
	m := newTestMember(t, cs, "creator")
	tree, err := NewRatchetTree(cs, []*Node{{Leaf: &m.kp.LeafNode}})
	if err != nil {
		t.Fatal(err)
	}
	gi := &GroupInfo{
		GroupContext: GroupContext{
			Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: []byte("welcome group"),
			Epoch: 1, TreeHash: tree.TreeHash(), ConfirmedTranscriptHash: dsRandom(cs.HashSize()),
		},
		ConfirmationTag: dsRandom(cs.HashSize()),
		Signer:          0,
	}
	if withTreeExt {
		data, err := tree.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		gi.Extensions = Extensions{{ExtensionType: ExtensionTypeRatchetTree, ExtensionData: data}}
	}
	if err := gi.Sign(m.sigPriv); err != nil {
		t.Fatal(err)
	}
	joiner := newTestMember(t, cs, "joiner")
	ref, err := joiner.kp.Ref()
	if err != nil {
		t.Fatal(err)
	}
	gs := &GroupSecrets{JoinerSecret: dsRandom(cs.HashSize())}
	for _, p := range psks {
		gs.PSKs = append(gs.PSKs, p.ID)
	}
	pskSecret, err := PSKSecret(cs, psks)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := NewKeySchedule(cs, gs.JoinerSecret, pskSecret)
	if err != nil {
		t.Fatal(err)
	}
	key, nonce, err := ks.WelcomeKey()
	if err != nil {
		t.Fatal(err)
	}
	egi, err := cs.Seal(key, nonce, nil, mustEncode(gi))
	if err != nil {
		t.Fatal(err)
	}
	kem, ct, err := cs.EncryptWithLabel(joiner.kp.InitKey, "Welcome", egi, mustEncode(gs))
	if err != nil {
		t.Fatal(err)
	}
	w := &Welcome{
		CipherSuite:        cs,
		Secrets:            []EncryptedGroupSecrets{{NewMember: ref, EncryptedGroupSecrets: HPKECiphertext{KEMOutput: kem, Ciphertext: ct}}},
		EncryptedGroupInfo: egi,
	}
	return &welcomeFixture{cs: cs, kpRef: ref, initPriv: joiner.initPriv, welcome: w, gi: gi, tree: tree, signer: m.sigPriv}
}

func dsRandom(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestDecryptWelcomePSKs checks the PSK side of Welcome processing (§8.4,
// §12.4.3.1): external and resumption PSKs are looked up, a missing one is
// an error, and two reinit/branch PSKs are refused.
func TestDecryptWelcomePSKs(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	ext := PSK{ID: PreSharedKeyID{PSKType: PSKTypeExternal, PSKID: []byte("ext"), PSKNonce: dsRandom(32)}, Secret: []byte("external secret")}
	res := PSK{ID: PreSharedKeyID{PSKType: PSKTypeResumption, Usage: ResumptionPSKUsageApplication, PSKGroupID: []byte("old"), PSKEpoch: 7, PSKNonce: dsRandom(32)}, Secret: dsRandom(32)}
	f := newWelcomeFixture(t, cs, []PSK{ext, res}, true)
	psks := map[string][]byte{"ext": ext.Secret, ResumptionPSKKey([]byte("old"), 7): res.Secret}

	gs, gi, err := DecryptWelcome(f.welcome, f.kpRef, f.initPriv, psks)
	if err != nil {
		t.Fatal(err)
	}
	if len(gs.PSKs) != 2 || !bytes.Equal(mustEncode(gi), mustEncode(f.gi)) {
		t.Fatal("decrypted Welcome differs from what was sent")
	}

	delete(psks, "ext")
	_, _, err = DecryptWelcome(f.welcome, f.kpRef, f.initPriv, psks)
	assertSection(t, err, "12.4.3.1")

	// A wrong PSK value gives a wrong welcome key.
	psks["ext"] = []byte("another secret")
	_, _, err = DecryptWelcome(f.welcome, f.kpRef, f.initPriv, psks)
	assertSection(t, err, "12.4.3.1")

	r1 := PSK{ID: PreSharedKeyID{PSKType: PSKTypeResumption, Usage: ResumptionPSKUsageReInit, PSKGroupID: []byte("a"), PSKEpoch: 1, PSKNonce: dsRandom(32)}, Secret: dsRandom(32)}
	r2 := PSK{ID: PreSharedKeyID{PSKType: PSKTypeResumption, Usage: ResumptionPSKUsageBranch, PSKGroupID: []byte("b"), PSKEpoch: 1, PSKNonce: dsRandom(32)}, Secret: dsRandom(32)}
	f2 := newWelcomeFixture(t, cs, []PSK{r1, r2}, true)
	_, _, err = DecryptWelcome(f2.welcome, f2.kpRef, f2.initPriv, map[string][]byte{
		ResumptionPSKKey([]byte("a"), 1): r1.Secret, ResumptionPSKKey([]byte("b"), 1): r2.Secret,
	})
	assertSection(t, err, "12.4.3.1")
}

// TestDecryptWelcomeChecks breaks one thing at a time in a Welcome.
func TestDecryptWelcomeChecks(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	f := newWelcomeFixture(t, cs, nil, false)

	// Without a ratchet_tree extension the tree must come from elsewhere.
	if _, _, err := DecryptWelcome(f.welcome, f.kpRef, f.initPriv, nil); !errors.Is(err, ErrNoRatchetTree) {
		t.Fatalf("got %v, want ErrNoRatchetTree", err)
	}
	if _, _, err := DecryptWelcomeWithTree(f.welcome, f.kpRef, f.initPriv, nil, f.tree); err != nil {
		t.Fatal(err)
	}

	t.Run("unknown KeyPackageRef", func(t *testing.T) {
		_, _, err := DecryptWelcomeWithTree(f.welcome, dsRandom(32), f.initPriv, nil, f.tree)
		assertSection(t, err, "12.4.3.1")
	})
	t.Run("tampered GroupInfo ciphertext", func(t *testing.T) {
		w := *f.welcome
		w.EncryptedGroupInfo = bytes.Clone(w.EncryptedGroupInfo)
		w.EncryptedGroupInfo[3] ^= 1
		// The ciphertext is also the HPKE context, so the group secrets
		// fail first.
		_, _, err := DecryptWelcomeWithTree(&w, f.kpRef, f.initPriv, nil, f.tree)
		assertSection(t, err, "12.4.3.1")
	})
	t.Run("signer not in tree", func(t *testing.T) {
		other := newWelcomeFixture(t, cs, nil, false)
		_, _, err := DecryptWelcomeWithTree(f.welcome, f.kpRef, f.initPriv, nil, other.tree)
		assertSection(t, err, "12.4.3.1")
	})
}

// assertSection fails unless err is a *ValidationError from section.
func assertSection(t *testing.T, err error, section string) {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a *ValidationError of §%s", err, section)
	}
	if ve.Section != section {
		t.Fatalf("got §%s (%v), want §%s", ve.Section, err, section)
	}
	t.Logf("rejected as expected: %v", err)
}
