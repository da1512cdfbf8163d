package ds

import (
	"container/list"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// keyedLimiter is a token bucket per key (a client id), with at most max
// keys: when a new key would exceed max, the least recently used one is
// forgotten (and starts again with a full bucket if it comes back).
type keyedLimiter struct {
	what  string
	limit rate.Limit
	burst int
	max   int

	mu  sync.Mutex
	lru *list.List // of *limiterEntry, most recent at the front
	m   map[string]*list.Element
}

type limiterEntry struct {
	key string
	lim *rate.Limiter
}

// newKeyedLimiter returns a limiter of perSecond events per second with
// the given burst, or nil (no limit) if perSecond is negative.
func newKeyedLimiter(what string, perSecond float64, burst, max int) *keyedLimiter {
	if perSecond < 0 {
		return nil
	}
	if burst < 1 {
		burst = 1
	}
	return &keyedLimiter{
		what:  what,
		limit: rate.Limit(perSecond),
		burst: burst,
		max:   max,
		lru:   list.New(),
		m:     make(map[string]*list.Element),
	}
}

func (k *keyedLimiter) get(key string) *rate.Limiter {
	if e, ok := k.m[key]; ok {
		k.lru.MoveToFront(e)
		return e.Value.(*limiterEntry).lim
	}
	for k.lru.Len() >= k.max && k.lru.Len() > 0 {
		old := k.lru.Back()
		k.lru.Remove(old)
		delete(k.m, old.Value.(*limiterEntry).key)
	}
	lim := rate.NewLimiter(k.limit, k.burst)
	k.m[key] = k.lru.PushFront(&limiterEntry{key: key, lim: lim})
	return lim
}

// reserve takes one token for each key at now, or none of them: if any key
// has no token, it returns a *RateLimitedError with the longest wait.
func (k *keyedLimiter) reserve(now time.Time, keys ...string) error {
	if k == nil {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(keys) == 1 && k.get(keys[0]).AllowN(now, 1) {
		return nil // the usual case, without a Reservation to allocate
	}
	if wait, ok := k.takeNLocked(now, 1, keys); wait > 0 || !ok {
		if !ok {
			wait = time.Hour // burst < 1 cannot happen; be safe
		}
		return &RateLimitedError{RetryAfter: wait, What: k.what}
	}
	return nil
}

// takeNLocked takes n tokens for each key at now, or none of them. ok is
// false if some key can never give n at once (n above its burst); else
// wait is how long the key that is furthest from n tokens needs, zero if
// the tokens were taken.
func (k *keyedLimiter) takeNLocked(now time.Time, n int, keys []string) (wait time.Duration, ok bool) {
	ok = true
	var taken []*rate.Reservation
	for _, key := range keys {
		r := k.get(key).ReserveN(now, n)
		switch d := r.DelayFrom(now); {
		case !r.OK():
			ok = false
		case d > 0:
			wait = max(wait, d)
			r.CancelAt(now)
		default:
			taken = append(taken, r)
		}
	}
	if wait > 0 || !ok {
		for _, r := range taken {
			r.CancelAt(now)
		}
	}
	return wait, ok
}

// len returns how many keys are tracked (for tests).
func (k *keyedLimiter) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lru.Len()
}
