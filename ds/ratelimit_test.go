package ds

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestKeyedLimiter(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newKeyedLimiter("test", 1, 2, 3)
	for i := 0; i < 2; i++ {
		if err := l.reserve(now, "a"); err != nil {
			t.Fatalf("within the burst: %v", err)
		}
	}
	err := l.reserve(now, "a")
	var rl *RateLimitedError
	if !errors.As(err, &rl) || rl.RetryAfter != time.Second || rl.What != "test" {
		t.Fatalf("over the burst: %v, want RateLimitedError{RetryAfter: 1s}", err)
	}
	if err := l.reserve(now.Add(time.Second), "a"); err != nil {
		t.Errorf("after RetryAfter: %v", err)
	}

	// All or nothing over several keys: "b" is refused because "a" is
	// empty, and keeps its tokens.
	if err := l.reserve(now.Add(time.Second), "b", "a"); err == nil {
		t.Fatal("reserve with an empty key succeeded")
	}
	for i := 0; i < 2; i++ {
		if err := l.reserve(now.Add(time.Second), "b"); err != nil {
			t.Fatalf("b lost a token to a refused reservation: %v", err)
		}
	}

	// Bounded: at most 3 keys are kept.
	for i := 0; i < 10; i++ {
		l.reserve(now, fmt.Sprint("k", i))
	}
	if n := l.len(); n != 3 {
		t.Errorf("%d keys tracked, want 3", n)
	}
	if newKeyedLimiter("off", -1, 0, 10) != nil {
		t.Error("a negative rate should turn the limiter off")
	}
	var off *keyedLimiter
	if err := off.reserve(now, "x"); err != nil {
		t.Errorf("nil limiter refused: %v", err)
	}
}

func TestLocalNotifier(t *testing.T) {
	n := NewLocalNotifier()
	var a, b int
	stopA := n.Listen("t", func() { a++ })
	n.Listen("t", func() { b++ })
	n.Listen("other", func() { t.Error("wrong topic woken") })
	n.Notify(context.Background(), "t")
	stopA()
	stopA() // idempotent
	n.Notify(context.Background(), "t", "t")
	if a != 1 || b != 3 {
		t.Errorf("a woken %d times, b %d; want 1 and 3", a, b)
	}
}

// TestKeyedLimiterDoesNotAllocate: charging a request to a client with
// tokens left allocates nothing.
func TestKeyedLimiterDoesNotAllocate(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newKeyedLimiter("test", 1e9, 1<<30, 10)
	l.reserve(now, "a")
	if n := testing.AllocsPerRun(100, func() { l.reserve(now, "a") }); n != 0 {
		t.Errorf("reserve allocates %v times", n)
	}
}
