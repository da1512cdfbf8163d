package server

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

func TestTokens(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	secret := bytes.Repeat([]byte{7}, 32)
	tk, err := newTokens(secret, time.Minute, time.Hour, clock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newTokens(secret[:31], time.Minute, time.Hour, clock); err == nil {
		t.Fatal("short secret accepted")
	}

	tok, exp := tk.session("alice")
	if !exp.Equal(now.Add(time.Hour)) {
		t.Fatalf("expiry %v", exp)
	}
	if id, err := tk.verify(tok); err != nil || id != "alice" {
		t.Fatalf("verify: %q %v", id, err)
	}
	// Another server with the same secret accepts the token (nodes, restarts);
	// one with another secret does not.
	tk2, _ := newTokens(secret, time.Minute, time.Hour, clock)
	if id, err := tk2.verify(tok); err != nil || id != "alice" {
		t.Fatalf("same secret: %q %v", id, err)
	}
	tk3, _ := newTokens(bytes.Repeat([]byte{8}, 32), time.Minute, time.Hour, clock)
	if _, err := tk3.verify(tok); err == nil {
		t.Fatal("token accepted under another secret")
	}
	for i := range tok {
		bad := []byte(tok)
		bad[i] ^= 0x01
		if id, err := tk.verify(string(bad)); err == nil && id != "alice" {
			t.Fatalf("flipping byte %d yields a token for %q", i, id)
		}
	}
	now = now.Add(time.Hour)
	if _, err := tk.verify(tok); err == nil {
		t.Fatal("expired token accepted")
	}

	// Challenges: bound to the client, single use on this node, expiring;
	// valid on another node with the same secret (which spends it in the
	// shared store), not under another secret.
	c, _, err := tk.challenge("bob")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tk3.redeem("bob", c); err == nil {
		t.Fatal("challenge redeemed under another secret")
	}
	if _, _, err := tk.redeem("alice", c); err == nil {
		t.Fatal("bob's challenge redeemed for alice")
	}
	n1, exp1, err := tk.redeem("bob", c)
	if err != nil {
		t.Fatal(err)
	}
	n2, exp2, err := tk2.redeem("bob", c)
	if err != nil {
		t.Fatalf("challenge refused by a node with the same secret: %v", err)
	}
	if !bytes.Equal(n1, n2) || !exp1.Equal(exp2) || len(n1) != nonceSize {
		t.Fatalf("nodes disagree on the nonce to spend: %x %v, %x %v", n1, exp1, n2, exp2)
	}
	if _, _, err := tk.redeem("bob", c); err == nil {
		t.Fatal("challenge redeemed twice")
	}
	c2, _, _ := tk.challenge("bob")
	now = now.Add(time.Minute)
	if _, _, err := tk.redeem("bob", c2); err == nil {
		t.Fatal("expired challenge redeemed")
	}
	// Redeemed nonces are forgotten once expired.
	for i := 0; i < 10; i++ {
		c, _, _ := tk.challenge("bob")
		if _, _, err := tk.redeem("bob", c); err != nil {
			t.Fatal(err)
		}
	}
	now = now.Add(2 * time.Minute)
	c, _, _ = tk.challenge("bob")
	if _, _, err := tk.redeem("bob", c); err != nil {
		t.Fatal(err)
	}
	if n := len(tk.used); n != 1 {
		t.Fatalf("%d redeemed nonces remembered after expiry, want 1", n)
	}
}

func TestIPLimiter(t *testing.T) {
	now := time.Unix(0, 0)
	l := newIPLimiter(1, 2, 4)
	for i := 0; i < 2; i++ {
		if d := l.reserve(now, "10.0.0.1:1000"); d != 0 {
			t.Fatalf("call %d limited", i)
		}
	}
	if d := l.reserve(now, "10.0.0.1:2000"); d <= 0 {
		t.Fatal("third call within the burst allowed (ports do not matter)")
	}
	if d := l.reserve(now, "10.0.0.2:1000"); d != 0 {
		t.Fatal("another address limited")
	}
	// IPv6 addresses share a bucket per /64.
	l.reserve(now, "[2001:db8::1]:1")
	l.reserve(now, "[2001:db8::2]:1")
	if d := l.reserve(now, "[2001:db8::3]:1"); d <= 0 {
		t.Fatal("a /64 got more than its burst")
	}
	if got, want := peerAddr("[::ffff:10.0.0.1]:5"), netip.MustParseAddr("10.0.0.1"); got != want {
		t.Fatalf("mapped address %v, want %v", got, want)
	}
	// The table stays bounded.
	for i := 0; i < 100; i++ {
		l.reserve(now, netip.AddrFrom4([4]byte{192, 168, 0, byte(i)}).String()+":1")
	}
	if n := len(l.entries); n > 4 {
		t.Fatalf("%d addresses tracked, bound is 4", n)
	}
	var off *ipLimiter
	if off.reserve(now, "x") != 0 {
		t.Fatal("a nil limiter limits")
	}
}
