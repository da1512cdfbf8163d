package main

import (
	"bytes"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionInfo(t *testing.T) {
	read := func() (*debug.BuildInfo, bool) {
		return &debug.BuildInfo{
			GoVersion: "go1.99.1",
			Main:      debug.Module{Path: "github.com/mlsds/mlsds", Version: "v1.2.3"},
			Settings: []debug.BuildSetting{
				{Key: "GOOS", Value: "plan9"}, {Key: "GOARCH", Value: "mips"},
				{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
				{Key: "vcs.time", Value: "2025-01-02T03:04:05Z"},
				{Key: "vcs.modified", Value: "true"},
			},
		}, true
	}
	v := readVersionInfo(read)
	if got := v.short(); got != "v1.2.3 0123456789ab+dirty" {
		t.Fatalf("short version %q", got)
	}
	var out bytes.Buffer
	v.BuildTime = "2025-02-03T04:05:06Z"
	v.print(&out)
	for _, want := range []string{
		"mlsds v1.2.3\n",
		"revision:    0123456789abcdef0123456789abcdef01234567 (modified)",
		"commit time: 2025-01-02T03:04:05Z",
		"build time:  2025-02-03T04:05:06Z",
		"go:          go1.99.1 plan9/mips",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("version output lacks %q:\n%s", want, out.String())
		}
	}
	// A clean tree says so by saying nothing; no build info at all is (devel).
	clean := readVersionInfo(func() (*debug.BuildInfo, bool) {
		return &debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "false"}}}, true
	})
	if got := clean.short(); got != "(devel) abc" {
		t.Fatalf("clean build: %q", got)
	}
	if got := readVersionInfo(func() (*debug.BuildInfo, bool) { return nil, false }).short(); got != "(devel)" {
		t.Fatalf("no build info: %q", got)
	}
}

func TestVersionCommand(t *testing.T) {
	var a, b, errb bytes.Buffer
	if code := run([]string{"version"}, &a, &errb); code != 0 || !strings.HasPrefix(a.String(), "mlsds ") || !strings.Contains(a.String(), "go:") {
		t.Fatalf("mlsds version: exit %d, %q %q", code, a.String(), errb.String())
	}
	if code := run([]string{"--version"}, &b, &errb); code != 0 || b.String() != a.String() {
		t.Fatalf("mlsds --version: exit %d, %q, want %q", code, b.String(), a.String())
	}
	if code := run([]string{"version", "extra"}, &b, &errb); code != 2 {
		t.Fatalf("mlsds version extra: exit %d", code)
	}
}
