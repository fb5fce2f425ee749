// Package daemon wires gembatchd together: NATS intake, accumulator, submitter, poller and
// publisher around one record store, with metrics and a two-phase shutdown. Tests and the demo
// run it in-process through Main.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/accumulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/intake"
	"github.com/gembatch/gembatch/jsstore"
	"github.com/gembatch/gembatch/metrics"
	"github.com/gembatch/gembatch/ownership"
	"github.com/gembatch/gembatch/poller"
	"github.com/gembatch/gembatch/pricing"
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
	if cfg.Instance == "" {
		cfg.Instance, _ = os.Hostname()
		m.Config.Instance = cfg.Instance
	}
	nc, err := m.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	connectionMetrics(m.Registry, nc)

	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	durable, err := m.durable(ctx, js)
	if err != nil {
		return err
	}
	var jss *jsstore.Store
	var lease *ownership.Leaser
	if durable {
		if jss, lease, err = m.openStore(ctx, js); err != nil {
			return err
		}
		m.Store = jss
	} else if m.Store == nil {
		m.Store = record.NewMemStore()
	}

	m.Registry.MustRegister(metrics.NewStoreCollector(m.Store, time.Now))

	api := gemini.New(string(cfg.GeminiAPIKey),
		gemini.WithBaseURL(cfg.GeminiBaseURL),
		gemini.WithMetrics(gemini.NewMetrics(m.Registry)),
		gemini.WithLogger(m.Log.With().Str("component", "gemini").Logger()))

	prices := pricing.Default()
	if cfg.PricesFile != "" {
		if prices, err = pricing.Load(cfg.PricesFile); err != nil {
			return fmt.Errorf("%s_PRICES_FILE: %w", Prefix, err)
		}
	}

	plog := m.Log.With().Str("component", "publisher").Logger()
	pubMetrics, subMetrics := publisher.NewMetrics(m.Registry), submitter.NewMetrics(m.Registry)
	pubMetrics.InitModel(cfg.DefaultModel)
	subMetrics.InitModel(cfg.DefaultModel)
	pub := publisher.New(nc, pubMetrics)
	pub.MaxReplyBytes = int(cfg.ReplyMaxBytes)
	if durable {
		if pub.Results, err = publisher.OpenResults(ctx, js, publisher.ResultsConfig{
			Bucket: cfg.ResultsBucket, TTL: cfg.ResultTTL, Replicas: cfg.StreamReplicas,
			Storage: storageType(cfg.StreamStorage), MaxPayload: nc.MaxPayload(),
		}); err != nil {
			return err
		}
	}
	batches := publisher.NewBatches(pub, m.Store, api, plog)
	batches.Now = m.now
	batches.KeepJobs = cfg.KeepJobs
	answers := publisher.NewAnswerer(batches, 4, plog)
	sub := submitter.New(submitter.Config{
		Now:            m.now,
		InlineMaxBytes: int64(cfg.InlineMaxBytes),
		Concurrency:    cfg.SubmitConcurrent,
		CreateGrace:    cfg.CreateGrace,
		CreateTimeout:  min(gemini.DefaultCallTimeout, cfg.LeaseTTL/2),
		Lease:          fence(lease),
		Quota:          submitter.Quota{MaxActiveJobs: cfg.MaxActiveJobs, TokenBudget: cfg.TokenBudget},
		// The durable store gives bodies back for resubmissions; in memory they must stay.
		KeepBodies: !durable && (cfg.MaxAttempts > 1 || cfg.DeadLetterSubject != ""),
	}, api, m.Store, m.Log.With().Str("component", "submitter").Logger(), subMetrics,
		func(r *record.Record) { answers.Enqueue(r, nil) })
	poll := poller.New(poller.Config{
		Now:      m.now,
		Interval: cfg.PollInterval, MaxInterval: cfg.PollMaxInterval, Concurrency: cfg.PollConcurrency,
		StuckAfter: cfg.StuckAfter, CancelStuck: cfg.StuckCancel,
	}, statesOnly{api}, m.Store, m.Log.With().Str("component", "poller").Logger(), poller.NewMetrics(m.Registry),
		func(r *record.Record, op *gemini.Operation) { sub.Release(r.ID); answers.Enqueue(r, op) })
	sub.OnSubmitted(poll.Enqueue)
	batches.Policy = publisher.Policy{
		MaxAttempts: cfg.MaxAttempts, ResubmitExpired: cfg.ResubmitExpired, ResubmitCancelled: cfg.ResubmitCancelled,
		DeadLetter: cfg.DeadLetterSubject, Prices: prices, Resubmit: sub.Enqueue,
	}

	icfg := intake.Config{
		Now: m.now,
		Rules: intake.Rules{
			DefaultModel:    cfg.DefaultModel,
			MaxRequestBytes: int(cfg.MaxRequestBytes),
			ReplyAllow:      cfg.ReplyAllow,
			ReplyDeny:       []string{"$SYS.>", cfg.SubjectGenerate, cfg.SubjectEmbed, cfg.StreamSubject + ".>"},
		},
		SubjectGenerate: cfg.SubjectGenerate,
		SubjectEmbed:    cfg.SubjectEmbed,
		Queue:           cfg.Queue,
		MaxPending:      cfg.MaxPending,
		MaxPendingBytes: int64(cfg.MaxPendingBytes),
	}
	ilog, imetrics := m.Log.With().Str("component", "intake").Logger(), intake.NewMetrics(m.Registry)
	var in *intake.Intake
	var sin *intake.StreamIntake
	if durable {
		sin = intake.NewStream(intake.StreamConfig{
			Config: icfg, Stream: cfg.Stream, SubjectPrefix: cfg.StreamSubject, Replicas: cfg.StreamReplicas,
			Storage: storageType(cfg.StreamStorage), MaxAge: cfg.StreamMaxAge, Update: cfg.StreamUpdate,
			Consumer: cfg.Consumer, AckWait: cfg.EffectiveAckWait(),
		}, nc, js, jss, pub, ilog, imetrics)
		in = sin.Intake
	} else {
		in = intake.New(icfg, nc, nil, pub, ilog, imetrics)
	}

	var coord *ownership.Coordinator
	seal := m.coreSealer(sub)
	if durable {
		coord = ownership.NewCoordinator(lease, jss, m.Log.With().Str("component", "ownership").Logger(), ownership.NewMetrics(m.Registry))
		own := func(r *record.Record) {
			r.Owner, r.Epoch = lease.Self().Instance, lease.Self().Epoch
			coord.Adopt(r.ID)
		}
		batches.Own = own
		seal = (&durableSealer{store: jss, lease: lease, own: own, sub: sub, log: m.Log.With().Str("component", "sealer").Logger(),
			margin: cfg.LeaseTTL / 10}).seal
	}
	heartbeat := time.Duration(0)
	if durable {
		heartbeat = cfg.EffectiveAckWait() / 4
	}
	acc := accumulator.New(accumulator.Config{Now: m.now, Heartbeat: heartbeat, Limits: accumulator.Limits{
		MaxRequests: cfg.BatchMaxRequests, MaxBytes: int64(cfg.BatchMaxBytes), MaxWait: cfg.BatchMaxWait,
	}}, seal, func(g record.Group, req record.Request, st *gemini.Status) {
		in.Reject(g.Kind, req.Reply, &intake.Rejection{Reason: intake.ReasonDuplicate, Key: req.Key, Status: st})
		if req.Msg != nil {
			_ = req.Msg.DoubleAck(context.Background())
		}
	}, accumulator.NewMetrics(m.Registry))
	in.SetSink(holding{acc, sub})

	srv, err := metrics.Listen(cfg.MetricsAddr, m.Registry, readiness(nc, api, jss))
	if err != nil {
		return err
	}
	m.MetricsAddr = srv.Addr()

	// Phase one ends with ctx: intake stops and open batches are sealed and submitted.
	// Phase two (the rest) is cancelled when the grace period ends or submission is done.
	workCtx, stopWork := context.WithCancel(context.Background())
	defer stopWork()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	submitDone := make(chan struct{})
	wg.Go(func() { errc <- sub.Run(workCtx); close(submitDone) })
	wg.Go(func() { errc <- poll.Run(workCtx) })
	wg.Go(func() { errc <- answers.Run(workCtx) })
	wg.Go(func() { errc <- srv.Serve(workCtx) })

	route := func(rec *record.Record) {
		switch rec.State {
		case record.Sealed, record.Submitting:
			sub.Enqueue(rec)
		case record.Submitted:
			sub.Hold(rec)
			poll.Enqueue(rec)
		case record.Finished, record.Failed, record.Replied:
			answers.Enqueue(rec, nil)
		}
	}
	if durable {
		coord.Route = func(rec *record.Record) { go m.takeOver(workCtx, jss, sin, rec, route) }
		coord.Lost = func(id string) { poll.Forget(id); sub.Release(id); answers.Forget(id) }
		wg.Go(func() { errc <- lease.Run(workCtx) })
		watched := make(chan struct{})
		wg.Go(func() { errc <- coord.Run(workCtx, watched) })
		wg.Go(func() { m.shareQuota(workCtx, coord, sub) })
		select {
		case <-watched:
		case <-ctx.Done():
		}
		err = sin.Start(ctx)
	} else {
		err = m.resume(ctx, route)
		if err == nil {
			err = in.Start()
		}
	}
	if err != nil {
		stopWork()
		wg.Wait()
		return err
	}
	m.Log.Info().Bool("durable", durable).Str("instance", cfg.Instance).Str("metrics", m.MetricsAddr).
		Str("generate", cfg.SubjectGenerate).Str("embed", cfg.SubjectEmbed).Msg("gembatchd ready")
	close(m.Ready)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		m.Log.Error().Err(runErr).Msg("component failed; shutting down")
	}

	graceCtx, cancelGrace := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancelGrace()
	graceCtx, stopWatch := whileNATS(graceCtx, nc, m.Log)
	defer stopWatch()
	m.Log.Info().Float64("grace_seconds", cfg.ShutdownGrace.Seconds()).Msg("shutting down: draining intake and submitting open batches")
	drain := in.Drain
	if sin != nil {
		drain = sin.Drain
	}
	if err := drain(graceCtx); err != nil {
		m.Log.Warn().Err(err).Msg("drain intake")
	}
	acc.Close()
	sub.CloseQueue()
	select {
	case <-submitDone:
		m.Log.Info().Msg("open batches submitted")
	case <-graceCtx.Done():
		m.Log.Warn().Err(context.Cause(graceCtx)).Msg("shutdown cut short before every batch was submitted; they stay recorded")
	}
	stopWork()
	wg.Wait()
	if lease != nil {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := lease.Release(rctx); err != nil {
			m.Log.Warn().Err(err).Msg("release lease; other replicas take over once it expires")
		}
		cancel()
	}
	if err := nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		m.Log.Warn().Err(err).Msg("drain NATS connection")
	}
	m.Log.Info().Msg("gembatchd stopped")
	return runErr
}

// durable decides the mode: GEMBATCH_DURABLE=auto is durable when the server has JetStream.
func (m *Main) durable(ctx context.Context, js jetstream.JetStream) (bool, error) {
	if m.Config.Durable == "false" {
		return false, nil
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := js.AccountInfo(actx)
	switch {
	case err == nil:
		return true, nil
	case m.Config.Durable == "true":
		return false, fmt.Errorf("%s_DURABLE=true but JetStream is not available on the NATS server: %w", Prefix, err)
	}
	m.Log.Warn().Err(err).Msg("JetStream not available: running in core mode (at most once across a crash)")
	return false, nil
}

// resume routes every stored record (core mode: those of this process) to its stage.
func (m *Main) resume(ctx context.Context, route func(*record.Record)) error {
	recs, err := m.Store.List(ctx)
	if err != nil {
		return fmt.Errorf("list batch records: %w", err)
	}
	for _, rec := range recs {
		route(rec)
	}
	return nil
}

func storageType(s string) jetstream.StorageType {
	if s == "memory" {
		return jetstream.MemoryStorage
	}
	return jetstream.FileStorage
}

// statesOnly is the Gemini client as the poller sees it: a job's get skips its inline answers,
// which the publisher reads one at a time once the job is answered (an inline job's answers can
// run to gigabytes of images).
type statesOnly struct{ *gemini.Client }

func (s statesOnly) GetBatch(ctx context.Context, name string) (*gemini.Operation, error) {
	return s.StreamBatch(ctx, name, nil)
}

// holding is the accumulator as intake's sink, with the pending count widened to every request
// held in memory before submission: a dead API cannot make sealed batches pile up unbounded.
type holding struct {
	*accumulator.Accumulator
	sub *submitter.Submitter
}

func (h holding) Pending() (requests, bytes int64) {
	n, b := h.Accumulator.Pending()
	sn, sb := h.sub.Held()
	return n + sn, b + sb
}
