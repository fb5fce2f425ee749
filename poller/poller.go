// Package poller watches every submitted batch job from one loop, each on its own adaptive
// schedule, and hands each job that reaches a terminal state on to be answered.
package poller

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/failpoint"
	"github.com/gembatch/gembatch/record"
)

// API is the part of the Gemini client the poller uses.
type API interface {
	GetBatch(ctx context.Context, name string) (*gemini.Operation, error)
	CancelBatch(ctx context.Context, name string) error
}

// Config sets up a Poller.
type Config struct {
	// Interval is the first wait after submit; each poll that finds the job unfinished grows the
	// wait by half, with jitter, up to MaxInterval.
	Interval    time.Duration
	MaxInterval time.Duration
	// Concurrency bounds the get calls in flight.
	Concurrency int
	// StuckAfter: a job still PENDING or RUNNING this long after its create is reported stuck
	// (0: never). With CancelStuck it is also cancelled, and its requests resubmitted.
	StuckAfter  time.Duration
	CancelStuck bool
	Now         func() time.Time
}

// FinishedFunc receives a record that reached Finished, with the job's final Operation.
type FinishedFunc func(*record.Record, *gemini.Operation)

// Poller polls submitted jobs. No goroutine sleeps per job: one loop keeps a schedule ordered by
// due time and starts a bounded number of get calls.
type Poller struct {
	cfg      Config
	api      API
	store    record.Store
	log      zerolog.Logger
	m        *Metrics
	finished FinishedFunc

	mu    sync.Mutex
	sched schedule
	stuck map[string]bool // ids of the watched records reported stuck
	// watched holds the ids of the records being polled: each is polled by one job only.
	watched map[string]bool
	wake    chan struct{}
}

// New returns a Poller.
func New(cfg Config, api API, store record.Store, log zerolog.Logger, m *Metrics, finished FinishedFunc) *Poller {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Poller{cfg: cfg, api: api, store: store, log: log, m: m, finished: finished, stuck: map[string]bool{}, watched: map[string]bool{}, wake: make(chan struct{}, 1)}
}

// Enqueue starts watching a Submitted record; one already watched is not watched twice.
func (p *Poller) Enqueue(rec *record.Record) {
	p.mu.Lock()
	if p.watched[rec.ID] {
		p.mu.Unlock()
		return
	}
	p.watched[rec.ID] = true
	p.mu.Unlock()
	p.schedule(&job{rec: rec, interval: p.cfg.Interval, due: p.cfg.Now().Add(p.cfg.Interval)})
}

// done stops watching a record.
func (p *Poller) done(id string) {
	p.mu.Lock()
	delete(p.watched, id)
	p.mu.Unlock()
}

// Watching is the number of jobs being polled.
func (p *Poller) Watching() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sched)
}

func (p *Poller) schedule(j *job) {
	p.mu.Lock()
	heap.Push(&p.sched, j)
	p.m.watching.Set(float64(len(p.sched)))
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run polls until ctx is done, then waits for the calls in flight.
func (p *Poller) Run(ctx context.Context) error {
	slots := make(chan struct{}, p.cfg.Concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		p.mu.Lock()
		var wait time.Duration = time.Hour
		if len(p.sched) > 0 {
			wait = p.sched[0].due.Sub(p.cfg.Now())
		}
		p.mu.Unlock()
		if wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return nil
			case <-p.wake:
				continue
			case <-timer.C:
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case slots <- struct{}{}:
		}
		p.mu.Lock()
		j := heap.Pop(&p.sched).(*job)
		p.m.watching.Set(float64(len(p.sched)))
		p.mu.Unlock()
		wg.Go(func() {
			defer func() { <-slots }()
			p.poll(ctx, j)
		})
	}
}

// poll gets one job's state and either reschedules it or finishes it.
func (p *Poller) poll(ctx context.Context, j *job) {
	rec := j.rec
	start := p.cfg.Now()
	op, err := p.api.GetBatch(ctx, rec.RemoteName)
	failpoint.Hit(failpoint.WhilePolling)
	p.m.polls.Inc()
	p.m.pollDuration.Observe(p.cfg.Now().Sub(start).Seconds())
	if ctx.Err() != nil {
		return
	}
	switch {
	case gemini.IsNotFound(err):
		p.log.Error().Str("record", rec.ID).Str("batch", rec.RemoteName).Msg("remote batch is gone (deleted outside gembatch?); answering its requests with errors")
		op = &gemini.Operation{Name: rec.RemoteName, Done: true, Metadata: &gemini.BatchMetadata{State: gemini.StateFailed},
			Error: gemini.NewStatus(gemini.CodeNotFound, "batch %s no longer exists", rec.RemoteName)}
	case err != nil:
		p.m.errors.Inc()
		p.log.Warn().Err(err).Str("record", rec.ID).Str("batch", rec.RemoteName).Msg("poll failed; will try again")
		p.reschedule(j)
		return
	}
	state := op.State()
	if !state.Terminal() {
		if state != rec.RemoteState {
			rec.RemoteState = state
			p.log.Info().Str("record", rec.ID).Str("batch", rec.RemoteName).Str("state", string(state)).Msg("batch state changed")
			// Recorded, so that gembatch jobs and gembatch submit show PENDING or RUNNING as it is.
			if err := p.store.Update(ctx, rec); err != nil {
				p.log.Warn().Err(err).Str("record", rec.ID).Msg("record the batch state; the record keeps the previous one")
			}
		}
		p.checkStuck(ctx, j)
		p.reschedule(j)
		return
	}
	if err := p.finish(ctx, rec, op); err == nil || errors.Is(err, record.ErrConflict) {
		p.done(rec.ID) // answered next, or another instance owns it now
		return
	} else if err != nil {
		p.log.Error().Err(err).Str("record", rec.ID).Msg("record finished state")
		p.reschedule(j)
	}
}

func (p *Poller) finish(ctx context.Context, rec *record.Record, op *gemini.Operation) error {
	rec.State = record.Finished
	rec.RemoteState = op.State()
	rec.Finished = p.cfg.Now()
	rec.Error = op.Error
	if out := op.Output(); out != nil {
		rec.ResultsFile = out.ResponsesFile
	}
	if err := p.store.Update(ctx, rec); err != nil {
		return fmt.Errorf("record %s finished: %w", rec.ID, err)
	}
	p.unstick(rec.ID)
	p.m.terminal.WithLabelValues(rec.RemoteState.Short()).Inc()
	p.m.sealToEnd.Observe(rec.Finished.Sub(rec.Sealed).Seconds())
	p.log.Info().Str("record", rec.ID).Str("batch", rec.RemoteName).Str("state", string(rec.RemoteState)).
		Float64("took_seconds", rec.Finished.Sub(rec.Submitted).Seconds()).Msg("batch ended")
	p.finished(rec, op)
	return nil
}

// checkStuck reports a job not ended STUCK_AFTER its create, once, and cancels it if told to.
// The record is marked before the cancel is sent, so that whoever answers the job after a crash
// knows the cancel was gembatch's own and resubmits the requests.
func (p *Poller) checkStuck(ctx context.Context, j *job) {
	rec := j.rec
	since := cmp.Or(rec.Submitted, rec.Sealed)
	if p.cfg.StuckAfter <= 0 || p.cfg.Now().Sub(since) < p.cfg.StuckAfter {
		return
	}
	if !j.stuck {
		j.stuck = true
		p.mu.Lock()
		p.stuck[rec.ID] = true
		p.m.stuck.Set(float64(len(p.stuck)))
		p.mu.Unlock()
		p.m.stuckTotal.Inc()
		p.log.Warn().Str("record", rec.ID).Str("batch", rec.RemoteName).Str("state", string(rec.RemoteState)).
			Float64("age_seconds", p.cfg.Now().Sub(since).Seconds()).Float64("stuck_after_seconds", p.cfg.StuckAfter.Seconds()).Bool("cancel", p.cfg.CancelStuck).
			Msg("batch stuck: not ended after GEMBATCH_STUCK_AFTER")
	}
	if !p.cfg.CancelStuck || j.cancelSent {
		return
	}
	if !rec.StuckCancelled {
		rec.StuckCancelled = true
		if err := p.store.Update(ctx, rec); err != nil {
			rec.StuckCancelled = false
			p.log.Warn().Err(err).Str("record", rec.ID).Msg("mark stuck batch for cancelling; will try again")
			return
		}
	}
	var apiErr *gemini.APIError
	if err := p.api.CancelBatch(ctx, rec.RemoteName); err != nil && !(errors.As(err, &apiErr) && apiErr.HTTPStatus == 400) {
		p.log.Warn().Err(err).Str("record", rec.ID).Str("batch", rec.RemoteName).Msg("cancel stuck batch; will try again")
		return
	}
	// 400 means the job has ended meanwhile: the next poll sees how.
	j.cancelSent = true
	j.interval = p.cfg.Interval
	p.m.stuckCancelled.Inc()
	p.log.Info().Str("record", rec.ID).Str("batch", rec.RemoteName).Msg("cancelled stuck batch; its unfinished requests will be resubmitted")
}

// unstick drops a record from the stuck ones.
func (p *Poller) unstick(id string) {
	p.mu.Lock()
	delete(p.stuck, id)
	p.m.stuck.Set(float64(len(p.stuck)))
	p.mu.Unlock()
}

// reschedule grows the job's interval by half, with ±20% jitter, capped at MaxInterval. A job
// forgotten while it was being polled is not scheduled again.
func (p *Poller) reschedule(j *job) {
	p.mu.Lock()
	watched := p.watched[j.rec.ID]
	p.mu.Unlock()
	if !watched {
		return
	}
	next := time.Duration(float64(j.interval) * 1.5 * (0.8 + 0.4*rand.Float64()))
	j.interval = min(max(next, p.cfg.Interval), p.cfg.MaxInterval)
	j.due = p.cfg.Now().Add(j.interval)
	p.schedule(j)
}

// job is one watched batch in the schedule.
type job struct {
	rec      *record.Record
	due      time.Time
	interval time.Duration
	// stuck: reported stuck; cancelSent: cancelled as stuck by this poller.
	stuck, cancelSent bool
}

// schedule is a min-heap of jobs by due time.
type schedule []*job

func (s schedule) Len() int           { return len(s) }
func (s schedule) Less(i, j int) bool { return s[i].due.Before(s[j].due) }
func (s schedule) Swap(i, j int)      { s[i], s[j] = s[j], s[i] }
func (s *schedule) Push(x any)        { *s = append(*s, x.(*job)) }
func (s *schedule) Pop() any {
	old := *s
	j := old[len(old)-1]
	old[len(old)-1] = nil
	*s = old[:len(old)-1]
	return j
}

// Forget stops polling a record another instance now owns.
func (p *Poller) Forget(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.watched, id)
	delete(p.stuck, id)
	p.m.stuck.Set(float64(len(p.stuck)))
	for i, j := range p.sched {
		if j.rec.ID == id {
			heap.Remove(&p.sched, i)
			p.m.watching.Set(float64(len(p.sched)))
			return
		}
	}
}
