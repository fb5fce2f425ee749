package publisher

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/backoff"
	"github.com/gembatch/gembatch/record"
)

// SalvageAfter is how many failed tries (about five minutes of backoff) a batch's answer gets
// before the requests whose results cannot be read are answered with an error.
const SalvageAfter = 12

// Answerer answers batches on a few workers. Enqueue never blocks, and no batch holds a worker
// beyond one try: a batch whose try failed waits out its backoff on a timer, and each record is
// queued at most once.
type Answerer struct {
	b       *Batches
	log     zerolog.Logger
	workers int
	retry   backoff.Policy

	mu     sync.Mutex
	queue  []answerJob
	queued map[string]bool // records queued, waiting for a retry, or being answered
	wake   chan struct{}
}

type answerJob struct {
	rec     *record.Record
	op      *gemini.Operation
	attempt int
}

// NewAnswerer returns an Answerer for b with the given number of workers.
func NewAnswerer(b *Batches, workers int, log zerolog.Logger) *Answerer {
	return &Answerer{b: b, log: log, workers: max(1, workers), retry: backoff.Policy{Initial: time.Second, Max: time.Minute},
		queued: map[string]bool{}, wake: make(chan struct{}, 1)}
}

// Enqueue schedules a Finished, Failed or Replied record to be answered; op is the job's final
// Operation when the caller has it. A record already queued here is not queued again.
func (a *Answerer) Enqueue(rec *record.Record, op *gemini.Operation) {
	a.mu.Lock()
	if a.queued[rec.ID] {
		a.mu.Unlock()
		return
	}
	a.queued[rec.ID] = true
	a.mu.Unlock()
	a.push(answerJob{rec: rec, op: op})
}

// Forget drops a record another replica took over, if it is waiting here.
func (a *Answerer) Forget(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, j := range a.queue {
		if j.rec.ID == id {
			a.queue = append(a.queue[:i], a.queue[i+1:]...)
			delete(a.queued, id)
			return
		}
	}
}

func (a *Answerer) push(j answerJob) {
	a.mu.Lock()
	a.queue = append(a.queue, j)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Run answers queued records until ctx ends.
func (a *Answerer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range a.workers {
		wg.Go(func() {
			for {
				j, ok := a.next(ctx)
				if !ok {
					return
				}
				a.try(ctx, j)
			}
		})
	}
	wg.Wait()
	return nil
}

// next takes the first queued job, waiting while there is none.
func (a *Answerer) next(ctx context.Context) (answerJob, bool) {
	for {
		a.mu.Lock()
		if len(a.queue) > 0 {
			j := a.queue[0]
			a.queue = a.queue[1:]
			more := len(a.queue) > 0
			a.mu.Unlock()
			if more {
				select {
				case a.wake <- struct{}{}:
				default:
				}
			}
			return j, true
		}
		a.mu.Unlock()
		select {
		case <-ctx.Done():
			return answerJob{}, false
		case <-a.wake:
		}
	}
}

// try answers one record once; a failure schedules the next try after a backoff.
func (a *Answerer) try(ctx context.Context, j answerJob) {
	answer := a.b.Answer
	if j.attempt >= SalvageAfter {
		answer = a.b.Salvage
	}
	err := answer(ctx, j.rec, j.op)
	if err == nil || ctx.Err() != nil || errors.Is(err, record.ErrConflict) || errors.Is(err, record.ErrNotFound) {
		if err != nil && ctx.Err() == nil {
			a.log.Warn().Err(err).Str("record", j.rec.ID).Msg("record changed elsewhere; leaving it to its owner")
		}
		a.mu.Lock()
		delete(a.queued, j.rec.ID)
		a.mu.Unlock()
		return
	}
	d := a.retry.Delay(j.attempt)
	a.log.Error().Err(err).Str("record", j.rec.ID).Int("attempt", j.attempt+1).Str("retry_in", d.String()).Msg("answering batch; will retry")
	j.attempt++
	time.AfterFunc(d, func() {
		if ctx.Err() == nil {
			a.push(j)
		}
	})
}
