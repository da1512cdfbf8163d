package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the Prometheus series of one server, all named mlsds_*. They
// live in their own registry (not the global one) so that several servers
// can run in one process, as the tests do.
type Metrics struct {
	Registry *prometheus.Registry

	requests         *prometheus.CounterVec   // procedure, code
	requestDuration  *prometheus.HistogramVec // procedure
	messagesAccepted *prometheus.CounterVec   // kind
	messagesRejected *prometheus.CounterVec   // reason
	commitConflicts  prometheus.Counter
	streamingClients prometheus.Gauge
	streamEvents     *prometheus.CounterVec   // event
	storeLatency     *prometheus.HistogramVec // operation
	kpUploaded       *prometheus.CounterVec   // cipher_suite
	kpClaimed        *prometheus.CounterVec   // cipher_suite, last_resort
	kpExhausted      prometheus.Counter
	kpDeleted        prometheus.Counter
	authFailures     *prometheus.CounterVec
}

// NewMetrics creates the series in a fresh registry, together with the Go
// runtime and process collectors (as mlsds_go_* and mlsds_process_*).
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	prometheus.WrapRegistererWithPrefix("mlsds_", reg).MustRegister(
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Metrics{Registry: reg}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlsds_requests_total", Help: "RPCs handled, by procedure and Connect code (ok for success).",
	}, []string{"procedure", "code"})
	m.requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "mlsds_request_duration_seconds", Help: "Time to handle unary RPCs, by procedure.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
	}, []string{"procedure"})
	m.messagesAccepted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlsds_messages_accepted_total", Help: "Group messages accepted, by RPC (send, commit_bundle).",
	}, []string{"kind"})
	m.messagesRejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlsds_messages_rejected_total", Help: "Group messages refused, by reason.",
	}, []string{"reason"})
	m.commitConflicts = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mlsds_commit_conflicts_total", Help: "Handshake messages refused with wrong_epoch (lost races for an epoch).",
	})
	m.streamingClients = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "mlsds_streaming_clients", Help: "Open Subscribe streams.",
	})
	m.streamEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlsds_stream_events_total", Help: "Events sent on Subscribe streams, by kind.",
	}, []string{"event"})
	m.storeLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "mlsds_store_latency_seconds", Help: "Latency of storage operations, by operation.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 3, 11),
	}, []string{"operation"})
	m.kpUploaded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlsds_key_packages_uploaded_total", Help: "KeyPackages accepted into the directory, by cipher suite.",
	}, []string{"cipher_suite"})
	m.kpClaimed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlsds_key_packages_claimed_total", Help: "KeyPackages handed out by claims, by cipher suite and whether last-resort.",
	}, []string{"cipher_suite", "last_resort"})
	m.kpExhausted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mlsds_key_package_claims_exhausted_total", Help: "Claims that found no KeyPackage.",
	})
	m.kpDeleted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mlsds_key_packages_deleted_total", Help: "KeyPackages deleted by their owners.",
	})
	m.authFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlsds_auth_failures_total", Help: "Refused authentications, by reason.",
	}, []string{"reason"})
	for _, c := range []prometheus.Collector{m.requests, m.requestDuration, m.messagesAccepted, m.messagesRejected,
		m.commitConflicts, m.streamingClients, m.streamEvents, m.storeLatency, m.kpUploaded,
		m.kpClaimed, m.kpExhausted, m.kpDeleted, m.authFailures} {
		f(c)
	}
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}
