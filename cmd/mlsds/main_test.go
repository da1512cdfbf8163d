package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEnvTwins(t *testing.T) {
	var f serveFlags
	fs := newServeFlagSet(&f, io.Discard)
	if err := fs.Parse([]string{"--listen", "127.0.0.1:9000", "--max-message-size", "64KiB"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"MLSDS_LISTEN":           "0.0.0.0:1", // the flag wins
		"MLSDS_DATA_DIR":         "/var/lib/mlsds",
		"MLSDS_MAX_GROUP_SIZE":   "12",
		"MLSDS_RATE_LIMIT":       "-1",
		"MLSDS_KEEPALIVE":        "5s",
		"MLSDS_APP_EPOCH_WINDOW": "0",
		"MLSDS_ENROLLMENT_TOKEN": "s3cret-enrollment-token",
	}
	err := applyEnv(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	if f.listen != "127.0.0.1:9000" || f.dataDir != "/var/lib/mlsds" || f.maxGroupSize != 12 || f.rateLimit != -1 ||
		f.keepAlive != 5*time.Second || f.appEpochWindow != 0 || f.maxMessageSize != 64<<10 ||
		f.enrollmentToken != "s3cret-enrollment-token" || f.maxKeyPackages != 1000 {
		t.Fatalf("flags after env: %+v", f)
	}
	// A malformed environment value names the variable.
	fs = newServeFlagSet(&f, io.Discard)
	fs.Parse(nil)
	err = applyEnv(fs, func(k string) (string, bool) {
		if k == "MLSDS_MAX_GROUP_SIZE" {
			return "many", true
		}
		return "", false
	})
	if err == nil || !strings.Contains(err.Error(), "MLSDS_MAX_GROUP_SIZE") {
		t.Fatalf("error %v does not name the variable", err)
	}
}

func TestEveryFlagHasATwin(t *testing.T) {
	var f serveFlags
	var out bytes.Buffer
	fs := newServeFlagSet(&f, &out)
	fs.PrintDefaults()
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if c := strings.Count(out.String(), "(env MLSDS_"); c != n {
		t.Fatalf("%d of %d flags document their environment twin", c, n)
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int{"1024": 1024, "1KiB": 1024, "2MiB": 2 << 20, "1M": 1 << 20, "10 KiB": 10240, "7B": 7} {
		got, err := parseByteSize(in)
		if err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5MiB", "lots", "9999999GiB"} {
		if _, err := parseByteSize(in); err == nil {
			t.Errorf("parseByteSize(%q) succeeded", in)
		}
	}
}

func TestSQLitePath(t *testing.T) {
	if p, err := sqlitePath("", "/d"); err != nil || p != filepath.Join("/d", "mlsds.db") {
		t.Fatalf("default: %q %v", p, err)
	}
	if p, err := sqlitePath("sqlite:/x/y.db", "/d"); err != nil || p != "/x/y.db" {
		t.Fatalf("sqlite:PATH: %q %v", p, err)
	}
	if !isPostgres("postgres://u:pw@h/db") || !isPostgres("postgresql://h/db") || isPostgres("sqlite:/x") {
		t.Fatal("isPostgres")
	}
	_, err := sqlitePath("mysql://u:hunter2@h/db", "/d")
	if err == nil {
		t.Fatal("unknown store accepted")
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatal("the error repeats a password from --store")
	}
}

func TestAuthSecretFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "auth.key")
	a, err := loadOrCreateSecret(path, true)
	if err != nil || len(a) != 32 {
		t.Fatalf("create: %d bytes, %v", len(a), err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %v, want 0600", fi.Mode().Perm())
	}
	b, err := loadOrCreateSecret(path, true)
	if err != nil || !bytes.Equal(a, b) {
		t.Fatal("the secret changed on reload")
	}
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte("abcd"), 0o600)
	if _, err := loadOrCreateSecret(short, false); err == nil {
		t.Fatal("short secret accepted")
	}
	if _, err := loadOrCreateSecret(filepath.Join(t.TempDir(), "missing"), false); err == nil {
		t.Fatal("missing explicit secret file accepted")
	}
}

func TestCommands(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "mlsds ") {
		t.Fatalf("version: %d %q %q", code, out.String(), errb.String())
	}
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 {
		t.Fatalf("unknown command exit %d", code)
	}
	errb.Reset()
	if code := run([]string{"serve", "--registration", "bogus", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0"}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "registration") {
		t.Fatalf("bad registration: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"serve", "--registration", "jwt", "--data-dir", t.TempDir()}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "--jwt-key") {
		t.Fatalf("jwt without key: exit %d, %q", code, errb.String())
	}
}
