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
	if r, ok, err := ds.ParseRosterDeclaration(nil); ok || err != nil || !r.Empty() {
		t.Errorf("empty authenticated_data: %v, %v, %v", r, ok, err)
	}
	good := ds.RosterChange{Added: []string{"a"}}.MarshalDeclaration()
	for name, ad := range map[string][]byte{
		"other data":       []byte("hello"),
		"trailing bytes":   append(slices.Clone(good), 0),
		"truncated":        good[:len(good)-1],
		"both lists":       ds.RosterChange{Added: []string{"a"}, Removed: []string{"a"}}.MarshalDeclaration(),
		"empty client id":  append(append([]byte{byte(len(ds.RosterLabel))}, ds.RosterLabel...), 1, 0, 0),
		"long-form length": append(append([]byte{0x40, byte(len(ds.RosterLabel))}, ds.RosterLabel...), 0, 0),
	} {
		if _, _, err := ds.ParseRosterDeclaration(ad); !errors.Is(err, ds.ErrRosterDeclaration) {
			t.Errorf("%s: %v, want ErrRosterDeclaration", name, err)
		}
	}
}
