package loadgen

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Result holds every figure of a run. Its JSON form is what `mlsds bench
// --json` prints; the units are in the field names. Figures that were not
// measured are 0 (rates, ratios) or omitted.
type Result struct {
	// What ran.
	Scenario         string  `json:"scenario"`        // mixed or commit
	Server           string  `json:"server"`          // child (started by the bench) or target
	Store            string  `json:"store"`           // sqlite, postgres or unknown (target)
	Receivers        string  `json:"receivers"`       // sdk or raw
	AckIntervalMs    float64 `json:"ack_interval_ms"` // raw receivers' acknowledgements; -1: none
	Groups           int     `json:"groups"`
	Members          int     `json:"members"`
	SendersPerGroup  int     `json:"senders_per_group"`
	SizeBytes        int     `json:"size_bytes"`         // application plaintext
	MessageWireBytes int     `json:"message_wire_bytes"` // the MLSMessage the server stores
	RatePerSec       float64 `json:"rate_per_sec"`       // offered operations/s; 0: as fast as possible
	CommitFraction   float64 `json:"commit_fraction"`
	ProposalFraction float64 `json:"proposal_fraction"`
	DurationSec      float64 `json:"duration_sec"` // the load window
	SetupSec         float64 `json:"setup_sec"`    // building the groups
	DrainSec         float64 `json:"drain_sec"`    // waiting for the last deliveries

	// The machine.
	CPUs          int     `json:"cpus"`
	GOMAXPROCS    int     `json:"gomaxprocs"`
	LoadAverage1m float64 `json:"load_average_1m"` // before the run

	// Throughput over the load window.
	AcceptedAppMessages int64   `json:"accepted_app_messages"` // in all, including those finishing after the window
	AcceptedCommits     int64   `json:"accepted_commits"`      // the bench's own Update Commits
	AcceptedProposals   int64   `json:"accepted_proposals"`    // Update Proposals (members' SDKs commit them)
	AcceptedPerSec      float64 `json:"accepted_per_sec"`      // application messages
	CommitsPerSec       float64 `json:"commits_per_sec"`
	ProposalsPerSec     float64 `json:"proposals_per_sec"`
	// Epochs is how many epochs the groups moved on during the load, in
	// all: the bench's Commits and the Commits of pending Proposals that
	// members' SDK clients made on their own.
	Epochs              int64   `json:"epochs"`
	Deliveries          int64   `json:"deliveries"`          // application messages received by members, after the drain
	ExpectedDeliveries  int64   `json:"expected_deliveries"` // accepted_app_messages * (members - 1)
	MissingDeliveries   int64   `json:"missing_deliveries"`
	DuplicateDeliveries int64   `json:"duplicate_deliveries"`
	DeliveriesPerSec    float64 `json:"deliveries_per_sec"`
	CommitConflicts     int64   `json:"commit_conflicts"` // server's mlsds_commit_conflicts_total during the load (SDK rebases if unreadable)
	SDKRebases          int64   `json:"sdk_rebases"`      // messages and Commits the SDK made again after losing an epoch
	Errors              int64   `json:"errors"`           // failed sends, Proposals and Commits, stream errors
	Undecryptable       int64   `json:"undecryptable"`    // EventUndecryptable at SDK receivers
	FirstError          string  `json:"first_error,omitempty"`

	// End-to-end delivery latency: from the send (the scheduled time with
	// --rate, the Send call otherwise) to a member receiving it.
	LatencySamples int64   `json:"latency_samples"`
	LatencyMsP50   float64 `json:"latency_ms_p50"`
	LatencyMsP95   float64 `json:"latency_ms_p95"`
	LatencyMsP99   float64 `json:"latency_ms_p99"`
	LatencyMsMax   float64 `json:"latency_ms_max"`
	// Group.Send calls of application messages, whole (sealing, the
	// state save before the message leaves, the round trip on the
	// SDK's SendStream): the server's accept latency and a little more.
	SendRTTMsP50 float64 `json:"send_rtt_ms_p50"`
	SendRTTMsP99 float64 `json:"send_rtt_ms_p99"`
	// Group.ProposeUpdate calls, whole, as send_rtt_* (which is
	// application messages only).
	ProposalSamples   int64   `json:"proposal_samples"`
	ProposalRTTMsP50  float64 `json:"proposal_rtt_ms_p50"`
	ProposalRTTMsP99  float64 `json:"proposal_rtt_ms_p99"`
	CommitSamples     int64   `json:"commit_samples"`
	CommitAcceptMsP50 float64 `json:"commit_accept_ms_p50"`
	CommitAcceptMsP95 float64 `json:"commit_accept_ms_p95"`
	CommitAcceptMsP99 float64 `json:"commit_accept_ms_p99"`
	// Whole Group.Update calls (making the Commit, the round trip,
	// merging it).
	CommitOpMsP50 float64 `json:"commit_op_ms_p50"`
	CommitOpMsP99 float64 `json:"commit_op_ms_p99"`

	// Resources during the load window.
	ServerCPUSeconds  float64 `json:"server_cpu_seconds"`
	ServerCPUPercent  float64 `json:"server_cpu_percent"` // of one core
	ServerRSSBytes    int64   `json:"server_rss_bytes"`
	ServerRSSPeakByte int64   `json:"server_rss_peak_bytes"`
	BenchCPUSeconds   float64 `json:"bench_cpu_seconds"` // the load generator itself, clients included
	// Work per second of server CPU: what the server would do with a
	// whole core to itself. On a shared or busy machine these vary less
	// than the rates per second of wall time.
	AcceptedPerServerCPUSec   float64 `json:"accepted_per_server_cpu_sec"`
	DeliveriesPerServerCPUSec float64 `json:"deliveries_per_server_cpu_sec"`

	// The server's storage operations during the load window, busiest
	// first (from its /metrics): calls per second and mean latency. A
	// store whose writes queue up shows here first.
	ServerStore []StoreOp `json:"server_store,omitempty"`
	// The server's accept transactions during the load (group commit):
	// per second, and the mean number of messages in one.
	AcceptBatchesPerSec float64 `json:"accept_batches_per_sec,omitempty"`
	AcceptBatchMean     float64 `json:"accept_batch_mean,omitempty"`

	// Baselines, measured before the load on the same machine.
	BaselineSQLiteInsert1PerSec         float64 `json:"baseline_sqlite_insert_1_per_sec"`
	BaselineSQLiteInsert64PerSec        float64 `json:"baseline_sqlite_insert_64_per_sec"`
	BaselinePostgresInsert1PerSec       float64 `json:"baseline_postgres_insert_1_per_sec"`
	BaselinePostgresInsert64PerSec      float64 `json:"baseline_postgres_insert_64_per_sec"`
	BaselineEd25519VerifyPerSec         float64 `json:"baseline_ed25519_verify_per_sec"`
	BaselineEd25519VerifyAllCoresPerSec float64 `json:"baseline_ed25519_verify_all_cores_per_sec"`

	// Ratios of the load's figures to the baselines.
	RatioAcceptedToInsert1          float64 `json:"ratio_accepted_to_insert_1"`
	RatioAcceptedToInsert64         float64 `json:"ratio_accepted_to_insert_64"`
	RatioAcceptedToPostgresInsert1  float64 `json:"ratio_accepted_to_postgres_insert_1"`
	RatioAcceptedToPostgresInsert64 float64 `json:"ratio_accepted_to_postgres_insert_64"`
}

// StoreOp is one storage operation of the server over the load window.
type StoreOp struct {
	Operation string  `json:"operation"`
	PerSec    float64 `json:"per_sec"`
	MeanMs    float64 `json:"mean_ms"`
	// BusySec is the summed time of the calls, which overlap: more than
	// the window means calls waited for each other.
	BusySec float64 `json:"busy_sec"`
}

func (r *Result) setBaselines(b Baselines) {
	r.BaselineSQLiteInsert1PerSec = b.SQLiteInsert1
	r.BaselineSQLiteInsert64PerSec = b.SQLiteInsert64
	r.BaselinePostgresInsert1PerSec = b.PostgresInsert1
	r.BaselinePostgresInsert64PerSec = b.PostgresInsert64
	r.BaselineEd25519VerifyPerSec = b.Ed25519Verify
	r.BaselineEd25519VerifyAllCoresPerSec = b.Ed25519VerifyAllCores
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func (r *Result) setRatios() {
	r.RatioAcceptedToInsert1 = ratio(r.AcceptedPerSec, r.BaselineSQLiteInsert1PerSec)
	r.RatioAcceptedToInsert64 = ratio(r.AcceptedPerSec, r.BaselineSQLiteInsert64PerSec)
	r.RatioAcceptedToPostgresInsert1 = ratio(r.AcceptedPerSec, r.BaselinePostgresInsert1PerSec)
	r.RatioAcceptedToPostgresInsert64 = ratio(r.AcceptedPerSec, r.BaselinePostgresInsert64PerSec)
}

// WriteReport writes the figures for people.
func (r *Result) WriteReport(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	rate := "as fast as possible"
	if r.RatePerSec > 0 {
		rate = fmt.Sprintf("%.0f ops/s offered", r.RatePerSec)
	}
	if r.Scenario == ScenarioCommit {
		if r.RatePerSec <= 0 {
			rate = "one after the other"
		}
		fmt.Fprintf(w, "mlsds bench: scenario commit, Update Commits in a transparent group of %d members (1 SDK client, %d raw members), %s\n",
			r.Members, r.Members-1, rate)
	} else {
		fmt.Fprintf(w, "mlsds bench: scenario %s, %d group(s) of %d members, %d sender(s) per group, %s receivers, %d-byte messages (%d on the wire), %s, %.3g%% Commits, %.3g%% Proposals\n",
			r.Scenario, r.Groups, r.Members, r.SendersPerGroup, r.Receivers, r.SizeBytes, r.MessageWireBytes, rate, 100*r.CommitFraction, 100*r.ProposalFraction)
	}
	fmt.Fprintf(w, "server: %s, store %s; machine: %d CPUs, load average %.2f before the run\n\n", r.Server, r.Store, r.CPUs, r.LoadAverage1m)
	p("setup", "%.1fs", r.SetupSec)
	p("load", "%.1fs (drain %.1fs)", r.DurationSec, r.DrainSec)
	if r.Scenario == ScenarioMixed {
		p("accepted app messages", "%.0f/s (%d)", r.AcceptedPerSec, r.AcceptedAppMessages)
		p("accepted Commits", "%.1f/s (%d)", r.CommitsPerSec, r.AcceptedCommits)
		p("accepted Proposals", "%.1f/s (%d)", r.ProposalsPerSec, r.AcceptedProposals)
		p("epochs", "%d (Commits of the bench and of pending Proposals)", r.Epochs)
		p("deliveries", "%.0f/s (%d of %d expected, %d missing, %d duplicate)", r.DeliveriesPerSec, r.Deliveries, r.ExpectedDeliveries, r.MissingDeliveries, r.DuplicateDeliveries)
		p("delivery latency", "p50 %.2fms  p95 %.2fms  p99 %.2fms  max %.2fms (%d samples)", r.LatencyMsP50, r.LatencyMsP95, r.LatencyMsP99, r.LatencyMsMax, r.LatencySamples)
		p("Group.Send call", "p50 %.2fms  p99 %.2fms", r.SendRTTMsP50, r.SendRTTMsP99)
		if r.ProposalSamples > 0 {
			p("Group.ProposeUpdate call", "p50 %.2fms  p99 %.2fms (%d samples)", r.ProposalRTTMsP50, r.ProposalRTTMsP99, r.ProposalSamples)
		}
	} else {
		p("accepted Commits", "%.2f/s (%d)", r.CommitsPerSec, r.AcceptedCommits)
	}
	if r.CommitSamples > 0 {
		p("Commit accept (round trip)", "p50 %.2fms  p95 %.2fms  p99 %.2fms (%d samples)", r.CommitAcceptMsP50, r.CommitAcceptMsP95, r.CommitAcceptMsP99, r.CommitSamples)
		p("Group.Update call", "p50 %.2fms  p99 %.2fms", r.CommitOpMsP50, r.CommitOpMsP99)
	}
	p("commit conflicts", "%d (SDK rebases %d)", r.CommitConflicts, r.SDKRebases)
	p("errors", "%d (undecryptable %d)", r.Errors, r.Undecryptable)
	if r.FirstError != "" {
		p("first error", "%s", r.FirstError)
	}
	if r.ServerCPUSeconds > 0 || r.ServerRSSBytes > 0 {
		p("server CPU", "%.1fs (%.0f%% of a core)", r.ServerCPUSeconds, r.ServerCPUPercent)
		if r.Scenario == ScenarioMixed && r.ServerCPUSeconds > 0 {
			p("per server CPU second", "%.0f accepted, %.0f deliveries", r.AcceptedPerServerCPUSec, r.DeliveriesPerServerCPUSec)
		}
		p("server memory", "RSS %s (peak %s)", mib(r.ServerRSSBytes), mib(r.ServerRSSPeakByte))
	} else {
		p("server CPU, memory", "not available")
	}
	p("bench CPU", "%.1fs", r.BenchCPUSeconds)
	if r.AcceptBatchesPerSec > 0 {
		p("server accept batches", "%.0f/s, mean %.1f messages", r.AcceptBatchesPerSec, r.AcceptBatchMean)
	}
	for i, o := range r.ServerStore {
		if i == 5 {
			break
		}
		k := ""
		if i == 0 {
			k = "server store (busiest)"
		}
		p(k, "%-20s %7.0f/s  mean %7.2fms  busy %.1fs", o.Operation, o.PerSec, o.MeanMs, o.BusySec)
	}
	if r.BaselineSQLiteInsert1PerSec > 0 {
		fmt.Fprintln(tw)
		p("baseline: SQLite raw insert", "%.0f rows/s at 1 row/tx, %.0f rows/s at 64 rows/tx (%d-byte rows)", r.BaselineSQLiteInsert1PerSec, r.BaselineSQLiteInsert64PerSec, r.MessageWireBytes)
		if r.BaselinePostgresInsert1PerSec > 0 {
			p("baseline: PostgreSQL raw insert", "%.0f rows/s at 1 row/tx, %.0f rows/s at 64 rows/tx", r.BaselinePostgresInsert1PerSec, r.BaselinePostgresInsert64PerSec)
		}
		p("baseline: Ed25519 verify", "%.0f/s on one core, %.0f/s on all", r.BaselineEd25519VerifyPerSec, r.BaselineEd25519VerifyAllCoresPerSec)
		if r.Scenario == ScenarioMixed {
			p("accepted / raw insert", "%.2f of 1 row/tx, %.2f of 64 rows/tx", r.RatioAcceptedToInsert1, r.RatioAcceptedToInsert64)
			if r.RatioAcceptedToPostgresInsert64 > 0 {
				p("accepted / PostgreSQL insert", "%.2f of 1 row/tx, %.2f of 64 rows/tx", r.RatioAcceptedToPostgresInsert1, r.RatioAcceptedToPostgresInsert64)
			}
		}
	}
	tw.Flush()
}

func mib(b int64) string {
	if b <= 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

// progressLine is the live line: elapsed, rates over the last second,
// p99 so far, conflicts and errors.
func progressLine(elapsed time.Duration, accepted, deliveries float64, p99 time.Duration, conflicts, errs int64) string {
	return strings.TrimSpace(fmt.Sprintf("%5.1fs  accepted %7.0f/s  deliveries %8.0f/s  p99 %7.2fms  conflicts %d  errors %d",
		elapsed.Seconds(), accepted, deliveries, ms(p99), conflicts, errs))
}
