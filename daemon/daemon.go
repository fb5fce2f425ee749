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
	Registry metrics.Registry
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
	if m.Config.Instance == "" {
		m.Config.Instance, _ = os.Hostname()
	}
	nc, err := m.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	connectionMetrics(m.Registry, nc)
	s, err := m.build(ctx, nc)
	if err != nil {
		return err
	}
	return m.serve(ctx, s)
}

// stages are gembatchd's parts, built in the order a request flows through them: intake,
// accumulator, store, submitter, poller, publisher. Ownership (durable mode) sits beside the
// store and hands records it takes over to their stage.
type stages struct {
	nc      *nats.Conn
	api     *gemini.Client
	store   *jsstore.Store // durable mode only
	lease   *ownership.Leaser
	coord   *ownership.Coordinator
	in      *intake.Intake
	sin     *intake.StreamIntake // durable mode only
	acc     *accumulator.Accumulator
	sub     *submitter.Submitter
	poll    *poller.Poller
	batches *publisher.Batches
	answers *publisher.Answerer
	srv     *metrics.Server
}

// build makes every stage. Later stages are made first, so that each earlier one is given
// where its output goes; nothing is captured before it exists.
func (m *Main) build(ctx context.Context, nc *nats.Conn) (*stages, error) {
	s := &stages{nc: nc}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	durable, err := m.durable(ctx, js)
	if err != nil {
		return nil, err
	}
	if durable {
		if s.store, s.lease, err = m.openStore(ctx, js); err != nil {
			return nil, err
		}
		m.Store = s.store
	} else if m.Store == nil {
		m.Store = record.NewMemStore()
	}
	s.api = gemini.New(string(m.Config.GeminiAPIKey),
		gemini.WithBaseURL(m.Config.GeminiBaseURL),
		gemini.WithMetrics(gemini.NewMetrics(m.Registry)),
		gemini.WithLogger(m.Log.With().Str("component", "gemini").Logger()))
	pub, err := m.buildAnswering(ctx, s, js)
	if err != nil {
		return nil, err
	}
	m.buildSubmitting(s, durable)
	m.buildIntake(s, js, pub)
	// A scrape reads what costs least: the coordinator's index, not the whole bucket (durable);
	// the records without the requests they hold (core).
	var records metrics.Lister = m.Store
	if mem, ok := m.Store.(*record.MemStore); ok {
		records = metrics.ListerFunc(mem.Heads)
	}
	if s.coord != nil {
		records = s.coord
	}
	m.Registry.MustRegister(metrics.NewStoreCollector(records, time.Now))
	if s.srv, err = metrics.Listen(m.Config.MetricsAddr, m.Registry, readiness(nc, s.api, s.store)); err != nil {
		return nil, err
	}
	m.MetricsAddr = s.srv.Addr()
	return s, nil
}

// buildAnswering makes the publisher and the batch answerer, with the results bucket for answers
// too large for a NATS message in durable mode.
func (m *Main) buildAnswering(ctx context.Context, s *stages, js jetstream.JetStream) (*publisher.Publisher, error) {
	cfg := m.Config
	prices := pricing.Default()
	if cfg.PricesFile != "" {
		var err error
		if prices, err = pricing.Load(cfg.PricesFile); err != nil {
			return nil, fmt.Errorf("%s_PRICES_FILE: %w", Prefix, err)
		}
	}
	pm := publisher.NewMetrics(m.Registry)
	pm.InitModel(cfg.DefaultModel)
	pub := publisher.New(s.nc, pm)
	pub.MaxReplyBytes = int(cfg.ReplyMaxBytes)
	if s.store != nil {
		var err error
		if pub.Results, err = publisher.OpenResults(ctx, js, publisher.ResultsConfig{
			Bucket: cfg.ResultsBucket, TTL: cfg.ResultTTL, Replicas: cfg.StreamReplicas,
			Storage: storageType(cfg.StreamStorage), MaxPayload: s.nc.MaxPayload(),
		}); err != nil {
			return nil, err
		}
	}
	plog := m.Log.With().Str("component", "publisher").Logger()
	s.batches = publisher.NewBatches(pub, m.Store, s.api, plog)
	s.batches.Now = m.now
	s.batches.KeepJobs = cfg.KeepJobs
	s.batches.Policy = publisher.Policy{
		MaxAttempts: cfg.MaxAttempts, ResubmitExpired: cfg.ResubmitExpired, ResubmitCancelled: cfg.ResubmitCancelled,
		DeadLetter: cfg.DeadLetterSubject, Prices: prices,
	}
	s.answers = publisher.NewAnswerer(s.batches, 4, plog)
	return pub, nil
}

// buildSubmitting makes the submitter and the poller; resubmissions go back to the submitter as
// new records.
func (m *Main) buildSubmitting(s *stages, durable bool) {
	cfg := m.Config
	sm := submitter.NewMetrics(m.Registry)
	sm.InitModel(cfg.DefaultModel)
	s.sub = submitter.New(submitter.Config{
		Now:            m.now,
		InlineMaxBytes: int64(cfg.InlineMaxBytes),
		Concurrency:    cfg.SubmitConcurrent,
		CreateGrace:    cfg.CreateGrace,
		CreateTimeout:  min(gemini.DefaultCallTimeout, cfg.LeaseTTL/2),
		Lease:          fence(s.lease),
		Quota:          submitter.Quota{MaxActiveJobs: cfg.MaxActiveJobs, TokenBudget: cfg.TokenBudget},
		// The durable store gives bodies back for resubmissions; in memory they must stay.
		KeepBodies: !durable && (cfg.MaxAttempts > 1 || cfg.DeadLetterSubject != ""),
		Input:      input(s.store),
	}, s.api, m.Store, m.Log.With().Str("component", "submitter").Logger(), sm,
		func(r *record.Record) { s.answers.Enqueue(r, nil) })
	s.poll = poller.New(poller.Config{
		Now:      m.now,
		Interval: cfg.PollInterval, MaxInterval: cfg.PollMaxInterval, Concurrency: cfg.PollConcurrency,
		StuckAfter: cfg.StuckAfter, CancelStuck: cfg.StuckCancel,
	}, statesOnly{s.api}, m.Store, m.Log.With().Str("component", "poller").Logger(), poller.NewMetrics(m.Registry),
		func(r *record.Record, op *gemini.Operation) { s.sub.Release(r.ID); s.answers.Enqueue(r, op) })
	s.sub.OnSubmitted(s.poll.Enqueue)
	s.batches.Policy.Resubmit = s.sub.Enqueue
}

// buildIntake makes intake and the accumulator, and in durable mode the ownership coordinator
// and the sealer that records batches under this replica's lease.
func (m *Main) buildIntake(s *stages, js jetstream.JetStream, pub *publisher.Publisher) {
	cfg := m.Config
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
		BufferBytes:     int64(cfg.IntakeBufferBytes),
	}
	ilog, imetrics := m.Log.With().Str("component", "intake").Logger(), intake.NewMetrics(m.Registry)
	seal := m.coreSealer(s.sub)
	acfg := accumulator.Config{Now: m.now, Limits: accumulator.Limits{
		MaxRequests: cfg.BatchMaxRequests, MaxBytes: int64(cfg.BatchMaxBytes), MaxWait: cfg.BatchMaxWait,
	}}
	if s.store == nil {
		s.in = intake.New(icfg, s.nc, nil, pub, ilog, imetrics)
	} else {
		icfg.Bodies, icfg.BodiesBucket = s.store.BodyObjects(), s.store.BodiesBucket()
		s.sin = intake.NewStream(intake.StreamConfig{
			Config: icfg, Stream: cfg.Stream, SubjectPrefix: cfg.StreamSubject, Replicas: cfg.StreamReplicas,
			Storage: storageType(cfg.StreamStorage), MaxAge: cfg.StreamMaxAge, Update: cfg.StreamUpdate,
			Consumer: cfg.Consumer, AckWait: cfg.EffectiveAckWait(),
		}, s.nc, js, s.store, pub, ilog, imetrics)
		s.in = s.sin.Intake
		s.coord = ownership.NewCoordinator(s.lease, s.store, m.Log.With().Str("component", "ownership").Logger(), ownership.NewMetrics(m.Registry))
		own := func(r *record.Record) {
			r.Owner, r.Epoch = s.lease.Self().Instance, s.lease.Self().Epoch
			s.coord.Adopt(r.ID)
		}
		s.batches.Own = own
		seal = (&durableSealer{store: s.store, lease: s.lease, own: own, sub: s.sub, log: m.Log.With().Str("component", "sealer").Logger(),
			margin: cfg.LeaseTTL / 10, ackWait: cfg.EffectiveAckWait(), now: m.now}).seal
		acfg.Heartbeat = cfg.EffectiveAckWait() / 4
		acfg.Bodies = bodySinks{s.store, s.sin}
		// Up to the inline limit: a batch larger goes by file, whose upload reads its bodies
		// from the stream at its own pace, and holding them would make an open 1 GB batch 1 GB.
		acfg.HoldBodies = int64(cfg.InlineMaxBytes)
		alog := m.Log.With().Str("component", "accumulator").Logger()
		acfg.Lost = func(id string, n int, err error) {
			alog.Error().Err(err).Str("record", id).Int("requests", n).Msg("could not write a batch's input; its requests go back to the stream")
		}
	}
	s.acc = accumulator.New(acfg, seal, func(g record.Group, req record.Request, st *gemini.Status) {
		reason := intake.ReasonDuplicate
		if st.Code != gemini.CodeAlreadyExists {
			reason = intake.ReasonBodyObject // its body could not be written to the batch's input
		}
		s.in.Reject(g.Kind, req.Reply, &intake.Rejection{Reason: reason, Key: req.Key, Status: st})
		if req.Msg != nil {
			_ = req.Msg.DoubleAck(context.Background())
		}
	}, accumulator.NewMetrics(m.Registry))
	s.in.SetSink(holding{s.acc, s.sub})
}

// route hands a record to the stage its state needs.
func (s *stages) route(rec *record.Record) {
	switch rec.State {
	case record.Sealed, record.Submitting:
		s.sub.Enqueue(rec)
	case record.Submitted:
		s.sub.Hold(rec)
		s.poll.Enqueue(rec)
	case record.Finished, record.Failed, record.Replied:
		s.answers.Enqueue(rec, nil)
	}
}

// serve runs the stages until ctx ends or one fails, then shuts down in two phases: intake stops
// and open batches are sealed and submitted within the grace period; then the rest is stopped,
// keeping every record for the next start.
func (m *Main) serve(ctx context.Context, s *stages) error {
	workCtx, stopWork := context.WithCancel(context.Background())
	defer stopWork()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	submitDone := make(chan struct{})
	wg.Go(func() { errc <- s.sub.Run(workCtx); close(submitDone) })
	wg.Go(func() { errc <- s.poll.Run(workCtx) })
	wg.Go(func() { errc <- s.answers.Run(workCtx) })
	wg.Go(func() { errc <- s.srv.Serve(workCtx) })
	if err := m.start(ctx, workCtx, s, &wg, errc); err != nil {
		stopWork()
		wg.Wait()
		return err
	}
	m.Log.Info().Bool("durable", s.store != nil).Str("instance", m.Config.Instance).Str("metrics", m.MetricsAddr).
		Str("generate", m.Config.SubjectGenerate).Str("embed", m.Config.SubjectEmbed).Msg("gembatchd ready")
	close(m.Ready)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		m.Log.Error().Err(runErr).Msg("component failed; shutting down")
	}
	m.drain(s, submitDone)
	stopWork()
	wg.Wait()
	m.release(s)
	m.Log.Info().Msg("gembatchd stopped")
	return runErr
}

// start resumes the records there are (durable mode: through ownership, once the records that
// exist are known) and starts taking requests.
func (m *Main) start(ctx, workCtx context.Context, s *stages, wg *sync.WaitGroup, errc chan<- error) error {
	if s.store == nil {
		if err := m.resume(ctx, s.route); err != nil {
			return err
		}
		return s.in.Start()
	}
	s.coord.Route = func(rec *record.Record) { go m.takeOver(workCtx, s.store, s.sin, rec, s.route) }
	s.coord.Lost = func(id string) { s.poll.Forget(id); s.sub.Release(id); s.answers.Forget(id) }
	wg.Go(func() { errc <- s.lease.Run(workCtx) })
	watched := make(chan struct{})
	wg.Go(func() { errc <- s.coord.Run(workCtx, watched) })
	wg.Go(func() { m.shareQuota(workCtx, s.coord, s.sub) })
	wg.Go(func() { m.sweep(workCtx, s.store) })
	select {
	case <-watched:
	case <-ctx.Done():
	}
	return s.sin.Start(ctx)
}

// drain is shutdown's first phase: stop intake, seal the open batches and submit them, within
// the grace period (cut short if NATS is gone).
func (m *Main) drain(s *stages, submitDone <-chan struct{}) {
	graceCtx, cancelGrace := context.WithTimeout(context.Background(), m.Config.ShutdownGrace)
	defer cancelGrace()
	graceCtx, stopWatch := whileNATS(graceCtx, s.nc, m.Log)
	defer stopWatch()
	m.Log.Info().Float64("grace_seconds", m.Config.ShutdownGrace.Seconds()).Msg("shutting down: draining intake and submitting open batches")
	drain := s.in.Drain
	if s.sin != nil {
		drain = s.sin.Drain
	}
	if err := drain(graceCtx); err != nil {
		m.Log.Warn().Err(err).Msg("drain intake")
	}
	s.acc.Close()
	s.sub.CloseQueue()
	select {
	case <-submitDone:
		m.Log.Info().Msg("open batches submitted")
	case <-graceCtx.Done():
		m.Log.Warn().Err(context.Cause(graceCtx)).Msg("shutdown cut short before every batch was submitted; they stay recorded")
	}
}

// release gives the lease back, so that other replicas take over at once what is left, and
// drains the NATS connection.
func (m *Main) release(s *stages) {
	if s.lease != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := s.lease.Release(ctx); err != nil {
			m.Log.Warn().Err(err).Msg("release lease; other replicas take over once it expires")
		}
		cancel()
	}
	if err := s.nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		m.Log.Warn().Err(err).Msg("drain NATS connection")
	}
}

// input is the submitter's view of the store's batch inputs; none in core mode.
func input(st *jsstore.Store) submitter.Input {
	if st == nil {
		return nil
	}
	return st
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
	return s.StreamBatch(ctx, name, nil, nil)
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
