package ds_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/mlsds/mlsds/ds"
)

// TestRosterDeclaration: a declaration reads back as written (sorted,
// without duplicates, ids of every length class of <V>); an empty
// authenticated_data declares nothing; anything else is refused.
func TestRosterDeclaration(t *testing.T) {
	long := strings.Repeat("x", 70)      // a 2-byte <V> length
	longer := strings.Repeat("y", 20000) // a 4-byte <V> length
	in := ds.RosterChange{Added: []string{"carol", long, "bob", "bob"}, Removed: []string{longer, "mallory"}}
	got, ok, err := ds.ParseRosterDeclaration(in.MarshalDeclaration())
	if err != nil || !ok {
		t.Fatalf("ParseRosterDeclaration: %v, %v", ok, err)
	}
	if !slices.Equal(got.Added, []string{"bob", "carol", long}) || !slices.Equal(got.Removed, []string{"mallory", longer}) {
		t.Errorf("read back added %v, removed %v", got.Added, got.Removed)
	}
	if got.ReInitGroupID != nil {
		t.Errorf("a declaration without a ReInit reads back ReInitGroupID %x", got.ReInitGroupID)
	}
	// The ReInit's group_id reads back; it alone makes a declaration.
	ri := ds.RosterChange{ReInitGroupID: []byte("successor-group-id")}
	if ri.Empty() {
		t.Error("a declaration of a ReInit's group_id is Empty")
	}
	if got, ok, err := ds.ParseRosterDeclaration(ri.MarshalDeclaration()); err != nil || !ok || string(got.ReInitGroupID) != "successor-group-id" || len(got.Added)+len(got.Removed) != 0 {
		t.Errorf("ReInit declaration read back %+v, %v, %v", got, ok, err)
	}
	if r, ok, err := ds.ParseRosterDeclaration(nil); ok || err != nil || !r.Empty() {
		t.Errorf("empty authenticated_data: %v, %v, %v", r, ok, err)
	}
	good := ds.RosterChange{Added: []string{"a"}}.MarshalDeclaration()
	for name, ad := range map[string][]byte{
		"other data":       []byte("hello"),
		"trailing bytes":   append(slices.Clone(good), 0),
		"truncated":        good[:len(good)-1],
		"both lists":       ds.RosterChange{Added: []string{"a"}, Removed: []string{"a"}}.MarshalDeclaration(),
		"empty client id":  append(append([]byte{byte(len(ds.RosterLabel))}, ds.RosterLabel...), 1, 0, 0, 0),
		"no reinit field":  append(append([]byte{byte(len(ds.RosterLabel))}, ds.RosterLabel...), 0, 0),
		"long-form length": append(append([]byte{0x40, byte(len(ds.RosterLabel))}, ds.RosterLabel...), 0, 0),
	} {
		if _, _, err := ds.ParseRosterDeclaration(ad); !errors.Is(err, ds.ErrRosterDeclaration) {
			t.Errorf("%s: %v, want ErrRosterDeclaration", name, err)
		}
	}
}

// FuzzParseRosterDeclaration: any input either is refused with
// ErrRosterDeclaration or reads back to a declaration that marshals to
// bytes that read back the same (sorted lists, no client in both, the
// ReInit group_id kept).
func FuzzParseRosterDeclaration(f *testing.F) {
	f.Add([]byte(nil))
	f.Add(ds.RosterChange{Added: []string{"bob", "carol"}, Removed: []string{"mallory"}}.MarshalDeclaration())
	f.Add(ds.RosterChange{ReInitGroupID: []byte("successor")}.MarshalDeclaration())
	f.Add(ds.RosterChange{Added: []string{"a"}}.MarshalDeclaration()[:20])
	f.Fuzz(func(t *testing.T, ad []byte) {
		r, ok, err := ds.ParseRosterDeclaration(ad)
		if err != nil {
			if !errors.Is(err, ds.ErrRosterDeclaration) || ok {
				t.Fatalf("refusal %v (ok %v) does not wrap ErrRosterDeclaration", err, ok)
			}
			return
		}
		if !ok {
			if len(ad) != 0 {
				t.Fatalf("%x read as no declaration", ad)
			}
			return
		}
		again, ok, err := ds.ParseRosterDeclaration(r.MarshalDeclaration())
		if err != nil || !ok || !slices.Equal(again.Added, r.Added) || !slices.Equal(again.Removed, r.Removed) || string(again.ReInitGroupID) != string(r.ReInitGroupID) {
			t.Fatalf("%+v re-read as %+v, %v, %v", r, again, ok, err)
		}
		if !slices.IsSorted(r.Added) || !slices.IsSorted(r.Removed) {
			t.Fatalf("lists not sorted: %+v", r)
		}
		for _, id := range r.Added {
			if slices.Contains(r.Removed, id) {
				t.Fatalf("%q both added and removed", id)
			}
		}
	})
}
