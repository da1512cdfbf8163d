package main

import (
	"flag"
	"io"
	"os"
	"strings"
	"testing"
)

// TestREADMEDocumentsServeFlags: every flag of `mlsds serve` has a line in
// the README's flag table, so an operator finds what -h lists.
func TestREADMEDocumentsServeFlags(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var f serveFlags
	fs := newServeFlagSet(&f, io.Discard)
	n := 0
	fs.VisitAll(func(fl *flag.Flag) {
		n++
		if !strings.Contains(string(readme), "`--"+fl.Name+"`") {
			t.Errorf("README.md does not document `--%s` (%s)", fl.Name, fl.Usage)
		}
	})
	if n < 20 {
		t.Fatalf("found only %d serve flags; is newServeFlagSet still the serve command's flag set?", n)
	}
}
