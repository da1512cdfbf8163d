package storetest

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
)

func registration(id, user string) ds.ClientRegistration {
	return ds.ClientRegistration{
		Client: ds.Client{ID: id, UserID: user, CipherSuite: suite, SignatureKey: []byte("sig-" + id), CreatedAt: t0},
		Now:    t0,
	}
}

func linkHash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func mustLink(t *testing.T, s ds.Store, secret, creator, user string, ttl time.Duration) {
	t.Helper()
	l := ds.DeviceLinkRecord{Hash: linkHash(secret), UserID: user, Creator: creator, CreatedAt: t0, ExpiresAt: t0.Add(ttl)}
	if err := s.CreateDeviceLink(ctx(), l, 100); err != nil {
		t.Fatalf("CreateDeviceLink: %v", err)
	}
}

func testRegisterClient(t *testing.T, s ds.Store) {
	if err := s.RegisterClient(ctx(), registration("carol-phone", "carol")); err != nil {
		t.Fatalf("first client of a user: %v", err)
	}
	got, err := s.Client(ctx(), "carol-phone")
	if err != nil || got.UserID != "carol" || string(got.SignatureKey) != "sig-carol-phone" || !got.CreatedAt.Equal(t0) {
		t.Fatalf("Client = %+v, %v", got, err)
	}
	if err := s.RegisterClient(ctx(), registration("carol-phone", "carol")); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Errorf("same client id again: %v, want ErrAlreadyExists", err)
	}
	// A second client of the user needs a link.
	if err := s.RegisterClient(ctx(), registration("carol-laptop", "carol")); !errors.Is(err, ds.ErrRegistrationRefused) {
		t.Errorf("second client without link: %v, want ErrRegistrationRefused", err)
	}
	r := registration("carol-laptop", "carol")
	r.DeviceLink = linkHash("no such link")
	if err := s.RegisterClient(ctx(), r); !errors.Is(err, ds.ErrRegistrationRefused) {
		t.Errorf("second client with unknown link: %v, want ErrRegistrationRefused", err)
	}
	// A link of another user does not admit to carol.
	mustClient(t, s, "dave", "dave")
	mustLink(t, s, "dave's link", "dave", "dave", time.Hour)
	r.DeviceLink = linkHash("dave's link")
	if err := s.RegisterClient(ctx(), r); !errors.Is(err, ds.ErrRegistrationRefused) {
		t.Errorf("second client with another user's link: %v, want ErrRegistrationRefused", err)
	}
	mustLink(t, s, "carol's link", "carol-phone", "carol", time.Hour)
	r.DeviceLink = linkHash("carol's link")
	if err := s.RegisterClient(ctx(), r); err != nil {
		t.Fatalf("second client with carol's link: %v", err)
	}
	r2 := registration("carol-tablet", "carol")
	r2.DeviceLink = linkHash("carol's link")
	if err := s.RegisterClient(ctx(), r2); !errors.Is(err, ds.ErrRegistrationRefused) {
		t.Errorf("link used twice: %v, want ErrRegistrationRefused", err)
	}
	// Expired links admit nobody.
	mustLink(t, s, "short link", "carol-phone", "carol", time.Minute)
	r2.DeviceLink = linkHash("short link")
	r2.Now = t0.Add(time.Minute)
	if err := s.RegisterClient(ctx(), r2); !errors.Is(err, ds.ErrRegistrationRefused) {
		t.Errorf("expired link: %v, want ErrRegistrationRefused", err)
	}
	// A vouched user needs no link.
	r2 = registration("carol-tablet", "carol")
	r2.UserVouched = true
	if err := s.RegisterClient(ctx(), r2); err != nil {
		t.Errorf("vouched client: %v", err)
	}
	cs, err := s.ClientsOfUser(ctx(), "carol")
	if err != nil || len(cs) != 3 {
		t.Errorf("ClientsOfUser(carol) = %d clients, %v; want 3", len(cs), err)
	}
	// Client ids and user ids are one namespace.
	if err := s.RegisterClient(ctx(), registration("carol", "mallory")); !errors.Is(err, ds.ErrRegistrationRefused) {
		t.Errorf("client id that is another user's id: %v, want ErrRegistrationRefused", err)
	}
	if err := s.RegisterClient(ctx(), registration("mallory-phone", "carol-phone")); !errors.Is(err, ds.ErrRegistrationRefused) {
		t.Errorf("user id that is another user's client: %v, want ErrRegistrationRefused", err)
	}
	if _, err := s.Client(ctx(), "carol"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("refused client was stored: %v", err)
	}
	// A client may be its own user's client id.
	r3 := registration("carol", "carol")
	r3.UserVouched = true
	if err := s.RegisterClient(ctx(), r3); err != nil {
		t.Errorf("client carol of user carol: %v", err)
	}

	// Clients: known ones only.
	got3, err := s.Clients(ctx(), []string{"carol-phone", "nobody", "dave", "carol-laptop"})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, c := range got3 {
		ids[c.ID] = c.UserID
	}
	if len(got3) != 3 || ids["carol-phone"] != "carol" || ids["dave"] != "dave" || ids["carol-laptop"] != "carol" {
		t.Errorf("Clients = %v", ids)
	}
}

func testRegisterOnce(t *testing.T, s ds.Store) {
	once := &ds.OnceRecord{Scope: "jwt", Key: linkHash("jti-1"), Expires: t0.Add(time.Hour), Now: t0}
	r := registration("erin", "erin")
	r.Once = once
	if err := s.RegisterClient(ctx(), r); err != nil {
		t.Fatal(err)
	}
	r = registration("erin-2", "erin-2")
	r.Once = once
	if err := s.RegisterClient(ctx(), r); !errors.Is(err, ds.ErrAlreadyUsed) {
		t.Errorf("second client with the same single-use value: %v, want ErrAlreadyUsed", err)
	}
	if _, err := s.Client(ctx(), "erin-2"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("refused client was stored: %v", err)
	}
	// A refused registration spends nothing.
	r = registration("erin-3", "erin")
	r.Once = &ds.OnceRecord{Scope: "jwt", Key: linkHash("jti-2"), Expires: t0.Add(time.Hour), Now: t0}
	if err := s.RegisterClient(ctx(), r); !errors.Is(err, ds.ErrRegistrationRefused) {
		t.Fatalf("second client without link: %v", err)
	}
	if err := s.SpendOnce(ctx(), *r.Once); err != nil {
		t.Errorf("value of a refused registration is spent: %v", err)
	}
}

func testRegisterConcurrent(t *testing.T, s ds.Store) {
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = s.RegisterClient(ctx(), registration(fmt.Sprintf("frank-%d", i), "frank")) })
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ds.ErrRegistrationRefused):
			t.Errorf("concurrent first client: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d concurrent first clients of one user were registered, want 1", won)
	}
	cs, _ := s.ClientsOfUser(ctx(), "frank")
	mustLink(t, s, "frank's link", cs[0].ID, "frank", time.Hour)
	for i := range n {
		wg.Go(func() {
			r := registration(fmt.Sprintf("frank-new-%d", i), "frank")
			r.DeviceLink = linkHash("frank's link")
			errs[i] = s.RegisterClient(ctx(), r)
		})
	}
	wg.Wait()
	won = 0
	for _, err := range errs {
		if err == nil {
			won++
		}
	}
	if won != 1 {
		t.Errorf("one device link admitted %d concurrent clients, want 1", won)
	}
}

func testDeviceLinks(t *testing.T, s ds.Store) {
	l := ds.DeviceLinkRecord{Hash: linkHash("x"), UserID: "gina", Creator: "gina", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if err := s.CreateDeviceLink(ctx(), l, 2); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("link of an unknown creator: %v, want ErrNotFound", err)
	}
	mustClient(t, s, "gina", "gina")
	if err := s.CreateDeviceLink(ctx(), l, 2); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateDeviceLink(ctx(), l, 2); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Errorf("same link twice: %v, want ErrAlreadyExists", err)
	}
	l.Hash = linkHash("y")
	if err := s.CreateDeviceLink(ctx(), l, 2); err != nil {
		t.Fatal(err)
	}
	l.Hash = linkHash("z")
	var tl *ds.TooLargeError
	if err := s.CreateDeviceLink(ctx(), l, 2); !errors.As(err, &tl) || tl.Limit != 2 {
		t.Errorf("third unused link with limit 2: %v, want *TooLargeError", err)
	}
	// Expired links do not count.
	l.CreatedAt, l.ExpiresAt = t0.Add(time.Hour), t0.Add(2*time.Hour)
	if err := s.CreateDeviceLink(ctx(), l, 2); err != nil {
		t.Errorf("link after the others expired: %v", err)
	}
}

func testSpendOnce(t *testing.T, s ds.Store) {
	o := ds.OnceRecord{Scope: "challenge", Key: linkHash("nonce"), Expires: t0.Add(time.Minute), Now: t0}
	if err := s.SpendOnce(ctx(), o); err != nil {
		t.Fatal(err)
	}
	if err := s.SpendOnce(ctx(), o); !errors.Is(err, ds.ErrAlreadyUsed) {
		t.Errorf("spent twice: %v, want ErrAlreadyUsed", err)
	}
	other := o
	other.Scope = "jwt"
	if err := s.SpendOnce(ctx(), other); err != nil {
		t.Errorf("same key in another scope: %v", err)
	}
	// Once expired, the record may go; the value itself is refused by
	// whoever checks its expiry.
	later := o
	later.Now = t0.Add(time.Minute)
	later.Expires = t0.Add(2 * time.Minute)
	if err := s.SpendOnce(ctx(), later); err != nil {
		t.Errorf("after expiry: %v", err)
	}
	if err := s.SpendOnce(ctx(), later); !errors.Is(err, ds.ErrAlreadyUsed) {
		t.Errorf("after expiry, twice: %v, want ErrAlreadyUsed", err)
	}

	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	c := ds.OnceRecord{Scope: "challenge", Key: linkHash("contended"), Expires: t0.Add(time.Minute), Now: t0}
	for i := range n {
		wg.Go(func() { errs[i] = s.SpendOnce(ctx(), c) })
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
		} else if !errors.Is(err, ds.ErrAlreadyUsed) {
			t.Errorf("concurrent spend: %v", err)
		}
	}
	if won != 1 {
		t.Errorf("%d concurrent spends of one value succeeded, want 1", won)
	}
}
