package ds

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"
	"time"
)

func digestOf(i int) [32]byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(i))
	return sha256.Sum256(b[:])
}

// TestReplayCacheRefusesReplays: a proof is admitted once within the
// window; once its timestamp left the window it is forgotten (the
// timestamp check refuses it then).
func TestReplayCacheRefusesReplays(t *testing.T) {
	c := newReplayCache(1<<20, 2*time.Minute)
	now := uint64(10_000_000)
	if !c.admit(digestOf(1), now, now) {
		t.Fatal("a new proof was refused")
	}
	if c.admit(digestOf(1), now, now+1000) {
		t.Fatal("a replay within the window was admitted")
	}
	if !c.admit(digestOf(2), now, now) {
		t.Fatal("another proof of the same millisecond was refused")
	}
	later := now + uint64((2 * time.Minute).Milliseconds()) + 1
	if !c.admit(digestOf(3), later, later) {
		t.Fatal("a new proof was refused")
	}
	if n := c.len(); n != 1 {
		t.Fatalf("%d proofs remembered after the window passed, want 1", n)
	}
}

// TestReplayCacheBounded: the cache never holds more than its bound; what
// it had to forget before its time cannot come back, because every proof
// at or below the forgotten timestamp is refused from then on.
func TestReplayCacheBounded(t *testing.T) {
	const entries = 8
	c := newReplayCache(entries*replayEntryBytes, 2*time.Minute)
	now := uint64(10_000_000)
	for i := range 3 * entries {
		if !c.admit(digestOf(i), now+uint64(i), now+uint64(i)) {
			t.Fatalf("proof %d refused", i)
		}
		if c.len() > entries {
			t.Fatalf("%d entries, bound %d", c.len(), entries)
		}
	}
	// Proof 0 was forgotten: replaying it must still fail.
	for i := range 2 * entries {
		if c.admit(digestOf(i), now+uint64(i), now+uint64(3*entries)) {
			t.Fatalf("forgotten proof %d admitted again", i)
		}
	}
	// A fresh proof with a current timestamp goes through.
	if !c.admit(digestOf(1000), now+uint64(3*entries), now+uint64(3*entries)) {
		t.Fatal("a fresh proof was refused")
	}
}
