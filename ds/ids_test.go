package ds_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/mlsds/mlsds/ds"
)

func TestCheckIdentifier(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want string // "" for valid; else a part of the error
	}{
		{"alice", ""},
		{"alice-phone", ""},
		{"7c9e6679-7425-40de-944b-e07fc1f90ae7:ab12@example.com", ""},
		{"josé", ""},
		{"δημήτρης", ""},
		{"さくら-桜", ""},
		{"user_1.2+x", ""},
		{"", "empty"},
		{"Bob", `use "bob" instead`},
		{"ALICE@example.com", `use "alice@example.com" instead`},
		{"ｂｏｂ", `use "bob" instead`}, // fullwidth
		{"jose\u0301", `use "josé" instead`},
		{" bob", "space"},
		{"bob ", "space"},
		{"bo b", "RFC 8265"},
		{"ali\u200bce", "zero-width"},
		{"\ufeffalice", "zero-width"},
		{"alice\u2060", "zero-width"},
		{"alice\u202egnp.exe", "bidirectional"},
		{"alice\u200e", "bidirectional"},
		{"\u2066alice\u2069", "bidirectional"},
		{"ali\x00ce", "control"},
		{"ali\nce", "control"},
		{"\u0430lice", "mixes"}, // Cyrillic а in Latin alice
		{"pаypal", "mixes"},
		{"ali\xffce", "UTF-8"},
	} {
		err := ds.CheckIdentifier("client", tc.id)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("CheckIdentifier(%q) = %v, want nil", tc.id, err)
		case tc.want != "" && err == nil:
			t.Errorf("CheckIdentifier(%q) = nil, want an error about %q", tc.id, tc.want)
		case tc.want != "" && (!strings.Contains(err.Error(), tc.want) || !errors.Is(err, ds.ErrInvalidArgument)):
			t.Errorf("CheckIdentifier(%q) = %v, want ErrInvalidArgument about %q", tc.id, err, tc.want)
		}
	}
}
