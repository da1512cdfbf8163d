package mls

import "testing"

// suiteBenchContent is about the size of a small FramedContentTBS.
var suiteBenchContent = make([]byte, 256)

func BenchmarkVerifyWithLabel(b *testing.B) {
	for _, cs := range suitesUnderTest {
		b.Run(cs.String(), func(b *testing.B) {
			priv, pub, err := cs.GenerateSignatureKeyPair()
			if err != nil {
				b.Fatal(err)
			}
			sig, err := cs.SignWithLabel(priv, "FramedContentTBS", suiteBenchContent)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := cs.VerifyWithLabel(pub, "FramedContentTBS", suiteBenchContent, sig); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSignWithLabel(b *testing.B) {
	for _, cs := range suitesUnderTest {
		b.Run(cs.String(), func(b *testing.B) {
			priv, _, err := cs.GenerateSignatureKeyPair()
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := cs.SignWithLabel(priv, "FramedContentTBS", suiteBenchContent); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkExpandWithLabel(b *testing.B) {
	for _, cs := range []CipherSuite{MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448} {
		b.Run(cs.String(), func(b *testing.B) {
			secret := make([]byte, cs.HashSize())
			b.ReportAllocs()
			for b.Loop() {
				if _, err := cs.DeriveTreeSecret(secret, "key", 7, cs.AEADKeySize()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkHash(b *testing.B) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	b.ReportAllocs()
	for b.Loop() {
		cs.Hash(suiteBenchContent)
	}
}

func BenchmarkDecryptWithLabel(b *testing.B) {
	for _, cs := range suitesUnderTest {
		b.Run(cs.String(), func(b *testing.B) {
			priv, pub, err := cs.GenerateKEMKeyPair()
			if err != nil {
				b.Fatal(err)
			}
			kemOutput, ct, err := cs.EncryptWithLabel(pub, "UpdatePathNode", suiteBenchContent, suiteBenchContent[:32])
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := cs.DecryptWithLabel(priv, "UpdatePathNode", suiteBenchContent, kemOutput, ct); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
