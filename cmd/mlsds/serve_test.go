package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer safe for a server's logger and a test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startServe runs the server of `mlsds serve` in this process on dataDir
// until the test ends, and returns once it serves.
func startServe(t *testing.T, dataDir string) {
	t.Helper()
	var f serveFlags
	fs := newServeFlagSet(&f, io.Discard)
	if err := fs.Parse([]string{"--listen", "127.0.0.1:0", "--data-dir", dataDir, "--shutdown-timeout", "1s"}); err != nil {
		t.Fatal(err)
	}
	logs := new(lockedBuffer)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, &f, slog.New(slog.NewTextHandler(logs, nil))) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "mlsds serving") {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("serve stopped: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServeRefusesABusyDataDir(t *testing.T) {
	dir := t.TempDir()
	startServe(t, dir)
	var out, errb bytes.Buffer
	code := run([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", dir}, &out, &errb)
	if code != 1 {
		t.Fatalf("second serve on the same data directory: exit %d, %s", code, errb.String())
	}
	msg := errb.String()
	if !strings.Contains(msg, "in use by another mlsds serve") || !strings.Contains(msg, "process "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("the refusal does not say why, or who holds the directory: %s", msg)
	}
	// Another data directory is fine meanwhile.
	startServe(t, t.TempDir())
}

func TestServeBindsBeforeTheDatabase(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := filepath.Join(t.TempDir(), "data")
	var out, errb bytes.Buffer
	code := run([]string{"serve", "--listen", busy.Addr().String(), "--data-dir", dir}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "address already in use") {
		t.Fatalf("serve on a busy port: exit %d, %s", code, errb.String())
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(dir)
		t.Fatalf("a serve that could not bind left its data directory behind (%v): %v", err, entries)
	}
}

func TestServeUsagePrintsSizes(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "-h"}, &out, &errb); code != 0 {
		t.Fatalf("serve -h: exit %d", code)
	}
	if !strings.Contains(errb.String(), "(default 1MiB)") || strings.Contains(errb.String(), "1048576") {
		t.Fatalf("serve -h does not print the message size as 1MiB:\n%s", errb.String())
	}
	for n, want := range map[int]string{0: "0", 100: "100", 1024: "1KiB", 1536: "1536", 64 << 10: "64KiB", 1 << 20: "1MiB", 1 << 30: "1GiB"} {
		if got := formatByteSize(n); got != want {
			t.Errorf("formatByteSize(%d) = %q, want %q", n, got, want)
		}
		if back, err := parseByteSize(formatByteSize(n)); err != nil || back != n {
			t.Errorf("parseByteSize(formatByteSize(%d)) = %d, %v", n, back, err)
		}
	}
}
