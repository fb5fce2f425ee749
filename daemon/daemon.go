// Package daemon wires gembatchd together: NATS intake, accumulator, submitter, poller and
// publisher around one record store, with metrics and a two-phase shutdown. Tests and the demo
// run it in-process through Main.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/accumulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/intake"
	"github.com/gembatch/gembatch/internal/backoff"
	"github.com/gembatch/gembatch/metrics"
	"github.com/gembatch/gembatch/poller"
	"github.com/gembatch/gembatch/publisher"
	"github.com/gembatch/gembatch/record"
	"github.com/gembatch/gembatch/submitter"
)

// Main is one gembatchd: Run it until its context ends.
type Main struct {
	Config Config
	Log    zerolog.Logger
	// Registry receives every metric; NewMain makes one with the Go and process collectors.
	Registry *prometheus.Registry
	Build    metrics.Build
	// Store keeps batch records; default in memory.
	Store record.Store

	// Ready is closed once intake is subscribed and the metrics endpoint is up.
	Ready chan struct{}
	// MetricsAddr is the bound metrics address, set before Ready closes.
	MetricsAddr string
}

// NewMain returns a Main for cfg.
func NewMain(cfg Config, log zerolog.Logger, build metrics.Build) *Main {
	return &Main{Config: cfg, Log: log, Registry: metrics.NewRegistry(build), Build: build, Ready: make(chan struct{})}
}

// Run starts everything and blocks until ctx ends and shutdown completes. A component that fails
// stops the rest, and Run returns its error.
func (m *Main) Run(ctx context.Context) error {
	cfg := m.Config
	if m.Store == nil {
		m.Store = record.NewMemStore()
	}
	nc, err := m.connect()
	if err != nil {
		return err
	}
	defer nc.Close()

	api := gemini.New(string(cfg.GeminiAPIKey),
		gemini.WithBaseURL(cfg.GeminiBaseURL),
		gemini.WithMetrics(gemini.NewMetrics(m.Registry)),
		gemini.WithLogger(m.Log.With().Str("component", "gemini").Logger()))

	pub := publisher.New(nc, publisher.NewMetrics(m.Registry))
	answers := newAnswerer(publisher.NewBatches(pub, m.Store, api, m.Log.With().Str("component", "publisher").Logger()), m.Log)
	poll := poller.New(poller.Config{Interval: cfg.PollInterval, MaxInterval: cfg.PollMaxInterval, Concurrency: cfg.PollConcurrency},
		api, m.Store, m.Log.With().Str("component", "poller").Logger(), poller.NewMetrics(m.Registry), answers.enqueue)
	sub := submitter.New(submitter.Config{
		InlineMaxBytes: int64(cfg.InlineMaxBytes),
		Concurrency:    cfg.SubmitConcurrent,
		CreateGrace:    cfg.CreateGrace,
	}, api, m.Store, m.Log.With().Str("component", "submitter").Logger(), submitter.NewMetrics(m.Registry),
		poll.Enqueue, func(r *record.Record) { answers.enqueue(r, nil) })

	in := intake.New(intake.Config{
		Rules: intake.Rules{
			DefaultModel:    cfg.DefaultModel,
			MaxRequestBytes: int(cfg.MaxRequestBytes),
			ReplyAllow:      cfg.ReplyAllow,
			ReplyDeny:       []string{"$SYS.>", cfg.SubjectGenerate, cfg.SubjectEmbed},
		},
		SubjectGenerate: cfg.SubjectGenerate,
		SubjectEmbed:    cfg.SubjectEmbed,
		Queue:           cfg.Queue,
		MaxPending:      cfg.MaxPending,
		MaxPendingBytes: int64(cfg.MaxPendingBytes),
	}, nc, nil, pub, m.Log.With().Str("component", "intake").Logger(), intake.NewMetrics(m.Registry))

	seal := func(rec *record.Record) {
		if err := m.Store.Create(context.Background(), rec); err != nil {
			// The in-memory store cannot fail here; a durable one retries inside Create.
			m.Log.Error().Err(err).Str("record", rec.ID).Msg("record sealed batch")
			return
		}
		sub.Enqueue(rec)
	}
	acc := accumulator.New(accumulator.Config{Limits: accumulator.Limits{
		MaxRequests: cfg.BatchMaxRequests, MaxBytes: int64(cfg.BatchMaxBytes), MaxWait: cfg.BatchMaxWait,
	}}, seal, func(g record.Group, req record.Request, st *gemini.Status) {
		in.Reject(g.Kind, req.Reply, &intake.Rejection{Reason: intake.ReasonDuplicate, Key: req.Key, Status: st})
	}, accumulator.NewMetrics(m.Registry))
	in.SetSink(acc)

	if err := m.resume(ctx, sub, poll, answers); err != nil {
		return err
	}

	srv, err := metrics.Listen(cfg.MetricsAddr, m.Registry, readiness(nc, api))
	if err != nil {
		return err
	}
	m.MetricsAddr = srv.Addr()

	// Phase one ends with ctx: intake stops and open batches are sealed and submitted.
	// Phase two (the rest) is cancelled when the grace period ends or submission is done.
	workCtx, stopWork := context.WithCancel(context.Background())
	defer stopWork()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	submitDone := make(chan struct{})
	wg.Go(func() { errc <- sub.Run(workCtx); close(submitDone) })
	wg.Go(func() { errc <- poll.Run(workCtx) })
	wg.Go(func() { errc <- answers.run(workCtx) })
	wg.Go(func() { errc <- srv.Serve(workCtx) })

	if err := in.Start(); err != nil {
		stopWork()
		wg.Wait()
		return err
	}
	m.Log.Info().Str("metrics", m.MetricsAddr).Str("generate", cfg.SubjectGenerate).Str("embed", cfg.SubjectEmbed).Msg("gembatchd ready")
	close(m.Ready)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		m.Log.Error().Err(runErr).Msg("component failed; shutting down")
	}

	graceCtx, cancelGrace := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancelGrace()
	m.Log.Info().Dur("grace", cfg.ShutdownGrace).Msg("shutting down: draining intake and submitting open batches")
	if err := in.Drain(graceCtx); err != nil {
		m.Log.Warn().Err(err).Msg("drain intake")
	}
	acc.Close()
	sub.CloseQueue()
	select {
	case <-submitDone:
		m.Log.Info().Msg("open batches submitted")
	case <-graceCtx.Done():
		m.Log.Warn().Msg("grace period over before every batch was submitted; they stay recorded")
	}
	stopWork()
	wg.Wait()
	if err := nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		m.Log.Warn().Err(err).Msg("drain NATS connection")
	}
	m.Log.Info().Msg("gembatchd stopped")
	return runErr
}

// resume routes every stored record to the stage that continues it.
func (m *Main) resume(ctx context.Context, sub *submitter.Submitter, poll *poller.Poller, answers *answerer) error {
	recs, err := m.Store.List(ctx)
	if err != nil {
		return fmt.Errorf("list batch records: %w", err)
	}
	for _, rec := range recs {
		switch rec.State {
		case record.Sealed, record.Submitting:
			sub.Enqueue(rec)
		case record.Submitted:
			poll.Enqueue(rec)
		case record.Finished, record.Failed, record.Replied:
			answers.enqueue(rec, nil)
		}
	}
	if len(recs) > 0 {
		m.Log.Info().Int("records", len(recs)).Msg("resuming recorded batches")
	}
	return nil
}

// readiness is ready while NATS is connected and the Gemini API answered within the last minute.
func readiness(nc *nats.Conn, api *gemini.Client) func(context.Context) error {
	var mu sync.Mutex
	var lastOK time.Time
	return func(ctx context.Context) error {
		if !nc.IsConnected() {
			return fmt.Errorf("NATS is %s", nc.Status())
		}
		mu.Lock()
		defer mu.Unlock()
		if time.Since(lastOK) < time.Minute {
			return nil
		}
		if err := api.Ping(ctx); err != nil {
			return fmt.Errorf("gemini API: %w", err)
		}
		lastOK = time.Now()
		return nil
	}
}

// answerer runs the publisher's batch replies on a few workers, retrying a batch whose replies
// could not be published (NATS down) until it succeeds or the daemon stops.
type answerer struct {
	batches *publisher.Batches
	log     zerolog.Logger
	queue   chan answerJob
}

type answerJob struct {
	rec *record.Record
	op  *gemini.Operation
}

func newAnswerer(b *publisher.Batches, log zerolog.Logger) *answerer {
	return &answerer{batches: b, log: log.With().Str("component", "publisher").Logger(), queue: make(chan answerJob, 1024)}
}

func (a *answerer) enqueue(rec *record.Record, op *gemini.Operation) { a.queue <- answerJob{rec, op} }

func (a *answerer) run(ctx context.Context) error {
	var wg sync.WaitGroup
	retry := backoff.Policy{Initial: time.Second, Max: time.Minute}
	for range 4 {
		wg.Go(func() {
			for {
				var j answerJob
				select {
				case <-ctx.Done():
					return
				case j = <-a.queue:
				}
				for attempt := 0; ; attempt++ {
					err := a.batches.Answer(ctx, j.rec, j.op)
					if err == nil || ctx.Err() != nil {
						break
					}
					if errors.Is(err, record.ErrConflict) || errors.Is(err, record.ErrNotFound) {
						a.log.Warn().Err(err).Str("record", j.rec.ID).Msg("record changed elsewhere; leaving it to its owner")
						break
					}
					a.log.Error().Err(err).Str("record", j.rec.ID).Msg("answering batch; will retry")
					if !backoff.Sleep(ctx, retry.Delay(attempt)) {
						return
					}
				}
			}
		})
	}
	wg.Wait()
	return nil
}
