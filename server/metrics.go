package server

import (
	"errors"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mlsds/mlsds/ds"
)

// Metrics are the Prometheus series of one server, all named mlsds_*. They
// live in their own registry (not the global one) so that several servers
// can run in one process, as the tests do.
type Metrics struct {
	Registry *prometheus.Registry

	// Byte budgets and write deadlines (flush.go, delivery.go).
	writeTimeouts      *prometheus.CounterVec // kind: unary, stream
	streamsCut         *prometheus.CounterVec // reason: slow_consumer, write_timeout
	fetchBufferedBytes prometheus.Gauge

	requests         *prometheus.CounterVec   // procedure, code
	requestDuration  *prometheus.HistogramVec // procedure
	messagesAccepted *prometheus.CounterVec   // kind
	messagesRejected *prometheus.CounterVec   // reason
	commitConflicts  prometheus.Counter
	streamingClients prometheus.Gauge
	streamEvents     *prometheus.CounterVec   // event
	storeLatency     *prometheus.HistogramVec // operation
	acceptBatch      prometheus.Histogram     // messages per accept transaction
	kpUploaded       *prometheus.CounterVec   // cipher_suite
	kpClaimed        *prometheus.CounterVec   // cipher_suite, last_resort
	kpExhausted      prometheus.Counter
	kpDeleted        prometheus.Counter
	authFailures     *prometheus.CounterVec
	quotaRefusals    *prometheus.CounterVec // quota (quotas.go)
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
	m.acceptBatch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "mlsds_accept_batch_messages",
		Help:    "Messages per accept transaction: the Sends that shared one commit (group commit); _sum/_count is the mean.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 9), // 1 to 256, the batcher's bound
	})
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
	m.writeTimeouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlsds_write_timeouts_total", Help: "Answers (unary) and stream events (stream) whose write missed its deadline: the client did not read.",
	}, []string{"kind"})
	m.streamsCut = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlsds_streams_cut_total", Help: "Subscribe streams the server ended because the client did not keep up, by reason (slow_consumer: took no event for the slow-consumer timeout; write_timeout: a write missed its deadline).",
	}, []string{"reason"})
	m.fetchBufferedBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "mlsds_fetch_buffered_bytes", Help: "Bytes of messages in Fetch answers being written.",
	})
	for _, c := range []prometheus.Collector{m.writeTimeouts, m.streamsCut, m.fetchBufferedBytes} {
		f(c)
	}
	m.authFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlsds_auth_failures_total", Help: "Refused authentications, by reason.",
	}, []string{"reason"})
	m.quotaRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlsds_quota_refusals_total", Help: "Requests refused by a quota or a size bound, by quota (see mlsds_quota_limit).",
	}, []string{"quota"})
	f(m.quotaRefusals)
	for _, c := range []prometheus.Collector{m.requests, m.requestDuration, m.messagesAccepted, m.messagesRejected,
		m.commitConflicts, m.streamingClients, m.streamEvents, m.storeLatency, m.acceptBatch, m.kpUploaded,
		m.kpClaimed, m.kpExhausted, m.kpDeleted, m.authFailures} {
		f(c)
	}
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

// bufferCollector reports what the subscriptions of a Service buffer
// (ds.Service.BufferStats): mlsds_stream_buffered_bytes,
// mlsds_stream_backpressure_total and mlsds_slow_consumers_total.
type bufferCollector struct {
	svc                 *ds.Service
	bytes, held, slowly *prometheus.Desc
}

func newBufferCollector(svc *ds.Service) *bufferCollector {
	return &bufferCollector{svc: svc,
		bytes: prometheus.NewDesc("mlsds_stream_buffered_bytes",
			"Bytes of messages and Welcomes that subscriptions took in for their streams and the streams have not taken yet.", nil, nil),
		held: prometheus.NewDesc("mlsds_stream_backpressure_total",
			"Events a subscription held back because a byte budget (per subscription, per client or per server) was full; they are read again from the store.", nil, nil),
		slowly: prometheus.NewDesc("mlsds_slow_consumers_total",
			"Subscriptions ended because their consumer took no event for the slow-consumer timeout.", nil, nil),
	}
}

func (c *bufferCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bytes
	ch <- c.held
	ch <- c.slowly
}

func (c *bufferCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.svc.BufferStats()
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(c.held, prometheus.CounterValue, float64(st.BackPressure))
	ch <- prometheus.MustNewConstMetric(c.slowly, prometheus.CounterValue, float64(st.SlowConsumers))
}

// watchBuffers adds the buffer figures of svc to the registry. A registry
// shared by several servers keeps the first.
func (m *Metrics) watchBuffers(svc *ds.Service) error {
	err := m.Registry.Register(newBufferCollector(svc))
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		return nil
	}
	return err
}
