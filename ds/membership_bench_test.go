package ds_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
)

// BenchmarkMembershipMAC measures what proving membership of a deniable
// group costs per request, on each side, for a Send of a message of the
// given size:
//
//   - verify: what the server does with the Mlsds-Membership header of a
//     request, besides looking the key up in its store and the replay
//     cache: hash the request message's deterministic protobuf encoding,
//     parse the header, rebuild the transcript, compute the HMAC and
//     compare it in constant time;
//   - sign: what the client does: the same hash, the transcript, the HMAC
//     and the header.
//
// The body hash dominates for large messages (b.SetBytes makes MB/s of
// it); the rest is a constant of about two SHA-256 compressions.
func BenchmarkMembershipMAC(b *testing.B) {
	const procedure = "/mlsds.v1.GroupService/Send"
	key := make([]byte, ds.MembershipKeySize)
	rand.Read(key)
	groupID := make([]byte, 16)
	rand.Read(groupID)
	const epoch = 42
	for _, size := range []int{100, 1 << 10, 64 << 10} {
		msg := make([]byte, size)
		rand.Read(msg)
		req := &mlsdsv1.SendRequest{Message: msg}
		body, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
		if err != nil {
			b.Fatal(err)
		}
		sum := sha256.Sum256(body)
		ts := uint64(time.Now().UnixMilli())
		nonce := ds.NewMembershipNonce()
		header := ds.FormatMembershipHeader(epoch, ts, nonce, ds.MembershipMAC(key, ds.MembershipTranscript(procedure, groupID, epoch, ts, nonce, sum[:])))

		b.Run(fmt.Sprintf("verify/%dB", size), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				body, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
				if err != nil {
					b.Fatal(err)
				}
				sum := sha256.Sum256(body)
				e, ms, n, mac, err := ds.ParseMembershipHeader(header)
				if err != nil {
					b.Fatal(err)
				}
				want := ds.MembershipMAC(key, ds.MembershipTranscript(procedure, groupID, e, ms, n, sum[:]))
				if !hmac.Equal(want, mac) {
					b.Fatal("the MAC does not verify")
				}
			}
		})
		b.Run(fmt.Sprintf("sign/%dB", size), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			var h string
			for b.Loop() {
				body, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
				if err != nil {
					b.Fatal(err)
				}
				sum := sha256.Sum256(body)
				h = ds.FormatMembershipHeader(epoch, ts, nonce, ds.MembershipMAC(key, ds.MembershipTranscript(procedure, groupID, epoch, ts, nonce, sum[:])))
			}
			if !bytes.Equal([]byte(h), []byte(header)) {
				b.Fatal("signing is not deterministic for equal inputs")
			}
		})
	}
}
