package loadgen

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// childServer is an `mlsds serve` process the bench started for itself.
type childServer struct {
	cmd  *exec.Cmd
	url  string
	exit chan error
	logs *tail
}

// childArgs are the serve flags of a bench's own server: loopback on a
// free port, a fresh data directory, limits off (every client of the bench
// sits on one address and sends as fast as it may) and room for the
// Commits and Welcomes of big groups.
func childArgs(dataDir, store string, extra []string) []string {
	args := []string{"serve", "--listen", "127.0.0.1:0", "--log-format", "json",
		"--data-dir", dataDir,
		"--rate-limit", "-1", "--claim-rate", "-1", "--claimer-rate", "-1", "--auth-rate-limit", "-1", "--max-bytes-per-day", "0", "--max-groups-per-day", "0",
		"--max-message-size", "64MiB", "--max-group-size", "100000",
		"--max-streams-per-client", "16", "--shutdown-timeout", "5s"}
	if store != "" {
		args = append(args, "--store", store)
	}
	return append(args, extra...)
}

// startChild runs bin with args (see childArgs), with the serve log at
// level info so that the listening address can be read from it, and
// waits until it serves.
func startChild(ctx context.Context, bin string, args []string, env []string) (*childServer, error) {
	// The address comes from the "mlsds serving" line, logged at info.
	args = append(args, "--log-level", "info")
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	// Its own process group, so that a ^C to the bench reaches the bench
	// first, which then stops the server cleanly.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s serve: %w", bin, err)
	}
	s := &childServer{cmd: cmd, exit: make(chan error, 1), logs: &tail{max: 20}}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var line struct {
				Level string `json:"level"`
				Msg   string `json:"msg"`
				Addr  string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				s.logs.add(sc.Text())
				continue
			}
			if line.Msg == "mlsds serving" {
				select {
				case addr <- line.Addr:
				default:
				}
			}
			if line.Level == "WARN" || line.Level == "ERROR" {
				s.logs.add(sc.Text())
			}
		}
		io.Copy(io.Discard, stderr)
		s.exit <- cmd.Wait()
	}()
	select {
	case a := <-addr:
		s.url = "http://" + a
		return s, nil
	case err := <-s.exit:
		return nil, fmt.Errorf("the server exited on start (%v): %s", err, s.logs.String())
	case <-ctx.Done():
		cmd.Process.Kill()
		return nil, ctx.Err()
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		return nil, errors.New("the server did not report its address within 2 minutes")
	}
}

func (s *childServer) pid() int { return s.cmd.Process.Pid }

// stop ends the server with SIGTERM (SIGKILL after 15s).
func (s *childServer) stop() error {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.exit:
		return err
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-s.exit
		return errors.New("the server did not stop within 15s of SIGTERM")
	}
}

// tail keeps the last lines of a log.
type tail struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func (t *tail) add(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, s)
	if len(t.lines) > t.max {
		t.lines = t.lines[1:]
	}
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// procUsage is a process's CPU time and memory.
type procUsage struct {
	CPU     time.Duration
	RSS     int64 // bytes
	PeakRSS int64 // bytes (VmHWM), 0 if unknown
	OK      bool
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat times;
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// readProc reads a process's usage from /proc (Linux).
func readProc(pid int) procUsage {
	var u procUsage
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u
	}
	// The command name may hold spaces: the fields start after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return u
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return u
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	u.CPU = time.Duration(ut+st) * time.Second / clockTicks
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			switch k {
			case "VmRSS":
				u.RSS = kb(v)
			case "VmHWM":
				u.PeakRSS = kb(v)
			}
		}
	}
	u.OK = true
	return u
}

// ProcessCPU is the user and system CPU time that process pid has used so
// far, read from /proc (Linux); false if it cannot be read.
func ProcessCPU(pid int) (time.Duration, bool) {
	u := readProc(pid)
	return u.CPU, u.OK
}

func kb(v string) int64 {
	n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
	return n << 10
}

// metrics is what the bench reads from a server's /metrics.
type metrics struct {
	CPUSeconds      float64
	RSS             float64
	CommitConflicts float64
	// Store holds mlsds_store_latency_seconds by operation: the count of
	// calls and the sum of their durations.
	Store map[string]storeOp
	// Batch is mlsds_accept_batch_messages: accept transactions (Count)
	// and the messages in them (Sum).
	Batch storeOp
	OK    bool
}

type storeOp struct{ Count, Sum float64 }

// scrape reads a few series of the server's /metrics.
func scrape(ctx context.Context, hc *http.Client, base string) metrics {
	var m metrics
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+"/metrics", nil)
	if err != nil {
		return m
	}
	res, err := hc.Do(req)
	if err != nil {
		return m
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return m
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		if op, kind, ok := storeSeries(name); ok {
			if m.Store == nil {
				m.Store = map[string]storeOp{}
			}
			o := m.Store[op]
			if kind == "count" {
				o.Count = v
			} else {
				o.Sum = v
			}
			m.Store[op] = o
			continue
		}
		switch name {
		case "mlsds_process_cpu_seconds_total":
			m.CPUSeconds, m.OK = v, true
		case "mlsds_process_resident_memory_bytes":
			m.RSS, m.OK = v, true
		case "mlsds_commit_conflicts_total":
			m.CommitConflicts, m.OK = v, true
		case "mlsds_accept_batch_messages_sum":
			m.Batch.Sum = v
		case "mlsds_accept_batch_messages_count":
			m.Batch.Count = v
		}
	}
	return m
}

// storeSeries recognizes mlsds_store_latency_seconds_sum{operation="x"}
// and _count, returning x and "sum" or "count".
func storeSeries(name string) (op, kind string, ok bool) {
	rest, ok := strings.CutPrefix(name, "mlsds_store_latency_seconds_")
	if !ok {
		return "", "", false
	}
	kind, labels, ok := strings.Cut(rest, "{")
	if !ok || (kind != "sum" && kind != "count") {
		return "", "", false
	}
	_, v, ok := strings.Cut(labels, `operation="`)
	if !ok {
		return "", "", false
	}
	op, _, ok = strings.Cut(v, `"`)
	return op, kind, ok
}

// loadAverage returns the 1-minute load average of the machine, or -1.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}
