package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	_ "net/http/pprof" // for the server child of --server-cpuprofile only: see serveWithPprof
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/mlsds/mlsds/internal/loadgen"
)

// benchFlags are the flags of `mlsds bench`.
type benchFlags struct {
	target, store, tempDir string
	scenario, receivers    string
	groups, members        int
	senders                int
	size                   byteSize
	rate, commits          float64
	proposals              float64
	duration, drain        time.Duration
	addBatch, workers      int
	ackInterval            time.Duration
	baselines              bool
	baselineDuration       time.Duration
	baselinePostgres       string
	jsonOut                bool
	serverFlags            string
	serverCPUProfile       string
	cpuProfile             string
	servePprof             string // internal: this process is the server child
	mode                   string // --mode (bench_deniable.go)
}

func newBenchFlagSet(f *benchFlags, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("mlsds bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.target, "target", "", "base URL of a running server to load (http://host:port); empty starts one as a child process on loopback, with a fresh data directory and rate limits off")
	fs.StringVar(&f.store, "store", "", "--store of the started server: empty for SQLite, or a postgres:// URL (also used for the PostgreSQL baseline)")
	fs.StringVar(&f.tempDir, "temp-dir", "", "directory for the started server's data and the SQLite baseline (default: the system's temporary directory)")
	fs.StringVar(&f.scenario, "scenario", loadgen.ScenarioMixed, "mixed (application messages, Update Proposals and Update Commits in --groups groups) or commit (Update Commits in one group of --members; reports the Commit accept latency)")
	fs.StringVar(&f.receivers, "receivers", loadgen.ReceiversSDK, "sdk (every member an SDK client that decrypts everything) or raw (only the senders are SDK clients; the other members count envelopes from their streams without decrypting)")
	fs.IntVar(&f.groups, "groups", 10, "number of groups")
	fs.IntVar(&f.members, "members", 5, "members per group")
	fs.IntVar(&f.senders, "senders", 0, "members per group that send (0: all members with --receivers sdk; half the members, 1 to 5, with raw)")
	f.size = 100
	fs.Var(&f.size, "size", "application message plaintext `size` in bytes")
	fs.Float64Var(&f.rate, "rate", 0, "operations (messages, Proposals and Commits) per second in all, paced open-loop; 0 sends as fast as possible")
	fs.Float64Var(&f.commits, "commits", 0.01, "fraction of operations that are Update Commits instead of application messages")
	fs.Float64Var(&f.proposals, "proposals", 0.01, "fraction of operations that are Update Proposals instead of application messages (another member's SDK client commits them); --commits plus --proposals is at most 1")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "how long the load runs")
	fs.DurationVar(&f.drain, "drain", 30*time.Second, "after the load, how long to wait for the last deliveries")
	fs.DurationVar(&f.ackInterval, "ack-interval", loadgen.DefaultAckInterval, "how often raw receivers acknowledge what they received (the SDK's interval by default); 0 never")
	fs.IntVar(&f.addBatch, "add-batch", 10000, "members added per Commit while the groups are built")
	fs.IntVar(&f.workers, "workers", 32, "clients set up at a time")
	fs.BoolVar(&f.baselines, "baselines", true, "measure the baselines (raw durable insert rates, Ed25519 verify rate) before the load")
	fs.DurationVar(&f.baselineDuration, "baseline-duration", 2*time.Second, "how long each baseline runs")
	fs.StringVar(&f.baselinePostgres, "baseline-postgres", "", "PostgreSQL URL for the PostgreSQL insert baseline (default: --store when it is one); the bench creates and drops a table there")
	fs.BoolVar(&f.jsonOut, "json", false, "print the figures as one JSON object on the last line of the output")
	fs.StringVar(&f.serverFlags, "server-flags", "", "extra flags for the started server, space-separated (--server-flags '--app-epoch-window 4')")
	fs.StringVar(&f.serverCPUProfile, "server-cpuprofile", "", "write a CPU profile of the started server over the load to this file (go tool pprof FILE)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the bench itself (its clients) over the whole run to this file")
	fs.StringVar(&f.servePprof, "serve-pprof", "", "internal: run `mlsds serve` (the arguments after --) in this process with net/http/pprof on this address")
	fs.StringVar(&f.mode, "mode", "", "deniable: build --groups opaque groups, then as many deniable ones, of --members SDK clients, send in each for --duration and report accepted messages/s side by side, and the membership MAC check's cost per request (uses --target, --store, --temp-dir, --groups, --members, --senders, --size, --rate, --duration, --drain, --workers, --server-flags, --json)")
	addEnvToUsage(fs, benchEnvPrefix)
	return fs
}

func runBench(args []string, stdout, stderr io.Writer) int {
	var f benchFlags
	fs := newBenchFlagSet(&f, stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: mlsds bench [flags]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Builds groups of MLS clients on a server (one it starts, or --target), drives")
		fmt.Fprintln(stderr, "application messages, Proposals and Commits through them and reports accepted messages/s,")
		fmt.Fprintln(stderr, "deliveries/s, commit conflicts, delivery latency, the server's CPU and memory,")
		fmt.Fprintln(stderr, "and baselines measured in the same run. Flags:")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := applyBenchEnv(fs, lookupEnv); err != nil {
		fmt.Fprintf(stderr, "mlsds bench: %v\n", err)
		return 2
	}
	if f.servePprof != "" {
		return serveWithPprof(f.servePprof, fs.Args(), stdout, stderr)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mlsds bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if f.mode != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return runBenchMode(ctx, &f, stdout, stderr) // bench_deniable.go
	}
	if f.scenario != loadgen.ScenarioCommit {
		if err := loadgen.CheckMix(f.commits, f.proposals); err != nil {
			fmt.Fprintf(stderr, "mlsds bench: --commits and --proposals: %v\n", err)
			return 2
		}
	}
	if f.ackInterval <= 0 {
		f.ackInterval = -1 // loadgen: never
	}
	cfg := loadgen.Config{
		Target: f.target, Store: f.store, TempDir: f.tempDir,
		Scenario: f.scenario, Groups: f.groups, Members: f.members, Senders: f.senders, Receivers: f.receivers,
		Size: int(f.size), Rate: f.rate, Commits: f.commits, Proposals: f.proposals, Duration: f.duration, Drain: f.drain,
		AddBatch: f.addBatch, Workers: f.workers, AckInterval: f.ackInterval,
		Baselines: f.baselines, BaselineDuration: f.baselineDuration, BaselinePostgres: f.baselinePostgres,
		ServerArgs: strings.Fields(f.serverFlags),
		Progress:   stderr,
		TTY:        isTerminal(stderr),
	}
	if f.target == "" {
		exe, prefix, err := benchServerCommand()
		if err != nil {
			fmt.Fprintf(stderr, "mlsds bench: finding this binary to start the server: %v\n", err)
			return 1
		}
		cfg.ServerBinary, cfg.ServerPrefix = exe, prefix
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	profileDone := make(chan error, 1)
	profiling := false
	if f.serverCPUProfile != "" {
		if f.target != "" {
			fmt.Fprintln(stderr, "mlsds bench: --server-cpuprofile needs a server the bench starts (no --target)")
			return 2
		}
		addr, err := freeLoopbackAddr()
		if err != nil {
			fmt.Fprintf(stderr, "mlsds bench: %v\n", err)
			return 1
		}
		cfg.ServerPrefix = append(cfg.ServerPrefix, "bench", "--serve-pprof", addr, "--")
		cfg.OnLoad = func(d time.Duration) {
			profiling = true
			go func() { profileDone <- fetchProfile(addr, d, f.serverCPUProfile) }()
		}
	}

	if f.cpuProfile != "" {
		out, err := os.Create(f.cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "mlsds bench: %v\n", err)
			return 1
		}
		if err := pprof.StartCPUProfile(out); err != nil {
			fmt.Fprintf(stderr, "mlsds bench: %v\n", err)
			return 1
		}
		defer func() {
			pprof.StopCPUProfile()
			out.Close()
		}()
	}
	res, err := loadgen.Run(ctx, cfg)
	if profiling {
		if perr := <-profileDone; perr != nil {
			fmt.Fprintf(stderr, "mlsds bench: server CPU profile: %v\n", perr)
		} else {
			fmt.Fprintf(stderr, "server CPU profile over the load: %s\n", f.serverCPUProfile)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "mlsds bench: %v\n", err)
		return 1
	}
	res.WriteReport(stdout)
	if f.jsonOut {
		b, err := json.Marshal(res)
		if err != nil {
			fmt.Fprintf(stderr, "mlsds bench: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s\n", b)
	}
	return 0
}

// benchServerCommand returns the binary that runs `mlsds serve` for the
// bench, and the arguments that go before "serve": this very binary, so
// that the server is the same build as the bench. Tests replace it.
var benchServerCommand = func() (string, []string, error) {
	exe, err := os.Executable()
	return exe, nil, err
}

// serveWithPprof is the server child of --server-cpuprofile: `mlsds serve`
// in this process, with the net/http/pprof handlers on addr (a loopback
// address the parent picked). mlsds serve itself never serves them.
func serveWithPprof(addr string, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "serve" {
		fmt.Fprintln(stderr, "mlsds bench --serve-pprof: want `-- serve [flags]` after it")
		return 2
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(stderr, "mlsds bench --serve-pprof: %v\n", err)
		return 1
	}
	go http.Serve(ln, http.DefaultServeMux)
	return runServe(args[1:], stdout, stderr)
}

// fetchProfile takes a CPU profile of d from the pprof handlers at addr.
func fetchProfile(addr string, d time.Duration, path string) error {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	c := &http.Client{Timeout: d + time.Minute}
	res, err := c.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs))
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("pprof answered %s", res.Status)
	}
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, res.Body); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// isTerminal reports whether w is a character device (a terminal), so the
// progress line may be rewritten in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
