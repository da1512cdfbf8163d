package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
)

// BenchmarkServerCPU runs `mlsds bench` (a real server in a child process,
// SDK senders, raw receivers) and reports the server's CPU per accepted
// message, measured from the child's /proc figures:
//
//   - server-µs/msg: server CPU over the messages accepted (application
//     messages, Proposals and Commits), each with members-1 deliveries;
//   - server-µs/delivery (groups of 100): the CPU per further delivery,
//     the difference to the 2-member run with as many groups, over the
//     98 further deliveries of each message;
//   - msgs/s and p99-ms, the bench's own figures.
//
// Each case runs once, for MLSDS_BENCH_DURATION (default 10s), whatever
// b.N is; the machine's other load shows in the figures, so compare runs
// made side by side.
//
//	go test ./cmd/mlsds -run '^$' -bench ServerCPU -benchtime 1x
func BenchmarkServerCPU(b *testing.B) {
	d := os.Getenv("MLSDS_BENCH_DURATION")
	if d == "" {
		d = "10s"
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	saved := benchServerCommand
	benchServerCommand = func() (string, []string, error) {
		return exe, []string{"-test.run=^TestBenchServerChild$", "--"}, nil
	}
	b.Cleanup(func() { benchServerCommand = saved })
	b.Setenv(benchChildEnv, "1")

	base := make(map[int]float64) // server-µs/msg of 2-member groups, by groups
	for _, c := range []struct{ groups, members int }{{50, 2}, {5, 2}, {5, 100}} {
		b.Run(fmt.Sprintf("groups=%d/members=%d", c.groups, c.members), func(b *testing.B) {
			var out, errb bytes.Buffer
			args := []string{"bench", "--duration", d, "--receivers", "raw", "--senders", "1",
				"--groups", fmt.Sprint(c.groups), "--members", fmt.Sprint(c.members),
				"--baselines=false", "--temp-dir", b.TempDir(), "--json"}
			if code := run(args, &out, &errb); code != 0 {
				b.Fatalf("mlsds bench exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			var r struct {
				App       float64 `json:"accepted_app_messages"`
				Commits   float64 `json:"accepted_commits"`
				Proposals float64 `json:"accepted_proposals"`
				PerSec    float64 `json:"accepted_per_sec"`
				P99       float64 `json:"latency_ms_p99"`
				CPU       float64 `json:"server_cpu_seconds"`
				Missing   float64 `json:"missing_deliveries"`
				Dups      float64 `json:"duplicate_deliveries"`
			}
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
				b.Fatalf("the last line of stdout is not a JSON object: %v\n%s", err, out.String())
			}
			if r.Missing != 0 || r.Dups != 0 {
				b.Fatalf("%v missing and %v duplicate deliveries", r.Missing, r.Dups)
			}
			msgs := r.App + r.Commits + r.Proposals
			if msgs == 0 || r.CPU == 0 {
				b.Fatalf("nothing measured:\n%s", out.String())
			}
			perMsg := r.CPU * 1e6 / msgs
			b.ReportMetric(perMsg, "server-µs/msg")
			b.ReportMetric(r.PerSec, "msgs/s")
			b.ReportMetric(r.P99, "p99-ms")
			if c.members == 2 {
				base[c.groups] = perMsg
			} else if m0, ok := base[c.groups]; ok {
				b.ReportMetric((perMsg-m0)/float64(c.members-2), "server-µs/delivery")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}
