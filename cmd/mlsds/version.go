package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// buildTime is when the binary was built, if the build said so:
//
//	go build -ldflags "-X main.buildTime=$(date -u +%Y-%m-%dT%H:%M:%SZ)" ./cmd/mlsds
//
// The Go toolchain records the commit's time, not the build's.
var buildTime string

// versionInfo is what the binary knows of its own build.
type versionInfo struct {
	Version    string // module version, "(devel)" when unknown
	Revision   string // VCS revision, "" when unknown
	Modified   bool   // the work tree had uncommitted changes
	CommitTime string // time of the revision (RFC 3339)
	BuildTime  string // see buildTime
	Go         string
	Platform   string
}

// readVersionInfo reads the build information that read returns
// (debug.ReadBuildInfo).
func readVersionInfo(read func() (*debug.BuildInfo, bool)) versionInfo {
	v := versionInfo{Version: "(devel)", BuildTime: buildTime, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := read()
	if !ok {
		return v
	}
	if info.Main.Version != "" {
		v.Version = info.Main.Version
	}
	if info.GoVersion != "" {
		v.Go = info.GoVersion
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		case "vcs.time":
			v.CommitTime = s.Value
		case "GOOS":
			v.Platform = s.Value + v.Platform[strings.Index(v.Platform, "/"):]
		case "GOARCH":
			v.Platform = v.Platform[:strings.Index(v.Platform, "/")+1] + s.Value
		}
	}
	return v
}

// short is the version in one word or two: the module version and the
// first 12 digits of the revision, "+dirty" if modified.
func (v versionInfo) short() string {
	s := v.Version
	if v.Revision != "" {
		rev := v.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		s += " " + rev
		if v.Modified {
			s += "+dirty"
		}
	}
	return s
}

// print writes the version as `mlsds version` shows it.
func (v versionInfo) print(w io.Writer) {
	fmt.Fprintf(w, "mlsds %s\n", v.Version)
	if v.Revision != "" {
		mod := ""
		if v.Modified {
			mod = " (modified)"
		}
		fmt.Fprintf(w, "  revision:    %s%s\n", v.Revision, mod)
	}
	if v.CommitTime != "" {
		fmt.Fprintf(w, "  commit time: %s\n", v.CommitTime)
	}
	if v.BuildTime != "" {
		fmt.Fprintf(w, "  build time:  %s\n", v.BuildTime)
	}
	fmt.Fprintf(w, "  go:          %s %s\n", v.Go, v.Platform)
}

// version returns the module version and VCS revision the binary was built
// from, as far as the build recorded them.
func version() string { return readVersionInfo(debug.ReadBuildInfo).short() }

func runVersion(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: mlsds version (or mlsds --version)")
		return 2
	}
	readVersionInfo(debug.ReadBuildInfo).print(stdout)
	return 0
}
