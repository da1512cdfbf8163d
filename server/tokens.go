package server

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"time"
)

// AuthLabel is the SignWithLabel label (RFC 9420 §5.1.2) under which a
// client signs the challenge it got from GetChallenge.
const AuthLabel = "mlsds auth"

// Challenges and session tokens are stateless: both carry their own expiry
// and an HMAC-SHA256 over their content, under keys derived from one
// secret. Both are therefore valid on every node that shares the secret,
// and across restarts if the secret is kept (mlsds serve keeps it in the
// data directory). A challenge is single use on all nodes together: its
// nonce is spent in the store (ds.Service.SpendOnce) when it is redeemed,
// and remembered there until the challenge expires. Each process also
// remembers the nonces it redeemed, which turns a replay to the same node
// away without a store write.

const (
	nonceSize = 16
	macSize   = 32
	// challengeSize is nonce || expiry (uint64 Unix nanoseconds) || MAC.
	challengeSize = nonceSize + 8 + macSize
	tokenPrefix   = "v1."
)

var (
	errBadChallenge = errors.New("challenge is malformed, expired, already used or issued for another client; get a new one with GetChallenge")
	errBadToken     = errors.New("session token is malformed, expired or not issued by this server; authenticate again")
)

// tokens mints and checks challenges and session tokens.
type tokens struct {
	challengeKey []byte
	sessionKey   []byte
	challengeTTL time.Duration
	sessionTTL   time.Duration
	now          func() time.Time

	mu   sync.Mutex
	used map[[nonceSize]byte]time.Time // redeemed challenge nonces -> expiry
	next time.Time                     // next sweep of used
}

func newTokens(secret []byte, challengeTTL, sessionTTL time.Duration, now func() time.Time) (*tokens, error) {
	if len(secret) < 32 {
		return nil, errors.New("server: the authentication secret must be at least 32 bytes")
	}
	return &tokens{
		challengeKey: derive(secret, "mlsds challenge v1"),
		sessionKey:   derive(secret, "mlsds session token v1"),
		challengeTTL: challengeTTL,
		sessionTTL:   sessionTTL,
		now:          now,
		used:         make(map[[nonceSize]byte]time.Time),
	}, nil
}

func derive(secret []byte, label string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// mac computes HMAC-SHA256 under key over the length-prefixed parts.
func mac(key []byte, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	var n [4]byte
	for _, p := range parts {
		binary.BigEndian.PutUint32(n[:], uint32(len(p)))
		m.Write(n[:])
		m.Write(p)
	}
	return m.Sum(nil)
}

// challenge returns a fresh challenge for clientID and its expiry.
func (t *tokens) challenge(clientID string) ([]byte, time.Time, error) {
	exp := t.now().Add(t.challengeTTL)
	c := make([]byte, nonceSize+8, challengeSize)
	if _, err := rand.Read(c[:nonceSize]); err != nil {
		return nil, time.Time{}, err
	}
	binary.BigEndian.PutUint64(c[nonceSize:], uint64(exp.UnixNano()))
	c = append(c, mac(t.challengeKey, []byte("challenge"), []byte(clientID), c[:nonceSize+8])...)
	return c, exp, nil
}

// redeem checks that c is a challenge issued under this secret for
// clientID, unexpired and not redeemed on this node before, and marks it
// redeemed here. It returns the challenge's nonce and expiry, which the
// caller must spend in the store (the challenge may have been redeemed on
// another node). A challenge is spent by the first attempt that presents
// it, whatever its outcome.
func (t *tokens) redeem(clientID string, c []byte) (nonce []byte, exp time.Time, err error) {
	if len(c) != challengeSize {
		return nil, time.Time{}, errBadChallenge
	}
	want := mac(t.challengeKey, []byte("challenge"), []byte(clientID), c[:nonceSize+8])
	if !hmac.Equal(want, c[nonceSize+8:]) {
		return nil, time.Time{}, errBadChallenge
	}
	exp = time.Unix(0, int64(binary.BigEndian.Uint64(c[nonceSize:])))
	now := t.now()
	if !now.Before(exp) {
		return nil, time.Time{}, errBadChallenge
	}
	var n [nonceSize]byte
	copy(n[:], c)
	t.mu.Lock()
	defer t.mu.Unlock()
	if now.After(t.next) {
		for n, e := range t.used {
			if !now.Before(e) {
				delete(t.used, n)
			}
		}
		t.next = now.Add(t.challengeTTL)
	}
	if _, ok := t.used[n]; ok {
		return nil, time.Time{}, errBadChallenge
	}
	t.used[n] = exp
	return n[:], exp, nil
}

// session mints a session token for clientID.
func (t *tokens) session(clientID string) (string, time.Time) {
	exp := t.now().Add(t.sessionTTL).Truncate(time.Second)
	payload := binary.BigEndian.AppendUint64(nil, uint64(exp.Unix()))
	payload = append(payload, clientID...)
	sum := mac(t.sessionKey, payload)
	enc := base64.RawURLEncoding
	return tokenPrefix + enc.EncodeToString(payload) + "." + enc.EncodeToString(sum), exp
}

// verify returns the client id a session token was issued to.
func (t *tokens) verify(token string) (string, error) {
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return "", errBadToken
	}
	p, s, ok := strings.Cut(rest, ".")
	if !ok || len(p) > 1024 {
		return "", errBadToken
	}
	enc := base64.RawURLEncoding.Strict()
	payload, err := enc.DecodeString(p)
	if err != nil || len(payload) <= 8 {
		return "", errBadToken
	}
	sum, err := enc.DecodeString(s)
	if err != nil || !hmac.Equal(sum, mac(t.sessionKey, payload)) {
		return "", errBadToken
	}
	exp := time.Unix(int64(binary.BigEndian.Uint64(payload)), 0)
	if !t.now().Before(exp) {
		return "", errBadToken
	}
	return string(payload[8:]), nil
}
