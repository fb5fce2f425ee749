package submitter_test

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/backoff"
	"github.com/gembatch/gembatch/metrics"
	"github.com/gembatch/gembatch/record"
	"github.com/gembatch/gembatch/submitter"
)

// quotaEnv submits records against an emulator with quotas; each submitted record's quota is
// released once its job has ended, as the poller does.
type quotaEnv struct {
	emu   *emulator.Server
	sub   *submitter.Submitter
	reg   *prometheus.Registry
	store *record.MemStore

	mu        sync.Mutex
	submitted []string // models, in submit order
	maxWait   float64  // highest waiting gauge seen, any reason
	wg        sync.WaitGroup
}

func newQuotaEnv(t *testing.T, faults emulator.Faults, jobDelay time.Duration, cfg submitter.Config) *quotaEnv {
	t.Helper()
	e := &quotaEnv{emu: emulator.New(emulator.Options{JobDelay: jobDelay, Faults: faults}), reg: prometheus.NewRegistry(), store: record.NewMemStore()}
	srv := httptest.NewServer(e.emu)
	t.Cleanup(func() { srv.Close(); e.emu.Close() })
	api := gemini.New("test-api-key-0123", gemini.WithBaseURL(srv.URL), gemini.WithRetry(gemini.RetryPolicy{MaxAttempts: 1}))
	cfg.InlineMaxBytes = 1 << 20
	if cfg.Backoff.Initial == 0 {
		cfg.Backoff = backoff.Policy{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond}
	}
	e.sub = submitter.New(cfg, api, e.store, zerolog.New(zerolog.NewTestWriter(t)), submitter.NewMetrics(e.reg),
		func(r *record.Record) { t.Errorf("record %s failed: %v", r.ID, r.Error) })
	e.sub.OnSubmitted(func(r *record.Record) {
		e.mu.Lock()
		e.submitted = append(e.submitted, r.Group.Model)
		e.mu.Unlock()
		e.wg.Go(func() {
			time.Sleep(jobDelay + 20*time.Millisecond)
			e.sub.Release(r.ID)
		})
	})
	return e
}

// run submits recs, watching the waiting gauge, until all are submitted.
func (e *quotaEnv) run(t *testing.T, recs ...*record.Record) {
	t.Helper()
	for _, r := range recs {
		if err := e.store.Create(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		e.sub.Enqueue(r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			var sum float64
			for _, reason := range []string{"jobs", "tokens", "backoff"} {
				sum += value(t, e.reg, "gembatch_submitter_waiting_batches", "reason", reason)
			}
			e.mu.Lock()
			e.maxWait = max(e.maxWait, sum)
			e.mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	e.sub.CloseQueue()
	if err := e.sub.Run(ctx); err != nil || ctx.Err() != nil {
		t.Fatalf("Run: %v (ctx %v)", err, ctx.Err())
	}
	close(stop)
	<-watched
	e.wg.Wait()
	if len(e.submitted) != len(recs) {
		t.Fatalf("%d of %d submitted", len(e.submitted), len(recs))
	}
}

func withModel(rec *record.Record, model string) *record.Record {
	rec.Group.Model = model
	return rec
}

// TestActiveJobCapHoldsBatches: with the cap at the service's own limit, batches wait their
// turn instead of meeting 429s.
func TestActiveJobCapHoldsBatches(t *testing.T) {
	e := newQuotaEnv(t, emulator.Faults{MaxActiveJobs: 2}, 150*time.Millisecond, submitter.Config{Concurrency: 4, Quota: submitter.Quota{MaxActiveJobs: 2}})
	var recs []*record.Record
	for range 6 {
		recs = append(recs, sealed(3, 10))
	}
	e.run(t, recs...)
	if n := e.emu.Throttled(); n != 0 {
		t.Errorf("%d creates throttled; the cap should have kept them back", n)
	}
	if p := e.emu.PeakActive(); p != 2 {
		t.Errorf("peak active jobs %d, want 2", p)
	}
	if e.maxWait == 0 {
		t.Error("no batch was ever shown waiting")
	}
	if got := value(t, e.reg, "gembatch_submitter_active_jobs"); got != 0 {
		t.Errorf("active jobs %v after every release", got)
	}
}

// TestTokenBudgetPerModel: a model's budget bounds its own batches only.
func TestTokenBudgetPerModel(t *testing.T) {
	one := sealed(5, 200).EstimatedTokens()
	e := newQuotaEnv(t, emulator.Faults{}, 150*time.Millisecond, submitter.Config{Concurrency: 6,
		Quota: submitter.Quota{TokenBudget: map[string]int64{"models/m": one*2 + one/2}}})
	var recs []*record.Record
	for range 4 {
		recs = append(recs, sealed(5, 200), withModel(sealed(5, 200), "models/free"))
	}
	e.run(t, recs...)
	// The emulator counts request JSON, a little less than the estimate of whole lines.
	if p := e.emu.PeakEnqueuedTokens("models/m"); p > one*2 {
		t.Errorf("peak enqueued tokens of models/m %d, budget allows two batches of %d", p, one)
	}
	if p := e.emu.PeakEnqueuedTokens("models/free"); p <= one {
		t.Errorf("models/free peaked at %d tokens; it has no budget and should have run its batches together", p)
	}
	if e.maxWait == 0 {
		t.Error("no batch was ever shown waiting")
	}
}

// TestThrottleBacksTheModelOff: 429 on create holds the model's batches back for the server's
// delay while other models go on; everything is created once in the end.
func TestThrottleBacksTheModelOff(t *testing.T) {
	limit := sealed(3, 100).EstimatedTokens() * 3 / 2 // the service takes one batch of models/m at a time
	e := newQuotaEnv(t, emulator.Faults{EnqueuedTokenLimit: limit, ThrottleDelay: 50 * time.Millisecond}, 200*time.Millisecond,
		submitter.Config{Concurrency: 2})
	recs := []*record.Record{sealed(3, 100), sealed(3, 100), sealed(3, 100), withModel(sealed(3, 10), "models/other")}
	e.run(t, recs...)
	if e.emu.Throttled() == 0 {
		t.Fatal("no create was throttled; the test proves nothing")
	}
	if e.maxWait == 0 {
		t.Error("no batch was ever shown waiting out the model's backoff")
	}
	if e.submitted[len(e.submitted)-1] == "models/other" {
		t.Errorf("models/other was submitted last (%v): it waited behind the throttled model", e.submitted)
	}
	for _, r := range recs {
		if n := e.emu.Creates(r.DisplayName()); n != 1 {
			t.Errorf("%s created %d times", r.ID, n)
		}
	}
	if got := value(t, e.reg, "gembatch_submitter_create_throttled_total"); got != float64(e.emu.Throttled()) {
		t.Errorf("throttled counter %v, emulator answered %d 429s", got, e.emu.Throttled())
	}
}

// value sums the series of a metric with the given labels.
func value(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	v, err := metrics.Sum(reg, name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
