package server

import (
	"errors"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlsds/mlsds/ds"
)

// Quotas on /metrics: mlsds_quota_limit gives each configured quota,
// mlsds_quota_refusals_total counts the requests each refused (with those
// of the size bounds, under the same labels), and the daily byte
// accounting of the node shows its work.

// quotaLabel names a quota (the What of its error) for metrics.
func quotaLabel(what string) string {
	switch what {
	case ds.QuotaKeyPackageBytes:
		return "key_package_bytes"
	case ds.QuotaBytesPerDay:
		return "bytes_per_day"
	case ds.QuotaGroupsPerDay:
		return "groups_per_day"
	case ds.QuotaClientsPerUser:
		return "clients_per_user"
	case ds.LimitKeyPackageSize:
		return "key_package_size"
	case WhatRegistrations:
		return "registrations_per_address"
	case WhatGroupStreams:
		return "group_streams"
	}
	return strings.ReplaceAll(strings.ToLower(what), " ", "_")
}

var (
	quotaLimitDesc = prometheus.NewDesc("mlsds_quota_limit",
		"Configured quotas and bounds, by quota: key_package_size and key_package_bytes (bytes per client), "+
			"bytes_per_day and groups_per_day (per client and UTC day), clients_per_user, registrations_per_address (per hour). Absent: off.",
		[]string{"quota"}, nil)
	quotaBytesDesc = prometheus.NewDesc("mlsds_quota_bytes_accepted_total",
		"Bytes this node charged to clients' daily byte quotas.", nil, nil)
	quotaFlushesDesc = prometheus.NewDesc("mlsds_quota_flushes_total",
		"Writes of this node's daily byte counts to the store, by result (ok, error).", []string{"result"}, nil)
)

// quotaCollector reports the quotas of one server.
type quotaCollector struct {
	svc    *ds.Service
	limits map[string]float64
}

func (c *quotaCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- quotaLimitDesc
	ch <- quotaBytesDesc
	ch <- quotaFlushesDesc
}

func (c *quotaCollector) Collect(ch chan<- prometheus.Metric) {
	for q, v := range c.limits {
		ch <- prometheus.MustNewConstMetric(quotaLimitDesc, prometheus.GaugeValue, v, q)
	}
	st := c.svc.QuotaStats()
	ch <- prometheus.MustNewConstMetric(quotaBytesDesc, prometheus.CounterValue, float64(st.BytesAccepted))
	ch <- prometheus.MustNewConstMetric(quotaFlushesDesc, prometheus.CounterValue, float64(st.Flushes), "ok")
	ch <- prometheus.MustNewConstMetric(quotaFlushesDesc, prometheus.CounterValue, float64(st.FlushErrors), "error")
}

// watchQuotas registers the quota series of svc and cfg (once per
// registry: a second server on the same Metrics keeps the first's).
func (m *Metrics) watchQuotas(svc *ds.Service, cfg Config) {
	dc := svc.Config()
	limits := make(map[string]float64)
	set := func(what string, v float64) {
		if v > 0 {
			limits[quotaLabel(what)] = v
		}
	}
	set(ds.LimitKeyPackageSize, float64(dc.MaxKeyPackageSize))
	set(ds.QuotaKeyPackageBytes, float64(dc.MaxKeyPackageBytes))
	set(ds.QuotaBytesPerDay, float64(dc.MaxBytesPerDay))
	set(ds.QuotaGroupsPerDay, float64(dc.MaxGroupsPerDay))
	set(ds.QuotaClientsPerUser, float64(dc.MaxClientsPerUser))
	if newRegistrationLimiter(cfg) != nil {
		set(WhatRegistrations, cfg.RegistrationsPerHour)
	}
	err := m.Registry.Register(&quotaCollector{svc: svc, limits: limits})
	var are prometheus.AlreadyRegisteredError
	if err != nil && !errors.As(err, &are) {
		panic(err) // only a programming error can get here
	}
}
