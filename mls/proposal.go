package mls

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Proposal is a proposed change to a group (§12.1). Exactly the field that
// matches ProposalType is set.
//
// Proposal types that RFC 9420 does not define are carried opaque in
// Unknown, with one limit. The body of a Proposal has no length prefix
// (§12.1), so a decoder that does not know a type cannot tell where its
// body ends. It can when nothing follows the Proposal within the enclosing
// length-delimited vector: then the rest of that vector is the body. This
// holds for a Proposal decoded on its own and for the last entry of a
// Commit's proposals vector (§12.4). Anywhere else an unknown type is a
// decode error: in a FramedContent (content_type proposal) the Proposal is
// followed by FramedContentAuthData, whose start cannot be located.
// A client must reject a Commit with a proposal type it does not support
// in any case (§12.2); carrying the body lets a Delivery Service forward
// or inspect such messages without understanding them.
type Proposal struct {
	ProposalType ProposalType

	Add                    *Add
	Update                 *Update
	Remove                 *Remove
	PreSharedKey           *PreSharedKey
	ReInit                 *ReInit
	ExternalInit           *ExternalInit
	GroupContextExtensions *GroupContextExtensions

	// Unknown is the body of a proposal of a type RFC 9420 does not define.
	Unknown []byte
}

// knownProposalType reports whether t is defined by RFC 9420.
func knownProposalType(t ProposalType) bool {
	return t >= ProposalTypeAdd && t <= ProposalTypeGroupContextExtensions
}

// body returns the proposal body that ProposalType selects, or nil.
func (p *Proposal) body() marshaler {
	switch p.ProposalType {
	case ProposalTypeAdd:
		if p.Add != nil {
			return p.Add
		}
	case ProposalTypeUpdate:
		if p.Update != nil {
			return p.Update
		}
	case ProposalTypeRemove:
		if p.Remove != nil {
			return p.Remove
		}
	case ProposalTypePSK:
		if p.PreSharedKey != nil {
			return p.PreSharedKey
		}
	case ProposalTypeReInit:
		if p.ReInit != nil {
			return p.ReInit
		}
	case ProposalTypeExternalInit:
		if p.ExternalInit != nil {
			return p.ExternalInit
		}
	case ProposalTypeGroupContextExtensions:
		if p.GroupContextExtensions != nil {
			return p.GroupContextExtensions
		}
	}
	return nil
}

func (p *Proposal) marshal(b *cryptobyte.Builder) {
	if p.ProposalType == 0 {
		b.SetError(fmt.Errorf("mls: cannot encode Proposal of reserved type 0"))
		return
	}
	b.AddUint16(uint16(p.ProposalType))
	if !knownProposalType(p.ProposalType) {
		b.AddBytes(p.Unknown)
		return
	}
	body := p.body()
	if body == nil {
		b.SetError(fmt.Errorf("mls: cannot encode Proposal of type %d: its body field is nil", p.ProposalType))
		return
	}
	body.marshal(b)
}

// unmarshal reads a Proposal. A proposal of unknown type takes all of s as
// its body, so callers pass only the bytes that may belong to it (see the
// Proposal documentation).
func (p *Proposal) unmarshal(s *cryptobyte.String) bool {
	*p = Proposal{}
	var t uint16
	if !s.ReadUint16(&t) {
		return false
	}
	p.ProposalType = ProposalType(t)
	switch p.ProposalType {
	case 0:
		return false // reserved (§17.4)
	case ProposalTypeAdd:
		p.Add = new(Add)
		return p.Add.unmarshal(s)
	case ProposalTypeUpdate:
		p.Update = new(Update)
		return p.Update.unmarshal(s)
	case ProposalTypeRemove:
		p.Remove = new(Remove)
		return p.Remove.unmarshal(s)
	case ProposalTypePSK:
		p.PreSharedKey = new(PreSharedKey)
		return p.PreSharedKey.unmarshal(s)
	case ProposalTypeReInit:
		p.ReInit = new(ReInit)
		return p.ReInit.unmarshal(s)
	case ProposalTypeExternalInit:
		p.ExternalInit = new(ExternalInit)
		return p.ExternalInit.unmarshal(s)
	case ProposalTypeGroupContextExtensions:
		p.GroupContextExtensions = new(GroupContextExtensions)
		return p.GroupContextExtensions.unmarshal(s)
	}
	p.Unknown = append([]byte{}, (*s)...)
	*s = nil
	return true
}

// MarshalBinary returns the TLS encoding of p.
func (p *Proposal) MarshalBinary() ([]byte, error) { return encode(p) }

// UnmarshalBinary decodes a Proposal. Trailing bytes are rejected, except
// that a proposal of unknown type takes all remaining bytes as its body.
func (p *Proposal) UnmarshalBinary(data []byte) error {
	return decode(data, "Proposal", p.unmarshal)
}

// Add proposes adding the client of KeyPackage to the group (§12.1.1).
type Add struct {
	KeyPackage KeyPackage
}

func (a *Add) marshal(b *cryptobyte.Builder)       { a.KeyPackage.marshal(b) }
func (a *Add) unmarshal(s *cryptobyte.String) bool { return a.KeyPackage.unmarshal(s) }

// Update proposes replacing the sender's leaf (§12.1.2).
type Update struct {
	LeafNode LeafNode
}

func (u *Update) marshal(b *cryptobyte.Builder)       { u.LeafNode.marshal(b) }
func (u *Update) unmarshal(s *cryptobyte.String) bool { return u.LeafNode.unmarshal(s) }

// Remove proposes removing the member at leaf Removed (§12.1.3).
type Remove struct {
	Removed LeafIndex
}

func (r *Remove) marshal(b *cryptobyte.Builder) { b.AddUint32(uint32(r.Removed)) }
func (r *Remove) unmarshal(s *cryptobyte.String) bool {
	return s.ReadUint32((*uint32)(&r.Removed))
}

// PreSharedKeyID names a pre-shared key and carries the nonce of its use
// (§8.4). PSKID is set for external PSKs; Usage, PSKGroupID and PSKEpoch
// for resumption PSKs.
type PreSharedKeyID struct {
	PSKType PSKType

	PSKID []byte // external

	Usage      ResumptionPSKUsage // resumption
	PSKGroupID []byte             // resumption
	PSKEpoch   uint64             // resumption

	PSKNonce []byte
}

func (id *PreSharedKeyID) marshal(b *cryptobyte.Builder) {
	b.AddUint8(uint8(id.PSKType))
	switch id.PSKType {
	case PSKTypeExternal:
		addOpaque(b, id.PSKID)
	case PSKTypeResumption:
		b.AddUint8(uint8(id.Usage))
		addOpaque(b, id.PSKGroupID)
		b.AddUint64(id.PSKEpoch)
	default:
		b.SetError(fmt.Errorf("mls: cannot encode PreSharedKeyID of unknown psktype %d", id.PSKType))
		return
	}
	addOpaque(b, id.PSKNonce)
}

// unmarshal reads a PreSharedKeyID. The resumption usage is kept as sent;
// whether it fits the context is a validation question (§8.4).
func (id *PreSharedKeyID) unmarshal(s *cryptobyte.String) bool {
	*id = PreSharedKeyID{}
	var t uint8
	if !s.ReadUint8(&t) {
		return false
	}
	id.PSKType = PSKType(t)
	switch id.PSKType {
	case PSKTypeExternal:
		if !readOpaque(s, &id.PSKID) {
			return false
		}
	case PSKTypeResumption:
		var usage uint8
		if !s.ReadUint8(&usage) || !readOpaque(s, &id.PSKGroupID) || !s.ReadUint64(&id.PSKEpoch) {
			return false
		}
		id.Usage = ResumptionPSKUsage(usage)
	default:
		return false
	}
	return readOpaque(s, &id.PSKNonce)
}

// PreSharedKey proposes injecting a PSK into the key schedule (§12.1.4).
type PreSharedKey struct {
	PSK PreSharedKeyID
}

func (p *PreSharedKey) marshal(b *cryptobyte.Builder)       { p.PSK.marshal(b) }
func (p *PreSharedKey) unmarshal(s *cryptobyte.String) bool { return p.PSK.unmarshal(s) }

// ReInit proposes closing the group and starting a new one with the given
// parameters (§12.1.5).
type ReInit struct {
	GroupID     []byte
	Version     ProtocolVersion
	CipherSuite CipherSuite
	Extensions  Extensions
}

func (r *ReInit) marshal(b *cryptobyte.Builder) {
	addOpaque(b, r.GroupID)
	b.AddUint16(uint16(r.Version))
	b.AddUint16(uint16(r.CipherSuite))
	r.Extensions.marshal(b)
}

func (r *ReInit) unmarshal(s *cryptobyte.String) bool {
	return readOpaque(s, &r.GroupID) &&
		s.ReadUint16((*uint16)(&r.Version)) &&
		s.ReadUint16((*uint16)(&r.CipherSuite)) &&
		r.Extensions.unmarshal(s)
}

// ExternalInit carries the KEM output from which the members derive the
// init secret of an external commit (§12.1.6).
type ExternalInit struct {
	KEMOutput []byte
}

func (e *ExternalInit) marshal(b *cryptobyte.Builder)       { addOpaque(b, e.KEMOutput) }
func (e *ExternalInit) unmarshal(s *cryptobyte.String) bool { return readOpaque(s, &e.KEMOutput) }

// GroupContextExtensions proposes replacing the extensions of the group
// context (§12.1.7).
type GroupContextExtensions struct {
	Extensions Extensions
}

func (g *GroupContextExtensions) marshal(b *cryptobyte.Builder) { g.Extensions.marshal(b) }
func (g *GroupContextExtensions) unmarshal(s *cryptobyte.String) bool {
	return g.Extensions.unmarshal(s)
}

// ProposalRef identifies a proposal sent earlier in the epoch (§5.2).
type ProposalRef []byte

// ProposalOrRef is an entry of a Commit's proposal list: a proposal by
// value or a reference to one (§12.4).
type ProposalOrRef struct {
	Type      ProposalOrRefType
	Proposal  *Proposal   // Type proposal
	Reference ProposalRef // Type reference
}

func (p *ProposalOrRef) marshal(b *cryptobyte.Builder) {
	b.AddUint8(uint8(p.Type))
	switch p.Type {
	case ProposalOrRefTypeProposal:
		if p.Proposal == nil {
			b.SetError(fmt.Errorf("mls: cannot encode ProposalOrRef of type proposal with a nil Proposal"))
			return
		}
		p.Proposal.marshal(b)
	case ProposalOrRefTypeReference:
		addOpaque(b, p.Reference)
	default:
		b.SetError(fmt.Errorf("mls: cannot encode ProposalOrRef of unknown type %d", p.Type))
	}
}

// unmarshal reads a ProposalOrRef. As for Proposal, s must end where the
// enclosing vector ends.
func (p *ProposalOrRef) unmarshal(s *cryptobyte.String) bool {
	*p = ProposalOrRef{}
	var t uint8
	if !s.ReadUint8(&t) {
		return false
	}
	p.Type = ProposalOrRefType(t)
	switch p.Type {
	case ProposalOrRefTypeProposal:
		p.Proposal = new(Proposal)
		return p.Proposal.unmarshal(s)
	case ProposalOrRefTypeReference:
		return readOpaque(s, (*[]byte)(&p.Reference))
	}
	return false
}
