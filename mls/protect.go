package mls

import (
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// This file turns an AuthenticatedContent into a PublicMessage (§6.2) or a
// PrivateMessage (§6.3) and back: the membership tag, content encryption
// with keys from the secret tree (§6.3.1) and sender data encryption
// (§6.3.2). Signatures are not this file's concern: the caller signs the
// AuthenticatedContent before protecting it and verifies the signature of
// the one it gets back, with the sender's key from its own view of the
// group.

// Errors wrapped by the *ValidationError that the unprotect functions
// return.
var (
	// ErrDecryptionFailed: the AEAD rejected the sender data or the
	// content. The message was altered, or it was protected with other
	// secrets than the receiver's epoch.
	ErrDecryptionFailed = errors.New("mls: message decryption failed")
	// ErrBadMembershipTag: the membership tag of a PublicMessage does not
	// match, so its sender did not prove membership in this epoch.
	ErrBadMembershipTag = errors.New("mls: membership tag does not match")
)

// reuseGuardSize is the length of SenderData.reuse_guard (§6.3.2).
const reuseGuardSize = 4

// senderData is the SenderData of §6.3.2.
type senderData struct {
	leafIndex  LeafIndex
	generation uint32
	reuseGuard [reuseGuardSize]byte
}

func (d *senderData) marshal(b *cryptobyte.Builder) {
	b.AddUint32(uint32(d.leafIndex))
	b.AddUint32(d.generation)
	b.AddBytes(d.reuseGuard[:])
}

func (d *senderData) unmarshal(s *cryptobyte.String) bool {
	return s.ReadUint32((*uint32)(&d.leafIndex)) &&
		s.ReadUint32(&d.generation) &&
		s.CopyBytes(d.reuseGuard[:])
}

// senderDataAAD is the SenderDataAAD of §6.3.2: the first three fields of
// the PrivateMessage.
type senderDataAAD struct{ m *PrivateMessage }

func (a senderDataAAD) marshal(b *cryptobyte.Builder) {
	addOpaque(b, a.m.GroupID)
	b.AddUint64(a.m.Epoch)
	b.AddUint8(uint8(a.m.ContentType))
}

// privateContentAAD is the PrivateContentAAD of §6.3.1.
type privateContentAAD struct{ m *PrivateMessage }

func (a privateContentAAD) marshal(b *cryptobyte.Builder) {
	addOpaque(b, a.m.GroupID)
	b.AddUint64(a.m.Epoch)
	b.AddUint8(uint8(a.m.ContentType))
	addOpaque(b, a.m.AuthenticatedData)
}

// privateMessageContent is the PrivateMessageContent of §6.3.1: the field
// of content selected by its ContentType, the auth data and padding zero
// bytes. unmarshal needs content.ContentType set, and reads everything but
// the padding, which the caller checks.
type privateMessageContent struct {
	content *FramedContent
	auth    *FramedContentAuthData
	padding int
}

func (p *privateMessageContent) marshal(b *cryptobyte.Builder) {
	c := p.content
	switch c.ContentType {
	case ContentTypeApplication:
		addOpaque(b, c.Application)
	case ContentTypeProposal:
		if c.Proposal == nil || !knownProposalType(c.Proposal.ProposalType) {
			b.SetError(errors.New("mls: cannot encrypt a proposal that is nil or of unknown type"))
			return
		}
		c.Proposal.marshal(b)
	case ContentTypeCommit:
		if c.Commit == nil {
			b.SetError(errors.New("mls: cannot encrypt a nil Commit"))
			return
		}
		c.Commit.marshal(b)
	default:
		b.SetError(fmt.Errorf("mls: cannot encrypt content of unknown content_type %d", c.ContentType))
		return
	}
	p.auth.marshal(b, c.ContentType)
	if p.padding > 0 {
		b.AddBytes(make([]byte, p.padding))
	}
}

func (p *privateMessageContent) unmarshal(s *cryptobyte.String) bool {
	c := p.content
	switch c.ContentType {
	case ContentTypeApplication:
		if !readOpaque(s, &c.Application) {
			return false
		}
	case ContentTypeProposal:
		c.Proposal = new(Proposal)
		if !c.Proposal.unmarshal(s) || !knownProposalType(c.Proposal.ProposalType) {
			return false
		}
	case ContentTypeCommit:
		c.Commit = new(Commit)
		if !c.Commit.unmarshal(s) {
			return false
		}
	default:
		return false
	}
	return p.auth.unmarshal(s, c.ContentType)
}

// senderDataKey derives the key and nonce that protect the sender data of
// a PrivateMessage whose content ciphertext is ciphertext (§6.3.2): both
// are expanded from sender_data_secret with the first Nh bytes of the
// ciphertext (all of it if shorter) as context.
func senderDataKey(cs CipherSuite, senderDataSecret, ciphertext []byte) (key, nonce []byte, err error) {
	sample := ciphertext
	if nh := cs.HashSize(); len(sample) > nh {
		sample = sample[:nh]
	}
	if key, err = cs.ExpandWithLabel(senderDataSecret, "key", sample, cs.AEADKeySize()); err != nil {
		return nil, nil, err
	}
	if nonce, err = cs.ExpandWithLabel(senderDataSecret, "nonce", sample, cs.AEADNonceSize()); err != nil {
		return nil, nil, err
	}
	return key, nonce, nil
}

// applyReuseGuard XORs guard into the first four bytes of nonce (§6.3.1).
func applyReuseGuard(nonce []byte, guard [reuseGuardSize]byte) {
	for i := range guard {
		nonce[i] ^= guard[i]
	}
}

// ProtectPrivate encrypts ac into a PrivateMessage (§6.3) with the next
// unused generation of the sender's ratchet in tree, and senderDataSecret
// of the same epoch. ac must be signed, have wire format private_message
// (the signature covers it) and a member sender (§6.3.2); a commit must
// carry its confirmation tag. padding is the number of zero bytes to
// append to the content (§15.1). The cipher suite is that of tree.
func ProtectPrivate(ac *AuthenticatedContent, senderDataSecret []byte, tree *SecretTree, padding int) (*PrivateMessage, error) {
	if ac.WireFormat != WireFormatPrivateMessage {
		return nil, fmt.Errorf("mls: cannot encrypt an AuthenticatedContent whose wire_format is %d: the signature must be made for private_message (§6.1)", ac.WireFormat)
	}
	if err := checkSigned(ac); err != nil {
		return nil, err
	}
	c := &ac.Content
	if c.Sender.SenderType != SenderTypeMember {
		return nil, invalidf("6.3.2", "only members can send a PrivateMessage; sender_type is %d", c.Sender.SenderType)
	}
	if padding < 0 || padding > maxVarint {
		return nil, fmt.Errorf("mls: padding of %d bytes is out of range", padding)
	}
	cs := tree.suite
	m := &PrivateMessage{
		GroupID:           c.GroupID,
		Epoch:             c.Epoch,
		ContentType:       c.ContentType,
		AuthenticatedData: c.AuthenticatedData,
	}
	plaintext, err := encode(&privateMessageContent{content: c, auth: &ac.Auth, padding: padding})
	if err != nil {
		return nil, err
	}
	aad, err := encode(privateContentAAD{m})
	if err != nil {
		return nil, err
	}
	sd := senderData{leafIndex: c.Sender.LeafIndex}
	if _, err := rand.Read(sd.reuseGuard[:]); err != nil {
		return nil, fmt.Errorf("mls: generating reuse guard: %w", err)
	}

	gen, key, nonce, err := tree.NextKey(c.Sender.LeafIndex, RatchetFor(c.ContentType))
	if err != nil {
		return nil, err
	}
	sd.generation = gen
	applyReuseGuard(nonce, sd.reuseGuard)
	m.Ciphertext, err = cs.Seal(key, nonce, aad, plaintext)
	clear(key) // §9.2: used to encrypt, so consumed
	clear(nonce)
	clear(plaintext)
	if err != nil {
		return nil, err
	}

	sdKey, sdNonce, err := senderDataKey(cs, senderDataSecret, m.Ciphertext)
	if err != nil {
		return nil, err
	}
	sdAAD, err := encode(senderDataAAD{m})
	if err != nil {
		return nil, err
	}
	m.EncryptedSenderData, err = cs.Seal(sdKey, sdNonce, sdAAD, mustEncode(&sd))
	if err != nil {
		return nil, err
	}
	return m, nil
}

// UnprotectPrivate decrypts m with the secret tree and senderDataSecret of
// its epoch (§6.3) and returns the AuthenticatedContent, whose signature
// the caller must still verify (§6.3.1). The key of the generation used
// is deleted from tree, and the ratchet moved, only if the content
// decrypts and decodes (§9.2). The Group's methods do better: they move
// the ratchet only once the signature verified too.
//
// occupied reports whether a leaf of the ratchet tree is non-blank; the
// sender data must name such a leaf (§6.3.2). It may be nil if the caller
// checks the returned sender itself.
//
// A message that does not decrypt gives a *ValidationError wrapping
// ErrDecryptionFailed; generations that are used, too old or too far
// ahead give the errors of SecretTree.Key.
func UnprotectPrivate(m *PrivateMessage, senderDataSecret []byte, tree *SecretTree, occupied func(LeafIndex) bool) (*AuthenticatedContent, error) {
	ac, l, err := unprotectPrivate(m, senderDataSecret, tree, occupied)
	if err != nil {
		return nil, err
	}
	l.commit()
	return ac, nil
}

// unprotectPrivate is UnprotectPrivate that leaves the secret tree as it
// is: the caller commits the returned lease once the content's signature
// verified (and discards it otherwise), so that a message that decrypts
// but is not genuine neither uses up a key nor moves a ratchet (§9.2,
// §15.3).
func unprotectPrivate(m *PrivateMessage, senderDataSecret []byte, tree *SecretTree, occupied func(LeafIndex) bool) (*AuthenticatedContent, *keyLease, error) {
	ac, l, err := unprotectPrivateLease(m, senderDataSecret, tree, occupied)
	if err != nil && l != nil {
		l.discard()
		l = nil
	}
	return ac, l, err
}

func unprotectPrivateLease(m *PrivateMessage, senderDataSecret []byte, tree *SecretTree, occupied func(LeafIndex) bool) (ac *AuthenticatedContent, l *keyLease, err error) {
	cs := tree.suite
	if !knownContentType(m.ContentType) {
		return nil, nil, fmt.Errorf("%w: PrivateMessage of unknown content_type %d", ErrDecode, m.ContentType)
	}

	// Sender data (§6.3.2).
	sdKey, sdNonce, err := senderDataKey(cs, senderDataSecret, m.Ciphertext)
	if err != nil {
		return nil, nil, err
	}
	sdAAD, err := encode(senderDataAAD{m})
	if err != nil {
		return nil, nil, err
	}
	sdPlain, err := cs.Open(sdKey, sdNonce, sdAAD, m.EncryptedSenderData)
	if err != nil {
		return nil, nil, &ValidationError{
			Rule:    "encrypted_sender_data must decrypt with the sender data key of the message's epoch",
			Section: "6.3.2", Err: ErrDecryptionFailed,
		}
	}
	var sd senderData
	if err := decode(sdPlain, "SenderData", sd.unmarshal); err != nil {
		return nil, nil, err
	}
	if uint32(sd.leafIndex) >= tree.nLeaves || (occupied != nil && !occupied(sd.leafIndex)) {
		return nil, nil, invalidf("6.3.2", "the sender data names leaf %d, which is not a member of the group", sd.leafIndex)
	}

	// Content (§6.3.1).
	rt := RatchetFor(m.ContentType)
	l, err = tree.lease(sd.leafIndex, rt, sd.generation)
	if err != nil {
		return nil, nil, err
	}
	key, nonce := l.key.key, l.key.nonce
	aad, err := encode(privateContentAAD{m})
	if err != nil {
		return nil, l, err
	}
	guarded := append([]byte(nil), nonce...)
	applyReuseGuard(guarded, sd.reuseGuard)
	plaintext, err := cs.Open(key, guarded, aad, m.Ciphertext)
	clear(guarded)
	if err != nil {
		// Not consumed: the key stays for the genuine message.
		return nil, l, &ValidationError{
			Rule:    fmt.Sprintf("ciphertext must decrypt with the key of generation %d of leaf %d", sd.generation, sd.leafIndex),
			Section: "6.3.1", Err: ErrDecryptionFailed,
		}
	}
	ac = &AuthenticatedContent{
		WireFormat: WireFormatPrivateMessage,
		Content: FramedContent{
			GroupID:           m.GroupID,
			Epoch:             m.Epoch,
			Sender:            Sender{SenderType: SenderTypeMember, LeafIndex: sd.leafIndex},
			AuthenticatedData: m.AuthenticatedData,
			ContentType:       m.ContentType,
		},
	}
	s := cryptobyte.String(plaintext)
	if !(&privateMessageContent{content: &ac.Content, auth: &ac.Auth}).unmarshal(&s) {
		return nil, l, fmt.Errorf("%w: PrivateMessageContent", ErrDecode)
	}
	for _, b := range s {
		if b != 0 {
			return nil, l, &ValidationError{
				Rule:    "the padding of PrivateMessageContent must be all zero bytes",
				Section: "6.3.1", Err: ErrDecode,
			}
		}
	}
	return ac, l, nil
}

// ProtectPublic wraps ac in a PublicMessage (§6.2), adding the membership
// tag MAC(membership_key, AuthenticatedContentTBM) when the sender is a
// member. ctx is the GroupContext of the epoch; its cipher suite is used.
// ac must be signed with wire format public_message, and must not be an
// application message, which is always encrypted (§6).
func ProtectPublic(ac *AuthenticatedContent, membershipKey []byte, ctx *GroupContext) (*PublicMessage, error) {
	if ac.WireFormat != WireFormatPublicMessage {
		return nil, fmt.Errorf("mls: cannot send an AuthenticatedContent whose wire_format is %d as a PublicMessage: the signature must be made for public_message (§6.1)", ac.WireFormat)
	}
	if ac.Content.ContentType == ContentTypeApplication {
		return nil, invalid("6", "application messages must be sent as PrivateMessage")
	}
	if err := checkSigned(ac); err != nil {
		return nil, err
	}
	m := &PublicMessage{Content: ac.Content, Auth: ac.Auth}
	if ac.Content.Sender.SenderType == SenderTypeMember {
		tag, err := membershipTag(ac, membershipKey, ctx)
		if err != nil {
			return nil, err
		}
		m.MembershipTag = tag
	}
	return m, nil
}

// UnprotectPublic checks the membership tag of m against membershipKey and
// ctx, the membership key and GroupContext of the epoch m claims, and
// returns its AuthenticatedContent, whose signature the caller must still
// verify (§6.2). A wrong tag gives a *ValidationError wrapping
// ErrBadMembershipTag. Messages from non-members carry no tag and pass
// unchanged.
func UnprotectPublic(m *PublicMessage, membershipKey []byte, ctx *GroupContext) (*AuthenticatedContent, error) {
	if m.Content.ContentType == ContentTypeApplication {
		return nil, invalid("6", "application messages must be sent as PrivateMessage, not PublicMessage")
	}
	ac := m.AuthenticatedContent()
	if m.Content.Sender.SenderType == SenderTypeMember {
		tag, err := membershipTag(ac, membershipKey, ctx)
		if err != nil {
			return nil, err
		}
		if !hmac.Equal(tag, m.MembershipTag) {
			return nil, &ValidationError{
				Rule:    "membership_tag must equal MAC(membership_key, AuthenticatedContentTBM) of the current epoch",
				Section: "6.2", Err: ErrBadMembershipTag,
			}
		}
	}
	return ac, nil
}

// checkSigned catches the caller mistakes of protecting content that is
// not signed yet, or a commit without its confirmation tag (§6.1).
func checkSigned(ac *AuthenticatedContent) error {
	if len(ac.Auth.Signature) == 0 {
		return errors.New("mls: sign the AuthenticatedContent before protecting it (§6.1)")
	}
	if ac.Content.ContentType == ContentTypeCommit && len(ac.Auth.ConfirmationTag) == 0 {
		return errors.New("mls: a commit must carry its confirmation_tag before it is protected (§6.1)")
	}
	return nil
}

func membershipTag(ac *AuthenticatedContent, membershipKey []byte, ctx *GroupContext) ([]byte, error) {
	if ctx == nil {
		return nil, errors.New("mls: the membership tag needs the GroupContext of the epoch (§6.2)")
	}
	if len(membershipKey) == 0 {
		return nil, errors.New("mls: the membership tag needs the membership_key of the epoch (§6.2)")
	}
	tbm := ac.TBM(ctx)
	if tbm == nil {
		return nil, errors.New("mls: cannot encode AuthenticatedContentTBM")
	}
	tag := ctx.CipherSuite.MAC(membershipKey, tbm)
	if tag == nil {
		return nil, ctx.CipherSuite.check()
	}
	return tag, nil
}
