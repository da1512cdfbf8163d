package ds

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/cryptobyte"
)

// Deniable groups (GROUP_MODE_DENIABLE) prove membership with a MAC under
// a per-epoch key instead of a client session. The wire format is fixed by
// MembershipAuth in api/mlsds/v1/groups.proto; the helpers below are the
// one implementation of it that the server and the SDK share.

const (
	// MembershipLabel is the MLS-Exporter label (RFC 9420 §8.5) of the
	// membership key K_e = MLS-Exporter(MembershipLabel,
	// MembershipKeyContext(group_id, e), MembershipKeySize).
	MembershipLabel = "mlsds membership"

	// MembershipHeader is the request header that carries the proof:
	// "v1 <epoch> <unix-milliseconds> <nonce> <MAC>", the nonce (16 random
	// bytes) and the MAC in unpadded base64url.
	MembershipHeader = "Mlsds-Membership"

	// MembershipKeySize is the length in bytes of a membership key.
	MembershipKeySize = 32

	// MembershipNonceSize is the length in bytes of a proof's nonce. The
	// nonce makes every proof unique, so that two members making the same
	// call in the same millisecond are not taken for a replay.
	MembershipNonceSize = 16

	// membershipTranscriptLabel opens every MembershipTranscript, so that a
	// MAC over one can never be read as a MAC over anything else.
	membershipTranscriptLabel = "mlsds membership v1"

	// membershipVersion is the first field of the header.
	membershipVersion = "v1"
)

// MembershipKeyContext returns the exporter context of the membership key
// of epoch: the group id as raw bytes followed by the epoch as a
// big-endian uint64.
func MembershipKeyContext(groupID []byte, epoch uint64) []byte {
	out := make([]byte, 0, len(groupID)+8)
	out = append(out, groupID...)
	return binary.BigEndian.AppendUint64(out, epoch)
}

// MembershipTranscript returns the TLS encoding (RFC 9420 §2.1.2) of
//
//	struct {
//	  opaque label<V> = "mlsds membership v1";
//	  opaque procedure<V>;
//	  opaque group_id<V>;
//	  uint64 epoch;
//	  uint64 timestamp;
//	  opaque nonce<V>;
//	  opaque body_hash<V>;
//	} MembershipTranscript;
//
// procedure is the full RPC name ("/mlsds.v1.GroupService/Send"),
// unixMilli and nonce the header's, and bodyHash the SHA-256 of the
// request message's deterministic protobuf encoding. It panics only if a
// field is over the 2^30-1 bytes a variable-length vector can hold.
func MembershipTranscript(procedure string, groupID []byte, epoch, unixMilli uint64, nonce, bodyHash []byte) []byte {
	var b cryptobyte.Builder
	addOpaqueV(&b, []byte(membershipTranscriptLabel))
	addOpaqueV(&b, []byte(procedure))
	addOpaqueV(&b, groupID)
	b.AddUint64(epoch)
	b.AddUint64(unixMilli)
	addOpaqueV(&b, nonce)
	addOpaqueV(&b, bodyHash)
	return b.BytesOrPanic()
}

// MembershipMAC returns HMAC-SHA256(key, transcript).
func MembershipMAC(key, transcript []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(transcript)
	return m.Sum(nil)
}

// FormatMembershipHeader returns the value of the Mlsds-Membership header.
func FormatMembershipHeader(epoch, unixMilli uint64, nonce, mac []byte) string {
	return membershipVersion + " " + strconv.FormatUint(epoch, 10) + " " +
		strconv.FormatUint(unixMilli, 10) + " " + base64.RawURLEncoding.EncodeToString(nonce) + " " +
		base64.RawURLEncoding.EncodeToString(mac)
}

// NewMembershipNonce returns MembershipNonceSize random bytes.
func NewMembershipNonce() []byte {
	n := make([]byte, MembershipNonceSize)
	rand.Read(n)
	return n
}

// ParseMembershipHeader reads a value written by FormatMembershipHeader.
// It accepts only the canonical form: version "v1", single spaces, decimal
// numbers without sign or leading zeros, and a 16-byte nonce and a 32-byte
// MAC in unpadded base64url. Any other value is an ErrInvalidArgument.
func ParseMembershipHeader(v string) (epoch, unixMilli uint64, nonce, mac []byte, err error) {
	fields := strings.Split(v, " ")
	if len(fields) != 5 {
		return 0, 0, nil, nil, fmt.Errorf("%w: %s header must be %q", ErrInvalidArgument, MembershipHeader, "v1 <epoch> <unix-ms> <base64url nonce> <base64url MAC>")
	}
	if fields[0] != membershipVersion {
		return 0, 0, nil, nil, fmt.Errorf("%w: %s header version must be %q", ErrInvalidArgument, MembershipHeader, membershipVersion)
	}
	if epoch, err = parseCanonicalUint(fields[1]); err != nil {
		return 0, 0, nil, nil, fmt.Errorf("%w: %s header epoch: %v", ErrInvalidArgument, MembershipHeader, err)
	}
	if unixMilli, err = parseCanonicalUint(fields[2]); err != nil {
		return 0, 0, nil, nil, fmt.Errorf("%w: %s header timestamp: %v", ErrInvalidArgument, MembershipHeader, err)
	}
	if len(fields[3]) != base64.RawURLEncoding.EncodedLen(MembershipNonceSize) {
		return 0, 0, nil, nil, fmt.Errorf("%w: %s header nonce must be %d bytes in unpadded base64url", ErrInvalidArgument, MembershipHeader, MembershipNonceSize)
	}
	nonce, err = base64.RawURLEncoding.Strict().DecodeString(fields[3])
	if err != nil || len(nonce) != MembershipNonceSize {
		return 0, 0, nil, nil, fmt.Errorf("%w: %s header nonce must be %d bytes in unpadded base64url", ErrInvalidArgument, MembershipHeader, MembershipNonceSize)
	}
	if len(fields[4]) != base64.RawURLEncoding.EncodedLen(sha256.Size) {
		return 0, 0, nil, nil, fmt.Errorf("%w: %s header MAC must be %d bytes in unpadded base64url", ErrInvalidArgument, MembershipHeader, sha256.Size)
	}
	mac, err = base64.RawURLEncoding.Strict().DecodeString(fields[4])
	if err != nil || len(mac) != sha256.Size {
		return 0, 0, nil, nil, fmt.Errorf("%w: %s header MAC must be %d bytes in unpadded base64url", ErrInvalidArgument, MembershipHeader, sha256.Size)
	}
	return epoch, unixMilli, nonce, mac, nil
}

// parseCanonicalUint parses a decimal uint64 with no sign and no leading
// zeros, so that each value has exactly one spelling.
func parseCanonicalUint(s string) (uint64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty number")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%q is not a decimal number", s)
		}
	}
	if len(s) > 1 && s[0] == '0' {
		return 0, fmt.Errorf("%q has a leading zero", s)
	}
	return strconv.ParseUint(s, 10, 64)
}
