package mls

import (
	"bytes"
	"errors"
	"testing"
)

type keyScheduleVector struct {
	CipherSuite       CipherSuite `json:"cipher_suite"`
	GroupID           hexBytes    `json:"group_id"`
	InitialInitSecret hexBytes    `json:"initial_init_secret"`
	Epochs            []struct {
		TreeHash                hexBytes `json:"tree_hash"`
		CommitSecret            hexBytes `json:"commit_secret"`
		PSKSecret               hexBytes `json:"psk_secret"`
		ConfirmedTranscriptHash hexBytes `json:"confirmed_transcript_hash"`

		GroupContext       hexBytes `json:"group_context"`
		JoinerSecret       hexBytes `json:"joiner_secret"`
		WelcomeSecret      hexBytes `json:"welcome_secret"`
		InitSecret         hexBytes `json:"init_secret"`
		SenderDataSecret   hexBytes `json:"sender_data_secret"`
		EncryptionSecret   hexBytes `json:"encryption_secret"`
		ExporterSecret     hexBytes `json:"exporter_secret"`
		EpochAuthenticator hexBytes `json:"epoch_authenticator"`
		ExternalSecret     hexBytes `json:"external_secret"`
		ConfirmationKey    hexBytes `json:"confirmation_key"`
		MembershipKey      hexBytes `json:"membership_key"`
		ResumptionPSK      hexBytes `json:"resumption_psk"`
		ExternalPub        hexBytes `json:"external_pub"`
		Exporter           struct {
			// The label is a plain string (it happens to look like hex);
			// the context is hex encoded.
			Label   string   `json:"label"`
			Context hexBytes `json:"context"`
			Length  int      `json:"length"`
			Secret  hexBytes `json:"secret"`
		} `json:"exporter"`
	} `json:"epochs"`
}

// TestKeyScheduleVectors runs every epoch of every suite in
// key-schedule.json: each epoch starts from the init_secret the previous
// one derived, and every secret of §8, external_pub and one exporter
// output are compared. The Welcome path (NewKeySchedule from the
// joiner_secret) must reach the same secrets.
func TestKeyScheduleVectors(t *testing.T) {
	var vs []keyScheduleVector
	loadVectors(t, "key-schedule.json", &vs)
	count := newVectorCount("key-schedule.json")
	defer count.report(t)
	for _, v := range vs {
		cs := v.CipherSuite
		if !cs.Supported() {
			for range v.Epochs {
				count.skip("cipher suite not supported")
			}
			continue
		}
		initSecret := []byte(v.InitialInitSecret)
		for epoch, e := range v.Epochs {
			fail := func(format string, args ...any) {
				t.Helper()
				t.Errorf("suite %d epoch %d: "+format, append([]any{cs, epoch}, args...)...)
			}
			gc := &GroupContext{
				Version:                 ProtocolVersionMLS10,
				CipherSuite:             cs,
				GroupID:                 v.GroupID,
				Epoch:                   uint64(epoch),
				TreeHash:                e.TreeHash,
				ConfirmedTranscriptHash: e.ConfirmedTranscriptHash,
			}
			if enc := mustEncode(gc); !bytes.Equal(enc, e.GroupContext) {
				fail("group_context %x, want %x", enc, e.GroupContext)
				break
			}
			es, err := DeriveEpochSecrets(initSecret, e.CommitSecret, e.PSKSecret, gc)
			if err != nil {
				fail("%v", err)
				break
			}
			ok := true
			for _, c := range []struct {
				name      string
				got, want []byte
			}{
				{"joiner_secret", es.JoinerSecret, e.JoinerSecret},
				{"welcome_secret", es.WelcomeSecret, e.WelcomeSecret},
				{"init_secret", es.InitSecret, e.InitSecret},
				{"sender_data_secret", es.SenderDataSecret, e.SenderDataSecret},
				{"encryption_secret", es.EncryptionSecret, e.EncryptionSecret},
				{"exporter_secret", es.ExporterSecret, e.ExporterSecret},
				{"epoch_authenticator", es.EpochAuthenticator, e.EpochAuthenticator},
				{"external_secret", es.ExternalSecret, e.ExternalSecret},
				{"confirmation_key", es.ConfirmationKey, e.ConfirmationKey},
				{"membership_key", es.MembershipKey, e.MembershipKey},
				{"resumption_psk", es.ResumptionPSK, e.ResumptionPSK},
			} {
				if !bytes.Equal(c.got, c.want) {
					fail("%s %x, want %x", c.name, c.got, c.want)
					ok = false
				}
			}
			if _, pub, err := es.ExternalKeyPair(); err != nil || !bytes.Equal(pub, e.ExternalPub) {
				fail("external_pub %x (%v), want %x", pub, err, e.ExternalPub)
				ok = false
			}
			exp, err := es.Export(e.Exporter.Label, e.Exporter.Context, e.Exporter.Length)
			if err != nil || !bytes.Equal(exp, e.Exporter.Secret) {
				fail("exporter %x (%v), want %x", exp, err, e.Exporter.Secret)
				ok = false
			}

			// A new member gets joiner_secret and the PSKs from GroupSecrets.
			ks, err := NewKeySchedule(cs, e.JoinerSecret, e.PSKSecret)
			if err != nil {
				fail("NewKeySchedule: %v", err)
				ok = false
			} else if joined, err := ks.EpochSecrets(gc); err != nil {
				fail("EpochSecrets: %v", err)
				ok = false
			} else if !bytes.Equal(joined.EpochAuthenticator, e.EpochAuthenticator) ||
				!bytes.Equal(joined.WelcomeSecret, e.WelcomeSecret) ||
				!bytes.Equal(joined.InitSecret, e.InitSecret) {
				fail("the Welcome path derived different secrets")
				ok = false
			}
			if ok {
				count.pass()
			}
			initSecret = e.InitSecret
		}
	}
}

// TestKeyScheduleZeroInputs checks that nil commit and PSK secrets stand
// for the all-zero vectors of §8 and §8.4.
func TestKeyScheduleZeroInputs(t *testing.T) {
	for _, cs := range []CipherSuite{MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, MLS_256_DHKEMP384_AES256GCM_SHA384_P384} {
		gc := &GroupContext{Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: []byte("group"), Epoch: 3}
		init := bytes.Repeat([]byte{7}, cs.HashSize())
		zero := make([]byte, cs.HashSize())
		a, err := DeriveEpochSecrets(init, nil, nil, gc)
		if err != nil {
			t.Fatal(err)
		}
		b, err := DeriveEpochSecrets(init, zero, zero, gc)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.EpochAuthenticator, b.EpochAuthenticator) {
			t.Errorf("%v: nil and all-zero inputs give different epochs", cs)
		}
		// Every input changes the result.
		other := *gc
		other.Epoch++
		c, err := DeriveEpochSecrets(init, nil, nil, &other)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(a.EpochAuthenticator, c.EpochAuthenticator) || bytes.Equal(a.JoinerSecret, c.JoinerSecret) {
			t.Errorf("%v: the GroupContext does not enter the key schedule", cs)
		}
	}
}

// TestKeyScheduleConfirmationTag checks confirmation tags (§6.1) against
// the Commits of transcript-hashes.json, and that a wrong tag is a typed
// error.
func TestKeyScheduleConfirmationTag(t *testing.T) {
	var vs []struct {
		CipherSuite                  CipherSuite `json:"cipher_suite"`
		ConfirmationKey              hexBytes    `json:"confirmation_key"`
		AuthenticatedContent         hexBytes    `json:"authenticated_content"`
		ConfirmedTranscriptHashAfter hexBytes    `json:"confirmed_transcript_hash_after"`
	}
	loadVectors(t, "transcript-hashes.json", &vs)
	count := newVectorCount("transcript-hashes.json (confirmation tags)")
	defer count.report(t)
	for i, v := range vs {
		var ac AuthenticatedContent
		if err := ac.UnmarshalBinary(v.AuthenticatedContent); err != nil {
			t.Errorf("entry %d: %v", i, err)
			continue
		}
		es := &EpochSecrets{Suite: v.CipherSuite, ConfirmationKey: v.ConfirmationKey}
		if err := es.VerifyConfirmationTag(v.ConfirmedTranscriptHashAfter, ac.Auth.ConfirmationTag); err != nil {
			t.Errorf("entry %d: %v", i, err)
			continue
		}
		bad := append([]byte(nil), ac.Auth.ConfirmationTag...)
		bad[0] ^= 1
		err := es.VerifyConfirmationTag(v.ConfirmedTranscriptHashAfter, bad)
		var ve *ValidationError
		if !errors.Is(err, ErrBadConfirmationTag) || !errors.As(err, &ve) || ve.Section != "12.4.2" {
			t.Errorf("entry %d: altered tag gave %v, want a §12.4.2 ValidationError wrapping ErrBadConfirmationTag", i, err)
			continue
		}
		count.pass()
	}
}

// TestKeyScheduleWelcomeKey checks that the Welcome key and nonce come
// from the welcome_secret with the sizes of the suite AEAD (§12.4.3.1),
// and that they seal and open a GroupInfo-sized payload.
func TestKeyScheduleWelcomeKey(t *testing.T) {
	cs := MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519
	joiner := bytes.Repeat([]byte{1}, cs.HashSize())
	ks, err := NewKeySchedule(cs, joiner, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, nonce, err := ks.WelcomeKey()
	if err != nil {
		t.Fatal(err)
	}
	ws, _ := ks.WelcomeSecret()
	wantKey, _ := cs.ExpandWithLabel(ws, "key", nil, cs.AEADKeySize())
	wantNonce, _ := cs.ExpandWithLabel(ws, "nonce", nil, cs.AEADNonceSize())
	if !bytes.Equal(key, wantKey) || !bytes.Equal(nonce, wantNonce) {
		t.Fatal("welcome key or nonce not derived as in §12.4.3.1")
	}
	if _, err := NewKeySchedule(cs, joiner[1:], nil); err == nil {
		t.Error("a joiner_secret of the wrong length was accepted")
	}
	if _, err := ks.EpochSecrets(&GroupContext{CipherSuite: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519}); err == nil {
		t.Error("a GroupContext of another cipher suite was accepted")
	}
}

// TestKeyScheduleSecretTreeOnce checks that an epoch's encryption_secret
// makes one secret tree only (§9.2).
func TestKeyScheduleSecretTreeOnce(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	gc := &GroupContext{Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: []byte("g")}
	es, err := DeriveEpochSecrets(make([]byte, cs.HashSize()), nil, nil, gc)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), es.EncryptionSecret...)
	tree, err := es.SecretTree(4)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := NewSecretTree(cs, want, 4)
	_, k1, _, _ := tree.NextKey(2, ApplicationRatchet)
	_, k2, _, _ := ref.NextKey(2, ApplicationRatchet)
	if !bytes.Equal(k1, k2) {
		t.Error("EpochSecrets.SecretTree is not rooted at encryption_secret")
	}
	if es.EncryptionSecret != nil {
		t.Error("encryption_secret kept after the secret tree was made")
	}
	if _, err := es.SecretTree(4); err == nil {
		t.Error("a second secret tree was made from the same epoch")
	}
}
