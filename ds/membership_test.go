package ds_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"

	"github.com/mlsds/mlsds/ds"
)

// readOpaqueV reads an RFC 9420 §2.1.2 opaque<V> the way a peer would.
func readOpaqueV(t *testing.T, s *cryptobyte.String) []byte {
	t.Helper()
	var b0 uint8
	if !s.ReadUint8(&b0) {
		t.Fatal("truncated length")
	}
	n := uint32(b0 & 0x3f)
	switch b0 >> 6 {
	case 0:
	case 1:
		var b1 uint8
		s.ReadUint8(&b1)
		n = n<<8 | uint32(b1)
	case 2:
		var rest []byte
		s.ReadBytes(&rest, 3)
		n = n<<24 | uint32(rest[0])<<16 | uint32(rest[1])<<8 | uint32(rest[2])
	default:
		t.Fatal("bad varint prefix")
	}
	var v []byte
	if !s.ReadBytes(&v, int(n)) {
		t.Fatalf("vector of %d bytes truncated", n)
	}
	return v
}

func TestMembershipTranscriptDecodes(t *testing.T) {
	// Lengths on each side of the one- and two-byte varint boundaries.
	for _, glen := range []int{0, 1, 63, 64, 16383, 16384} {
		gid := bytes.Repeat([]byte{0xa5}, glen)
		body := sha256.Sum256([]byte("body"))
		nonce := bytes.Repeat([]byte{0x5a}, ds.MembershipNonceSize)
		tr := ds.MembershipTranscript("/mlsds.v1.GroupService/Send", gid, 7, 1234567, nonce, body[:])
		s := cryptobyte.String(tr)
		if got := string(readOpaqueV(t, &s)); got != "mlsds membership v1" {
			t.Fatalf("label %q", got)
		}
		if got := string(readOpaqueV(t, &s)); got != "/mlsds.v1.GroupService/Send" {
			t.Fatalf("procedure %q", got)
		}
		if got := readOpaqueV(t, &s); !bytes.Equal(got, gid) {
			t.Fatalf("group id of %d bytes decoded as %d bytes", glen, len(got))
		}
		var epoch, ts uint64
		if !s.ReadUint64(&epoch) || !s.ReadUint64(&ts) || epoch != 7 || ts != 1234567 {
			t.Fatalf("epoch %d timestamp %d", epoch, ts)
		}
		if got := readOpaqueV(t, &s); !bytes.Equal(got, nonce) {
			t.Fatal("nonce")
		}
		if got := readOpaqueV(t, &s); !bytes.Equal(got, body[:]) {
			t.Fatal("body hash")
		}
		if !s.Empty() {
			t.Fatalf("%d trailing bytes", len(s))
		}
	}
}

func TestMembershipTranscriptSeparatesFields(t *testing.T) {
	// Moving a byte from one field to the next must change the encoding.
	a := ds.MembershipTranscript("/p", []byte("ab"), 1, 2, []byte("n"), []byte("h"))
	b := ds.MembershipTranscript("/pa", []byte("b"), 1, 2, []byte("n"), []byte("h"))
	c := ds.MembershipTranscript("/p", []byte("ab"), 2, 1, []byte("n"), []byte("h"))
	d := ds.MembershipTranscript("/p", []byte("ab"), 1, 2, []byte("nh"), []byte(""))
	if bytes.Equal(a, b) || bytes.Equal(a, c) || bytes.Equal(a, d) {
		t.Fatal("distinct transcripts encode the same")
	}
}

func TestMembershipKeyContext(t *testing.T) {
	ctx := ds.MembershipKeyContext([]byte("gid"), 0x0102030405060708)
	if !bytes.Equal(ctx[:3], []byte("gid")) || binary.BigEndian.Uint64(ctx[3:]) != 0x0102030405060708 || len(ctx) != 11 {
		t.Fatalf("context %x", ctx)
	}
}

func TestMembershipMACIsHMACSHA256(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	tr := []byte("transcript")
	m := hmac.New(sha256.New, key)
	m.Write(tr)
	if !bytes.Equal(ds.MembershipMAC(key, tr), m.Sum(nil)) {
		t.Fatal("MAC differs from HMAC-SHA256")
	}
	if bytes.Equal(ds.MembershipMAC(key, tr), ds.MembershipMAC(bytes.Repeat([]byte{2}, 32), tr)) {
		t.Fatal("MAC does not depend on the key")
	}
}

func TestMembershipHeaderRoundTrip(t *testing.T) {
	mac := sha256.Sum256([]byte("x"))
	for _, c := range []struct{ epoch, ts uint64 }{{0, 0}, {1, 1700000000000}, {^uint64(0), ^uint64(0)}} {
		nonce := ds.NewMembershipNonce()
		h := ds.FormatMembershipHeader(c.epoch, c.ts, nonce, mac[:])
		e, ts, n, m, err := ds.ParseMembershipHeader(h)
		if err != nil || e != c.epoch || ts != c.ts || !bytes.Equal(n, nonce) || !bytes.Equal(m, mac[:]) {
			t.Fatalf("%q: %d %d %x %v", h, e, ts, m, err)
		}
	}
}

func TestParseMembershipHeaderRefuses(t *testing.T) {
	mac := sha256.Sum256([]byte("x"))
	good := ds.FormatMembershipHeader(3, 1000, bytes.Repeat([]byte{7}, ds.MembershipNonceSize), mac[:])
	nonceText := strings.Fields(good)[3]
	macText := nonceText + " " + strings.Fields(good)[4]
	if _, _, _, _, err := ds.ParseMembershipHeader(good); err != nil {
		t.Fatalf("%q: %v", good, err)
	}
	for _, bad := range []string{
		"",
		"v2 3 1000 " + macText,
		"v1 03 1000 " + macText,
		"v1 +3 1000 " + macText,
		"v1 -3 1000 " + macText,
		"v1 3 1000  " + macText,
		"v1 3 1000 " + macText + " ",
		"v1 3 18446744073709551616 " + macText,
		"v1 3 1000 " + macText + "=",
		"v1 3 1000 " + macText[:42],
		"v1 3 1000 " + strings.ReplaceAll(macText, macText[:1], "+"),
		"V1 3 1000 " + macText,
		"v1\t3 1000 " + macText,
		"v1 3 1000 " + strings.Fields(good)[4],
		"v1 3 1000 " + nonceText[:21] + " " + strings.Fields(good)[4],
		"v1 3 1000 " + nonceText + "AA " + strings.Fields(good)[4],
	} {
		if _, _, _, _, err := ds.ParseMembershipHeader(bad); !errors.Is(err, ds.ErrInvalidArgument) {
			t.Errorf("%q: got %v, want ErrInvalidArgument", bad, err)
		}
	}
}

func FuzzParseMembershipHeader(f *testing.F) {
	mac := sha256.Sum256([]byte("seed"))
	f.Add(ds.FormatMembershipHeader(5, 1700000000000, make([]byte, ds.MembershipNonceSize), mac[:]))
	f.Add("v1 0 0 AAAA AAAA")
	f.Add("v1 1 2 " + strings.Repeat("A", 22) + " " + strings.Repeat("A", 43))
	f.Fuzz(func(t *testing.T, v string) {
		epoch, ts, n, m, err := ds.ParseMembershipHeader(v)
		if err != nil {
			if !errors.Is(err, ds.ErrInvalidArgument) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if len(m) != sha256.Size || len(n) != ds.MembershipNonceSize {
			t.Fatalf("accepted a MAC of %d bytes, a nonce of %d", len(m), len(n))
		}
		// Only the canonical spelling is accepted.
		if again := ds.FormatMembershipHeader(epoch, ts, n, m); again != v {
			t.Fatalf("accepted %q, canonical form is %q", v, again)
		}
	})
}
