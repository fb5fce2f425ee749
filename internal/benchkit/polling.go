package benchkit

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/jsstore"
	"github.com/gembatch/gembatch/record"
)

// activeJobs is the service's limit on jobs not yet ended, and the default MAX_ACTIVE_JOBS.
const activeJobs = 100

// polling: durable gembatchd at its default poll and lease settings, watching 100 active jobs
// (the emulator keeps them running for an hour) with 10,000 finished records in the store; the
// API calls per minute as the emulator counts them, and the process's CPU from getrusage, over
// a window (a minute, or Options.PollWindow) that starts when the 100th job is created. The
// baseline is the same process in a window of a third the length before gembatchd starts: NATS
// holding the records, the emulator idle.
func polling(ctx context.Context, e *env) ([]Row, error) {
	records := e.size(10000, 500)
	window := time.Duration(e.size(60, 3)) * time.Second
	if e.opts.PollWindow > 0 {
		window = e.opts.PollWindow
	}
	a, err := startAPI(time.Hour)
	if err != nil {
		return nil, err
	}
	defer a.close()
	cfg := e.config(true, a.url)
	cfg.PollInterval, cfg.PollMaxInterval = daemon.Defaults().PollInterval, daemon.Defaults().PollMaxInterval
	if e.opts.Quick {
		cfg.PollInterval, cfg.PollMaxInterval = time.Second, 20*time.Second
	}
	cfg.BatchMaxRequests, cfg.BatchMaxWait = 1, time.Second
	e.progress("polling: storing %d finished records", records)
	if err := e.storeFinished(ctx, cfg, records); err != nil {
		return nil, err
	}
	idleCPU, err := cpuShare(ctx, window/3)
	if err != nil {
		return nil, err
	}
	d, err := e.startDaemon(cfg)
	if err != nil {
		return nil, err
	}
	defer d.close()
	f, err := e.fleet()
	if err != nil {
		return nil, err
	}
	defer f.close()
	if err := f.publish(requests(cfg.SubjectGenerate, replySubject(cfg, "void"), "poll", generateBody(256), activeJobs, false)); err != nil {
		return nil, err
	}
	if err := waitFor(ctx, 5*time.Minute, "create 100 jobs", func() bool { return len(a.emu.Batches()) >= activeJobs }); err != nil {
		return nil, err
	}
	e.progress("polling: %d jobs active, measuring for %s", activeJobs, window)
	calls0 := a.calls.Load()
	busyCPU, err := cpuShare(ctx, window)
	if err != nil {
		return nil, err
	}
	calls := float64(a.calls.Load()-calls0) / window.Minutes()
	what := fmt.Sprintf("polling %d active jobs, %s records in the store (POLL_INTERVAL %s growing to %s, LEASE_TTL %s), first %s",
		activeJobs, num(float64(records)), cfg.PollInterval, cfg.PollMaxInterval, cfg.LeaseTTL, window)
	one := func(v float64) *Stats { return summarize([]float64{v}) }
	return []Row{
		{Measure: what + ": API calls", Unit: "calls/min", Better: "lower", Gembatchd: one(calls),
			Note: "counted by the emulator; each job's wait grows by half per poll, so the rate falls after the first minutes"},
		{Measure: what + ": process CPU", Unit: "% of a core", Better: "lower", BaselineLabel: "the same process before gembatchd starts",
			Baseline: one(idleCPU), Gembatchd: one(busyCPU), Ratio: one(busyCPU / idleCPU),
			Note: "getrusage of the whole process: includes the in-process NATS server and emulator"},
	}, nil
}

// cpuShare sleeps for d and returns the process's CPU time over it, in percent of one core.
func cpuShare(ctx context.Context, d time.Duration) (float64, error) {
	c0, err := cpuTime()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	c1, err := cpuTime()
	return 100 * (c1 - c0).Seconds() / time.Since(t0).Seconds(), err
}

// storeFinished writes n cleaned records, as a week of finished batches leaves them, into the
// daemon's records bucket before it starts.
func (e *env) storeFinished(ctx context.Context, cfg daemon.Config, n int) error {
	if _, err := jsstore.Open(ctx, e.js, jsstore.Config{
		RecordsBucket: cfg.RecordsBucket, RequestsBucket: cfg.RequestsBucket, BodiesBucket: cfg.BodiesBucket, Replicas: 1,
		Storage: jetstream.FileStorage, Retention: cfg.RecordRetention,
	}, zerolog.Nop()); err != nil {
		return err
	}
	kv, err := e.js.KeyValue(ctx, cfg.RecordsBucket)
	if err != nil {
		return err
	}
	now := time.Now()
	const writers = 8
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := w; i < n && errs[w] == nil; i += writers {
				rec := record.Record{ID: fmt.Sprintf("old-%05d", i), Group: record.Group{Kind: gemini.KindGenerate, Model: "models/gemini-2.5-flash"},
					State: record.Cleaned, CloseReason: "count", Sealed: now.Add(-time.Hour), Count: 1000, Bytes: 1 << 20,
					Mode: record.ModeInline, RemoteName: fmt.Sprintf("batches/old%05d", i), RemoteState: gemini.StateSucceeded,
					Submitted: now.Add(-time.Hour), Finished: now.Add(-time.Minute), Replied: 1000, Owner: "bench-old", Epoch: 1}
				b, err := json.Marshal(&rec)
				if err == nil {
					_, err = kv.Create(ctx, rec.ID, b)
				}
				errs[w] = err
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return fmt.Errorf("store finished records: %w", err)
		}
	}
	return nil
}
