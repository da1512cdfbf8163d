// Package testkit starts real `mlsds serve` processes for end-to-end tests
// and drives them through the generated API as a raw client would: it
// builds the binary once, reads the server's JSON logs, and dumps its
// SQLite store so that a test can show a refused request changed nothing.
package testkit

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Binary builds cmd/mlsds once per test binary and returns its path.
func Binary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mlsds-testkit")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "mlsds")
		out, err := exec.Command("go", "build", "-o", buildPath, "github.com/mlsds/mlsds/cmd/mlsds").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return buildPath
}

// LogLine is one JSON log line of the server.
type LogLine struct {
	Level string
	Msg   string
	Raw   string
}

// Serve is one `mlsds serve` child process with a data directory of its
// own, listening on a loopback port.
type Serve struct {
	URL     string
	DataDir string

	cmd  *exec.Cmd
	exit chan error

	mu   sync.Mutex
	logs []LogLine
}

// StartServe runs `mlsds serve` on a fresh data directory with the given
// extra flags and waits until it serves. The process is killed when the
// test ends.
func StartServe(tb testing.TB, flags ...string) *Serve {
	tb.Helper()
	s := &Serve{DataDir: tb.TempDir()}
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", s.DataDir,
		"--log-format", "json", "--log-level", "debug", "--shutdown-timeout", "2s"}, flags...)
	cmd := exec.Command(Binary(tb), args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exit := make(chan error, 1)
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var line struct{ Level, Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			s.mu.Lock()
			s.logs = append(s.logs, LogLine{Level: line.Level, Msg: line.Msg, Raw: sc.Text()})
			s.mu.Unlock()
			if line.Msg == "mlsds serving" {
				addr <- line.Addr
			}
		}
		io.Copy(io.Discard, stderr)
		exit <- cmd.Wait()
	}()
	select {
	case a := <-addr:
		s.URL, s.cmd, s.exit = "http://"+a, cmd, exit
	case err := <-exit:
		tb.Fatalf("mlsds serve exited on start: %v\n%s", err, s.dumpLogs())
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		tb.Fatal("mlsds serve did not report its address within 60s")
	}
	tb.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exit:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exit
		}
	})
	return s
}

func (s *Serve) dumpLogs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out string
	for _, l := range s.logs {
		out += l.Raw + "\n"
	}
	return out
}

// Logs returns the log lines the server has written so far.
func (s *Serve) Logs() []LogLine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]LogLine(nil), s.logs...)
}

// LogsAt returns the log lines of a level ("ERROR", "WARN", ...).
func (s *Serve) LogsAt(level string) []LogLine {
	var out []LogLine
	for _, l := range s.Logs() {
		if l.Level == level {
			out = append(out, l)
		}
	}
	return out
}

// Pid is the process id of the server.
func (s *Serve) Pid() int { return s.cmd.Process.Pid }

// DBPath is the SQLite database of the server.
func (s *Serve) DBPath() string { return filepath.Join(s.DataDir, "mlsds.db") }
