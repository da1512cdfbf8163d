package ds

import (
	"fmt"
	"slices"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/secure/precis"
)

// Client ids and user ids are what members see of each other: the identity
// of a basic credential (RFC 9420 §5.3.1) is a client id, and an
// application shows it, or the user id, to people who decide by it whom
// they talk to. Two ids that look alike must therefore not both be
// registrable. The profile is PRECIS UsernameCaseMapped (RFC 8265 §3.3):
// an id must already be in the form that profile produces (width-mapped,
// lower case, NFC), so that every id has exactly one spelling. On top of
// it, CheckIdentifier refuses what the profile lets through but people
// cannot see: invisible and direction-changing characters, and letters of
// several scripts in one id (Latin "a" next to Cyrillic "а"), following the
// "Highly Restrictive" level of Unicode Technical Standard #39 §5.2.

// CheckIdentifier reports whether id is acceptable as a client or user id
// (kind names which, for the error). It checks the form only, not the
// length: the Service's Config.MaxClientIDSize bounds that. The error says
// what is wrong and, when the id only needs normalising, which id to use
// instead.
func CheckIdentifier(kind, id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty %s id", ErrInvalidArgument, kind)
	}
	for i, r := range id {
		if r == unicode.ReplacementChar {
			// Either invalid UTF-8 or U+FFFD itself; neither is an id.
			return fmt.Errorf("%w: %s id is not valid UTF-8 (or holds U+FFFD at byte %d)", ErrInvalidArgument, kind, i)
		}
		if what := invisible(r); what != "" {
			return fmt.Errorf("%w: %s id %q holds %s U+%04X at byte %d; remove it", ErrInvalidArgument, kind, id, what, r, i)
		}
	}
	first, _ := utf8.DecodeRuneInString(id)
	last, _ := utf8.DecodeLastRuneInString(id)
	if unicode.IsSpace(first) || unicode.IsSpace(last) {
		return fmt.Errorf("%w: %s id %q starts or ends with a space; remove it", ErrInvalidArgument, kind, id)
	}
	canon, err := precis.UsernameCaseMapped.String(id)
	if err != nil {
		return fmt.Errorf("%w: %s id %q is not a username in the sense of RFC 8265 §3.3 (%v); use letters, digits and printable ASCII symbols, without spaces",
			ErrInvalidArgument, kind, id, err)
	}
	if canon != id {
		return fmt.Errorf("%w: %s id %q is not in canonical form (RFC 8265 §3.3: lower case, NFC); use %q instead",
			ErrInvalidArgument, kind, id, canon)
	}
	if a, b := mixedScripts(id); a != "" {
		return fmt.Errorf("%w: %s id %q mixes letters of the %s and %s scripts, which can look alike; write it in one script",
			ErrInvalidArgument, kind, id, a, b)
	}
	return nil
}

// invisible names the kind of r if it is a character that is not seen, or
// changes how the characters around it are shown; "" otherwise.
func invisible(r rune) string {
	switch {
	case unicode.IsControl(r):
		return "the control character"
	case r >= 0x200B && r <= 0x200D, r == 0x2060, r == 0xFEFF:
		return "the zero-width character"
	case r == 0x200E, r == 0x200F, r >= 0x202A && r <= 0x202E, r >= 0x2066 && r <= 0x2069:
		return "the bidirectional control"
	case unicode.Is(unicode.Cf, r):
		return "the invisible format character"
	}
	return ""
}

// allowedScriptSets are the combinations of scripts that UTS #39 §5.2
// ("Highly Restrictive") accepts in one identifier besides a single
// script: Latin with the scripts of Japanese, Chinese or Korean writing.
var allowedScriptSets = [][]string{
	{"Latin", "Han", "Hiragana", "Katakana"},
	{"Latin", "Han", "Bopomofo"},
	{"Latin", "Han", "Hangul"},
}

// mixedScripts returns two scripts of the letters of id that may not be
// mixed, or "" if its letters are of one script or one allowed set.
// Letters of the Common and Inherited scripts do not count.
func mixedScripts(id string) (string, string) {
	var scripts []string
	for _, r := range id {
		if !unicode.IsLetter(r) {
			continue
		}
		s := scriptOf(r)
		if s == "" || slices.Contains(scripts, s) {
			continue
		}
		scripts = append(scripts, s)
	}
	if len(scripts) < 2 {
		return "", ""
	}
	for _, set := range allowedScriptSets {
		ok := true
		for _, s := range scripts {
			ok = ok && slices.Contains(set, s)
		}
		if ok {
			return "", ""
		}
	}
	return scripts[0], scripts[1]
}

// scriptOf returns the Unicode script of r, or "" for Common, Inherited
// and unassigned code points.
func scriptOf(r rune) string {
	if r < 0x80 {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return "Latin"
		}
		return ""
	}
	for name, table := range unicode.Scripts {
		if name == "Common" || name == "Inherited" {
			continue
		}
		if unicode.Is(table, r) {
			return name
		}
	}
	return ""
}
