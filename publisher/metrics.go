package publisher

import (
	"github.com/gembatch/gembatch/gemini"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the publisher's Prometheus metrics. A nil Registerer gives working, unregistered metrics.
type Metrics struct {
	published    *prometheus.CounterVec
	errors       prometheus.Counter
	unknownKeys  prometheus.Counter
	missingKeys  prometheus.Counter
	badLines     prometheus.Counter
	unreadable   prometheus.Counter
	batches      *prometheus.CounterVec
	replyLatency prometheus.Histogram
	tokens       *prometheus.CounterVec
	cost         *prometheus.CounterVec
	saved        *prometheus.CounterVec
	resubmitted  *prometheus.CounterVec
	gaveUp       *prometheus.CounterVec
	deadLetters  prometheus.Counter
	// undeliverable counts replies that could not be published as they were (too large, or a
	// subject NATS refuses); each was answered with an error instead, or skipped if even that failed.
	undeliverable prometheus.Counter
	// resultObjects counts answers written to the results bucket, by outcome.
	resultObjects *prometheus.CounterVec
}

// NewMetrics builds the publisher's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		published: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_publisher_replies_published_total",
			Help: "Replies published, by status (ok, error).",
		}, []string{"status"}),
		errors: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_publisher_publish_errors_total",
			Help: "Reply publishes or flushes that failed (the batch is retried).",
		}),
		undeliverable: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_publisher_undeliverable_replies_total",
			Help: "Replies or dead letters that could not be published as they were (larger than the connection's max payload, or a refused subject).",
		}),
		resultObjects: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_publisher_result_objects_total",
			Help: "Replies and dead letters too large for a NATS message, by outcome: written to GEMBATCH_RESULTS_BUCKET and sent by reference, or failed (answered with RESOURCE_EXHAUSTED instead).",
		}, []string{"outcome"}),
		unknownKeys: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_publisher_unknown_result_keys_total",
			Help: "Results whose key matches no request of their batch (logged and dropped).",
		}),
		missingKeys: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_publisher_missing_results_total",
			Help: "Requests whose batch returned no result for their key (resubmitted, or answered with an error).",
		}),
		badLines: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_publisher_malformed_result_lines_total",
			Help: "Result lines or inline results that could not be read and named no key.",
		}),
		unreadable: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_publisher_unreadable_results_total",
			Help: "Batches whose results could not be read after retrying; their requests left were answered with an error.",
		}),
		batches: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_publisher_batches_replied_total",
			Help: "Batches whose every request has been answered, by the remote job's final state.",
		}, []string{"state"}),
		replyLatency: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "gembatch_publisher_request_latency_seconds",
			Help:    "Time from a request's acceptance to its final reply.",
			Buckets: prometheus.ExponentialBuckets(0.5, 3, 12),
		}),
		tokens: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_publisher_tokens_total",
			Help: "Tokens of answered batches from their responses' usageMetadata, by model and type (prompt, candidates, cached, thoughts; prompt_estimated for responses without usage, such as embeddings); counted once per batch.",
		}, []string{"model", "type"}),
		cost: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_publisher_cost_usd_total",
			Help: "Estimated cost of answered requests in US dollars at batch prices (GEMBATCH_PRICES_FILE), by model; counted once per batch.",
		}, []string{"model"}),
		saved: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_publisher_cost_saved_usd_total",
			Help: "What batching saved in US dollars: the answered requests' cost at interactive (standard) prices minus their cost at batch prices (GEMBATCH_PRICES_FILE), by model; counted once per batch.",
		}, []string{"model"}),
		resubmitted: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_publisher_resubmitted_requests_total",
			Help: "Requests put into a later batch, by reason (item_error, missing_result, expired, cancelled, stuck).",
		}, []string{"reason"}),
		gaveUp: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_publisher_gave_up_requests_total",
			Help: "Requests answered with their error instead of resubmitted, by reason (attempts: GEMBATCH_MAX_ATTEMPTS used up; deadline: Gembatch-Deadline passed).",
		}, []string{"reason"}),
		deadLetters: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_publisher_dead_letters_total",
			Help: "Finally failed requests published to GEMBATCH_DEAD_LETTER_SUBJECT.",
		}),
	}
	for _, r := range []string{ResubmitItemError, ResubmitMissing, ResubmitExpired, ResubmitCancelled, ResubmitStuck} {
		m.resubmitted.WithLabelValues(r)
	}
	m.gaveUp.WithLabelValues("attempts")
	m.gaveUp.WithLabelValues("deadline")
	m.resultObjects.WithLabelValues("written")
	m.resultObjects.WithLabelValues("failed")
	m.published.WithLabelValues("ok")
	m.published.WithLabelValues("error")
	for _, s := range []gemini.State{gemini.StateSucceeded, gemini.StateFailed, gemini.StateCancelled, gemini.StateExpired} {
		m.batches.WithLabelValues(s.Short())
	}
	return m
}

// InitModel creates a model's series at zero, so that they exist before its first batch.
func (m *Metrics) InitModel(model string) {
	model = gemini.ModelName(model)
	m.countTokens(model, gemini.UsageMetadata{}, 0)
	m.cost.WithLabelValues(model)
	m.saved.WithLabelValues(model)
}

func (m *Metrics) countTokens(model string, u gemini.UsageMetadata, estimated int64) {
	for typ, n := range map[string]int64{
		"prompt": u.PromptTokenCount, "candidates": u.CandidatesTokenCount,
		"cached": u.CachedContentTokenCount, "thoughts": u.ThoughtsTokenCount,
		"prompt_estimated": estimated,
	} {
		m.tokens.WithLabelValues(model, typ).Add(float64(n))
	}
}
