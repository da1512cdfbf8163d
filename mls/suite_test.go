package mls

import (
	"bytes"
	"crypto/sha512"
	"errors"
	"fmt"
	"testing"

	circlhpke "github.com/cloudflare/circl/hpke"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// suitesUnderTest lists every cipher suite this package implements (§17.1).
var suitesUnderTest = []CipherSuite{
	MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
	MLS_128_DHKEMP256_AES128GCM_SHA256_P256,
	MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
	MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448,
	MLS_256_DHKEMP521_AES256GCM_SHA512_P521,
	MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448,
	MLS_256_DHKEMP384_AES256GCM_SHA384_P384,
}

// cryptoBasicsVector is one entry of crypto-basics.json.
type cryptoBasicsVector struct {
	CipherSuite CipherSuite `json:"cipher_suite"`
	RefHash     struct {
		Label string   `json:"label"`
		Value hexBytes `json:"value"`
		Out   hexBytes `json:"out"`
	} `json:"ref_hash"`
	ExpandWithLabel struct {
		Secret  hexBytes `json:"secret"`
		Label   string   `json:"label"`
		Context hexBytes `json:"context"`
		Length  int      `json:"length"`
		Out     hexBytes `json:"out"`
	} `json:"expand_with_label"`
	DeriveSecret struct {
		Secret hexBytes `json:"secret"`
		Label  string   `json:"label"`
		Out    hexBytes `json:"out"`
	} `json:"derive_secret"`
	DeriveTreeSecret struct {
		Secret     hexBytes `json:"secret"`
		Label      string   `json:"label"`
		Generation uint32   `json:"generation"`
		Length     int      `json:"length"`
		Out        hexBytes `json:"out"`
	} `json:"derive_tree_secret"`
	SignWithLabel struct {
		Priv      hexBytes `json:"priv"`
		Pub       hexBytes `json:"pub"`
		Content   hexBytes `json:"content"`
		Label     string   `json:"label"`
		Signature hexBytes `json:"signature"`
	} `json:"sign_with_label"`
	EncryptWithLabel struct {
		Priv       hexBytes `json:"priv"`
		Pub        hexBytes `json:"pub"`
		Label      string   `json:"label"`
		Context    hexBytes `json:"context"`
		Plaintext  hexBytes `json:"plaintext"`
		KEMOutput  hexBytes `json:"kem_output"`
		Ciphertext hexBytes `json:"ciphertext"`
	} `json:"encrypt_with_label"`
}

// TestCryptoBasicsVectors runs every entry of crypto-basics.json. An entry
// (one cipher suite) counts as passed when all six of its checks pass.
func TestCryptoBasicsVectors(t *testing.T) {
	var vectors []cryptoBasicsVector
	loadVectors(t, "crypto-basics.json", &vectors)
	count := newVectorCount("crypto-basics.json")
	defer count.report(t)

	seen := map[CipherSuite]bool{}
	for _, v := range vectors {
		cs := v.CipherSuite
		if !cs.Supported() {
			count.skip(fmt.Sprintf("cipher suite %d not implemented", cs))
			continue
		}
		seen[cs] = true
		ok := t.Run(cs.String(), func(t *testing.T) {
			t.Run("ref_hash", func(t *testing.T) {
				got := cs.RefHash(v.RefHash.Label, v.RefHash.Value)
				if !bytes.Equal(got, v.RefHash.Out) {
					t.Errorf("RefHash = %x, want %x", got, v.RefHash.Out)
				}
			})
			t.Run("expand_with_label", func(t *testing.T) {
				e := v.ExpandWithLabel
				got, err := cs.ExpandWithLabel(e.Secret, e.Label, e.Context, e.Length)
				if err != nil || !bytes.Equal(got, e.Out) {
					t.Errorf("ExpandWithLabel = %x, %v; want %x", got, err, e.Out)
				}
			})
			t.Run("derive_secret", func(t *testing.T) {
				d := v.DeriveSecret
				got, err := cs.DeriveSecret(d.Secret, d.Label)
				if err != nil || !bytes.Equal(got, d.Out) {
					t.Errorf("DeriveSecret = %x, %v; want %x", got, err, d.Out)
				}
				if len(got) != cs.HashSize() {
					t.Errorf("DeriveSecret returned %d bytes, want Nh = %d", len(got), cs.HashSize())
				}
			})
			t.Run("derive_tree_secret", func(t *testing.T) {
				d := v.DeriveTreeSecret
				got, err := cs.DeriveTreeSecret(d.Secret, d.Label, d.Generation, d.Length)
				if err != nil || !bytes.Equal(got, d.Out) {
					t.Errorf("DeriveTreeSecret = %x, %v; want %x", got, err, d.Out)
				}
			})
			t.Run("sign_with_label", func(t *testing.T) {
				s := v.SignWithLabel
				if err := cs.VerifyWithLabel(s.Pub, s.Label, s.Content, s.Signature); err != nil {
					t.Errorf("VerifyWithLabel(vector signature): %v", err)
				}
				pub, err := cs.SignaturePublicKey(s.Priv)
				if err != nil || !bytes.Equal(pub, s.Pub) {
					t.Errorf("SignaturePublicKey = %x, %v; want %x", pub, err, s.Pub)
				}
				sig, err := cs.SignWithLabel(s.Priv, s.Label, s.Content)
				if err != nil {
					t.Fatalf("SignWithLabel: %v", err)
				}
				if err := cs.VerifyWithLabel(s.Pub, s.Label, s.Content, sig); err != nil {
					t.Errorf("VerifyWithLabel(own signature): %v", err)
				}
				// The form Seal signs with (an Ed25519 seed expanded) signs
				// the same: Ed25519 is deterministic, so byte for byte.
				fast, err := cs.signWithLabel(cs.signingKey(s.Priv), s.Label, s.Content)
				if err != nil {
					t.Fatalf("SignWithLabel(signingKey): %v", err)
				}
				if err := cs.VerifyWithLabel(s.Pub, s.Label, s.Content, fast); err != nil {
					t.Errorf("VerifyWithLabel(signature by signingKey): %v", err)
				}
				if cs.params().sig == sigEd25519 && !bytes.Equal(fast, s.Signature) {
					t.Errorf("Ed25519 signature by the expanded key = %x; want the vector's %x", fast, s.Signature)
				}
			})
			t.Run("encrypt_with_label", func(t *testing.T) {
				e := v.EncryptWithLabel
				pt, err := cs.DecryptWithLabel(e.Priv, e.Label, e.Context, e.KEMOutput, e.Ciphertext)
				if err != nil || !bytes.Equal(pt, e.Plaintext) {
					t.Errorf("DecryptWithLabel(vector) = %x, %v; want %x", pt, err, e.Plaintext)
				}
				pub, err := cs.KEMPublicKey(e.Priv)
				if err != nil || !bytes.Equal(pub, e.Pub) {
					t.Errorf("KEMPublicKey = %x, %v; want %x", pub, err, e.Pub)
				}
				kemOutput, ct, err := cs.EncryptWithLabel(e.Pub, e.Label, e.Context, e.Plaintext)
				if err != nil {
					t.Fatalf("EncryptWithLabel: %v", err)
				}
				pt, err = cs.DecryptWithLabel(e.Priv, e.Label, e.Context, kemOutput, ct)
				if err != nil || !bytes.Equal(pt, e.Plaintext) {
					t.Errorf("DecryptWithLabel(own ciphertext) = %x, %v; want %x", pt, err, e.Plaintext)
				}
			})
		})
		if ok {
			count.pass()
		}
	}
	for _, cs := range suitesUnderTest {
		if !seen[cs] {
			t.Errorf("crypto-basics.json has no entry for %v", cs)
		}
	}
}

// TestCryptoDeriveKeyPairKeySchedule checks DeriveKeyPair with Nh-byte
// input against the external_pub of every epoch of key-schedule.json
// (§8: external_pub is the public key derived from external_secret). The
// key schedule tests count that file; this only borrows the pairs.
func TestCryptoDeriveKeyPairKeySchedule(t *testing.T) {
	var vectors []struct {
		CipherSuite CipherSuite `json:"cipher_suite"`
		Epochs      []struct {
			ExternalSecret hexBytes `json:"external_secret"`
			ExternalPub    hexBytes `json:"external_pub"`
		} `json:"epochs"`
	}
	loadVectors(t, "key-schedule.json", &vectors)
	checked := map[CipherSuite]int{}
	for _, v := range vectors {
		for i, e := range v.Epochs {
			_, pub, err := v.CipherSuite.DeriveKeyPair(e.ExternalSecret)
			if err != nil || !bytes.Equal(pub, e.ExternalPub) {
				t.Errorf("%v epoch %d: DeriveKeyPair(external_secret) pub = %x, %v; want %x",
					v.CipherSuite, i, pub, err, e.ExternalPub)
			}
			checked[v.CipherSuite]++
		}
	}
	for _, cs := range suitesUnderTest {
		if checked[cs] == 0 {
			t.Errorf("key-schedule.json has no epoch for %v", cs)
		}
	}
}

func TestSuiteDeriveKeyPair(t *testing.T) {
	for _, cs := range suitesUnderTest {
		t.Run(cs.String(), func(t *testing.T) {
			ikm := make([]byte, cs.HashSize())
			for i := range ikm {
				ikm[i] = byte(i)
			}
			priv, pub, err := cs.DeriveKeyPair(ikm)
			if err != nil {
				t.Fatal(err)
			}
			priv2, pub2, err := cs.DeriveKeyPair(ikm)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(priv, priv2) || !bytes.Equal(pub, pub2) {
				t.Error("DeriveKeyPair is not deterministic")
			}
			got, err := cs.KEMPublicKey(priv)
			if err != nil || !bytes.Equal(got, pub) {
				t.Errorf("KEMPublicKey(derived priv) = %x, %v; want %x", got, err, pub)
			}
			ikm[0] ^= 1
			priv3, pub3, err := cs.DeriveKeyPair(ikm)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(priv3, priv) || bytes.Equal(pub3, pub) {
				t.Error("different ikm gave the same key pair")
			}
			// Any ikm length is allowed by RFC 9180, including empty.
			for _, n := range []int{0, 1, 31, 56, 100} {
				if _, _, err := cs.DeriveKeyPair(make([]byte, n)); err != nil {
					t.Errorf("DeriveKeyPair(%d bytes): %v", n, err)
				}
			}
			// The derived pair works for HPKE.
			kemOutput, ct, err := cs.EncryptWithLabel(pub, "DeriveKeyPair", []byte("ctx"), []byte("hello"))
			if err != nil {
				t.Fatal(err)
			}
			pt, err := cs.DecryptWithLabel(priv, "DeriveKeyPair", []byte("ctx"), kemOutput, ct)
			if err != nil || string(pt) != "hello" {
				t.Errorf("round trip with derived keys = %q, %v", pt, err)
			}
		})
	}
}

// TestSuiteDeriveKeyPairX448MatchesCircl checks the X448 DeriveKeyPair done
// in this package against circl's for the one ikm length circl accepts.
func TestSuiteDeriveKeyPairX448MatchesCircl(t *testing.T) {
	scheme := circlhpke.KEM_X448_HKDF_SHA512.Scheme()
	for seed := range 4 {
		ikm := bytes.Repeat([]byte{byte(seed * 37)}, scheme.SeedSize())
		wantPub, wantPriv := scheme.DeriveKeyPair(ikm)
		wantPubBytes, _ := wantPub.MarshalBinary()
		wantPrivBytes, _ := wantPriv.MarshalBinary()
		clampX448(wantPrivBytes)
		for _, cs := range []CipherSuite{MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448, MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448} {
			priv, pub, err := cs.DeriveKeyPair(ikm)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pub, wantPubBytes) || !bytes.Equal(priv, wantPrivBytes) {
				t.Errorf("%v: DeriveKeyPair = %x / %x, circl gives %x / %x", cs, priv, pub, wantPrivBytes, wantPubBytes)
			}
		}
	}
}

func TestSuiteGeneratedKeys(t *testing.T) {
	for _, cs := range suitesUnderTest {
		t.Run(cs.String(), func(t *testing.T) {
			priv, pub, err := cs.GenerateKEMKeyPair()
			if err != nil {
				t.Fatal(err)
			}
			got, err := cs.KEMPublicKey(priv)
			if err != nil || !bytes.Equal(got, pub) {
				t.Errorf("KEMPublicKey(generated) = %x, %v; want %x", got, err, pub)
			}
			kemOutput, ct, err := cs.EncryptWithLabel(pub, "Gen", nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if pt, err := cs.DecryptWithLabel(priv, "Gen", nil, kemOutput, ct); err != nil || len(pt) != 0 {
				t.Errorf("empty-plaintext round trip = %x, %v", pt, err)
			}

			spriv, spub, err := cs.GenerateSignatureKeyPair()
			if err != nil {
				t.Fatal(err)
			}
			got, err = cs.SignaturePublicKey(spriv)
			if err != nil || !bytes.Equal(got, spub) {
				t.Errorf("SignaturePublicKey(generated) = %x, %v; want %x", got, err, spub)
			}
			sig, err := cs.SignWithLabel(spriv, "Gen", nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := cs.VerifyWithLabel(spub, "Gen", nil, sig); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestSuiteUnknown checks that every method of an unsupported suite fails
// with *UnknownCipherSuiteError (or returns a zero value).
func TestSuiteUnknown(t *testing.T) {
	for _, cs := range []CipherSuite{0, 8, 0xffff} {
		t.Run(fmt.Sprint(uint16(cs)), func(t *testing.T) {
			if cs.Supported() {
				t.Fatal("Supported() = true")
			}
			if cs.HashSize() != 0 || cs.AEADKeySize() != 0 || cs.AEADNonceSize() != 0 {
				t.Error("sizes of an unknown suite are not 0")
			}
			if cs.Hash([]byte("x")) != nil || cs.RefHash("l", nil) != nil ||
				cs.MAC([]byte("k"), nil) != nil || cs.Extract(nil, []byte("k")) != nil {
				t.Error("Hash/RefHash/MAC/Extract of an unknown suite returned output")
			}
			if s := cs.String(); s != fmt.Sprintf("CipherSuite(%d)", uint16(cs)) {
				t.Errorf("String() = %q", s)
			}
			k := make([]byte, 32)
			errs := map[string]error{"check": cs.check()}
			_, errs["Expand"] = cs.Expand(k, nil, 16)
			_, errs["ExpandWithLabel"] = cs.ExpandWithLabel(k, "l", nil, 16)
			_, errs["DeriveSecret"] = cs.DeriveSecret(k, "l")
			_, errs["DeriveTreeSecret"] = cs.DeriveTreeSecret(k, "l", 0, 16)
			_, errs["SignWithLabel"] = cs.SignWithLabel(k, "l", nil)
			errs["VerifyWithLabel"] = cs.VerifyWithLabel(k, "l", nil, k)
			_, _, errs["EncryptWithLabel"] = cs.EncryptWithLabel(k, "l", nil, nil)
			_, errs["DecryptWithLabel"] = cs.DecryptWithLabel(k, "l", nil, k, k)
			_, _, errs["DeriveKeyPair"] = cs.DeriveKeyPair(k)
			_, _, errs["GenerateKEMKeyPair"] = cs.GenerateKEMKeyPair()
			_, _, errs["GenerateSignatureKeyPair"] = cs.GenerateSignatureKeyPair()
			_, errs["SignaturePublicKey"] = cs.SignaturePublicKey(k)
			_, errs["KEMPublicKey"] = cs.KEMPublicKey(k)
			_, errs["Seal"] = cs.Seal(k[:16], k[:12], nil, nil)
			_, errs["Open"] = cs.Open(k[:16], k[:12], nil, k)
			for name, err := range errs {
				var u *UnknownCipherSuiteError
				if !errors.As(err, &u) || u.Suite != cs {
					t.Errorf("%s: error %v, want *UnknownCipherSuiteError for suite %d", name, err, uint16(cs))
				}
			}
			msg := (&UnknownCipherSuiteError{Suite: cs}).Error()
			if !bytes.Contains([]byte(msg), []byte(fmt.Sprint(uint16(cs)))) || !bytes.Contains([]byte(msg), []byte("1-7")) {
				t.Errorf("error message %q does not name the suite and the supported range", msg)
			}
		})
	}
}

// derToRaw re-encodes an ECDSA DER signature as fixed-size r||s, the IEEE
// P1363 form that MLS does not use.
func derToRaw(t *testing.T, sig []byte, size int) []byte {
	t.Helper()
	var r, s []byte
	in := cryptobyte.String(sig)
	var seq cryptobyte.String
	if !in.ReadASN1(&seq, asn1.SEQUENCE) || !seq.ReadASN1Integer(&r) || !seq.ReadASN1Integer(&s) {
		t.Fatalf("cannot parse own DER signature %x", sig)
	}
	out := make([]byte, 2*size)
	copy(out[size-len(bytes.TrimLeft(r, "\x00")):size], bytes.TrimLeft(r, "\x00"))
	copy(out[2*size-len(bytes.TrimLeft(s, "\x00")):], bytes.TrimLeft(s, "\x00"))
	return out
}

// nonMinimalDER re-encodes an ECDSA DER signature with a superfluous
// leading zero octet on r, which BER allows and DER forbids.
func nonMinimalDER(t *testing.T, sig []byte) []byte {
	t.Helper()
	in := cryptobyte.String(sig)
	var seq, r, s cryptobyte.String
	if !in.ReadASN1(&seq, asn1.SEQUENCE) || !seq.ReadASN1(&r, asn1.INTEGER) || !seq.ReadASN1(&s, asn1.INTEGER) {
		t.Fatalf("cannot parse own DER signature %x", sig)
	}
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(asn1.INTEGER, func(b *cryptobyte.Builder) {
			b.AddUint8(0)
			b.AddBytes(r)
		})
		b.AddASN1(asn1.INTEGER, func(b *cryptobyte.Builder) { b.AddBytes(s) })
	})
	return b.BytesOrPanic()
}

func TestSuiteVerifyWithLabelRejects(t *testing.T) {
	for _, cs := range suitesUnderTest {
		t.Run(cs.String(), func(t *testing.T) {
			priv, pub, err := cs.GenerateSignatureKeyPair()
			if err != nil {
				t.Fatal(err)
			}
			_, otherPub, err := cs.GenerateSignatureKeyPair()
			if err != nil {
				t.Fatal(err)
			}
			content := []byte("content")
			sig, err := cs.SignWithLabel(priv, "Label", content)
			if err != nil {
				t.Fatal(err)
			}
			if err := cs.VerifyWithLabel(pub, "Label", content, sig); err != nil {
				t.Fatalf("valid signature rejected: %v", err)
			}
			reject := func(what string, pub []byte, label string, content, sig []byte) {
				t.Helper()
				err := cs.VerifyWithLabel(pub, label, content, sig)
				if !errors.Is(err, ErrInvalidSignature) {
					t.Errorf("%s: VerifyWithLabel = %v, want ErrInvalidSignature", what, err)
				}
			}
			for _, i := range []int{0, len(sig) / 2, len(sig) - 1} {
				bad := bytes.Clone(sig)
				bad[i] ^= 0x01
				reject(fmt.Sprintf("signature byte %d flipped", i), pub, "Label", content, bad)
			}
			reject("wrong label", pub, "Label2", content, sig)
			reject("label without prefix", pub, "MLS 1.0 Label", content, sig)
			reject("wrong content", pub, "Label", []byte("content!"), sig)
			reject("other key", otherPub, "Label", content, sig)
			reject("empty signature", pub, "Label", content, nil)
			reject("truncated signature", pub, "Label", content, sig[:len(sig)-1])
			reject("trailing byte", pub, "Label", content, append(bytes.Clone(sig), 0))
			for _, n := range []int{0, 1, len(pub) - 1, len(pub) + 1, 200} {
				reject(fmt.Sprintf("%d-byte garbage key", n), bytes.Repeat([]byte{0x5a}, n), "Label", content, sig)
			}
			garbage := bytes.Repeat([]byte{0xff}, len(pub))
			reject("all-0xff key", garbage, "Label", content, sig)
			if cs.params().sig == sigECDSA {
				size := (cs.params().curve.Params().BitSize + 7) / 8
				reject("raw r||s signature", pub, "Label", content, derToRaw(t, sig, size))
				reject("non-minimal DER", pub, "Label", content, nonMinimalDER(t, sig))
				compressed := append([]byte{0x02 | pub[len(pub)-1]&1}, pub[1:1+size]...)
				reject("compressed point", compressed, "Label", content, sig)
				notOnCurve := bytes.Clone(pub)
				notOnCurve[len(notOnCurve)-1] ^= 1
				reject("point not on curve", notOnCurve, "Label", content, sig)
			}
		})
	}
}

func TestSuiteDecryptWithLabelTampering(t *testing.T) {
	for _, cs := range suitesUnderTest {
		t.Run(cs.String(), func(t *testing.T) {
			priv, pub, err := cs.GenerateKEMKeyPair()
			if err != nil {
				t.Fatal(err)
			}
			otherPriv, _, err := cs.GenerateKEMKeyPair()
			if err != nil {
				t.Fatal(err)
			}
			ctx, pt := []byte("context"), []byte("plaintext")
			kemOutput, ct, err := cs.EncryptWithLabel(pub, "Label", ctx, pt)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := cs.DecryptWithLabel(priv, "Label", ctx, kemOutput, ct); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("round trip = %q, %v", got, err)
			}
			fail := func(what string, priv []byte, label string, ctx, kemOutput, ct []byte) {
				t.Helper()
				if got, err := cs.DecryptWithLabel(priv, label, ctx, kemOutput, ct); err == nil {
					t.Errorf("%s: DecryptWithLabel succeeded with %q", what, got)
				}
			}
			for _, i := range []int{0, len(ct) / 2, len(ct) - 1} {
				bad := bytes.Clone(ct)
				bad[i] ^= 0x80
				fail(fmt.Sprintf("ciphertext byte %d flipped", i), priv, "Label", ctx, kemOutput, bad)
			}
			badKEM := bytes.Clone(kemOutput)
			badKEM[len(badKEM)/2] ^= 0x01
			fail("kem_output flipped", priv, "Label", ctx, badKEM, ct)
			fail("kem_output truncated", priv, "Label", ctx, kemOutput[:len(kemOutput)-1], ct)
			fail("kem_output empty", priv, "Label", ctx, nil, ct)
			fail("ciphertext truncated", priv, "Label", ctx, kemOutput, ct[:len(ct)-1])
			fail("ciphertext empty", priv, "Label", ctx, kemOutput, nil)
			fail("wrong label", priv, "Label2", ctx, kemOutput, ct)
			fail("wrong context", priv, "Label", []byte("context2"), kemOutput, ct)
			fail("wrong key", otherPriv, "Label", ctx, kemOutput, ct)
			fail("empty key", nil, "Label", ctx, kemOutput, ct)
		})
	}
}

// TestSuiteMalformedInputs feeds keys, nonces and outputs of many lengths
// to every method: each must return an error for a wrong length and none
// may panic.
func TestSuiteMalformedInputs(t *testing.T) {
	for _, cs := range suitesUnderTest {
		t.Run(cs.String(), func(t *testing.T) {
			sigPriv, sigPub, _ := cs.GenerateSignatureKeyPair()
			kemPriv, kemPub, _ := cs.GenerateKEMKeyPair()
			for n := 0; n <= 200; n++ {
				b := bytes.Repeat([]byte{byte(n) | 1}, n)
				// ECDSA takes a scalar whose zero top octet was dropped.
				shortScalar := cs.params().sig == sigECDSA && n == len(sigPriv)-1
				if n != len(sigPriv) && !shortScalar {
					if _, err := cs.SignWithLabel(b, "l", nil); err == nil {
						t.Errorf("SignWithLabel accepted a %d-byte private key", n)
					}
					if _, err := cs.SignaturePublicKey(b); err == nil {
						t.Errorf("SignaturePublicKey accepted a %d-byte private key", n)
					}
				}
				if n != len(sigPub) {
					if err := cs.VerifyWithLabel(b, "l", nil, b); !errors.Is(err, ErrInvalidSignature) {
						t.Errorf("VerifyWithLabel with a %d-byte key: %v", n, err)
					}
				}
				if err := cs.VerifyWithLabel(sigPub, "l", nil, b); !errors.Is(err, ErrInvalidSignature) {
					t.Errorf("VerifyWithLabel with a %d-byte garbage signature: %v", n, err)
				}
				if n != len(kemPriv) {
					if _, err := cs.KEMPublicKey(b); err == nil {
						t.Errorf("KEMPublicKey accepted a %d-byte private key", n)
					}
					if _, err := cs.DecryptWithLabel(b, "l", nil, kemPub, b); err == nil {
						t.Errorf("DecryptWithLabel accepted a %d-byte private key", n)
					}
				}
				if n != len(kemPub) {
					if _, _, err := cs.EncryptWithLabel(b, "l", nil, nil); err == nil {
						t.Errorf("EncryptWithLabel accepted a %d-byte public key", n)
					}
					if _, err := cs.DecryptWithLabel(kemPriv, "l", nil, b, b); err == nil {
						t.Errorf("DecryptWithLabel accepted a %d-byte kem_output", n)
					}
				}
				if n != cs.AEADKeySize() {
					if _, err := cs.Seal(b, make([]byte, cs.AEADNonceSize()), nil, nil); err == nil {
						t.Errorf("Seal accepted a %d-byte key", n)
					}
				}
				if n != cs.AEADNonceSize() {
					if _, err := cs.Seal(make([]byte, cs.AEADKeySize()), b, nil, nil); err == nil {
						t.Errorf("Seal accepted a %d-byte nonce", n)
					}
					if _, err := cs.Open(make([]byte, cs.AEADKeySize()), b, nil, b); err == nil {
						t.Errorf("Open accepted a %d-byte nonce", n)
					}
				}
				if _, err := cs.Open(make([]byte, cs.AEADKeySize()), make([]byte, cs.AEADNonceSize()), nil, b); err == nil {
					t.Errorf("Open accepted a %d-byte forged ciphertext", n)
				}
			}
			for _, n := range []int{-1, 255*cs.HashSize() + 1} {
				if _, err := cs.Expand(make([]byte, cs.HashSize()), nil, n); err == nil {
					t.Errorf("Expand accepted length %d", n)
				}
				if _, err := cs.ExpandWithLabel(make([]byte, cs.HashSize()), "l", nil, n); err == nil {
					t.Errorf("ExpandWithLabel accepted length %d", n)
				}
			}
			if _, err := cs.ExpandWithLabel(make([]byte, cs.HashSize()), "l", nil, 0x10000); err == nil {
				t.Error("ExpandWithLabel accepted a length beyond uint16")
			}
		})
	}
}

func TestSuiteAEAD(t *testing.T) {
	for _, cs := range suitesUnderTest {
		t.Run(cs.String(), func(t *testing.T) {
			key := bytes.Repeat([]byte{1}, cs.AEADKeySize())
			nonce := bytes.Repeat([]byte{2}, cs.AEADNonceSize())
			ct, err := cs.Seal(key, nonce, []byte("aad"), []byte("plaintext"))
			if err != nil {
				t.Fatal(err)
			}
			if len(ct) != len("plaintext")+16 {
				t.Errorf("ciphertext is %d bytes, want plaintext + 16-byte tag", len(ct))
			}
			pt, err := cs.Open(key, nonce, []byte("aad"), ct)
			if err != nil || string(pt) != "plaintext" {
				t.Errorf("Open = %q, %v", pt, err)
			}
			if _, err := cs.Open(key, nonce, []byte("aad!"), ct); err == nil {
				t.Error("Open accepted the wrong aad")
			}
			ct[0] ^= 1
			if _, err := cs.Open(key, nonce, []byte("aad"), ct); err == nil {
				t.Error("Open accepted a tampered ciphertext")
			}
		})
	}
}

// TestSuiteParameters checks the table of §17.1 against what the
// primitives actually produce.
func TestSuiteParameters(t *testing.T) {
	for _, cs := range suitesUnderTest {
		if !cs.Supported() || cs.check() != nil {
			t.Errorf("%d not supported", uint16(cs))
		}
		if got := len(cs.Hash(nil)); got != cs.HashSize() {
			t.Errorf("%v: Hash gives %d bytes, HashSize says %d", cs, got, cs.HashSize())
		}
		if got := len(cs.MAC([]byte("k"), nil)); got != cs.HashSize() {
			t.Errorf("%v: MAC gives %d bytes, want Nh", cs, got)
		}
		if got := len(cs.Extract(nil, []byte("ikm"))); got != cs.HashSize() {
			t.Errorf("%v: Extract gives %d bytes, want Nh", cs, got)
		}
		if cs.AEADNonceSize() != 12 {
			t.Errorf("%v: Nn = %d, want 12", cs, cs.AEADNonceSize())
		}
	}
	// The HashSize of the X448 suites is 64, which is longer than the
	// 56-byte seed circl's DeriveKeyPair accepts: the reason suite.go
	// derives X448 keys itself.
	if MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448.HashSize() != sha512.Size {
		t.Error("suite 4 HashSize is not 64")
	}
}
