package server

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlsds/mlsds/ds"
)

// pruneCollector reports the Service's pruner (ds/prune.go): rows deleted
// per kind (mlsds_pruned_rows_total), how long the last sweep took
// (mlsds_prune_last_duration_seconds), when it ended
// (mlsds_prune_last_run_timestamp_seconds), whether it failed
// (mlsds_prune_last_failed) and how many sweeps ran or were left to another
// node (mlsds_prune_runs_total{result}).
type pruneCollector struct {
	svc                                       *ds.Service
	rows, duration, last, failed, runs, snaps *prometheus.Desc
}

func newPruneCollector(svc *ds.Service) *pruneCollector {
	return &pruneCollector{
		svc: svc,
		rows: prometheus.NewDesc("mlsds_pruned_rows_total",
			"Rows deleted by retention, by kind (message, welcome, key_package, group).", []string{"kind"}, nil),
		duration: prometheus.NewDesc("mlsds_prune_last_duration_seconds",
			"How long the last retention sweep of this node took.", nil, nil),
		last: prometheus.NewDesc("mlsds_prune_last_run_timestamp_seconds",
			"When the last retention sweep of this node ended (Unix time).", nil, nil),
		failed: prometheus.NewDesc("mlsds_prune_last_failed",
			"1 if the last retention sweep of this node failed.", nil, nil),
		runs: prometheus.NewDesc("mlsds_prune_runs_total",
			"Retention sweeps of this node: done, or skipped while another node pruned.", []string{"result"}, nil),
		snaps: prometheus.NewDesc("mlsds_prune_snapshots_total",
			"Snapshots of transparent groups written so that their state log could be pruned.", nil, nil),
	}
}

func (c *pruneCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.rows, c.duration, c.last, c.failed, c.runs, c.snaps} {
		ch <- d
	}
}

func (c *pruneCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.svc.PruneStats()
	for kind, n := range map[string]uint64{"message": st.Messages, "welcome": st.Welcomes, "key_package": st.KeyPackages, "group": st.Groups} {
		ch <- prometheus.MustNewConstMetric(c.rows, prometheus.CounterValue, float64(n), kind)
	}
	ch <- prometheus.MustNewConstMetric(c.duration, prometheus.GaugeValue, st.LastDuration.Seconds())
	last := 0.0
	if !st.LastRun.IsZero() {
		last = float64(st.LastRun.UnixMilli()) / 1000
	}
	ch <- prometheus.MustNewConstMetric(c.last, prometheus.GaugeValue, last)
	failed := 0.0
	if st.LastError != nil {
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(c.failed, prometheus.GaugeValue, failed)
	ch <- prometheus.MustNewConstMetric(c.runs, prometheus.CounterValue, float64(st.Runs), "done")
	ch <- prometheus.MustNewConstMetric(c.runs, prometheus.CounterValue, float64(st.Skipped), "skipped")
	ch <- prometheus.MustNewConstMetric(c.snaps, prometheus.CounterValue, float64(st.Snapshots))
}

// watchPruning adds the pruner's series of svc to the registry. A registry
// shared by several servers over one Service keeps the first.
func (m *Metrics) watchPruning(svc *ds.Service) error {
	err := m.Registry.Register(newPruneCollector(svc))
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		return nil
	}
	return err
}
