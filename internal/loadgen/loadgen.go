// Package loadgen is the load generator behind `mlsds bench`: it starts an
// mlsds server (or targets one), builds groups of real MLS clients with the
// client SDK, drives a mix of application messages, Update Proposals and
// Update Commits through them at a set rate or as fast as they go, and
// reports accepted messages and deliveries per second, commit conflicts,
// end-to-end delivery latency and the server's CPU and memory, next to
// baselines measured in the same run (the raw durable insert rate of the
// store, the raw Ed25519 verify rate), so that the figures read as ratios.
package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// Scenarios.
const (
	// ScenarioMixed is G groups of S members exchanging application
	// messages, with a fraction of Update Commits and a fraction of
	// Update Proposals (which other members' SDK clients commit).
	ScenarioMixed = "mixed"
	// ScenarioCommit is one group of S members (one SDK client, the rest
	// registered clients that only hold a leaf) in which the SDK client
	// commits Updates one after the other: it measures how long the
	// server takes to accept a Commit in a large transparent group.
	ScenarioCommit = "commit"
)

// Receiver modes.
const (
	// ReceiversSDK makes every member an SDK client that decrypts and
	// processes everything, as an application would.
	ReceiversSDK = "sdk"
	// ReceiversRaw makes only the senders SDK clients; the other members
	// count the envelopes of their Subscribe streams without decrypting.
	ReceiversRaw = "raw"
)

// Config configures a run. Zero fields take the defaults in comments.
type Config struct {
	// Target is the base URL of a running server; empty starts one.
	Target string
	// ServerBinary is the mlsds binary to start (`ServerBinary serve ...`)
	// when Target is empty; ServerArgs are extra serve flags and ServerEnv
	// extra environment variables (KEY=VALUE) of that process.
	ServerBinary string
	ServerArgs   []string
	ServerEnv    []string
	// ServerPrefix goes between ServerBinary and "serve" (a wrapper
	// command of the binary, such as one that adds profiling).
	ServerPrefix []string
	// Store is the started server's --store: empty for SQLite in a
	// temporary data directory, or a postgres:// URL.
	Store string
	// TempDir holds the started server's data directory and the SQLite
	// baseline's database; default os.TempDir().
	TempDir string

	Scenario  string  // ScenarioMixed (default) or ScenarioCommit
	Groups    int     // default 10 (the commit scenario has 1)
	Members   int     // per group; default 5
	Senders   int     // per group; default all members (sdk), members/2 between 1 and 5 (raw)
	Receivers string  // ReceiversSDK (default) or ReceiversRaw
	Size      int     // application message plaintext bytes; default 100
	Rate      float64 // operations per second in all; 0: as fast as possible
	Commits   float64 // fraction of operations that are Update Commits (0 to 1)
	// Proposals is the fraction of operations that are Update Proposals
	// (Group.ProposeUpdate; another member's SDK client commits them).
	// Commits and Proposals add up to at most 1; the rest are
	// application messages.
	Proposals float64
	Duration  time.Duration
	// Drain is how long to wait after the load for every message to
	// reach every member; default 30s.
	Drain time.Duration
	// AckInterval is how often raw members acknowledge what they
	// received; default DefaultAckInterval (as the SDK), negative never.
	AckInterval time.Duration
	// AddBatch is how many members one Commit adds while the groups are
	// built; default 10000. One big Commit is cheaper than several: each
	// Commit's UpdatePath is encrypted to every member added before it.
	AddBatch int
	// Workers is how many clients are set up at a time; default 32.
	Workers int

	// Baselines turns on the baselines, each measured for
	// BaselineDuration (default 2s) before the server starts.
	Baselines        bool
	BaselineDuration time.Duration
	// BaselinePostgres is a PostgreSQL URL for the PostgreSQL insert
	// baseline; default Store when that is a postgres:// URL.
	BaselinePostgres string

	// Progress receives the setup messages and the live progress line
	// once a second; TTY says it is a terminal (the line is then
	// rewritten in place).
	Progress io.Writer
	TTY      bool
	// OnLoad, if set, is called when the load starts, with its duration
	// (for example to take a profile of the server over it).
	OnLoad func(d time.Duration)
}

func (c *Config) defaults() error {
	if c.Scenario == "" {
		c.Scenario = ScenarioMixed
	}
	if c.Scenario != ScenarioMixed && c.Scenario != ScenarioCommit {
		return fmt.Errorf("scenario %q: use %s or %s", c.Scenario, ScenarioMixed, ScenarioCommit)
	}
	if c.Receivers == "" {
		c.Receivers = ReceiversSDK
	}
	if c.Receivers != ReceiversSDK && c.Receivers != ReceiversRaw {
		return fmt.Errorf("receivers %q: use %s or %s", c.Receivers, ReceiversSDK, ReceiversRaw)
	}
	if c.Groups == 0 {
		c.Groups = 10
	}
	if c.Members == 0 {
		c.Members = 5
	}
	if c.Scenario == ScenarioCommit {
		c.Groups, c.Senders, c.Receivers, c.Commits, c.Proposals = 1, 1, ReceiversRaw, 1, 0
	}
	if c.Groups < 1 || c.Members < 2 {
		return errors.New("need at least 1 group of 2 members")
	}
	if c.Senders == 0 {
		c.Senders = c.Members
		if c.Receivers == ReceiversRaw {
			c.Senders = max(1, min(5, c.Members/2))
		}
	}
	if c.Senders < 1 || c.Senders > c.Members {
		return fmt.Errorf("senders %d: use 1 to %d (the members of a group)", c.Senders, c.Members)
	}
	if c.Size <= 0 {
		c.Size = 100
	}
	if c.Rate < 0 {
		c.Rate = 0
	}
	c.Commits = max(0, min(c.Commits, 1))
	c.Proposals = max(0, min(c.Proposals, 1))
	if err := CheckMix(c.Commits, c.Proposals); err != nil {
		return err
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Drain <= 0 {
		c.Drain = 30 * time.Second
	}
	if c.AckInterval == 0 {
		c.AckInterval = DefaultAckInterval
	}
	if c.AckInterval < 0 {
		c.AckInterval = -time.Millisecond
	}
	if c.AddBatch <= 0 {
		c.AddBatch = 10000
	}
	if c.Workers <= 0 {
		c.Workers = 32
	}
	if c.BaselineDuration <= 0 {
		c.BaselineDuration = 2 * time.Second
	}
	if c.BaselinePostgres == "" && isPostgres(c.Store) {
		c.BaselinePostgres = c.Store
	}
	if c.TempDir == "" {
		c.TempDir = os.TempDir()
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Target == "" && c.ServerBinary == "" {
		return errors.New("no server: set a target URL or the mlsds binary to start")
	}
	return nil
}

// CheckMix reports whether commits and proposals, the fractions of the
// operations that are Update Commits and Update Proposals, make a mix:
// each between 0 and 1, and together at most 1 (the rest are application
// messages).
func CheckMix(commits, proposals float64) error {
	if !(commits >= 0 && commits <= 1) || !(proposals >= 0 && proposals <= 1) {
		return fmt.Errorf("commits %g, proposals %g: each is a fraction of the operations, from 0 to 1", commits, proposals)
	}
	// A little slack for sums such as 0.99 + 0.01.
	if commits+proposals > 1+1e-9 {
		return fmt.Errorf("commits %g and proposals %g add up to %g: they are fractions of the same operations and may add up to at most 1 (the rest are application messages); lower one of them",
			commits, proposals, commits+proposals)
	}
	return nil
}

func isPostgres(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// Run runs the bench described by cfg and returns its figures. ctx ends
// the load early (the figures then cover the time it ran).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	r := &Result{
		Scenario: cfg.Scenario, Groups: cfg.Groups, Members: cfg.Members, SendersPerGroup: cfg.Senders,
		Receivers: cfg.Receivers, SizeBytes: cfg.Size, RatePerSec: cfg.Rate, CommitFraction: cfg.Commits,
		ProposalFraction: cfg.Proposals,
		AckIntervalMs:    ms(cfg.AckInterval),
		CPUs:             runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), LoadAverage1m: loadAverage(),
		Store: "sqlite", Server: "child",
	}
	if isPostgres(cfg.Store) {
		r.Store = "postgres"
	}
	if cfg.Target != "" {
		r.Server, r.Store = "target", "unknown"
	}
	logf := func(format string, args ...any) { fmt.Fprintf(cfg.Progress, format+"\n", args...) }

	wire, err := wireSize(cfg.Size)
	if err != nil {
		return nil, err
	}
	r.MessageWireBytes = wire

	tmp, err := os.MkdirTemp(cfg.TempDir, "mlsds-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	if cfg.Baselines {
		b, err := measureBaselines(ctx, tmp, cfg.BaselinePostgres, wire, cfg.BaselineDuration, logf)
		if err != nil {
			return nil, fmt.Errorf("baselines: %w", err)
		}
		r.setBaselines(b)
	}

	url := cfg.Target
	var child *childServer
	if url == "" {
		dataDir := tmp + "/data"
		child, err = startChild(ctx, cfg.ServerBinary, append(append([]string(nil), cfg.ServerPrefix...), childArgs(dataDir, cfg.Store, cfg.ServerArgs)...), cfg.ServerEnv)
		if err != nil {
			return nil, err
		}
		defer child.stop()
		logf("server: %s (pid %d, store %s)", child.url, child.pid(), r.Store)
	}
	url = strings.TrimRight(url, "/")
	if child != nil {
		url = child.url
	}

	runID := make([]byte, 4)
	rand.Read(runID)
	b := &bench{cfg: cfg, url: url, child: child, res: r, logf: logf, prefix: "bench-" + hex.EncodeToString(runID)}
	defer b.close()
	switch cfg.Scenario {
	case ScenarioCommit:
		err = b.runCommit(ctx)
	default:
		err = b.runMixed(ctx)
	}
	if err != nil {
		if child != nil {
			if t := child.logs.String(); t != "" {
				err = fmt.Errorf("%w\nlast server log lines:\n%s", err, t)
			}
		}
		return nil, err
	}
	r.setRatios()
	return r, nil
}
