package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/mlsds/mlsds/ds"
)

// testClientKeys: a client's registered key is its first; keys are added
// once each, up to the limit, listed oldest first, withdrawn but never the
// last, and deleted with the client.
func testClientKeys(t *testing.T, s ds.Store) {
	alice := mustClient(t, s, "alice", "alice")
	bob := mustClient(t, s, "bob", "bob")
	// Registered by RegisterClient too, not only CreateClient.
	carol := ds.Client{ID: "carol", UserID: "carol", CipherSuite: suite, SignatureKey: []byte("sig-carol"), CreatedAt: t0}
	if err := s.RegisterClient(ctx(), ds.ClientRegistration{Client: carol, Now: t0}); err != nil {
		t.Fatalf("RegisterClient(carol): %v", err)
	}
	keysOf := func(id string) [][]byte {
		t.Helper()
		m, err := s.ClientKeys(ctx(), []string{id})
		if err != nil {
			t.Fatalf("ClientKeys(%q): %v", id, err)
		}
		return m[id]
	}
	same := func(got [][]byte, want ...[]byte) bool {
		if len(got) != len(want) {
			return false
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				return false
			}
		}
		return true
	}
	m, err := s.ClientKeys(ctx(), []string{"alice", "bob", "carol", "nobody"})
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 3 || !same(m["alice"], alice.SignatureKey) || !same(m["bob"], bob.SignatureKey) || !same(m["carol"], carol.SignatureKey) {
		t.Fatalf("ClientKeys of fresh clients = %q; want each client's registered key, unknown ids left out", m)
	}

	k2, k3 := []byte("alice-2"), []byte("alice-3")
	const limit = 3
	for _, k := range [][]byte{k2, k3, k2} { // k2 twice: no change
		if err := s.AddClientKey(ctx(), "alice", k, t0, limit); err != nil {
			t.Fatalf("AddClientKey(%q): %v", k, err)
		}
	}
	if got := keysOf("alice"); !same(got, alice.SignatureKey, k2, k3) {
		t.Fatalf("alice's keys = %q; want registered, alice-2, alice-3", got)
	}
	if got := keysOf("bob"); !same(got, bob.SignatureKey) {
		t.Fatalf("bob's keys = %q; adding alice's changed bob's", got)
	}
	var tl *ds.TooLargeError
	if err := s.AddClientKey(ctx(), "alice", []byte("alice-4"), t0, limit); !errors.As(err, &tl) || tl.Limit != limit {
		t.Fatalf("AddClientKey beyond the limit: %v; want *TooLargeError{Limit: %d}", err, limit)
	}
	if err := s.AddClientKey(ctx(), "nobody", k2, t0, limit); !errors.Is(err, ds.ErrNotFound) {
		t.Fatalf("AddClientKey of an unknown client: %v; want ErrNotFound", err)
	}
	// The same key may belong to two clients; each holds its own row.
	if err := s.AddClientKey(ctx(), "bob", k2, t0, limit); err != nil {
		t.Fatalf("AddClientKey(bob, alice-2): %v", err)
	}

	// Withdrawing: the registered key first; the oldest remaining key
	// becomes the client's SignatureKey.
	if err := s.RemoveClientKey(ctx(), "alice", alice.SignatureKey); err != nil {
		t.Fatalf("RemoveClientKey(registered key): %v", err)
	}
	if got := keysOf("alice"); !same(got, k2, k3) {
		t.Fatalf("alice's keys after removing the first = %q", got)
	}
	if c, err := s.Client(ctx(), "alice"); err != nil || !bytes.Equal(c.SignatureKey, k2) {
		t.Fatalf("Client(alice) = %+v, %v; want SignatureKey alice-2, the oldest key left", c, err)
	}
	if err := s.RemoveClientKey(ctx(), "alice", alice.SignatureKey); !errors.Is(err, ds.ErrNotFound) {
		t.Fatalf("RemoveClientKey of a removed key: %v; want ErrNotFound", err)
	}
	if err := s.RemoveClientKey(ctx(), "nobody", k2); !errors.Is(err, ds.ErrNotFound) {
		t.Fatalf("RemoveClientKey of an unknown client: %v; want ErrNotFound", err)
	}
	if err := s.RemoveClientKey(ctx(), "alice", k3); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveClientKey(ctx(), "alice", k2); !errors.Is(err, ds.ErrLastKey) {
		t.Fatalf("RemoveClientKey of the last key: %v; want ErrLastKey", err)
	}
	if got := keysOf("alice"); !same(got, k2) {
		t.Fatalf("alice's keys after refusing to remove the last = %q", got)
	}
	if got := keysOf("bob"); !same(got, bob.SignatureKey, k2) {
		t.Fatalf("bob's keys = %q; alice's removals changed bob's", got)
	}

	// Deleting a client deletes its keys; registering the id again
	// starts from the new registration's key alone.
	if _, err := s.DeleteClient(ctx(), "bob"); err != nil {
		t.Fatalf("DeleteClient(bob): %v", err)
	}
	if got := keysOf("bob"); len(got) != 0 {
		t.Fatalf("bob's keys after deletion = %q; want none", got)
	}
	bob2 := ds.Client{ID: "bob", UserID: "bob", CipherSuite: suite, SignatureKey: []byte("bob-new"), CreatedAt: t0}
	if err := s.CreateClient(ctx(), bob2); err != nil {
		t.Fatal(err)
	}
	if got := keysOf("bob"); !same(got, bob2.SignatureKey) {
		t.Fatalf("keys of bob registered again = %q; want only the new registration's key", got)
	}
	// Many clients in one call.
	var ids []string
	for i := range 5 {
		id := fmt.Sprintf("c%d", i)
		mustClient(t, s, id, id)
		ids = append(ids, id)
	}
	if m, err := s.ClientKeys(ctx(), ids); err != nil || len(m) != len(ids) {
		t.Fatalf("ClientKeys(%d clients) = %d entries, %v", len(ids), len(m), err)
	}
}
