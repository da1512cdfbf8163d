package ds_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
)

// registerDevice registers id as a further client of the user of
// existing, with a device link that existing makes.
func (e *env) registerDevice(id string, existing *member) *member {
	e.t.Helper()
	priv, pub, err := suite.GenerateSignatureKeyPair()
	if err != nil {
		e.t.Fatal(err)
	}
	l, err := e.svc.CreateDeviceLink(bg, existing.id, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	c := ds.Client{ID: id, UserID: l.UserID, CipherSuite: suite, SignatureKey: pub}
	if _, err := e.svc.Register(bg, ds.Registration{Client: c, DeviceLink: l.Secret}); err != nil {
		e.t.Fatal(err)
	}
	return &member{id: id, sigPriv: priv, sigPub: pub}
}

func TestRegisterUsers(t *testing.T) {
	e := newEnv(t, ds.Config{})
	phone := e.register("carol-phone", "carol")
	_, pub, _ := suite.GenerateSignatureKeyPair()
	laptop := ds.Client{ID: "carol-laptop", UserID: "carol", CipherSuite: suite, SignatureKey: pub}

	_, err := e.svc.Register(bg, ds.Registration{Client: laptop})
	wantIs(t, err, ds.ErrRegistrationRefused)
	l, err := e.svc.CreateDeviceLink(bg, phone.id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if l.UserID != "carol" || !l.ExpiresAt.Equal(e.clock.Now().Add(ds.DefaultDeviceLinkTTL).Truncate(time.Microsecond)) || len(l.Secret) < 32 {
		t.Fatalf("CreateDeviceLink = %+v", l)
	}
	// Expired links admit nobody.
	e.clock.Advance(ds.DefaultDeviceLinkTTL)
	_, err = e.svc.Register(bg, ds.Registration{Client: laptop, DeviceLink: l.Secret})
	wantIs(t, err, ds.ErrRegistrationRefused)
	l, _ = e.svc.CreateDeviceLink(bg, phone.id, time.Hour)
	got, err := e.svc.Register(bg, ds.Registration{Client: laptop, DeviceLink: l.Secret})
	if err != nil || got.UserID != "carol" {
		t.Fatalf("Register with a link = %+v, %v", got, err)
	}
	// Idempotent for the same client; the link is spent for others.
	if _, err := e.svc.Register(bg, ds.Registration{Client: laptop, DeviceLink: l.Secret}); err != nil {
		t.Fatalf("same registration again: %v", err)
	}
	tablet := ds.Client{ID: "carol-tablet", UserID: "carol", CipherSuite: suite, SignatureKey: pub}
	_, err = e.svc.Register(bg, ds.Registration{Client: tablet, DeviceLink: l.Secret})
	wantIs(t, err, ds.ErrRegistrationRefused)
	// Another key for a taken client id is refused alike.
	_, other, _ := suite.GenerateSignatureKeyPair()
	laptop.SignatureKey = other
	_, err = e.svc.Register(bg, ds.Registration{Client: laptop})
	wantIs(t, err, ds.ErrRegistrationRefused)
	wantIs(t, err, ds.ErrAlreadyExists)
	// A vouched user needs no link.
	if _, err := e.svc.Register(bg, ds.Registration{Client: tablet, UserVouched: true}); err != nil {
		t.Fatal(err)
	}

	for _, ttl := range []time.Duration{-time.Second, ds.MaxDeviceLinkTTL + time.Second} {
		_, err := e.svc.CreateDeviceLink(bg, phone.id, ttl)
		wantIs(t, err, ds.ErrInvalidArgument)
	}
	_, err = e.svc.CreateDeviceLink(bg, "nobody", 0)
	wantIs(t, err, ds.ErrNotFound)
}

func TestRegisterOnce(t *testing.T) {
	e := newEnv(t, ds.Config{})
	_, pub, _ := suite.GenerateSignatureKeyPair()
	once := ds.Once{Scope: "jwt", Value: []byte("iss\x00jti"), Expires: e.clock.Now().Add(time.Hour)}
	a := ds.Client{ID: "a", CipherSuite: suite, SignatureKey: pub}
	if _, err := e.svc.Register(bg, ds.Registration{Client: a, UserVouched: true, Once: once}); err != nil {
		t.Fatal(err)
	}
	// Retrying the same registration is fine; another client is not.
	if _, err := e.svc.Register(bg, ds.Registration{Client: a, UserVouched: true, Once: once}); err != nil {
		t.Fatal(err)
	}
	b := ds.Client{ID: "b", CipherSuite: suite, SignatureKey: pub}
	_, err := e.svc.Register(bg, ds.Registration{Client: b, UserVouched: true, Once: once})
	wantIs(t, err, ds.ErrAlreadyUsed)
	// The same value is a different thing in another scope.
	if err := e.svc.SpendOnce(bg, "challenge", once.Value, once.Expires); err != nil {
		t.Fatal(err)
	}
	wantIs(t, e.svc.SpendOnce(bg, "challenge", once.Value, once.Expires), ds.ErrAlreadyUsed)
}

func TestClientKeys(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "user-a")
	b := e.register("b", "")
	got, err := e.svc.ClientKeys(bg, "a", []string{"b", "x", "a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].ClientID != "b" || got[1].ClientID != "a" || got[2].ClientID != "b" {
		t.Fatalf("ClientKeys = %+v, want b, a, b", got)
	}
	if got[1].UserID != "user-a" || got[0].UserID != "b" || got[0].CipherSuite != suite ||
		len(got[1].SignatureKeys) != 1 || !bytes.Equal(got[1].SignatureKeys[0], a.sigPub) || !bytes.Equal(got[0].SignatureKeys[0], b.sigPub) {
		t.Errorf("ClientKeys = %+v", got)
	}
	_, err = e.svc.ClientKeys(bg, "a", make([]string, ds.MaxClientKeysBatch+1))
	wantIs(t, err, ds.ErrInvalidArgument)
}
