package mls

import (
	"compress/gzip"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// The official MLS test vectors (mlswg/mls-implementations) are read in
// place from ../shared/testvectors when this checkout sits beside it, and
// otherwise from the gzipped copy committed in testdata/vectors, so a clean
// clone on a new machine runs the same entries.

// loadVectors decodes the named vector file (for example "tree-math.json")
// into v. A missing file fails the test: vectors are never skipped silently.
func loadVectors(t testing.TB, name string, v any) {
	t.Helper()
	var r io.Reader
	if f, err := os.Open(filepath.Join("..", "..", "shared", "testvectors", name)); err == nil {
		defer f.Close()
		r = f
	} else {
		f, err := os.Open(filepath.Join("testdata", "vectors", name+".gz"))
		if err != nil {
			t.Fatalf("test vectors %s not found in ../../shared/testvectors or testdata/vectors: %v", name, err)
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatalf("test vectors %s: %v", name, err)
		}
		r = zr
	}
	if err := json.NewDecoder(r).Decode(v); err != nil {
		t.Fatalf("test vectors %s: %v", name, err)
	}
}

// hexBytes is a hex string in a vector file, decoded on unmarshal.
type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return err
	}
	*h = b
	return nil
}

// vectorCount tallies passed and skipped entries of one vector file and
// prints the line the project reports: "vectors FILE: N passed, M skipped (reasons)".
type vectorCount struct {
	file    string
	passed  int
	skipped int
	reasons map[string]int
}

func newVectorCount(file string) *vectorCount {
	return &vectorCount{file: file, reasons: map[string]int{}}
}

func (c *vectorCount) pass() { c.passed++ }

// skip records an entry that is not run, with the reason it cannot be.
func (c *vectorCount) skip(reason string) {
	c.skipped++
	c.reasons[reason]++
}

func (c *vectorCount) report(t testing.TB) {
	t.Helper()
	line := ""
	for r, n := range c.reasons {
		if line != "" {
			line += "; "
		}
		line += r + ": " + itoa(n)
	}
	t.Logf("vectors %s: %d passed, %d skipped (%s)", c.file, c.passed, c.skipped, line)
	// Also print outside -v so the counts appear in every CI log.
	os.Stdout.WriteString("vectors " + c.file + ": " + itoa(c.passed) + " passed, " + itoa(c.skipped) + " skipped (" + line + ")\n")
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
