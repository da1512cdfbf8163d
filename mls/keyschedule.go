package mls

import (
	"crypto/hmac"
	"errors"
	"fmt"
)

// This file is the key schedule of RFC 9420 §8: from the previous epoch's
// init_secret, the commit_secret and the psk_secret it derives the
// joiner_secret, the welcome_secret and the epoch secrets of §8 table
// "Epoch-Derived Secrets", and it provides the uses of those secrets that
// need nothing but the secrets themselves: the external key pair (§8),
// confirmation tags (§6.1), the exporter (§8.5) and the Welcome AEAD key
// (§12.4.3.1).

// ErrBadConfirmationTag is wrapped by the *ValidationError that
// VerifyConfirmationTag returns when a confirmation tag does not match:
// the sender and the receiver disagree about the new epoch.
var ErrBadConfirmationTag = errors.New("mls: confirmation tag does not match")

// JoinerSecret computes the joiner_secret of the epoch described by gc
// (§8): ExpandWithLabel(Extract(init_secret, commit_secret), "joiner",
// GroupContext, Nh), in the cipher suite of gc. initSecret is the
// init_secret of the previous epoch (or of the external init, §8.3) and
// commitSecret is the commit_secret of the Commit, or nil for the all-zero
// vector when the Commit has no path.
func JoinerSecret(initSecret, commitSecret []byte, gc *GroupContext) ([]byte, error) {
	cs := gc.CipherSuite
	if err := cs.check(); err != nil {
		return nil, err
	}
	ctx, err := encode(gc)
	if err != nil {
		return nil, fmt.Errorf("mls: encoding GroupContext for the key schedule: %w", err)
	}
	if commitSecret == nil {
		commitSecret = make([]byte, cs.HashSize())
	}
	prk := cs.Extract(initSecret, commitSecret)
	defer clear(prk)
	return cs.ExpandWithLabel(prk, "joiner", ctx, cs.HashSize())
}

// KeySchedule is the key schedule of an epoch from the joiner_secret on
// (§8): the joiner_secret combined with the psk_secret. Existing members
// reach it through DeriveEpochSecrets; a new member builds it with
// NewKeySchedule from the GroupSecrets of a Welcome, uses WelcomeKey to
// decrypt the GroupInfo, and then calls EpochSecrets with the GroupContext
// it found there.
type KeySchedule struct {
	suite        CipherSuite
	joinerSecret []byte
	member       []byte // KDF.Extract(joiner_secret, psk_secret)
}

// NewKeySchedule combines joinerSecret with pskSecret (§8). A nil pskSecret
// stands for the all-zero vector used when no PSK is injected (§8.4).
func NewKeySchedule(cs CipherSuite, joinerSecret, pskSecret []byte) (*KeySchedule, error) {
	if err := cs.check(); err != nil {
		return nil, err
	}
	if len(joinerSecret) != cs.HashSize() {
		return nil, fmt.Errorf("mls: joiner_secret must be %d bytes for %v, got %d", cs.HashSize(), cs, len(joinerSecret))
	}
	if pskSecret == nil {
		pskSecret = make([]byte, cs.HashSize())
	}
	return &KeySchedule{
		suite:        cs,
		joinerSecret: append([]byte(nil), joinerSecret...),
		member:       cs.Extract(joinerSecret, pskSecret),
	}, nil
}

// JoinerSecret returns the joiner_secret the key schedule started from,
// which a committer encrypts to new members in GroupSecrets.
func (ks *KeySchedule) JoinerSecret() []byte { return ks.joinerSecret }

// WelcomeSecret returns DeriveSecret(., "welcome") of §8, the secret that
// protects the GroupInfo in a Welcome.
func (ks *KeySchedule) WelcomeSecret() ([]byte, error) {
	return ks.suite.DeriveSecret(ks.member, "welcome")
}

// WelcomeKey returns the AEAD key and nonce that encrypt the GroupInfo of
// a Welcome (§12.4.3.1): ExpandWithLabel(welcome_secret, "key" or "nonce",
// "", Nk or Nn).
func (ks *KeySchedule) WelcomeKey() (key, nonce []byte, err error) {
	ws, err := ks.WelcomeSecret()
	if err != nil {
		return nil, nil, err
	}
	defer clear(ws)
	if key, err = ks.suite.ExpandWithLabel(ws, "key", nil, ks.suite.AEADKeySize()); err != nil {
		return nil, nil, err
	}
	if nonce, err = ks.suite.ExpandWithLabel(ws, "nonce", nil, ks.suite.AEADNonceSize()); err != nil {
		return nil, nil, err
	}
	return key, nonce, nil
}

// EpochSecrets derives the epoch_secret for the epoch described by gc and
// every secret of §8 derived from it. gc must use the cipher suite of ks.
func (ks *KeySchedule) EpochSecrets(gc *GroupContext) (*EpochSecrets, error) {
	cs := ks.suite
	if gc.CipherSuite != cs {
		return nil, fmt.Errorf("mls: GroupContext uses cipher suite %v but the key schedule uses %v", gc.CipherSuite, cs)
	}
	ctx, err := encode(gc)
	if err != nil {
		return nil, fmt.Errorf("mls: encoding GroupContext for the key schedule: %w", err)
	}
	welcome, err := ks.WelcomeSecret()
	if err != nil {
		return nil, err
	}
	epoch, err := cs.ExpandWithLabel(ks.member, "epoch", ctx, cs.HashSize())
	if err != nil {
		return nil, err
	}
	defer clear(epoch) // §9.2: the epoch_secret is consumed here
	es := &EpochSecrets{
		Suite:         cs,
		JoinerSecret:  ks.joinerSecret,
		WelcomeSecret: welcome,
	}
	for _, d := range [...]struct {
		label string
		out   *[]byte
	}{
		{"sender data", &es.SenderDataSecret},
		{"encryption", &es.EncryptionSecret},
		{"exporter", &es.ExporterSecret},
		{"external", &es.ExternalSecret},
		{"confirm", &es.ConfirmationKey},
		{"membership", &es.MembershipKey},
		{"resumption", &es.ResumptionPSK},
		{"authentication", &es.EpochAuthenticator},
		{"init", &es.InitSecret},
	} {
		if *d.out, err = cs.DeriveSecret(epoch, d.label); err != nil {
			return nil, err
		}
	}
	return es, nil
}

// EpochSecrets holds the secrets of one epoch (§8). The epoch_secret
// itself is not kept: everything it is needed for is derived up front.
type EpochSecrets struct {
	Suite CipherSuite

	// JoinerSecret and WelcomeSecret are the intermediate secrets a
	// committer needs to build the Welcome for new members (§12.4.3.1).
	JoinerSecret  []byte
	WelcomeSecret []byte

	SenderDataSecret   []byte // keys for SenderData encryption (§6.3.2)
	EncryptionSecret   []byte // root of the secret tree (§9)
	ExporterSecret     []byte // MLS-Exporter (§8.5)
	ExternalSecret     []byte // seed of the external key pair (§8)
	ConfirmationKey    []byte // confirmation tags (§6.1)
	MembershipKey      []byte // membership tags of PublicMessage (§6.2)
	ResumptionPSK      []byte // resumption PSK of this epoch (§8.6)
	EpochAuthenticator []byte // §8.7
	InitSecret         []byte // init_secret for the next epoch
}

// DeriveEpochSecrets runs the whole key schedule of §8 for the epoch
// described by gc, as an existing member does when it creates or
// processes a Commit. initSecret is the init_secret of the previous
// epoch; commitSecret and pskSecret may be nil for the all-zero vector
// (a Commit without path, no PSKs).
func DeriveEpochSecrets(initSecret, commitSecret, pskSecret []byte, gc *GroupContext) (*EpochSecrets, error) {
	joiner, err := JoinerSecret(initSecret, commitSecret, gc)
	if err != nil {
		return nil, err
	}
	ks, err := NewKeySchedule(gc.CipherSuite, joiner, pskSecret)
	if err != nil {
		return nil, err
	}
	return ks.EpochSecrets(gc)
}

// ExternalKeyPair derives the HPKE key pair held by the whole group from
// external_secret (§8): KEM.DeriveKeyPair(external_secret). The public
// key goes into the external_pub extension of a GroupInfo (§12.4.3.2).
func (es *EpochSecrets) ExternalKeyPair() (priv, pub []byte, err error) {
	return es.Suite.DeriveKeyPair(es.ExternalSecret)
}

// ConfirmationTag computes MAC(confirmation_key, confirmed_transcript_hash)
// (§6.1), the tag a Commit and a GroupInfo carry for this epoch.
func (es *EpochSecrets) ConfirmationTag(confirmedTranscriptHash []byte) []byte {
	return es.Suite.MAC(es.ConfirmationKey, confirmedTranscriptHash)
}

// VerifyConfirmationTag checks tag against ConfirmationTag in constant
// time. A mismatch is a *ValidationError wrapping ErrBadConfirmationTag
// (§12.4.2: the receiver must not move to the new epoch).
func (es *EpochSecrets) VerifyConfirmationTag(confirmedTranscriptHash, tag []byte) error {
	if !hmac.Equal(es.ConfirmationTag(confirmedTranscriptHash), tag) {
		return &ValidationError{
			Rule:    "the confirmation_tag must equal MAC(confirmation_key, confirmed_transcript_hash) of the new epoch",
			Section: "12.4.2",
			Err:     ErrBadConfirmationTag,
		}
	}
	return nil
}

// Export is the MLS-Exporter of §8.5: ExpandWithLabel(DeriveSecret(
// exporter_secret, label), "exported", Hash(context), length). label
// should name the purpose of the secret (see the IANA registry of §17.8).
func (es *EpochSecrets) Export(label string, context []byte, length int) ([]byte, error) {
	cs := es.Suite
	secret, err := cs.DeriveSecret(es.ExporterSecret, label)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	return cs.ExpandWithLabel(secret, "exported", cs.Hash(context), length)
}

// SecretTree returns the secret tree (§9) of this epoch for a group of
// nLeaves leaves. It consumes the encryption_secret (§9.2): the field is
// wiped and set to nil, so that a second tree, which would hand out the
// same keys and nonces again, cannot be made by mistake.
func (es *EpochSecrets) SecretTree(nLeaves uint32) (*SecretTree, error) {
	if es.EncryptionSecret == nil {
		return nil, errors.New("mls: the encryption_secret of this epoch was already used for a secret tree")
	}
	t, err := NewSecretTree(es.Suite, es.EncryptionSecret, nLeaves)
	if err != nil {
		return nil, err
	}
	clear(es.EncryptionSecret)
	es.EncryptionSecret = nil
	return t, nil
}
