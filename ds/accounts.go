package ds

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/mlsds/mlsds/mls"
)

// Accounts: who may register which client id under which user id, the
// device links that admit a user's further clients, and the directory of
// client keys that members check credentials against. The DS is the
// Authentication Service's stand-in here: it binds a client id (the
// identity of a basic credential) to a signature key and a user, and
// hands out only bindings it made (RFC 9750 §5; members check them as RFC
// 9420 §5.3.1 asks).

// RegisterLabel is the SignWithLabel label (RFC 9420 §5.1.2) of the proof
// of possession a client sends with its registration.
const RegisterLabel = "mlsds register"

// RegisterTBS returns the content a client signs, with RegisterLabel and
// the signature key it registers, to prove that it holds the key:
//
//	struct {
//	  opaque credential<V>;
//	  opaque signature_key<V>;
//	  uint16 cipher_suite;
//	  opaque user_id<V>;
//	} RegisterTBS;
//
// credential is the TLS-encoded Credential as sent, userID the user id as
// sent (empty when the client is its own user). Vectors have variable-size
// length prefixes (RFC 9420 §2.1.2).
func RegisterTBS(credential, signatureKey []byte, cs mls.CipherSuite, userID string) []byte {
	var b cryptobyte.Builder
	addOpaqueV(&b, credential)
	addOpaqueV(&b, signatureKey)
	b.AddUint16(uint16(cs))
	addOpaqueV(&b, []byte(userID))
	return b.BytesOrPanic()
}

// addOpaqueV appends v with the variable-size length prefix of RFC 9420
// §2.1.2 (1, 2 or 4 bytes; lengths of 2^30 and over cannot be encoded).
func addOpaqueV(b *cryptobyte.Builder, v []byte) {
	n := len(v)
	switch {
	case n < 1<<6:
		b.AddUint8(uint8(n))
	case n < 1<<14:
		b.AddUint16(uint16(n) | 0x4000)
	case n < 1<<30:
		b.AddUint32(uint32(n) | 0x80000000)
	default:
		b.SetError(errors.New("ds: vector too long for a variable-size length"))
		return
	}
	b.AddBytes(v)
}

// VerifyRegisterProof checks proof, the SignWithLabel signature over
// RegisterTBS with the key being registered.
func VerifyRegisterProof(credential, signatureKey []byte, cs mls.CipherSuite, userID string, proof []byte) error {
	if len(proof) == 0 {
		return fmt.Errorf("%w: missing proof of possession: set proof to SignWithLabel(signature_key, %q, RegisterTBS) (RFC 9420 §5.1.2), "+
			"RegisterTBS being the TLS encoding of {opaque credential<V>; opaque signature_key<V>; uint16 cipher_suite; opaque user_id<V>} of this request",
			ErrInvalidArgument, RegisterLabel)
	}
	if err := cs.VerifyWithLabel(signatureKey, RegisterLabel, RegisterTBS(credential, signatureKey, cs, userID), proof); err != nil {
		return fmt.Errorf("%w: the proof of possession does not verify: it must be SignWithLabel(signature_key, %q, RegisterTBS) (RFC 9420 §5.1.2) "+
			"with the private key of signature_key, RegisterTBS being the TLS encoding of {opaque credential<V>; opaque signature_key<V>; uint16 cipher_suite; opaque user_id<V>} "+
			"with exactly the credential, signature_key, cipher_suite and user_id of this request", ErrPermissionDenied, RegisterLabel)
	}
	return nil
}

var (
	// ErrRegistrationRefused refuses a registration whose client id or
	// user id is not available to the registering key: the id is
	// registered with another key, or names another user, or the user has
	// clients and no valid device link was given. It says the same in
	// every case, so that a refusal does not tell who is registered.
	ErrRegistrationRefused = errors.New("registration refused: this client id or user id is not available to this key; " +
		"to add a device to an existing user, use a device link from one of its clients")

	// ErrAlreadyUsed reports a single-use value (a challenge, a JWT id, a
	// device link) presented a second time.
	ErrAlreadyUsed = errors.New("ds: already used")
)

// ClientRegistration is a client to store and what admits it. Under one
// transaction, Store.RegisterClient
//
//  1. fails with ErrAlreadyExists if Client.ID is registered (and spends
//     nothing);
//  2. fails with ErrRegistrationRefused if Client.ID is the user id of
//     other clients while Client.UserID is not Client.ID, or if
//     Client.UserID is the id of a client of another user (client ids and
//     user ids are one namespace, so that no client can pose as a user);
//  3. spends Once, if not nil, as SpendOnce does (ErrAlreadyUsed);
//  4. unless UserVouched, if Client.UserID has clients already, requires
//     DeviceLink to be the hash of a link made for that user, unused and
//     unexpired at Now, and marks it used by Client.ID; without one it
//     fails with ErrRegistrationRefused;
//  5. if MaxClientsPerUser > 0 and Client.UserID has that many clients
//     already, fails with a *QuotaExceededError{What:
//     QuotaClientsPerUser};
//  6. stores Client.
type ClientRegistration struct {
	Client Client
	// UserVouched says that the registration policy established that the
	// caller acts for Client.UserID (a JWT of the identity service), so
	// that no device link is needed.
	UserVouched bool
	// DeviceLink is the SHA-256 of the device link presented, or nil.
	DeviceLink []byte
	// Once, when not nil, is spent in the same transaction.
	Once *OnceRecord
	Now  time.Time
	// MaxClientsPerUser caps the clients of Client.UserID; 0: no cap.
	MaxClientsPerUser int
}

// DeviceLinkRecord is a stored device link. Only the hash of its secret
// is stored.
type DeviceLinkRecord struct {
	Hash      []byte // SHA-256 of the secret
	UserID    string
	Creator   string // the client that made it
	CreatedAt time.Time
	ExpiresAt time.Time
}

// OnceRecord is a single-use value, identified by a hash of it within a
// scope ("challenge", "jwt"), remembered until it expires.
type OnceRecord struct {
	Scope   string
	Key     []byte // SHA-256 of the value
	Expires time.Time
	Now     time.Time
}

// Device links.
const (
	DefaultDeviceLinkTTL = 10 * time.Minute
	MaxDeviceLinkTTL     = 24 * time.Hour
	// maxDeviceLinksPerClient bounds the unused, unexpired links one
	// client holds.
	maxDeviceLinksPerClient = 20
	deviceLinkPrefix        = "mlsds-link-"
)

// Registration is a client to register and what the caller presented to
// be admitted.
type Registration struct {
	Client Client // UserID "" means the client is its own user
	// DeviceLink is a link from CreateDeviceLink, or "".
	DeviceLink string
	// UserVouched says that the caller proved to act for Client.UserID by
	// other means (a JWT); no device link is needed then.
	UserVouched bool
	// Once, when Value is not nil, is spent with the registration, so
	// that it admits one client only (a JWT's id).
	Once Once
}

// Once is a single-use value: Value may be spent once in Scope until
// Expires.
type Once struct {
	Scope   string
	Value   []byte
	Expires time.Time
}

// Register registers a client (a device). The first client of a user id
// owns it (in open and token registration, RFC 9750 §5 leaves it to the
// DS which bindings it vouches for): every further client of the user
// needs r.DeviceLink, made by an existing client of the user, or
// r.UserVouched. Registering the same client again with the same key,
// suite and user succeeds and changes nothing.
//
// Refusals for ids that are not available wrap ErrRegistrationRefused
// (and ErrAlreadyExists when the client id is registered with another
// key); the error's text names the cause, for logs, and must not be shown
// to the caller.
func (s *Service) Register(ctx context.Context, r Registration) (Client, error) {
	c := r.Client
	if err := s.checkID("client", c.ID); err != nil {
		return Client{}, err
	}
	if c.UserID == "" {
		c.UserID = c.ID
	}
	if err := s.checkID("user", c.UserID); err != nil {
		return Client{}, err
	}
	if !suiteKnown(c.CipherSuite) {
		return Client{}, fmt.Errorf("%w: unsupported cipher suite %d", ErrInvalidArgument, c.CipherSuite)
	}
	if len(c.SignatureKey) == 0 {
		return Client{}, fmt.Errorf("%w: empty signature key", ErrInvalidArgument)
	}
	now := s.now()
	c.CreatedAt = now
	cr := ClientRegistration{Client: c, UserVouched: r.UserVouched, Now: now, MaxClientsPerUser: max(0, s.cfg.MaxClientsPerUser)}
	if r.DeviceLink != "" {
		h := sha256.Sum256([]byte(r.DeviceLink))
		cr.DeviceLink = h[:]
	}
	if r.Once.Value != nil {
		cr.Once = s.onceRecord(r.Once.Scope, r.Once.Value, r.Once.Expires, now)
	}
	err := s.store.RegisterClient(ctx, cr)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, ErrAlreadyExists) {
		return Client{}, err
	}
	old, gerr := s.store.Client(ctx, c.ID)
	if gerr != nil {
		return Client{}, err
	}
	if old.CipherSuite == c.CipherSuite && old.UserID == c.UserID {
		// The same registration again: the key is one the client holds.
		keys, kerr := s.binder().keysOf(ctx, c.ID)
		if kerr != nil {
			return Client{}, kerr
		}
		for _, k := range keys {
			if bytes.Equal(k, c.SignatureKey) {
				return old, nil
			}
		}
	}
	return Client{}, fmt.Errorf("%w (client id %q is registered with another key, suite or user: %w)", ErrRegistrationRefused, c.ID, ErrAlreadyExists)
}

// CreateDeviceLink makes a one-time link with which one new client
// registers under the user of caller. ttl 0 means DefaultDeviceLinkTTL; it
// may not exceed MaxDeviceLinkTTL. The secret is returned once: the store
// keeps only its SHA-256.
func (s *Service) CreateDeviceLink(ctx context.Context, caller string, ttl time.Duration) (DeviceLink, error) {
	if err := s.allow(caller); err != nil {
		return DeviceLink{}, err
	}
	switch {
	case ttl == 0:
		ttl = DefaultDeviceLinkTTL
	case ttl < 0 || ttl > MaxDeviceLinkTTL:
		return DeviceLink{}, fmt.Errorf("%w: a device link lives at most %v; ask for a shorter ttl", ErrInvalidArgument, MaxDeviceLinkTTL)
	}
	c, err := s.store.Client(ctx, caller)
	if err != nil {
		return DeviceLink{}, err
	}
	// 256 bits of the system's randomness: a link is as good as a
	// password for the user.
	var raw [32]byte
	rand.Read(raw[:])
	secret := deviceLinkPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	h := sha256.Sum256([]byte(secret))
	now := s.now()
	rec := DeviceLinkRecord{Hash: h[:], UserID: c.UserID, Creator: c.ID, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := s.store.CreateDeviceLink(ctx, rec, maxDeviceLinksPerClient); err != nil {
		return DeviceLink{}, err
	}
	return DeviceLink{Secret: secret, UserID: c.UserID, ExpiresAt: rec.ExpiresAt}, nil
}

// DeviceLink is a link made by CreateDeviceLink.
type DeviceLink struct {
	Secret    string
	UserID    string
	ExpiresAt time.Time
}

// ClientKeys is what the directory binds to a client id.
type ClientKeys struct {
	ClientID    string
	UserID      string
	CipherSuite mls.CipherSuite
	// SignatureKeys are the client's registered signature keys (keys.go),
	// oldest first.
	SignatureKeys [][]byte
}

// MaxClientKeysBatch bounds the ids of one ClientKeys call.
const MaxClientKeysBatch = 1000

// ClientKeys returns the bindings of the clients among ids, in the order
// of ids; unknown ids are left out. Members use it to check that a
// credential and a signature key they meet belong together (RFC 9420
// §5.3.1, RFC 9750 §5).
func (s *Service) ClientKeys(ctx context.Context, caller string, ids []string) ([]ClientKeys, error) {
	if err := s.allow(caller); err != nil {
		return nil, err
	}
	if len(ids) > MaxClientKeysBatch {
		return nil, fmt.Errorf("%w: %d client ids in one call; ask for at most %d at a time", ErrInvalidArgument, len(ids), MaxClientKeysBatch)
	}
	var ask []string
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if seen[id] || id == "" || len(id) > s.cfg.MaxClientIDSize {
			continue
		}
		seen[id] = true
		ask = append(ask, id)
	}
	if len(ask) == 0 {
		return nil, nil
	}
	clients, err := s.store.Clients(ctx, ask)
	if err != nil {
		return nil, err
	}
	keys, err := s.store.ClientKeys(ctx, ask)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]Client, len(clients))
	for _, c := range clients {
		byID[c.ID] = c
	}
	out := make([]ClientKeys, 0, len(clients))
	for _, id := range ids {
		c, ok := byID[id]
		if !ok {
			continue
		}
		out = append(out, ClientKeys{ClientID: c.ID, UserID: c.UserID, CipherSuite: c.CipherSuite,
			SignatureKeys: keys[id]})
	}
	return out, nil
}

// SpendOnce records that value was used in scope, remembering it until
// expires, on every node that shares the store. It fails with
// ErrAlreadyUsed if it was spent before (and has not expired).
func (s *Service) SpendOnce(ctx context.Context, scope string, value []byte, expires time.Time) error {
	return s.store.SpendOnce(ctx, *s.onceRecord(scope, value, expires, s.now()))
}

func (s *Service) onceRecord(scope string, value []byte, expires, now time.Time) *OnceRecord {
	h := sha256.New()
	h.Write([]byte(scope))
	h.Write([]byte{0})
	h.Write(value)
	// Stored times have microsecond precision; round up so that the
	// record lives at least as long as the value.
	exp := expires.UTC().Truncate(time.Microsecond)
	if exp.Before(expires) {
		exp = exp.Add(time.Microsecond)
	}
	return &OnceRecord{Scope: scope, Key: h.Sum(nil), Expires: exp, Now: now}
}
