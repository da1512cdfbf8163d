package mls

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

type deserializationVector struct {
	VLBytesHeader hexBytes `json:"vlbytes_header"`
	Length        uint32   `json:"length"`
}

// TestDeserializationVectors checks the variable-length integer headers of
// deserialization.json in both directions (§2.1.2).
func TestDeserializationVectors(t *testing.T) {
	var vectors []deserializationVector
	loadVectors(t, "deserialization.json", &vectors)
	count := newVectorCount("deserialization.json")
	defer count.report(t)
	for i, v := range vectors {
		s := cryptobyte.String(v.VLBytesHeader)
		var n uint32
		if !readVarint(&s, &n) || !s.Empty() || n != v.Length {
			t.Errorf("entry %d: reading %x gave %d with %d bytes left, want %d", i, v.VLBytesHeader, n, len(s), v.Length)
			continue
		}
		b := cryptobyte.NewBuilder(nil)
		addVarint(b, uint64(v.Length))
		if out, err := b.Bytes(); err != nil || !bytes.Equal(out, v.VLBytesHeader) {
			t.Errorf("entry %d: writing %d gave %x (%v), want %x", i, v.Length, out, err, v.VLBytesHeader)
			continue
		}
		// A header announcing more bytes than follow is malformed.
		if v.Length > 0 {
			s := cryptobyte.String(append(append([]byte{}, v.VLBytesHeader...), make([]byte, min(v.Length-1, 1<<16))...))
			var body cryptobyte.String
			if readVector(&s, &body) {
				t.Errorf("entry %d: read a vector of %d bytes from a shorter input", i, v.Length)
				continue
			}
		}
		count.pass()
	}
}

func TestVarintRejectsMalformed(t *testing.T) {
	for name, in := range map[string][]byte{
		"empty":                          {},
		"2-byte encoding of 0":           {0x40, 0x00},
		"2-byte encoding of 63":          {0x40, 0x3f},
		"4-byte encoding of 0":           {0x80, 0, 0, 0},
		"4-byte encoding of 16383":       {0x80, 0, 0x3f, 0xff},
		"reserved 0b11 prefix":           {0xc0, 0, 0, 0, 0, 0, 0, 1},
		"reserved 0b11 prefix, all ones": {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"truncated 2-byte":               {0x40},
		"truncated 4-byte":               {0x80, 0x00, 0x40},
	} {
		s := cryptobyte.String(in)
		var n uint32
		if readVarint(&s, &n) {
			t.Errorf("%s (%x): read %d", name, in, n)
		}
	}
	// The smallest value of each width is accepted.
	for in, want := range map[string]uint32{"\x3f": 63, "\x40\x40": 64, "\x7f\xff": 16383, "\x80\x00\x40\x00": 16384} {
		s := cryptobyte.String(in)
		var n uint32
		if !readVarint(&s, &n) || n != want || !s.Empty() {
			t.Errorf("%x: read %d, want %d", in, n, want)
		}
	}
}

func TestVarintWriteLimits(t *testing.T) {
	b := cryptobyte.NewBuilder(nil)
	addVarint(b, maxVarint+1)
	if _, err := b.Bytes(); err == nil {
		t.Errorf("wrote 2^30 as a variable-length integer")
	}
	for _, n := range []uint64{0, 63, 64, 16383, 16384, maxVarint} {
		b := cryptobyte.NewBuilder(nil)
		addVarint(b, n)
		out, err := b.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		s := cryptobyte.String(out)
		var got uint32
		if !readVarint(&s, &got) || uint64(got) != n || !s.Empty() {
			t.Errorf("%d: round trip through %x gave %d", n, out, got)
		}
	}
}

func TestCodecVectorsAndLists(t *testing.T) {
	// A length beyond the input.
	s := cryptobyte.String{0x05, 1, 2, 3}
	var v []byte
	if readOpaque(&s, &v) {
		t.Errorf("read a 5-byte vector from 3 bytes")
	}
	// Largest length prefix with no body.
	s = cryptobyte.String{0xbf, 0xff, 0xff, 0xff}
	if readOpaque(&s, &v) {
		t.Errorf("read a 2^30-1 byte vector from nothing")
	}
	// An element function that consumes nothing must not loop forever.
	s = cryptobyte.String{0x02, 1, 2}
	if readList(&s, func(*cryptobyte.String) bool { return true }) {
		t.Errorf("readList accepted an element that consumed no bytes")
	}
	// An element that runs past the end of its vector fails, even if the
	// bytes exist after the vector.
	s = cryptobyte.String{0x01, 0xaa, 0xbb}
	if readList(&s, func(s *cryptobyte.String) bool { var x uint16; return s.ReadUint16(&x) }) {
		t.Errorf("readList let an element cross the end of the vector")
	}
	// Empty vector, read and written.
	s = cryptobyte.String{0x00}
	if !readOpaque(&s, &v) || len(v) != 0 || !s.Empty() {
		t.Errorf("empty vector: %x, %d left", v, len(s))
	}
	b := cryptobyte.NewBuilder(nil)
	addVector(b, func(*cryptobyte.Builder) {})
	if out := b.BytesOrPanic(); !bytes.Equal(out, []byte{0}) {
		t.Errorf("empty vector written as %x", out)
	}
	// A nested error propagates out of addVector.
	b = cryptobyte.NewBuilder(nil)
	addVector(b, func(b *cryptobyte.Builder) { addVarint(b, maxVarint+1) })
	if _, err := b.Bytes(); err == nil {
		t.Errorf("an error inside a vector was lost")
	}
}

func TestCodecOptional(t *testing.T) {
	for in, want := range map[byte]bool{0: false, 1: true} {
		s := cryptobyte.String{in}
		var got bool
		if !readOptional(&s, &got) || got != want {
			t.Errorf("presence %d: got %v", in, got)
		}
	}
	for _, in := range []byte{2, 0x80, 0xff} {
		s := cryptobyte.String{in}
		var got bool
		if readOptional(&s, &got) {
			t.Errorf("presence octet %d accepted", in)
		}
	}
	s := cryptobyte.String{}
	var got bool
	if readOptional(&s, &got) {
		t.Errorf("presence octet read from empty input")
	}
}

func TestCodecDecodeTrailingBytes(t *testing.T) {
	readOne := func(s *cryptobyte.String) bool { var x uint8; return s.ReadUint8(&x) }
	if err := decode([]byte{1}, "Thing", readOne); err != nil {
		t.Errorf("exact input: %v", err)
	}
	err := decode([]byte{1, 2, 3}, "Thing", readOne)
	if !errors.Is(err, ErrDecode) || !strings.Contains(err.Error(), "Thing") || !strings.Contains(err.Error(), "2 trailing bytes") {
		t.Errorf("trailing bytes: %v", err)
	}
	err = decode(nil, "Thing", readOne)
	if !errors.Is(err, ErrDecode) || !strings.Contains(err.Error(), "Thing") {
		t.Errorf("short input: %v", err)
	}
}
