package gemini

import "github.com/prometheus/client_golang/prometheus"

// Metrics records the client's calls. Build it with NewMetrics.
type Metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	retries       *prometheus.CounterVec
	uploadBytes   prometheus.Counter
	downloadBytes prometheus.Counter
}

// NewMetrics builds the client's metrics and registers them with reg. With a nil reg they are
// not registered but still usable, so a client never needs a nil check.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_gemini_api_requests_total",
			Help: "HTTP requests to the Gemini API by operation and HTTP status (\"error\" when no answer came).",
		}, []string{"operation", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gembatch_gemini_api_request_duration_seconds",
			Help:    "Time to the answer of each HTTP request to the Gemini API (to the headers, for downloads).",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 12), // 10ms .. ~4min
		}, []string{"operation"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_gemini_api_retries_total",
			Help: "Retries of Gemini API calls after a retryable failure.",
		}, []string{"operation"}),
		uploadBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_gemini_upload_bytes_total",
			Help: "File bytes the Gemini File API acknowledged.",
		}),
		downloadBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_gemini_download_bytes_total",
			Help: "File bytes read from Gemini downloads.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.retries, m.uploadBytes, m.downloadBytes)
	}
	for _, op := range operations {
		m.requests.WithLabelValues(op, "200")
		m.duration.WithLabelValues(op)
		m.retries.WithLabelValues(op)
	}
	return m
}

// operations are the calls the daemon makes, whose series exist from start.
var operations = []string{
	"batches.create", "batches.get", "batches.list", "batches.cancel", "batches.delete",
	"files.upload.start", "files.upload.chunk", "files.upload.query", "files.download", "files.delete",
}
