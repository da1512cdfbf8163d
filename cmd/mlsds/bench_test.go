package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mlsds/mlsds/internal/loadgen"
	"github.com/mlsds/mlsds/internal/pgtest"
)

// benchChildEnv marks a re-run of this test binary as the bench's server.
const benchChildEnv = "MLSDS_TEST_BENCH_SERVER_CHILD"

// TestBenchServerChild is not a test: it is the `mlsds serve` process that
// TestBench's bench starts, this test binary run again with the serve
// arguments after "--".
func TestBenchServerChild(t *testing.T) {
	if os.Getenv(benchChildEnv) != "1" {
		t.Skip("runs only as the server child of TestBench")
	}
	os.Exit(run(flag.Args(), os.Stdout, os.Stderr))
}

// TestBench runs the real command against a server it starts, with a mix
// of application messages, Update Proposals and Update Commits, and checks
// its figures: every application message accepted reached every other
// member exactly once (the Proposals and Commits in between count as
// neither), Proposals were accepted, and every figure the report promises
// was measured.
func TestBench(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and loads it for seconds")
	}
	useTestServerChild(t)

	const members = 3
	for _, receivers := range []string{"sdk", "raw"} {
		t.Run(receivers, func(t *testing.T) {
			var out, errb bytes.Buffer
			args := []string{"bench", "--duration", "2s", "--groups", "2", "--members", "3", "--receivers", receivers,
				"--commits", "0.05", "--proposals", "0.05", "--baseline-duration", "300ms", "--temp-dir", t.TempDir(), "--json"}
			if receivers == "raw" {
				args = append(args, "--senders", "1", "--baselines=false")
			}
			if code := run(args, &out, &errb); code != 0 {
				t.Fatalf("mlsds bench exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			var r map[string]any
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
				t.Fatalf("the last line of stdout is not a JSON object: %v\n%s", err, out.String())
			}
			num := func(k string) float64 {
				t.Helper()
				v, ok := r[k].(float64)
				if !ok {
					t.Fatalf("field %q missing or not a number in %v", k, r)
				}
				return v
			}
			accepted := num("accepted_app_messages")
			if accepted <= 0 || num("accepted_per_sec") <= 0 {
				t.Fatalf("nothing accepted: %v", r)
			}
			if d, want := num("deliveries"), accepted*(members-1); d != want || num("expected_deliveries") != want {
				t.Errorf("deliveries %v, want %v (accepted %v x %d other members)", d, want, accepted, members-1)
			}
			if num("missing_deliveries") != 0 || num("duplicate_deliveries") != 0 {
				t.Errorf("missing %v, duplicate %v deliveries", num("missing_deliveries"), num("duplicate_deliveries"))
			}
			if num("errors") != 0 || num("undecryptable") != 0 {
				t.Errorf("%v errors, %v undecryptable: %v", num("errors"), num("undecryptable"), r["first_error"])
			}
			if num("latency_samples") != num("deliveries") {
				t.Errorf("%v latency samples for %v deliveries", num("latency_samples"), num("deliveries"))
			}
			p50, p95, p99, mx := num("latency_ms_p50"), num("latency_ms_p95"), num("latency_ms_p99"), num("latency_ms_max")
			if !(0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= mx) {
				t.Errorf("latency percentiles out of order: p50 %v p95 %v p99 %v max %v", p50, p95, p99, mx)
			}
			if num("deliveries_per_sec") <= 0 || num("server_cpu_seconds") <= 0 || num("server_rss_bytes") <= 0 {
				t.Errorf("deliveries/s %v, server CPU %v s, RSS %v", num("deliveries_per_sec"), num("server_cpu_seconds"), num("server_rss_bytes"))
			}
			// Every accepted message went through an accept transaction
			// of the server, which reports how many it ran.
			if num("accept_batches_per_sec") <= 0 || num("accept_batch_mean") < 1 {
				t.Errorf("accept batches %v/s, mean %v messages", num("accept_batches_per_sec"), num("accept_batch_mean"))
			}
			if !strings.Contains(out.String(), "server accept batches") {
				t.Errorf("the report has no accept batches line:\n%s", out.String())
			}
			if num("accepted_commits") > 0 && num("commit_samples") <= 0 {
				t.Errorf("%v Commits accepted but no accept latency sampled", num("accepted_commits"))
			}
			if num("accepted_proposals") <= 0 || num("proposals_per_sec") <= 0 {
				t.Errorf("no Proposals accepted: accepted_proposals %v, proposals_per_sec %v", num("accepted_proposals"), num("proposals_per_sec"))
			}
			if num("proposal_samples") < num("accepted_proposals") {
				t.Errorf("%v Proposals accepted but %v Proposal round trips sampled", num("accepted_proposals"), num("proposal_samples"))
			}
			if !strings.Contains(out.String(), "accepted Proposals") {
				t.Errorf("the report has no Proposals line:\n%s", out.String())
			}
			if receivers == "sdk" {
				for _, k := range []string{"baseline_sqlite_insert_1_per_sec", "baseline_sqlite_insert_64_per_sec",
					"baseline_ed25519_verify_per_sec", "baseline_ed25519_verify_all_cores_per_sec", "ratio_accepted_to_insert_64"} {
					if num(k) <= 0 {
						t.Errorf("%s = %v", k, num(k))
					}
				}
			}
			if !strings.Contains(errb.String(), "accepted") {
				t.Errorf("no progress line on stderr:\n%s", errb.String())
			}
		})
	}
}

// TestBenchPostgres runs the bench on a PostgreSQL store: the server child
// gets --store, and the PostgreSQL baseline runs on the same database.
func TestBenchPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a server")
	}
	t.Setenv("PGTEST_FSYNC", "on") // the insert baseline refuses a server without fsync
	url := pgtest.NewDatabase(t)
	useTestServerChild(t)
	var out, errb bytes.Buffer
	args := []string{"bench", "--store", url, "--duration", "2s", "--groups", "2", "--members", "3",
		"--baseline-duration", "300ms", "--temp-dir", t.TempDir(), "--json"}
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("mlsds bench exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var r struct {
		Store      string  `json:"store"`
		Accepted   int64   `json:"accepted_app_messages"`
		Deliveries int64   `json:"deliveries"`
		PG1        float64 `json:"baseline_postgres_insert_1_per_sec"`
		PG64       float64 `json:"baseline_postgres_insert_64_per_sec"`
		Ratio      float64 `json:"ratio_accepted_to_postgres_insert_64"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("last line: %v\n%s", err, out.String())
	}
	if r.Store != "postgres" || r.Accepted <= 0 || r.Deliveries != 2*r.Accepted || r.PG1 <= 0 || r.PG64 <= 0 || r.Ratio <= 0 {
		t.Fatalf("bench on PostgreSQL: %+v", r)
	}
}

// useTestServerChild makes the bench start this test binary as its server
// (see TestBenchServerChild) for the rest of t.
func useTestServerChild(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	saved := benchServerCommand
	benchServerCommand = func() (string, []string, error) {
		return exe, []string{"-test.run=^TestBenchServerChild$", "--"}, nil
	}
	t.Cleanup(func() { benchServerCommand = saved })
	t.Setenv(benchChildEnv, "1")
}

func TestBenchCommitScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	useTestServerChild(t)
	var out, errb bytes.Buffer
	args := []string{"bench", "--scenario", "commit", "--members", "40", "--add-batch", "16", "--duration", "1s",
		"--baselines=false", "--temp-dir", t.TempDir(), "--json"}
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("mlsds bench exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var r struct {
		Commits   int64   `json:"accepted_commits"`
		Samples   int64   `json:"commit_samples"`
		P50       float64 `json:"commit_accept_ms_p50"`
		P99       float64 `json:"commit_accept_ms_p99"`
		Errors    int64   `json:"errors"`
		Members   int     `json:"members"`
		FirstErr  string  `json:"first_error"`
		ServerCPU float64 `json:"server_cpu_seconds"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("last line: %v\n%s", err, out.String())
	}
	if r.Commits <= 0 || r.Samples != r.Commits || r.P50 <= 0 || r.P99 < r.P50 || r.Errors != 0 || r.Members != 40 {
		t.Fatalf("commit scenario: %+v", r)
	}
}

// The fractions of Commits and Proposals share the operations: more than
// all of them is refused before anything starts, naming both flags.
func TestBenchMixTooLarge(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--commits", "0.6", "--proposals", "0.5"},
		{"bench", "--commits", "1"}, // with the default --proposals 0.01
		{"bench", "--proposals", "-0.1"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%q exited %d, want 2\nstderr:\n%s", args, code, errb.String())
		}
		if msg := errb.String(); !strings.Contains(msg, "--commits") || !strings.Contains(msg, "--proposals") {
			t.Errorf("%q: the error does not name both flags: %q", args, msg)
		}
	}
	if err := loadgen.CheckMix(0.99, 0.01); err != nil {
		t.Errorf("0.99 + 0.01 refused: %v", err)
	}
}

func TestBenchEnvTwins(t *testing.T) {
	var f benchFlags
	var out bytes.Buffer
	fs := newBenchFlagSet(&f, &out)
	fs.PrintDefaults()
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if c := strings.Count(out.String(), "(env MLSDS_BENCH_"); c != n {
		t.Fatalf("%d of %d bench flags document their environment twin", c, n)
	}

	fs = newBenchFlagSet(&f, io.Discard)
	if err := fs.Parse([]string{"--groups", "7"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"MLSDS_BENCH_GROUPS":   "99", // the flag wins
		"MLSDS_BENCH_MEMBERS":  "100",
		"MLSDS_BENCH_DURATION": "3s",
		"MLSDS_BENCH_SIZE":     "1KiB",
		"MLSDS_BENCH_JSON":     "true",
		"MLSDS_MEMBERS":        "5", // a serve-style name is not a bench twin
	}
	if err := applyBenchEnv(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if f.groups != 7 || f.members != 100 || f.duration != 3*time.Second || f.size != 1024 || !f.jsonOut {
		t.Fatalf("flags after env: %+v", f)
	}
	err := applyBenchEnv(newBenchFlagSet(&f, io.Discard), func(k string) (string, bool) {
		if k == "MLSDS_BENCH_RATE" {
			return "fast", true
		}
		return "", false
	})
	if err == nil || !strings.Contains(err.Error(), "MLSDS_BENCH_RATE") {
		t.Fatalf("error %v does not name the variable", err)
	}
}
