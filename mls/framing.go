package mls

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Sender identifies the sender of a FramedContent (§6).
type Sender struct {
	SenderType SenderType
	// LeafIndex is the sender's leaf, for SenderTypeMember.
	LeafIndex LeafIndex
	// SenderIndex is the index in the external_senders extension, for
	// SenderTypeExternal.
	SenderIndex uint32
}

func (s *Sender) marshal(b *cryptobyte.Builder) {
	b.AddUint8(uint8(s.SenderType))
	switch s.SenderType {
	case SenderTypeMember:
		b.AddUint32(uint32(s.LeafIndex))
	case SenderTypeExternal:
		b.AddUint32(s.SenderIndex)
	case SenderTypeNewMemberProposal, SenderTypeNewMemberCommit:
	default:
		b.SetError(fmt.Errorf("mls: cannot encode Sender of unknown sender_type %d", s.SenderType))
	}
}

func (s *Sender) unmarshal(str *cryptobyte.String) bool {
	*s = Sender{}
	var t uint8
	if !str.ReadUint8(&t) {
		return false
	}
	s.SenderType = SenderType(t)
	switch s.SenderType {
	case SenderTypeMember:
		return str.ReadUint32((*uint32)(&s.LeafIndex))
	case SenderTypeExternal:
		return str.ReadUint32(&s.SenderIndex)
	case SenderTypeNewMemberProposal, SenderTypeNewMemberCommit:
		return true
	}
	return false
}

// FramedContent is the content of a message with its group, epoch and
// sender (§6). Exactly the field that ContentType selects is set.
type FramedContent struct {
	GroupID           []byte
	Epoch             uint64
	Sender            Sender
	AuthenticatedData []byte

	ContentType ContentType
	Application []byte    // ContentTypeApplication
	Proposal    *Proposal // ContentTypeProposal
	Commit      *Commit   // ContentTypeCommit
}

func (fc *FramedContent) marshal(b *cryptobyte.Builder) {
	addOpaque(b, fc.GroupID)
	b.AddUint64(fc.Epoch)
	fc.Sender.marshal(b)
	addOpaque(b, fc.AuthenticatedData)
	b.AddUint8(uint8(fc.ContentType))
	switch fc.ContentType {
	case ContentTypeApplication:
		addOpaque(b, fc.Application)
	case ContentTypeProposal:
		if fc.Proposal == nil {
			b.SetError(fmt.Errorf("mls: cannot encode FramedContent of type proposal with a nil Proposal"))
			return
		}
		if !knownProposalType(fc.Proposal.ProposalType) {
			// See Proposal: the receiver could not find where it ends.
			b.SetError(fmt.Errorf("mls: cannot send a proposal of unknown type %d in a FramedContent", fc.Proposal.ProposalType))
			return
		}
		fc.Proposal.marshal(b)
	case ContentTypeCommit:
		if fc.Commit == nil {
			b.SetError(fmt.Errorf("mls: cannot encode FramedContent of type commit with a nil Commit"))
			return
		}
		fc.Commit.marshal(b)
	default:
		b.SetError(fmt.Errorf("mls: cannot encode FramedContent of unknown content_type %d", fc.ContentType))
	}
}

func (fc *FramedContent) unmarshal(s *cryptobyte.String) bool {
	*fc = FramedContent{}
	var ct uint8
	if !readOpaque(s, &fc.GroupID) ||
		!s.ReadUint64(&fc.Epoch) ||
		!fc.Sender.unmarshal(s) ||
		!readOpaque(s, &fc.AuthenticatedData) ||
		!s.ReadUint8(&ct) {
		return false
	}
	fc.ContentType = ContentType(ct)
	switch fc.ContentType {
	case ContentTypeApplication:
		return readOpaque(s, &fc.Application)
	case ContentTypeProposal:
		fc.Proposal = new(Proposal)
		// A proposal of unknown type would swallow the rest of the input,
		// including the FramedContentAuthData that follows; reject it.
		return fc.Proposal.unmarshal(s) && knownProposalType(fc.Proposal.ProposalType)
	case ContentTypeCommit:
		fc.Commit = new(Commit)
		return fc.Commit.unmarshal(s)
	}
	return false
}

// MarshalBinary returns the TLS encoding of fc.
func (fc *FramedContent) MarshalBinary() ([]byte, error) { return encode(fc) }

// UnmarshalBinary decodes a FramedContent, rejecting trailing bytes.
func (fc *FramedContent) UnmarshalBinary(data []byte) error {
	return decode(data, "FramedContent", fc.unmarshal)
}

// FramedContentAuthData authenticates a FramedContent (§6.1). Its encoding
// depends on the content type of the content it authenticates, so its
// marshal and unmarshal take that type.
type FramedContentAuthData struct {
	Signature []byte
	// ConfirmationTag is carried if and only if the content is a commit.
	ConfirmationTag []byte
}

func (a *FramedContentAuthData) marshal(b *cryptobyte.Builder, ct ContentType) {
	addOpaque(b, a.Signature)
	if ct == ContentTypeCommit {
		addOpaque(b, a.ConfirmationTag)
	} else if len(a.ConfirmationTag) > 0 {
		b.SetError(fmt.Errorf("mls: FramedContentAuthData has a ConfirmationTag but the content is not a commit (§6.1)"))
	}
}

func (a *FramedContentAuthData) unmarshal(s *cryptobyte.String, ct ContentType) bool {
	*a = FramedContentAuthData{}
	if !readOpaque(s, &a.Signature) {
		return false
	}
	if ct == ContentTypeCommit {
		return readOpaque(s, &a.ConfirmationTag)
	}
	return true
}

// PublicMessage is a signed, unencrypted message (§6.2).
type PublicMessage struct {
	Content FramedContent
	Auth    FramedContentAuthData
	// MembershipTag is carried if and only if the sender is a member.
	MembershipTag []byte
}

func (m *PublicMessage) marshal(b *cryptobyte.Builder) {
	m.Content.marshal(b)
	m.Auth.marshal(b, m.Content.ContentType)
	if m.Content.Sender.SenderType == SenderTypeMember {
		addOpaque(b, m.MembershipTag)
	} else if len(m.MembershipTag) > 0 {
		b.SetError(fmt.Errorf("mls: PublicMessage has a MembershipTag but its sender is not a member (§6.2)"))
	}
}

func (m *PublicMessage) unmarshal(s *cryptobyte.String) bool {
	*m = PublicMessage{}
	if !m.Content.unmarshal(s) || !m.Auth.unmarshal(s, m.Content.ContentType) {
		return false
	}
	if m.Content.Sender.SenderType == SenderTypeMember {
		return readOpaque(s, &m.MembershipTag)
	}
	return true
}

// MarshalBinary returns the TLS encoding of m.
func (m *PublicMessage) MarshalBinary() ([]byte, error) { return encode(m) }

// UnmarshalBinary decodes a PublicMessage, rejecting trailing bytes.
func (m *PublicMessage) UnmarshalBinary(data []byte) error {
	return decode(data, "PublicMessage", m.unmarshal)
}

// AuthenticatedContent returns the content and authentication data of m as
// an AuthenticatedContent with wire format public_message. It shares
// memory with m.
func (m *PublicMessage) AuthenticatedContent() *AuthenticatedContent {
	return &AuthenticatedContent{WireFormat: WireFormatPublicMessage, Content: m.Content, Auth: m.Auth}
}

// PrivateMessage is an encrypted message (§6.3). Its content and sender
// are decrypted with keys from the group's secret tree.
type PrivateMessage struct {
	GroupID             []byte
	Epoch               uint64
	ContentType         ContentType
	AuthenticatedData   []byte
	EncryptedSenderData []byte
	Ciphertext          []byte
}

func (m *PrivateMessage) marshal(b *cryptobyte.Builder) {
	if !knownContentType(m.ContentType) {
		b.SetError(fmt.Errorf("mls: cannot encode PrivateMessage of unknown content_type %d", m.ContentType))
		return
	}
	addOpaque(b, m.GroupID)
	b.AddUint64(m.Epoch)
	b.AddUint8(uint8(m.ContentType))
	addOpaque(b, m.AuthenticatedData)
	addOpaque(b, m.EncryptedSenderData)
	addOpaque(b, m.Ciphertext)
}

func (m *PrivateMessage) unmarshal(s *cryptobyte.String) bool {
	*m = PrivateMessage{}
	return readOpaque(s, &m.GroupID) &&
		s.ReadUint64(&m.Epoch) &&
		s.ReadUint8((*uint8)(&m.ContentType)) &&
		knownContentType(m.ContentType) &&
		readOpaque(s, &m.AuthenticatedData) &&
		readOpaque(s, &m.EncryptedSenderData) &&
		readOpaque(s, &m.Ciphertext)
}

func knownContentType(ct ContentType) bool {
	return ct >= ContentTypeApplication && ct <= ContentTypeCommit
}

// MarshalBinary returns the TLS encoding of m.
func (m *PrivateMessage) MarshalBinary() ([]byte, error) { return encode(m) }

// UnmarshalBinary decodes a PrivateMessage, rejecting trailing bytes.
func (m *PrivateMessage) UnmarshalBinary(data []byte) error {
	return decode(data, "PrivateMessage", m.unmarshal)
}

// MLSMessage is the envelope of every message sent over the wire (§6).
// Exactly the field that WireFormat selects is set.
type MLSMessage struct {
	Version    ProtocolVersion
	WireFormat WireFormat

	PublicMessage  *PublicMessage
	PrivateMessage *PrivateMessage
	Welcome        *Welcome
	GroupInfo      *GroupInfo
	KeyPackage     *KeyPackage
}

// wireFormatNames names the wire formats for error messages (§17.2).
var wireFormatNames = [...]string{
	WireFormatPublicMessage:  "PublicMessage",
	WireFormatPrivateMessage: "PrivateMessage",
	WireFormatWelcome:        "Welcome",
	WireFormatGroupInfo:      "GroupInfo",
	WireFormatKeyPackage:     "KeyPackage",
}

func knownWireFormat(wf WireFormat) bool {
	return wf >= WireFormatPublicMessage && wf <= WireFormatKeyPackage
}

// body returns the message that WireFormat selects, or nil.
func (m *MLSMessage) body() marshaler {
	switch {
	case m.WireFormat == WireFormatPublicMessage && m.PublicMessage != nil:
		return m.PublicMessage
	case m.WireFormat == WireFormatPrivateMessage && m.PrivateMessage != nil:
		return m.PrivateMessage
	case m.WireFormat == WireFormatWelcome && m.Welcome != nil:
		return m.Welcome
	case m.WireFormat == WireFormatGroupInfo && m.GroupInfo != nil:
		return m.GroupInfo
	case m.WireFormat == WireFormatKeyPackage && m.KeyPackage != nil:
		return m.KeyPackage
	}
	return nil
}

func (m *MLSMessage) marshal(b *cryptobyte.Builder) {
	if m.Version != ProtocolVersionMLS10 {
		b.SetError(fmt.Errorf("mls: cannot encode MLSMessage of protocol version %d; set Version to ProtocolVersionMLS10", m.Version))
		return
	}
	if !knownWireFormat(m.WireFormat) {
		b.SetError(fmt.Errorf("mls: cannot encode MLSMessage of unknown wire_format %d", m.WireFormat))
		return
	}
	body := m.body()
	if body == nil {
		b.SetError(fmt.Errorf("mls: cannot encode MLSMessage: wire_format is %s but that field is nil", wireFormatNames[m.WireFormat]))
		return
	}
	b.AddUint16(uint16(m.Version))
	b.AddUint16(uint16(m.WireFormat))
	body.marshal(b)
}

// unmarshal reads an MLSMessage. Only version mls10 is accepted: the
// layout of the rest of the message is defined for that version alone.
func (m *MLSMessage) unmarshal(s *cryptobyte.String) bool {
	*m = MLSMessage{}
	if !s.ReadUint16((*uint16)(&m.Version)) || m.Version != ProtocolVersionMLS10 ||
		!s.ReadUint16((*uint16)(&m.WireFormat)) {
		return false
	}
	switch m.WireFormat {
	case WireFormatPublicMessage:
		m.PublicMessage = new(PublicMessage)
		return m.PublicMessage.unmarshal(s)
	case WireFormatPrivateMessage:
		m.PrivateMessage = new(PrivateMessage)
		return m.PrivateMessage.unmarshal(s)
	case WireFormatWelcome:
		m.Welcome = new(Welcome)
		return m.Welcome.unmarshal(s)
	case WireFormatGroupInfo:
		m.GroupInfo = new(GroupInfo)
		return m.GroupInfo.unmarshal(s)
	case WireFormatKeyPackage:
		m.KeyPackage = new(KeyPackage)
		return m.KeyPackage.unmarshal(s)
	}
	return false
}

// MarshalBinary returns the TLS encoding of m.
func (m *MLSMessage) MarshalBinary() ([]byte, error) { return encode(m) }

// UnmarshalBinary decodes an MLSMessage, rejecting trailing bytes. The
// error names the protocol version or wire format if one of them is not
// supported, and otherwise the message type that failed to decode.
func (m *MLSMessage) UnmarshalBinary(data []byte) error {
	what := "MLSMessage"
	if len(data) >= 2 {
		if v := ProtocolVersion(binary.BigEndian.Uint16(data)); v != ProtocolVersionMLS10 {
			*m = MLSMessage{}
			return fmt.Errorf("%w: MLSMessage has protocol version %d; only mls10 (1) is supported", ErrDecode, v)
		}
	}
	if len(data) >= 4 {
		wf := WireFormat(binary.BigEndian.Uint16(data[2:]))
		if !knownWireFormat(wf) {
			*m = MLSMessage{}
			return fmt.Errorf("%w: MLSMessage has unknown wire_format %d", ErrDecode, wf)
		}
		what = "MLSMessage carrying a " + wireFormatNames[wf]
	}
	return decode(data, what, m.unmarshal)
}

// ParseMLSMessage decodes an MLSMessage, rejecting trailing bytes.
func ParseMLSMessage(data []byte) (*MLSMessage, error) {
	m := new(MLSMessage)
	if err := m.UnmarshalBinary(data); err != nil {
		return nil, err
	}
	return m, nil
}

// AuthenticatedContent is a FramedContent with its authentication data and
// the wire format it is sent in (§6.1): the unit that is signed, from
// which proposal references and transcript hashes are computed.
type AuthenticatedContent struct {
	WireFormat WireFormat
	Content    FramedContent
	Auth       FramedContentAuthData
}

func (ac *AuthenticatedContent) marshal(b *cryptobyte.Builder) {
	b.AddUint16(uint16(ac.WireFormat))
	ac.Content.marshal(b)
	ac.Auth.marshal(b, ac.Content.ContentType)
}

func (ac *AuthenticatedContent) unmarshal(s *cryptobyte.String) bool {
	*ac = AuthenticatedContent{}
	return s.ReadUint16((*uint16)(&ac.WireFormat)) &&
		knownWireFormat(ac.WireFormat) &&
		ac.Content.unmarshal(s) &&
		ac.Auth.unmarshal(s, ac.Content.ContentType)
}

// MarshalBinary returns the TLS encoding of ac.
func (ac *AuthenticatedContent) MarshalBinary() ([]byte, error) { return encode(ac) }

// UnmarshalBinary decodes an AuthenticatedContent, rejecting trailing bytes.
func (ac *AuthenticatedContent) UnmarshalBinary(data []byte) error {
	return decode(data, "AuthenticatedContent", ac.unmarshal)
}

// marshalTBS writes the FramedContentTBS of §6.1. The group context is
// part of it for member and new_member_commit senders only; ctx may be nil
// for the other sender types.
func (ac *AuthenticatedContent) marshalTBS(b *cryptobyte.Builder, ctx *GroupContext) {
	b.AddUint16(uint16(ProtocolVersionMLS10))
	b.AddUint16(uint16(ac.WireFormat))
	ac.Content.marshal(b)
	switch ac.Content.Sender.SenderType {
	case SenderTypeMember, SenderTypeNewMemberCommit:
		if ctx == nil {
			b.SetError(fmt.Errorf("mls: the FramedContentTBS of a member or new_member_commit sender needs the GroupContext (§6.1)"))
			return
		}
		ctx.marshal(b)
	}
}

func (ac *AuthenticatedContent) tbs(ctx *GroupContext) ([]byte, error) {
	b := cryptobyte.NewBuilder(nil)
	ac.marshalTBS(b, ctx)
	return b.Bytes()
}

// TBS returns the FramedContentTBS (§6.1) that the signature covers, or
// nil if it cannot be encoded (for example when ctx is nil but the sender
// type needs it).
func (ac *AuthenticatedContent) TBS(ctx *GroupContext) []byte {
	out, err := ac.tbs(ctx)
	if err != nil {
		return nil
	}
	return out
}

// Sign sets ac.Auth.Signature to a signature with priv over the
// FramedContentTBS (§6.1). ctx is the group context of the epoch in which
// the content is sent; it may be nil for external and new_member_proposal
// senders.
func (ac *AuthenticatedContent) Sign(cs CipherSuite, priv []byte, ctx *GroupContext) error {
	if err := cs.checkSeed(priv); err != nil {
		return err
	}
	return ac.sign(cs, priv, ctx)
}

// sign is Sign with a key signingKey may have expanded.
func (ac *AuthenticatedContent) sign(cs CipherSuite, priv []byte, ctx *GroupContext) error {
	tbs, err := ac.tbs(ctx)
	if err != nil {
		return err
	}
	sig, err := cs.signWithLabel(priv, "FramedContentTBS", tbs)
	if err != nil {
		return err
	}
	ac.Auth.Signature = sig
	return nil
}

// VerifySignature checks ac.Auth.Signature against the sender's signature
// key pub over the FramedContentTBS (§6.1). It returns an error wrapping
// ErrInvalidSignature if the signature is not valid.
func (ac *AuthenticatedContent) VerifySignature(cs CipherSuite, pub []byte, ctx *GroupContext) error {
	tbs, err := ac.tbs(ctx)
	if err != nil {
		return err
	}
	return cs.VerifyWithLabel(pub, "FramedContentTBS", tbs, ac.Auth.Signature)
}

// TBM returns the AuthenticatedContentTBM (§6.2) over which a
// PublicMessage's membership tag is computed, or nil if it cannot be
// encoded.
func (ac *AuthenticatedContent) TBM(ctx *GroupContext) []byte {
	b := cryptobyte.NewBuilder(nil)
	ac.marshalTBS(b, ctx)
	ac.Auth.marshal(b, ac.Content.ContentType)
	out, err := b.Bytes()
	if err != nil {
		return nil
	}
	return out
}

// ProposalRef returns the reference to the proposal that ac carries
// (§5.2): the RefHash of the encoded AuthenticatedContent.
func (ac *AuthenticatedContent) ProposalRef(cs CipherSuite) (ProposalRef, error) {
	if ac.Content.ContentType != ContentTypeProposal {
		return nil, fmt.Errorf("mls: ProposalRef of an AuthenticatedContent whose content_type is %d, not proposal", ac.Content.ContentType)
	}
	if err := cs.check(); err != nil {
		return nil, err
	}
	data, err := encode(ac)
	if err != nil {
		return nil, err
	}
	return ProposalRef(cs.RefHash("MLS 1.0 Proposal Reference", data)), nil
}

// ConfirmedTranscriptHashInput returns the ConfirmedTranscriptHashInput of
// §8.2 for the commit that ac carries: its wire format, content and
// signature. It returns nil if ac does not carry a commit or cannot be
// encoded.
func ConfirmedTranscriptHashInput(ac *AuthenticatedContent) []byte {
	if ac.Content.ContentType != ContentTypeCommit {
		return nil
	}
	b := cryptobyte.NewBuilder(nil)
	b.AddUint16(uint16(ac.WireFormat))
	ac.Content.marshal(b)
	addOpaque(b, ac.Auth.Signature)
	out, err := b.Bytes()
	if err != nil {
		return nil
	}
	return out
}

// InterimTranscriptHashInput returns the InterimTranscriptHashInput of
// §8.2: the confirmation tag of the commit, as a MAC<V>.
func InterimTranscriptHashInput(confirmationTag []byte) []byte {
	b := cryptobyte.NewBuilder(nil)
	addOpaque(b, confirmationTag)
	out, err := b.Bytes()
	if err != nil {
		return nil
	}
	return out
}
