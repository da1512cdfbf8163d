package server

import (
	"bytes"
	"testing"
	"time"
)

// TestVerifiedTokenCache: a token that verified is served from memory,
// without allocating, until it expires; a tampered or expired token is
// refused, cached or not.
func TestVerifiedTokenCache(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	tk, err := newTokens(bytes.Repeat([]byte{7}, 32), time.Minute, time.Hour, clock)
	if err != nil {
		t.Fatal(err)
	}
	a := &authenticator{s: &Server{cfg: Config{Now: clock}, tokens: tk}}
	token, _ := tk.session("alice")
	for range 2 {
		if id, err := a.verify(token); err != nil || id != "alice" {
			t.Fatalf("verify = %q, %v", id, err)
		}
	}
	if n := testing.AllocsPerRun(100, func() { a.verify(token) }); n != 0 {
		t.Errorf("verifying a known token allocates %v times", n)
	}
	tampered := token[:len(token)-2] + "AA"
	if _, err := a.verify(tampered); err == nil {
		t.Error("a tampered token verified")
	}
	now = now.Add(time.Hour + time.Second)
	if _, err := a.verify(token); err == nil {
		t.Error("an expired token verified from the cache")
	}
}

// TestLimitersDoNotAllocate: charging a call to a client or an address
// that has tokens left allocates nothing.
func TestLimitersDoNotAllocate(t *testing.T) {
	now := time.Unix(0, 0)
	l := newIPLimiter(1e9, 1<<30, 10)
	l.reserve(now, "10.0.0.1:1000")
	if n := testing.AllocsPerRun(100, func() { l.reserve(now, "10.0.0.1:1000") }); n != 0 {
		t.Errorf("ipLimiter.reserve allocates %v times", n)
	}
}
