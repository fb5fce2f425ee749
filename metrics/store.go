package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

// storeListTimeout bounds the store listing a scrape waits for.
const storeListTimeout = 2 * time.Second

// Lister lists the live batch records: the record store itself (core mode), or in durable mode
// the ownership coordinator's index of it, which a scrape reads without listing the bucket.
type Lister interface {
	List(ctx context.Context) ([]*record.Record, error)
}

// ListerFunc is a function that lists records, as a Lister.
type ListerFunc func(ctx context.Context) ([]*record.Record, error)

// List calls f.
func (f ListerFunc) List(ctx context.Context) ([]*record.Record, error) { return f(ctx) }

// storeCollector exports the batch record store's contents at scrape time.
type storeCollector struct {
	store Lister
	now   func() time.Time

	batches  *prometheus.Desc
	remote   *prometheus.Desc
	oldest   *prometheus.Desc
	requests *prometheus.Desc
	errors   prometheus.Counter
}

// NewStoreCollector returns a collector that lists store on every scrape (within two seconds)
// and exports:
//
//   - gembatch_batches{state}: records per lifecycle state, every state of record.States present;
//   - gembatch_batches_remote{state}: unfinished records (not replied or cleaned) per remote job
//     state ("pending", "running", "succeeded", ...), pending and running always present;
//   - gembatch_batches_oldest_unfinished_age_seconds: time since the seal of the oldest record
//     not replied or cleaned, 0 when there is none;
//   - gembatch_batches_requests{state}: requests held in records per lifecycle state;
//   - gembatch_store_scrape_errors_total: listings that failed; the four above are left out of
//     a scrape whose listing failed.
//
// now is the clock for the age (time.Now in production).
func NewStoreCollector(store Lister, now func() time.Time) prometheus.Collector {
	return &storeCollector{
		store: store,
		now:   now,
		batches: prometheus.NewDesc("gembatch_batches",
			"Batch records by lifecycle state (sealed, submitting, submitted, finished, failed, replied, cleaned).",
			[]string{"state"}, nil),
		remote: prometheus.NewDesc("gembatch_batches_remote",
			"Batch records not yet replied, by the remote job's last seen state (pending, running, succeeded, ...).",
			[]string{"state"}, nil),
		oldest: prometheus.NewDesc("gembatch_batches_oldest_unfinished_age_seconds",
			"Time since the seal of the oldest batch record not yet replied or cleaned; 0 when none.",
			nil, nil),
		requests: prometheus.NewDesc("gembatch_batches_requests",
			"Requests held in batch records, by the record's lifecycle state.",
			[]string{"state"}, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_store_scrape_errors_total",
			Help: "Scrapes whose listing of the batch record store failed or timed out.",
		}),
	}
}

// Describe implements prometheus.Collector.
func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.batches
	ch <- c.remote
	ch <- c.oldest
	ch <- c.requests
	c.errors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	defer c.errors.Collect(ch)
	ctx, cancel := context.WithTimeout(context.Background(), storeListTimeout)
	defer cancel()
	recs, err := c.store.List(ctx)
	if err != nil {
		c.errors.Inc()
		return
	}

	batches := make(map[record.State]int, len(record.States))
	requests := make(map[record.State]int, len(record.States))
	remote := map[string]int{gemini.StatePending.Short(): 0, gemini.StateRunning.Short(): 0}
	var oldest time.Time
	for _, r := range recs {
		batches[r.State]++
		requests[r.State] += r.Count
		if r.State == record.Replied || r.State == record.Cleaned {
			continue
		}
		if r.RemoteState != "" {
			remote[r.RemoteState.Short()]++
		}
		if !r.Sealed.IsZero() && (oldest.IsZero() || r.Sealed.Before(oldest)) {
			oldest = r.Sealed
		}
	}

	for _, s := range record.States {
		ch <- prometheus.MustNewConstMetric(c.batches, prometheus.GaugeValue, float64(batches[s]), string(s))
		ch <- prometheus.MustNewConstMetric(c.requests, prometheus.GaugeValue, float64(requests[s]), string(s))
	}
	for s, n := range remote {
		ch <- prometheus.MustNewConstMetric(c.remote, prometheus.GaugeValue, float64(n), s)
	}
	var age float64
	if !oldest.IsZero() {
		age = max(c.now().Sub(oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age)
}
