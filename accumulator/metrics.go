package accumulator

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the accumulator's Prometheus metrics. A nil Registerer gives working, unregistered metrics.
type Metrics struct {
	pendingRequests prometheus.Gauge
	pendingBytes    prometheus.Gauge
	openGroups      prometheus.Gauge
	closed          *prometheus.CounterVec
	batchRequests   prometheus.Histogram
	batchBytes      prometheus.Histogram
	lost            prometheus.Counter
}

// NewMetrics builds the accumulator's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		pendingRequests: f.NewGauge(prometheus.GaugeOpts{
			Name: "gembatch_accumulator_pending_requests",
			Help: "Requests accepted into open batches and not yet sealed.",
		}),
		pendingBytes: f.NewGauge(prometheus.GaugeOpts{
			Name: "gembatch_accumulator_pending_bytes",
			Help: "Encoded bytes of the requests in open batches.",
		}),
		openGroups: f.NewGauge(prometheus.GaugeOpts{
			Name: "gembatch_accumulator_open_groups",
			Help: "Groups (kind, model, priority) with a live batch owner.",
		}),
		closed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_accumulator_batches_closed_total",
			Help: "Batches sealed, by why they closed (count, bytes, wait, shutdown).",
		}, []string{"reason"}),
		batchRequests: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "gembatch_accumulator_batch_size_requests",
			Help:    "Requests per sealed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10),
		}),
		batchBytes: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "gembatch_accumulator_batch_size_bytes",
			Help:    "Encoded bytes per sealed batch.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 12),
		}),
		lost: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_accumulator_batches_lost_total",
			Help: "Open batches whose request bodies could not be written (durable mode); their requests were handed back to the stream.",
		}),
	}
	for _, r := range []Reason{ReasonCount, ReasonBytes, ReasonWait, ReasonShutdown} {
		m.closed.WithLabelValues(string(r))
	}
	return m
}
