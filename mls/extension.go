package mls

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Extension is one entry of an extension list (§13). Its data is kept
// opaque; the typed payloads below decode the data of the extension types
// RFC 9420 defines.
type Extension struct {
	ExtensionType ExtensionType
	ExtensionData []byte
}

func (e *Extension) marshal(b *cryptobyte.Builder) {
	b.AddUint16(uint16(e.ExtensionType))
	addOpaque(b, e.ExtensionData)
}

func (e *Extension) unmarshal(s *cryptobyte.String) bool {
	var t uint16
	if !s.ReadUint16(&t) {
		return false
	}
	e.ExtensionType = ExtensionType(t)
	return readOpaque(s, &e.ExtensionData)
}

// Extensions is an extension list, Extension extensions<V>, in wire order.
type Extensions []Extension

// Find returns the first extension of type t.
func (es Extensions) Find(t ExtensionType) (Extension, bool) {
	for _, e := range es {
		if e.ExtensionType == t {
			return e, true
		}
	}
	return Extension{}, false
}

func (es *Extensions) marshal(b *cryptobyte.Builder) { addStructList(b, *es) }

func (es *Extensions) unmarshal(s *cryptobyte.String) bool {
	return readStructList(s, (*[]Extension)(es))
}

// ExternalPub is the payload of the external_pub extension (§12.4.3.2):
// the HPKE public key with which a non-member can perform an external join.
type ExternalPub struct {
	PublicKey []byte
}

func (e *ExternalPub) marshal(b *cryptobyte.Builder)       { addOpaque(b, e.PublicKey) }
func (e *ExternalPub) unmarshal(s *cryptobyte.String) bool { return readOpaque(s, &e.PublicKey) }

// MarshalBinary returns the extension_data of an external_pub extension.
func (e *ExternalPub) MarshalBinary() ([]byte, error) { return encode(e) }

// UnmarshalBinary decodes the extension_data of an external_pub extension.
func (e *ExternalPub) UnmarshalBinary(data []byte) error {
	return decode(data, "ExternalPub", e.unmarshal)
}

// ExternalSender is a party outside the group allowed to send proposals
// (§12.1.8.1).
type ExternalSender struct {
	SignatureKey []byte
	Credential   Credential
}

func (e *ExternalSender) marshal(b *cryptobyte.Builder) {
	addOpaque(b, e.SignatureKey)
	e.Credential.marshal(b)
}

func (e *ExternalSender) unmarshal(s *cryptobyte.String) bool {
	return readOpaque(s, &e.SignatureKey) && e.Credential.unmarshal(s)
}

// ExternalSenders is the payload of the external_senders extension
// (§12.1.8.1). A Sender of type external refers to an entry by its index.
type ExternalSenders []ExternalSender

func (e *ExternalSenders) marshal(b *cryptobyte.Builder) { addStructList(b, *e) }

func (e *ExternalSenders) unmarshal(s *cryptobyte.String) bool {
	return readStructList(s, (*[]ExternalSender)(e))
}

// MarshalBinary returns the extension_data of an external_senders extension.
func (e *ExternalSenders) MarshalBinary() ([]byte, error) { return encode(e) }

// UnmarshalBinary decodes the extension_data of an external_senders extension.
func (e *ExternalSenders) UnmarshalBinary(data []byte) error {
	return decode(data, "ExternalSenders", e.unmarshal)
}

// RequiredCapabilities is the payload of the required_capabilities
// extension (§11.1): what every member's Capabilities must include.
type RequiredCapabilities struct {
	ExtensionTypes  []ExtensionType
	ProposalTypes   []ProposalType
	CredentialTypes []CredentialType
}

func (r *RequiredCapabilities) marshal(b *cryptobyte.Builder) {
	addUint16List(b, r.ExtensionTypes)
	addUint16List(b, r.ProposalTypes)
	addUint16List(b, r.CredentialTypes)
}

func (r *RequiredCapabilities) unmarshal(s *cryptobyte.String) bool {
	return readUint16List(s, &r.ExtensionTypes) &&
		readUint16List(s, &r.ProposalTypes) &&
		readUint16List(s, &r.CredentialTypes)
}

// MarshalBinary returns the extension_data of a required_capabilities extension.
func (r *RequiredCapabilities) MarshalBinary() ([]byte, error) { return encode(r) }

// UnmarshalBinary decodes the extension_data of a required_capabilities extension.
func (r *RequiredCapabilities) UnmarshalBinary(data []byte) error {
	return decode(data, "RequiredCapabilities", r.unmarshal)
}

// ApplicationID is the payload of the application_id extension (§5.3.3):
// an application-defined identifier for a leaf.
type ApplicationID struct {
	ID []byte
}

func (a *ApplicationID) marshal(b *cryptobyte.Builder)       { addOpaque(b, a.ID) }
func (a *ApplicationID) unmarshal(s *cryptobyte.String) bool { return readOpaque(s, &a.ID) }

// MarshalBinary returns the extension_data of an application_id extension.
func (a *ApplicationID) MarshalBinary() ([]byte, error) { return encode(a) }

// UnmarshalBinary decodes the extension_data of an application_id extension.
func (a *ApplicationID) UnmarshalBinary(data []byte) error {
	return decode(data, "ApplicationID", a.unmarshal)
}

// RatchetTreeExtension is the payload of the ratchet_tree extension
// (§12.4.3.3): the nodes of the tree in array order (Appendix C), a nil
// entry standing for a blank node.
//
// Beyond the syntax, decoding enforces the shape rules of §12.4.3.3 that
// the encoding itself carries: the list is not empty, its last node is not
// blank, and each node has the type of its position (leaves at even
// indices, parents at odd ones). Encoding enforces the same rules.
type RatchetTreeExtension struct {
	Nodes []*Node
}

func (r *RatchetTreeExtension) marshal(b *cryptobyte.Builder) {
	if reason := r.shapeError(); reason != "" {
		b.SetError(fmt.Errorf("mls: cannot encode: %s", reason))
		return
	}
	addVector(b, func(b *cryptobyte.Builder) {
		for _, n := range r.Nodes {
			addOptional(b, n != nil)
			if n != nil {
				n.marshal(b)
			}
		}
	})
}

func (r *RatchetTreeExtension) unmarshal(s *cryptobyte.String) bool {
	r.Nodes = nil
	return readList(s, func(s *cryptobyte.String) bool {
		var present bool
		if !readOptional(s, &present) {
			return false
		}
		if !present {
			r.Nodes = append(r.Nodes, nil)
			return true
		}
		n := new(Node)
		if !n.unmarshal(s) {
			return false
		}
		r.Nodes = append(r.Nodes, n)
		return true
	})
}

// shapeError applies the §12.4.3.3 rules listed on RatchetTreeExtension and
// says which one r breaks, or returns "".
func (r *RatchetTreeExtension) shapeError() string {
	if len(r.Nodes) == 0 {
		return "ratchet_tree has no nodes (§12.4.3.3)"
	}
	if r.Nodes[len(r.Nodes)-1] == nil {
		return "ratchet_tree ends in a blank node; trailing blank nodes must be omitted (§12.4.3.3)"
	}
	for i, n := range r.Nodes {
		if n == nil {
			continue
		}
		want := "parent"
		if i%2 == 0 {
			want = "leaf"
		}
		if n.kind() != want {
			return fmt.Sprintf("ratchet_tree node %d is a %s node at a %s position (Appendix C)", i, n.kind(), want)
		}
	}
	return ""
}

// MarshalBinary returns the extension_data of a ratchet_tree extension.
func (r *RatchetTreeExtension) MarshalBinary() ([]byte, error) { return encode(r) }

// UnmarshalBinary decodes the extension_data of a ratchet_tree extension,
// rejecting trailing bytes and trees of the wrong shape.
func (r *RatchetTreeExtension) UnmarshalBinary(data []byte) error {
	if err := decode(data, "RatchetTreeExtension", r.unmarshal); err != nil {
		return err
	}
	if reason := r.shapeError(); reason != "" {
		return fmt.Errorf("%w: %s", ErrDecode, reason)
	}
	return nil
}

// The list helpers below write and read vectors of fixed-size integers and
// of structs. Decoded slices grow with append, so their size is bounded by
// the input actually consumed, never by a count taken from the input.

func addUint16List[T ~uint16](b *cryptobyte.Builder, v []T) {
	addVector(b, func(b *cryptobyte.Builder) {
		for _, x := range v {
			b.AddUint16(uint16(x))
		}
	})
}

func readUint16List[T ~uint16](s *cryptobyte.String, out *[]T) bool {
	var list []T
	ok := readList(s, func(s *cryptobyte.String) bool {
		var x uint16
		if !s.ReadUint16(&x) {
			return false
		}
		list = append(list, T(x))
		return true
	})
	*out = list
	return ok
}

func addUint32List[T ~uint32](b *cryptobyte.Builder, v []T) {
	addVector(b, func(b *cryptobyte.Builder) {
		for _, x := range v {
			b.AddUint32(uint32(x))
		}
	})
}

func readUint32List[T ~uint32](s *cryptobyte.String, out *[]T) bool {
	var list []T
	ok := readList(s, func(s *cryptobyte.String) bool {
		var x uint32
		if !s.ReadUint32(&x) {
			return false
		}
		list = append(list, T(x))
		return true
	})
	*out = list
	return ok
}

// structPtr is a pointer to a struct of this package that can be encoded
// and decoded.
type structPtr[T any] interface {
	*T
	marshaler
	unmarshal(s *cryptobyte.String) bool
}

func addStructList[T any, P structPtr[T]](b *cryptobyte.Builder, v []T) {
	addVector(b, func(b *cryptobyte.Builder) {
		for i := range v {
			P(&v[i]).marshal(b)
		}
	})
}

func readStructList[T any, P structPtr[T]](s *cryptobyte.String, out *[]T) bool {
	var list []T
	ok := readList(s, func(s *cryptobyte.String) bool {
		var x T
		if !P(&x).unmarshal(s) {
			return false
		}
		list = append(list, x)
		return true
	})
	*out = list
	return ok
}
