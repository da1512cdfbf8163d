package mls

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"

	circlhpke "github.com/cloudflare/circl/hpke"
	"github.com/cloudflare/circl/sign/ed448"
	"golang.org/x/crypto/chacha20poly1305"
)

// This file gives each cipher suite of RFC 9420 §17.1 its primitives: the
// hash, MAC and KDF (§5.1, §8), labeled signatures (§5.1.2), labeled HPKE
// encryption (§5.1.3), key derivation and the suite AEAD.
//
// HPKE over X25519 and the NIST curves comes from crypto/hpke; X448 (suites
// 4 and 6) and Ed448 come from github.com/cloudflare/circl, which the
// standard library does not cover.
//
// Key formats follow the official test vectors: signature private keys are
// the 32-byte Ed25519 seed, the 57-byte Ed448 seed or the big-endian ECDSA
// scalar; signature public keys are raw EdDSA keys or uncompressed SEC 1
// points; HPKE keys use the SerializePrivateKey / SerializePublicKey formats
// of RFC 9180 §7.1.

// ErrInvalidSignature is returned, possibly wrapped, by VerifyWithLabel when
// a signature does not verify, including when the public key or the
// signature cannot even be parsed.
var ErrInvalidSignature = errors.New("mls: invalid signature")

// UnknownCipherSuiteError reports a cipher suite this package does not
// implement.
type UnknownCipherSuiteError struct {
	Suite CipherSuite
}

func (e *UnknownCipherSuiteError) Error() string {
	return fmt.Sprintf("mls: unknown cipher suite %d (0x%04x); supported suites are 1-7 of RFC 9420 §17.1",
		uint16(e.Suite), uint16(e.Suite))
}

// labelPrefix starts every label of SignWithLabel, EncryptWithLabel and
// ExpandWithLabel (§5.1.2, §5.1.3, §8).
const labelPrefix = "MLS 1.0 "

type sigScheme uint8

const (
	sigEd25519 sigScheme = iota + 1
	sigEd448
	sigECDSA
)

type aeadKind uint8

const (
	aeadAESGCM aeadKind = iota + 1
	aeadChaCha20Poly1305
)

// suiteParams holds everything a cipher suite needs, looked up once per
// call from suiteTable.
type suiteParams struct {
	name    string
	newHash func() hash.Hash
	nh      int // hash output size
	nk      int // AEAD key size
	nn      int // AEAD nonce size
	aead    aeadKind

	// HPKE: kem is set for the KEMs crypto/hpke implements; x448 for the
	// suites that need circl (then kem is nil).
	kem      hpke.KEM
	hpkeKDF  hpke.KDF
	hpkeAEAD hpke.AEAD
	x448     bool
	circl    circlhpke.Suite

	sig   sigScheme
	curve elliptic.Curve // ECDSA suites only
	sigID string         // name of the signature scheme, for errors
}

// suiteTable is indexed by CipherSuite; entry 0 is the zero value and
// marks an unsupported suite.
var suiteTable = [...]suiteParams{
	MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519: {
		name:    "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
		newHash: sha256.New, nh: 32, nk: 16, nn: 12, aead: aeadAESGCM,
		kem: hpke.DHKEM(ecdh.X25519()), hpkeKDF: hpke.HKDFSHA256(), hpkeAEAD: hpke.AES128GCM(),
		sig: sigEd25519, sigID: "Ed25519",
	},
	MLS_128_DHKEMP256_AES128GCM_SHA256_P256: {
		name:    "MLS_128_DHKEMP256_AES128GCM_SHA256_P256",
		newHash: sha256.New, nh: 32, nk: 16, nn: 12, aead: aeadAESGCM,
		kem: hpke.DHKEM(ecdh.P256()), hpkeKDF: hpke.HKDFSHA256(), hpkeAEAD: hpke.AES128GCM(),
		sig: sigECDSA, curve: elliptic.P256(), sigID: "ECDSA P-256",
	},
	MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519: {
		name:    "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
		newHash: sha256.New, nh: 32, nk: 32, nn: 12, aead: aeadChaCha20Poly1305,
		kem: hpke.DHKEM(ecdh.X25519()), hpkeKDF: hpke.HKDFSHA256(), hpkeAEAD: hpke.ChaCha20Poly1305(),
		sig: sigEd25519, sigID: "Ed25519",
	},
	MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448: {
		name:    "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448",
		newHash: sha512.New, nh: 64, nk: 32, nn: 12, aead: aeadAESGCM,
		x448:  true,
		circl: circlhpke.NewSuite(circlhpke.KEM_X448_HKDF_SHA512, circlhpke.KDF_HKDF_SHA512, circlhpke.AEAD_AES256GCM),
		sig:   sigEd448, sigID: "Ed448",
	},
	MLS_256_DHKEMP521_AES256GCM_SHA512_P521: {
		name:    "MLS_256_DHKEMP521_AES256GCM_SHA512_P521",
		newHash: sha512.New, nh: 64, nk: 32, nn: 12, aead: aeadAESGCM,
		kem: hpke.DHKEM(ecdh.P521()), hpkeKDF: hpke.HKDFSHA512(), hpkeAEAD: hpke.AES256GCM(),
		sig: sigECDSA, curve: elliptic.P521(), sigID: "ECDSA P-521",
	},
	MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448: {
		name:    "MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448",
		newHash: sha512.New, nh: 64, nk: 32, nn: 12, aead: aeadChaCha20Poly1305,
		x448:  true,
		circl: circlhpke.NewSuite(circlhpke.KEM_X448_HKDF_SHA512, circlhpke.KDF_HKDF_SHA512, circlhpke.AEAD_ChaCha20Poly1305),
		sig:   sigEd448, sigID: "Ed448",
	},
	MLS_256_DHKEMP384_AES256GCM_SHA384_P384: {
		name:    "MLS_256_DHKEMP384_AES256GCM_SHA384_P384",
		newHash: sha512.New384, nh: 48, nk: 32, nn: 12, aead: aeadAESGCM,
		kem: hpke.DHKEM(ecdh.P384()), hpkeKDF: hpke.HKDFSHA384(), hpkeAEAD: hpke.AES256GCM(),
		sig: sigECDSA, curve: elliptic.P384(), sigID: "ECDSA P-384",
	},
}

// params returns the parameters of cs, or nil if cs is not supported.
func (cs CipherSuite) params() *suiteParams {
	if int(cs) >= len(suiteTable) || suiteTable[cs].name == "" {
		return nil
	}
	return &suiteTable[cs]
}

// Supported reports whether this package implements cs.
func (cs CipherSuite) Supported() bool { return cs.params() != nil }

// check returns a *UnknownCipherSuiteError if cs is not supported.
func (cs CipherSuite) check() error {
	if cs.Supported() {
		return nil
	}
	return &UnknownCipherSuiteError{Suite: cs}
}

// String returns the name of cs in the IANA registry (§17.1).
func (cs CipherSuite) String() string {
	if p := cs.params(); p != nil {
		return p.name
	}
	return "CipherSuite(" + strconv.Itoa(int(cs)) + ")"
}

// HashSize returns Nh, the output size of the suite hash, or 0 for an
// unknown suite.
func (cs CipherSuite) HashSize() int {
	if p := cs.params(); p != nil {
		return p.nh
	}
	return 0
}

// AEADKeySize returns Nk, the key size of the suite AEAD, or 0 for an
// unknown suite.
func (cs CipherSuite) AEADKeySize() int {
	if p := cs.params(); p != nil {
		return p.nk
	}
	return 0
}

// AEADNonceSize returns Nn, the nonce size of the suite AEAD, or 0 for an
// unknown suite.
func (cs CipherSuite) AEADNonceSize() int {
	if p := cs.params(); p != nil {
		return p.nn
	}
	return 0
}

// sum hashes data with the suite hash without allocating a hash.Hash.
func (p *suiteParams) sum(data []byte) []byte {
	switch p.nh {
	case 32:
		s := sha256.Sum256(data)
		return s[:]
	case 48:
		s := sha512.Sum384(data)
		return s[:]
	default:
		s := sha512.Sum512(data)
		return s[:]
	}
}

// Hash returns the suite hash of data, or nil for an unknown suite.
func (cs CipherSuite) Hash(data []byte) []byte {
	p := cs.params()
	if p == nil {
		return nil
	}
	return p.sum(data)
}

// RefHash computes a hash-based identifier (§5.2): the suite hash of
// RefHashInput{label, value}. label is used as given, without the
// "MLS 1.0 " prefix. It returns nil for an unknown suite, or if an input
// is longer than a variable-length vector can hold.
func (cs CipherSuite) RefHash(label string, value []byte) []byte {
	p := cs.params()
	if p == nil || len(label) > maxVarint || len(value) > maxVarint {
		return nil
	}
	buf := make([]byte, 0, 8+len(label)+len(value))
	buf = appendOpaque(buf, label)
	buf = appendOpaque(buf, value)
	return p.sum(buf)
}

// MAC returns HMAC over data with the suite hash (§5.1), or nil for an
// unknown suite.
func (cs CipherSuite) MAC(key, data []byte) []byte {
	p := cs.params()
	if p == nil {
		return nil
	}
	m := hmac.New(p.newHash, key)
	m.Write(data)
	return m.Sum(nil)
}

// Extract is HKDF-Extract with the suite hash (§8). It returns nil for an
// unknown suite.
func (cs CipherSuite) Extract(salt, ikm []byte) []byte {
	p := cs.params()
	if p == nil {
		return nil
	}
	prk, err := hkdf.Extract(p.newHash, ikm, salt)
	if err != nil {
		// Only reachable in FIPS 140-only mode, which rejects short keys.
		return nil
	}
	return prk
}

// Expand is HKDF-Expand with the suite hash (§8). length must be between 0
// and 255*Nh.
func (cs CipherSuite) Expand(prk, info []byte, length int) ([]byte, error) {
	p := cs.params()
	if p == nil {
		return nil, &UnknownCipherSuiteError{Suite: cs}
	}
	return p.expand(prk, string(info), length)
}

func (p *suiteParams) expand(prk []byte, info string, length int) ([]byte, error) {
	if length < 0 || length > 255*p.nh {
		return nil, fmt.Errorf("mls: cannot expand to %d bytes with %s; the limit is 255*%d", length, p.name, p.nh)
	}
	out, err := hkdf.Expand(p.newHash, prk, info, length)
	if err != nil {
		return nil, fmt.Errorf("mls: HKDF-Expand: %w", err)
	}
	return out, nil
}

// ExpandWithLabel is the labeled expansion of §8: Expand(secret, KDFLabel,
// length) where KDFLabel is {uint16 length; opaque label<V> = "MLS 1.0 " +
// label; opaque context<V>}. length must fit in a uint16.
func (cs CipherSuite) ExpandWithLabel(secret []byte, label string, context []byte, length int) ([]byte, error) {
	p := cs.params()
	if p == nil {
		return nil, &UnknownCipherSuiteError{Suite: cs}
	}
	return p.expandWithLabel(secret, label, context, length)
}

func (p *suiteParams) expandWithLabel(secret []byte, label string, context []byte, length int) ([]byte, error) {
	if length < 0 || length > 0xffff {
		return nil, fmt.Errorf("mls: ExpandWithLabel length %d does not fit the uint16 of KDFLabel (§8)", length)
	}
	if len(labelPrefix)+len(label) > maxVarint || len(context) > maxVarint {
		return nil, errors.New("mls: ExpandWithLabel label or context exceeds the 2^30-1 limit of §2.1.2")
	}
	// KDFLabel is built straight into a string, the type hkdf.Expand
	// takes, so that it costs one allocation.
	var sb strings.Builder
	sb.Grow(2 + 4 + len(labelPrefix) + len(label) + 4 + len(context))
	sb.WriteByte(byte(length >> 8))
	sb.WriteByte(byte(length))
	var v [4]byte
	sb.Write(putVarint(&v, len(labelPrefix)+len(label)))
	sb.WriteString(labelPrefix)
	sb.WriteString(label)
	sb.Write(putVarint(&v, len(context)))
	sb.Write(context)
	return p.expand(secret, sb.String(), length)
}

// DeriveSecret is ExpandWithLabel(secret, label, "", Nh) (§8).
func (cs CipherSuite) DeriveSecret(secret []byte, label string) ([]byte, error) {
	p := cs.params()
	if p == nil {
		return nil, &UnknownCipherSuiteError{Suite: cs}
	}
	return p.expandWithLabel(secret, label, nil, p.nh)
}

// DeriveTreeSecret is ExpandWithLabel(secret, label, generation, length)
// with generation encoded as a uint32 (§9).
func (cs CipherSuite) DeriveTreeSecret(secret []byte, label string, generation uint32, length int) ([]byte, error) {
	p := cs.params()
	if p == nil {
		return nil, &UnknownCipherSuiteError{Suite: cs}
	}
	ctx := [4]byte{byte(generation >> 24), byte(generation >> 16), byte(generation >> 8), byte(generation)}
	return p.expandWithLabel(secret, label, ctx[:], length)
}

// labeledContent encodes the two-field struct shared by SignContent
// (§5.1.2) and EncryptContext (§5.1.3): {opaque label<V> = "MLS 1.0 " +
// label; opaque content<V>}.
func labeledContent(label string, content []byte) ([]byte, error) {
	n := len(labelPrefix) + len(label)
	if n > maxVarint || len(content) > maxVarint {
		return nil, errors.New("mls: label or content exceeds the 2^30-1 limit of §2.1.2")
	}
	buf := make([]byte, 0, 8+n+len(content))
	var v [4]byte
	buf = append(buf, putVarint(&v, n)...)
	buf = append(buf, labelPrefix...)
	buf = append(buf, label...)
	buf = appendOpaque(buf, content)
	return buf, nil
}

// putVarint writes n, which must be at most maxVarint, as a minimal
// §2.1.2 variable-length integer into v and returns the used part.
func putVarint(v *[4]byte, n int) []byte {
	switch {
	case n < 1<<6:
		v[0] = byte(n)
		return v[:1]
	case n < 1<<14:
		v[0], v[1] = byte(n>>8)|0x40, byte(n)
		return v[:2]
	default:
		v[0], v[1], v[2], v[3] = byte(n>>24)|0x80, byte(n>>16), byte(n>>8), byte(n)
		return v[:4]
	}
}

// appendOpaque appends x as an opaque<V>; the caller checks that x is at
// most maxVarint bytes long.
func appendOpaque[T string | []byte](dst []byte, x T) []byte {
	var v [4]byte
	dst = append(dst, putVarint(&v, len(x))...)
	return append(dst, x...)
}

// SignWithLabel signs SignContent{"MLS 1.0 " + label, content} with the
// suite signature scheme (§5.1.2). priv is an Ed25519 or Ed448 seed, or a
// big-endian ECDSA scalar; ECDSA signatures are DER encoded.
func (cs CipherSuite) SignWithLabel(priv []byte, label string, content []byte) ([]byte, error) {
	if err := cs.checkSeed(priv); err != nil {
		return nil, err
	}
	return cs.signWithLabel(priv, label, content)
}

// checkSeed refuses an Ed25519 signature private key that is not a seed,
// before signWithLabel would take it as an expanded key.
func (cs CipherSuite) checkSeed(priv []byte) error {
	if p := cs.params(); p != nil && p.sig == sigEd25519 && len(priv) != ed25519.SeedSize {
		return p.privSizeError(priv, ed25519.SeedSize)
	}
	return nil
}

// signWithLabel is SignWithLabel, but takes an Ed25519 key expanded as well
// (seed then public key, from signingKey), which saves deriving the public
// key at every signature. Only keys this package expanded may be given so.
func (cs CipherSuite) signWithLabel(priv []byte, label string, content []byte) ([]byte, error) {
	p := cs.params()
	if p == nil {
		return nil, &UnknownCipherSuiteError{Suite: cs}
	}
	msg, err := labeledContent(label, content)
	if err != nil {
		return nil, err
	}
	switch p.sig {
	case sigEd25519:
		switch len(priv) {
		case ed25519.PrivateKeySize:
			return ed25519.Sign(ed25519.PrivateKey(priv), msg), nil
		case ed25519.SeedSize:
			return ed25519.Sign(ed25519.NewKeyFromSeed(priv), msg), nil
		}
		return nil, p.privSizeError(priv, ed25519.SeedSize)
	case sigEd448:
		if len(priv) != ed448.SeedSize {
			return nil, p.privSizeError(priv, ed448.SeedSize)
		}
		return ed448.Sign(ed448.NewKeyFromSeed(priv), msg, ""), nil
	default:
		k, err := p.ecdsaPrivateKey(priv)
		if err != nil {
			return nil, err
		}
		sig, err := ecdsa.SignASN1(rand.Reader, k, p.sum(msg))
		if err != nil {
			return nil, fmt.Errorf("mls: %s signing: %w", p.sigID, err)
		}
		return sig, nil
	}
}

func (p *suiteParams) privSizeError(priv []byte, want int) error {
	return fmt.Errorf("mls: %s signature private key must be %d bytes, got %d", p.sigID, want, len(priv))
}

func (p *suiteParams) ecdsaPrivateKey(priv []byte) (*ecdsa.PrivateKey, error) {
	// Some encoders drop the leading zero octet of the scalar (the official
	// P-521 vectors carry 65-byte keys, whose top octet is mostly zero);
	// the value is the same, so pad it back to the field size.
	size := (p.curve.Params().BitSize + 7) / 8
	if len(priv) == size-1 {
		padded := make([]byte, size)
		copy(padded[size-len(priv):], priv)
		priv = padded
	}
	k, err := ecdsa.ParseRawPrivateKey(p.curve, priv)
	if err != nil {
		return nil, fmt.Errorf("mls: %s signature private key must be a big-endian scalar of %d bytes: %w",
			p.sigID, size, err)
	}
	return k, nil
}

// VerifyWithLabel checks sig over SignContent{"MLS 1.0 " + label, content}
// (§5.1.2). It returns an error wrapping ErrInvalidSignature if the
// signature does not verify or pub or sig is malformed; ECDSA signatures
// must be strict DER.
func (cs CipherSuite) VerifyWithLabel(pub []byte, label string, content, sig []byte) error {
	p := cs.params()
	if p == nil {
		return &UnknownCipherSuiteError{Suite: cs}
	}
	msg, err := labeledContent(label, content)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSignature, err)
	}
	switch p.sig {
	case sigEd25519:
		if len(pub) != ed25519.PublicKeySize {
			return p.malformedPub(pub)
		}
		if !ed25519.Verify(pub, msg, sig) {
			return ErrInvalidSignature
		}
	case sigEd448:
		if len(pub) != ed448.PublicKeySize {
			return p.malformedPub(pub)
		}
		if !ed448.Verify(pub, msg, sig, "") {
			return ErrInvalidSignature
		}
	default:
		k, err := ecdsa.ParseUncompressedPublicKey(p.curve, pub)
		if err != nil {
			return p.malformedPub(pub)
		}
		if !ecdsa.VerifyASN1(k, p.sum(msg), sig) {
			return ErrInvalidSignature
		}
	}
	return nil
}

func (p *suiteParams) malformedPub(pub []byte) error {
	return fmt.Errorf("%w: malformed %s public key (%d bytes)", ErrInvalidSignature, p.sigID, len(pub))
}

// EncryptWithLabel encrypts plaintext to pub with HPKE in base mode, using
// EncryptContext{"MLS 1.0 " + label, context} as info and empty aad
// (§5.1.3).
func (cs CipherSuite) EncryptWithLabel(pub []byte, label string, context, plaintext []byte) (kemOutput, ciphertext []byte, err error) {
	p := cs.params()
	if p == nil {
		return nil, nil, &UnknownCipherSuiteError{Suite: cs}
	}
	info, err := labeledContent(label, context)
	if err != nil {
		return nil, nil, err
	}
	if p.x448 {
		pk, err := circlhpke.KEM_X448_HKDF_SHA512.Scheme().UnmarshalBinaryPublicKey(pub)
		if err != nil {
			return nil, nil, p.hpkeKeyError("public", err)
		}
		sender, err := p.circl.NewSender(pk, info)
		if err != nil {
			return nil, nil, fmt.Errorf("mls: HPKE: %w", err)
		}
		enc, sealer, err := sender.Setup(rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("mls: HPKE encapsulation: %w", err)
		}
		ct, err := sealer.Seal(plaintext, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("mls: HPKE encryption: %w", err)
		}
		return enc, ct, nil
	}
	pk, err := p.kem.NewPublicKey(pub)
	if err != nil {
		return nil, nil, p.hpkeKeyError("public", err)
	}
	enc, sender, err := hpke.NewSender(pk, p.hpkeKDF, p.hpkeAEAD, info)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: HPKE encapsulation: %w", err)
	}
	ct, err := sender.Seal(nil, plaintext)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: HPKE encryption: %w", err)
	}
	return enc, ct, nil
}

// DecryptWithLabel reverses EncryptWithLabel (§5.1.3). priv is an HPKE
// private key in the RFC 9180 serialized form.
func (cs CipherSuite) DecryptWithLabel(priv []byte, label string, context, kemOutput, ciphertext []byte) ([]byte, error) {
	p := cs.params()
	if p == nil {
		return nil, &UnknownCipherSuiteError{Suite: cs}
	}
	info, err := labeledContent(label, context)
	if err != nil {
		return nil, err
	}
	if p.x448 {
		sk, err := circlhpke.KEM_X448_HKDF_SHA512.Scheme().UnmarshalBinaryPrivateKey(priv)
		if err != nil {
			return nil, p.hpkeKeyError("private", err)
		}
		receiver, err := p.circl.NewReceiver(sk, info)
		if err != nil {
			return nil, fmt.Errorf("mls: HPKE: %w", err)
		}
		opener, err := receiver.Setup(kemOutput)
		if err != nil {
			return nil, fmt.Errorf("mls: HPKE decapsulation of kem_output failed: %w", err)
		}
		pt, err := opener.Open(ciphertext, nil)
		if err != nil {
			return nil, fmt.Errorf("mls: HPKE decryption failed: %w", err)
		}
		return pt, nil
	}
	sk, err := p.kem.NewPrivateKey(priv)
	if err != nil {
		return nil, p.hpkeKeyError("private", err)
	}
	r, err := hpke.NewRecipient(kemOutput, sk, p.hpkeKDF, p.hpkeAEAD, info)
	if err != nil {
		return nil, fmt.Errorf("mls: HPKE decapsulation of kem_output failed: %w", err)
	}
	pt, err := r.Open(nil, ciphertext)
	if err != nil {
		return nil, fmt.Errorf("mls: HPKE decryption failed: %w", err)
	}
	return pt, nil
}

func (p *suiteParams) hpkeKeyError(kind string, err error) error {
	return fmt.Errorf("mls: malformed HPKE %s key for %s: %w", kind, p.name, err)
}

// x448Size is the size of X448 keys (RFC 7748).
const x448Size = 56

// clampX448 applies the RFC 7748 clamping that SerializePrivateKey of
// RFC 9180 §7.1.2 requires for X448 keys.
func clampX448(k []byte) {
	k[0] &= 252
	k[x448Size-1] |= 128
}

// DeriveKeyPair maps ikm to an HPKE key pair with the DeriveKeyPair of the
// suite KEM (RFC 9180 §7.1.3), as §5.1 uses it for tree keys. Keys are
// returned in the RFC 9180 serialized form (X25519 and X448 private keys
// clamped).
func (cs CipherSuite) DeriveKeyPair(ikm []byte) (priv, pub []byte, err error) {
	p := cs.params()
	if p == nil {
		return nil, nil, &UnknownCipherSuiteError{Suite: cs}
	}
	if p.x448 {
		return deriveX448KeyPair(ikm)
	}
	sk, err := p.kem.DeriveKeyPair(ikm)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: DeriveKeyPair: %w", err)
	}
	priv, err = sk.Bytes()
	if err != nil {
		return nil, nil, fmt.Errorf("mls: DeriveKeyPair: %w", err)
	}
	return priv, sk.PublicKey().Bytes(), nil
}

// deriveX448KeyPair is DeriveKeyPair of DHKEM(X448, HKDF-SHA512) (RFC 9180
// §7.1.3). circl implements it only for a 56-byte ikm and panics on any
// other length, while MLS derives from Nh = 64 byte secrets, so the two
// labeled HKDF steps are done here and only the scalar multiplication is
// left to circl.
func deriveX448KeyPair(ikm []byte) (priv, pub []byte, err error) {
	const suiteID = "KEM\x00\x21" // KEM id 0x0021
	labeledIKM := make([]byte, 0, len("HPKE-v1")+len(suiteID)+len("dkp_prk")+len(ikm))
	labeledIKM = append(labeledIKM, "HPKE-v1"+suiteID+"dkp_prk"...)
	labeledIKM = append(labeledIKM, ikm...)
	prk, err := hkdf.Extract(sha512.New, labeledIKM, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: DeriveKeyPair: %w", err)
	}
	sk, err := hkdf.Expand(sha512.New, prk, "\x00\x38HPKE-v1"+suiteID+"sk", x448Size)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: DeriveKeyPair: %w", err)
	}
	clampX448(sk)
	pub, err = x448PublicKey(sk)
	if err != nil {
		return nil, nil, err
	}
	return sk, pub, nil
}

func x448PublicKey(priv []byte) ([]byte, error) {
	sk, err := circlhpke.KEM_X448_HKDF_SHA512.Scheme().UnmarshalBinaryPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("mls: malformed X448 HPKE private key (%d bytes, want %d): %w", len(priv), x448Size, err)
	}
	return sk.Public().MarshalBinary()
}

// GenerateKEMKeyPair returns a fresh random HPKE key pair for the suite KEM,
// serialized as in RFC 9180.
func (cs CipherSuite) GenerateKEMKeyPair() (priv, pub []byte, err error) {
	p := cs.params()
	if p == nil {
		return nil, nil, &UnknownCipherSuiteError{Suite: cs}
	}
	if p.x448 {
		pk, sk, err := circlhpke.KEM_X448_HKDF_SHA512.Scheme().GenerateKeyPair()
		if err != nil {
			return nil, nil, fmt.Errorf("mls: generating X448 key: %w", err)
		}
		if priv, err = sk.MarshalBinary(); err != nil {
			return nil, nil, err
		}
		clampX448(priv)
		pub, err = pk.MarshalBinary()
		return priv, pub, err
	}
	sk, err := p.kem.GenerateKey()
	if err != nil {
		return nil, nil, fmt.Errorf("mls: generating HPKE key: %w", err)
	}
	if priv, err = sk.Bytes(); err != nil {
		return nil, nil, err
	}
	return priv, sk.PublicKey().Bytes(), nil
}

// KEMPublicKey returns the serialized public key of the HPKE private key
// priv.
func (cs CipherSuite) KEMPublicKey(priv []byte) ([]byte, error) {
	p := cs.params()
	if p == nil {
		return nil, &UnknownCipherSuiteError{Suite: cs}
	}
	if p.x448 {
		return x448PublicKey(priv)
	}
	sk, err := p.kem.NewPrivateKey(priv)
	if err != nil {
		return nil, p.hpkeKeyError("private", err)
	}
	return sk.PublicKey().Bytes(), nil
}

// GenerateSignatureKeyPair returns a fresh signature key pair for the suite
// signature scheme, in the formats SignWithLabel and VerifyWithLabel take.
func (cs CipherSuite) GenerateSignatureKeyPair() (priv, pub []byte, err error) {
	p := cs.params()
	if p == nil {
		return nil, nil, &UnknownCipherSuiteError{Suite: cs}
	}
	switch p.sig {
	case sigEd25519:
		pk, sk, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("mls: generating Ed25519 key: %w", err)
		}
		return sk.Seed(), pk, nil
	case sigEd448:
		pk, sk, err := ed448.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("mls: generating Ed448 key: %w", err)
		}
		return sk.Seed(), pk, nil
	default:
		k, err := ecdsa.GenerateKey(p.curve, rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("mls: generating %s key: %w", p.sigID, err)
		}
		if priv, err = k.Bytes(); err != nil {
			return nil, nil, err
		}
		pub, err = k.PublicKey.Bytes()
		return priv, pub, err
	}
}

// SignaturePublicKey returns the public key of the signature private key
// priv.
func (cs CipherSuite) SignaturePublicKey(priv []byte) ([]byte, error) {
	p := cs.params()
	if p == nil {
		return nil, &UnknownCipherSuiteError{Suite: cs}
	}
	switch p.sig {
	case sigEd25519:
		if len(priv) != ed25519.SeedSize {
			return nil, p.privSizeError(priv, ed25519.SeedSize)
		}
		return []byte(ed25519.NewKeyFromSeed(priv).Public().(ed25519.PublicKey)), nil
	case sigEd448:
		if len(priv) != ed448.SeedSize {
			return nil, p.privSizeError(priv, ed448.SeedSize)
		}
		return []byte(ed448.NewKeyFromSeed(priv).Public().(ed448.PublicKey)), nil
	default:
		k, err := p.ecdsaPrivateKey(priv)
		if err != nil {
			return nil, err
		}
		return k.PublicKey.Bytes()
	}
}

// aeadFor returns the suite AEAD keyed with key.
func (p *suiteParams) aeadFor(key, nonce []byte) (cipher.AEAD, error) {
	if len(key) != p.nk {
		return nil, fmt.Errorf("mls: %s AEAD key must be %d bytes, got %d", p.name, p.nk, len(key))
	}
	if len(nonce) != p.nn {
		return nil, fmt.Errorf("mls: %s AEAD nonce must be %d bytes, got %d", p.name, p.nn, len(nonce))
	}
	if p.aead == aeadChaCha20Poly1305 {
		return chacha20poly1305.New(key)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Seal encrypts and authenticates plaintext with the suite AEAD; the
// result is the ciphertext followed by the tag.
func (cs CipherSuite) Seal(key, nonce, aad, plaintext []byte) ([]byte, error) {
	p := cs.params()
	if p == nil {
		return nil, &UnknownCipherSuiteError{Suite: cs}
	}
	a, err := p.aeadFor(key, nonce)
	if err != nil {
		return nil, err
	}
	return a.Seal(nil, nonce, plaintext, aad), nil
}

// Open authenticates and decrypts ciphertext with the suite AEAD.
func (cs CipherSuite) Open(key, nonce, aad, ciphertext []byte) ([]byte, error) {
	p := cs.params()
	if p == nil {
		return nil, &UnknownCipherSuiteError{Suite: cs}
	}
	a, err := p.aeadFor(key, nonce)
	if err != nil {
		return nil, err
	}
	pt, err := a.Open(nil, nonce, ciphertext, aad)
	if err != nil {
		return nil, fmt.Errorf("mls: %s AEAD decryption failed: %w", p.name, err)
	}
	return pt, nil
}

// signingKey is priv in the form SignWithLabel signs with fastest: an
// Ed25519 seed expanded, any other key as it is.
func (cs CipherSuite) signingKey(priv []byte) []byte {
	if p := cs.params(); p != nil && p.sig == sigEd25519 && len(priv) == ed25519.SeedSize {
		return ed25519.NewKeyFromSeed(priv)
	}
	return priv
}
