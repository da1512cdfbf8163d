package mls

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// This file holds the TLS presentation-language helpers of RFC 9420 §2.1,
// built on golang.org/x/crypto/cryptobyte in the way crypto/tls uses it.
// Every struct in the package has exactly one marshal function (taking a
// *cryptobyte.Builder) and one unmarshal function (taking a
// *cryptobyte.String and returning false on malformed input).

// ErrDecode is wrapped by every decoding failure.
var ErrDecode = errors.New("mls: malformed encoding")

// maxVarint is the largest value a §2.1.2 variable-length integer can hold.
const maxVarint = 1<<30 - 1

// readVarint reads a variable-length integer (§2.1.2). It accepts only the
// minimal encoding and rejects the reserved "11" prefix.
func readVarint(s *cryptobyte.String, out *uint32) bool {
	var b0 uint8
	if !s.ReadUint8(&b0) {
		return false
	}
	prefix := b0 >> 6
	v := uint32(b0 & 0x3f)
	switch prefix {
	case 0:
		*out = v
		return true
	case 1:
		var b1 uint8
		if !s.ReadUint8(&b1) {
			return false
		}
		v = v<<8 | uint32(b1)
		if v < 1<<6 {
			return false // not minimal
		}
	case 2:
		var rest []byte
		if !s.ReadBytes(&rest, 3) {
			return false
		}
		v = v<<24 | uint32(rest[0])<<16 | uint32(rest[1])<<8 | uint32(rest[2])
		if v < 1<<14 {
			return false // not minimal
		}
	default:
		return false // "11" prefix is reserved (§2.1.2)
	}
	*out = v
	return true
}

// addVarint writes n as a minimal variable-length integer (§2.1.2).
func addVarint(b *cryptobyte.Builder, n uint64) {
	switch {
	case n < 1<<6:
		b.AddUint8(uint8(n))
	case n < 1<<14:
		b.AddUint16(uint16(n) | 0x4000)
	case n <= maxVarint:
		b.AddUint32(uint32(n) | 0x80000000)
	default:
		b.SetError(fmt.Errorf("mls: vector of %d bytes exceeds the 2^30-1 limit of §2.1.2", n))
	}
}

// readVector reads a variable-length vector (§2.1.2) into out without
// copying. The length is checked against the remaining input before use,
// so a hostile length never causes an allocation.
func readVector(s *cryptobyte.String, out *cryptobyte.String) bool {
	var n uint32
	if !readVarint(s, &n) {
		return false
	}
	return s.ReadBytes((*[]byte)(out), int(n))
}

// readOpaque reads an opaque<V> into a freshly allocated slice.
func readOpaque(s *cryptobyte.String, out *[]byte) bool {
	var v cryptobyte.String
	if !readVector(s, &v) {
		return false
	}
	*out = append([]byte(nil), v...)
	return true
}

// addVector writes a variable-length vector whose body f produces.
func addVector(b *cryptobyte.Builder, f cryptobyte.BuilderContinuation) {
	child := cryptobyte.NewBuilder(nil)
	f(child)
	body, err := child.Bytes()
	if err != nil {
		b.SetError(err)
		return
	}
	addVarint(b, uint64(len(body)))
	b.AddBytes(body)
}

// addOpaque writes an opaque<V>.
func addOpaque(b *cryptobyte.Builder, v []byte) {
	addVarint(b, uint64(len(v)))
	b.AddBytes(v)
}

// readOptional reads the presence octet of an optional<T> (§2.1.1).
func readOptional(s *cryptobyte.String, present *bool) bool {
	var p uint8
	if !s.ReadUint8(&p) {
		return false
	}
	switch p {
	case 0:
		*present = false
	case 1:
		*present = true
	default:
		return false
	}
	return true
}

// addOptional writes the presence octet of an optional<T> (§2.1.1).
func addOptional(b *cryptobyte.Builder, present bool) {
	if present {
		b.AddUint8(1)
	} else {
		b.AddUint8(0)
	}
}

// readBool reads a TLS bool (one octet, 0 or 1).
func readBool(s *cryptobyte.String, out *bool) bool { return readOptional(s, out) }

// addBool writes a TLS bool.
func addBool(b *cryptobyte.Builder, v bool) { addOptional(b, v) }

// readList reads a vector of elements, calling f for each until the vector
// is consumed. f must consume at least one byte or fail.
func readList(s *cryptobyte.String, f func(*cryptobyte.String) bool) bool {
	var v cryptobyte.String
	if !readVector(s, &v) {
		return false
	}
	for !v.Empty() {
		before := len(v)
		if !f(&v) || len(v) == before {
			return false
		}
	}
	return true
}

// marshaler is implemented by every encodable struct.
type marshaler interface {
	marshal(b *cryptobyte.Builder)
}

// encode returns the TLS encoding of v.
func encode(v marshaler) ([]byte, error) {
	b := cryptobyte.NewBuilder(nil)
	v.marshal(b)
	return b.Bytes()
}

// mustEncode is encode for values built by this package, whose encoding can
// only fail when a vector exceeds 2^30 bytes; it returns nil in that case.
func mustEncode(v marshaler) []byte {
	out, err := encode(v)
	if err != nil {
		return nil
	}
	return out
}

// decode parses data with f and requires that all input is consumed.
func decode(data []byte, what string, f func(*cryptobyte.String) bool) error {
	s := cryptobyte.String(data)
	if !f(&s) {
		return fmt.Errorf("%w: %s", ErrDecode, what)
	}
	if !s.Empty() {
		return fmt.Errorf("%w: %s has %d trailing bytes", ErrDecode, what, len(s))
	}
	return nil
}
