package ds

import "fmt"

// Bounds of the numbers a client sends. The wire carries group sequence
// numbers and epochs as uint64 (RFC 9420 §6 for epochs), but the stores
// keep them in signed 64-bit columns, and an epoch needs room to grow by
// one with each Commit. A number beyond these no group reaches: it is the
// client's mistake, refused with ErrInvalidArgument before it gets to a
// store.
const (
	// maxGroupSeq is the largest group sequence number.
	maxGroupSeq = 1<<63 - 1
	// maxEpoch is the largest epoch an opaque group may be created at or
	// a remote tree may be stored for.
	maxEpoch = 1<<62 - 1
)

// checkSeq refuses a group sequence number above maxGroupSeq; what names
// the field.
func checkSeq(what string, v uint64) error {
	if v > maxGroupSeq {
		return fmt.Errorf("%w: %s %d is above the largest group sequence number, %d", ErrInvalidArgument, what, v, uint64(maxGroupSeq))
	}
	return nil
}

// checkEpochBound refuses an epoch above maxEpoch; what names the field.
func checkEpochBound(what string, v uint64) error {
	if v > maxEpoch {
		return fmt.Errorf("%w: %s %d is above the largest epoch, %d", ErrInvalidArgument, what, v, uint64(maxEpoch))
	}
	return nil
}
