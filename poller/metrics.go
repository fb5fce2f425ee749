package poller

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the poller's Prometheus metrics. A nil Registerer gives working, unregistered metrics.
type Metrics struct {
	watching     prometheus.Gauge
	polls        prometheus.Counter
	errors       prometheus.Counter
	pollDuration prometheus.Histogram
	terminal     *prometheus.CounterVec
	sealToEnd    prometheus.Histogram
	// stuck counts the watched jobs past GEMBATCH_STUCK_AFTER now; the counters, ever.
	stuck          prometheus.Gauge
	stuckTotal     prometheus.Counter
	stuckCancelled prometheus.Counter
}

// NewMetrics builds the poller's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		watching: f.NewGauge(prometheus.GaugeOpts{
			Name: "gembatch_poller_watched_batches",
			Help: "Submitted batches being polled.",
		}),
		polls: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_poller_polls_total",
			Help: "Batch get calls made by the poller.",
		}),
		errors: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_poller_poll_errors_total",
			Help: "Polls that failed after the client's retries (the batch is polled again later).",
		}),
		pollDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "gembatch_poller_poll_duration_seconds",
			Help:    "Time of one poll, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 3, 10),
		}),
		terminal: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_poller_batches_ended_total",
			Help: "Batches that reached a terminal remote state, by state.",
		}, []string{"state"}),
		sealToEnd: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "gembatch_poller_seal_to_end_seconds",
			Help:    "Time from a batch's seal to its remote terminal state.",
			Buckets: prometheus.ExponentialBuckets(1, 3, 12),
		}),
		stuck: f.NewGauge(prometheus.GaugeOpts{
			Name: "gembatch_poller_stuck_batches",
			Help: "Watched batches still PENDING or RUNNING GEMBATCH_STUCK_AFTER after their create.",
		}),
		stuckTotal: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_poller_stuck_batches_total",
			Help: "Batches found stuck (not ended GEMBATCH_STUCK_AFTER after their create).",
		}),
		stuckCancelled: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_poller_stuck_cancelled_total",
			Help: "Stuck batches cancelled by gembatch (GEMBATCH_STUCK_CANCEL) for their requests to be resubmitted.",
		}),
	}
	for _, s := range []string{"succeeded", "failed", "cancelled", "expired"} {
		m.terminal.WithLabelValues(s)
	}
	return m
}
