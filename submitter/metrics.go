package submitter

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/gembatch/gembatch/gemini"
)

// Metrics are the submitter's Prometheus metrics. A nil Registerer gives working, unregistered metrics.
type Metrics struct {
	queued     prometheus.Gauge
	outcomes   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	throttled  prometheus.Counter
	duplicates prometheus.Counter
	ambiguous  prometheus.Counter
	uploaded   prometheus.Counter
	// active, enqueuedTokens and waiting show the quota: what it holds and what waits for it.
	active         prometheus.Gauge
	enqueuedTokens *prometheus.GaugeVec
	waiting        *prometheus.GaugeVec
	// held reports the submitter's held requests and bytes to the gauges below.
	held func() (requests, bytes int64)
}

// NewMetrics builds the submitter's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		queued: f.NewGauge(prometheus.GaugeOpts{
			Name: "gembatch_submitter_queued_batches",
			Help: "Sealed batches waiting for a submit worker.",
		}),
		outcomes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_submitter_batches_total",
			Help: "Batches submitted or failed, by mode (inline, file) and outcome (submitted, failed).",
		}, []string{"mode", "outcome"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gembatch_submitter_submit_duration_seconds",
			Help:    "Time to submit a batch, upload included, by mode.",
			Buckets: prometheus.ExponentialBuckets(0.01, 3, 12),
		}, []string{"mode"}),
		throttled: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_submitter_create_throttled_total",
			Help: "Creates answered 429 RESOURCE_EXHAUSTED and retried after backing off.",
		}),
		duplicates: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_submitter_duplicate_jobs_cancelled_total",
			Help: "Second jobs found for one batch (a create let through by a freeze past the lease), cancelled before they ran.",
		}),
		ambiguous: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_submitter_create_unanswered_total",
			Help: "Creates whose answer was lost, resolved by listing before any new create.",
		}),
		uploaded: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_submitter_uploaded_bytes_total",
			Help: "Bytes of JSONL input uploaded to the File API.",
		}),
		active: f.NewGauge(prometheus.GaugeOpts{
			Name: "gembatch_submitter_active_jobs",
			Help: "Remote jobs created or being created and not yet ended, every replica's included (GEMBATCH_MAX_ACTIVE_JOBS caps it).",
		}),
		enqueuedTokens: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gembatch_submitter_enqueued_tokens",
			Help: "Estimated input tokens of the active jobs, by model (GEMBATCH_TOKEN_BUDGET caps it).",
		}, []string{"model"}),
		waiting: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gembatch_submitter_waiting_batches",
			Help: "Sealed batches held back by the quota, by reason (jobs: active job cap; tokens: a model's token budget; backoff: a model's 429 delay).",
		}, []string{"reason"}),
	}
	for _, r := range []string{waitJobs, waitTokens, waitBackoff} {
		m.waiting.WithLabelValues(r)
	}
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gembatch_submitter_held_requests",
		Help: "Requests in sealed batches queued or being submitted (counted against GEMBATCH_MAX_PENDING).",
	}, func() float64 {
		if m.held == nil {
			return 0
		}
		n, _ := m.held()
		return float64(n)
	})
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gembatch_submitter_held_bytes",
		Help: "Bytes of the requests in sealed batches queued or being submitted.",
	}, func() float64 {
		if m.held == nil {
			return 0
		}
		_, b := m.held()
		return float64(b)
	})
	for _, mode := range []string{"inline", "file"} {
		m.duration.WithLabelValues(mode)
		for _, o := range []string{"submitted", "failed"} {
			m.outcomes.WithLabelValues(mode, o)
		}
	}
	return m
}

// InitModel creates a model's series at zero, so that they exist before its first batch.
func (m *Metrics) InitModel(model string) {
	m.enqueuedTokens.WithLabelValues(gemini.ModelName(model))
}
