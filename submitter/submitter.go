// Package submitter turns sealed batch records into remote batch jobs: inline when small, as an
// uploaded JSONL file otherwise, and never creates the same batch twice.
package submitter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/backoff"
	"github.com/gembatch/gembatch/internal/failpoint"
	"github.com/gembatch/gembatch/record"
)

// API is the part of the Gemini client the submitter uses.
type API interface {
	CreateBatch(ctx context.Context, kind gemini.Kind, model string, b gemini.Batch) (*gemini.Operation, error)
	CancelBatch(ctx context.Context, name string) error
	UploadFile(ctx context.Context, r io.Reader, size int64, displayName, mimeType string) (*gemini.File, error)
	ListBatches(ctx context.Context, pageSize int) iter.Seq2[*gemini.Operation, error]
}

// Config sets up a Submitter.
type Config struct {
	// InlineMaxBytes: a batch whose inline encoding is larger goes by file.
	InlineMaxBytes int64
	// FileMaxBytes: a batch whose input file would be larger is split.
	FileMaxBytes int64
	// Concurrency bounds the batches being submitted at once.
	Concurrency int
	// CreateGrace is how long a create with a lost answer is given to show in the remote list
	// before it is sent again.
	CreateGrace time.Duration
	// Backoff paces retries after 429 and unreachable API.
	Backoff backoff.Policy
	// Quota bounds the active jobs and their tokens; batches that do not fit wait in the queue.
	Quota Quota
	// Lease, when set, fences every create: one is sent only while this replica certainly holds
	// its lease for CreateTimeout and a fifth more, and never takes longer than CreateTimeout.
	Lease         Lease
	CreateTimeout time.Duration
	// KeepBodies keeps request bodies in memory after submit, for resubmissions and dead
	// letters, where the store cannot give them back (core mode).
	KeepBodies bool
	// Input reads the input of records whose bodies were written as their batch grew (Chunks
	// above 0, durable mode).
	Input Input
	Now   func() time.Time
}

// Input is where the store keeps a batch's JSONL input.
type Input interface {
	// Input streams the record's input file as it will be uploaded.
	Input(ctx context.Context, rec *record.Record) (io.ReadCloser, error)
	// EachInput calls f with every line of the record's input, in order.
	EachInput(ctx context.Context, rec *record.Record, f func(key string, request json.RawMessage) error) error
}

// Lease is this replica's ownership lease (durable mode).
type Lease interface {
	// HeldSince reports whether the lease has been held without a lapse since t, and still is
	// for margin more.
	HeldSince(t time.Time, margin time.Duration) bool
}

// errInputRead: the create's body could not be read from the store; nothing was sent.
var errInputRead = errors.New("batch input not read")

// errLeaseLapsed: the lease is not certainly held long enough to send a create.
var errLeaseLapsed = errors.New("lease not held long enough to send a create")

// Submitter submits sealed records. Each record is worked on by one worker until it is submitted
// or failed; Enqueue never blocks for long, as batches are few.
type Submitter struct {
	cfg       Config
	api       API
	store     record.Store
	log       zerolog.Logger
	m         *Metrics
	submitted func(*record.Record)
	failed    func(*record.Record)

	mu     sync.Mutex
	queue  []*record.Record
	queued map[string]bool // ids queued or being submitted: each is worked on once
	closed bool
	ready  chan struct{}
	adm    admission

	// heldRequests and heldBytes count what is queued or being submitted: held in memory.
	heldRequests atomic.Int64
	heldBytes    atomic.Int64
}

// New returns a Submitter that hands each record that could not be created to failed; set
// where submitted records go with OnSubmitted before Run.
func New(cfg Config, api API, store record.Store, log zerolog.Logger, m *Metrics, failed func(*record.Record)) *Submitter {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.FileMaxBytes <= 0 {
		cfg.FileMaxBytes = 2 << 30
	}
	if cfg.Backoff.Initial <= 0 {
		cfg.Backoff = backoff.Policy{Initial: time.Second, Max: 5 * time.Minute}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CreateTimeout <= 0 {
		cfg.CreateTimeout = gemini.DefaultCallTimeout
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	s := &Submitter{queued: map[string]bool{}, cfg: cfg, api: api, store: store, log: log, m: m, failed: failed, ready: make(chan struct{}, 1), adm: newAdmission()}
	m.held = func() (int64, int64) { return s.Held() }
	return s
}

// OnSubmitted sets where each submitted record goes (the poller).
func (s *Submitter) OnSubmitted(f func(*record.Record)) { s.submitted = f }

// Enqueue schedules a Sealed or Submitting record for submission. A record already queued or
// being submitted is not queued again.
func (s *Submitter) Enqueue(rec *record.Record) {
	s.mu.Lock()
	if s.queued[rec.ID] {
		s.mu.Unlock()
		return
	}
	s.queued[rec.ID] = true
	s.heldRequests.Add(int64(len(rec.Requests)))
	s.heldBytes.Add(rec.Bytes)
	s.queue = append(s.queue, rec)
	s.m.queued.Set(float64(len(s.queue)))
	s.mu.Unlock()
	s.wake()
}

// requeue puts back, first in line, a record whose create the service throttled.
func (s *Submitter) requeue(rec *record.Record) {
	s.Release(rec.ID)
	s.heldRequests.Add(int64(len(rec.Requests)))
	s.heldBytes.Add(rec.Bytes)
	s.mu.Lock()
	s.queued[rec.ID] = true
	s.queue = append([]*record.Record{rec}, s.queue...)
	s.m.queued.Set(float64(len(s.queue)))
	s.mu.Unlock()
	s.wake()
}

func (s *Submitter) wake() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Held returns the requests and bytes queued or being submitted.
func (s *Submitter) Held() (requests, bytes int64) {
	return s.heldRequests.Load(), s.heldBytes.Load()
}

// CloseQueue lets Run return once the queue is empty and every worker is done.
func (s *Submitter) CloseQueue() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wake()
}

// next takes the first queued record the quota admits, reserving its share, and waits while
// there is none; nil when ctx is done, or the queue is closed and empty.
func (s *Submitter) next(ctx context.Context) *record.Record {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		now := s.cfg.Now()
		waiting := map[string]int{waitJobs: 0, waitTokens: 0, waitBackoff: 0}
		var soonest time.Time
		take := -1
		for i, rec := range s.queue {
			reason := s.blocked(rec, now)
			if reason == "" && take < 0 {
				take = i
				s.reserve(rec) // before the rest are judged, so they are judged without its share
				continue
			}
			if reason == "" { // fits, and waits for a worker
				continue
			}
			waiting[reason]++
			if until := s.adm.backoff[rec.Group.Model]; reason == waitBackoff && (soonest.IsZero() || until.Before(soonest)) {
				soonest = until
			}
		}
		for reason, n := range waiting {
			s.m.waiting.WithLabelValues(reason).Set(float64(n))
		}
		if take >= 0 {
			rec := s.queue[take]
			s.queue = append(s.queue[:take], s.queue[take+1:]...)
			s.m.queued.Set(float64(len(s.queue)))
			more := len(s.queue) > 0
			s.mu.Unlock()
			if more {
				s.wake() // another worker may find one that fits
			}
			return rec
		}
		closed := s.closed && len(s.queue) == 0
		s.mu.Unlock()
		if closed {
			s.wake() // the next worker sees the close too
			return nil
		}
		wait := time.Hour
		if !soonest.IsZero() {
			wait = max(soonest.Sub(now), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-s.ready:
		case <-timer.C:
		}
	}
}

// Run submits queued records with bounded concurrency until ctx is done, or until CloseQueue
// was called and the queue is empty.
func (s *Submitter) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range s.cfg.Concurrency {
		wg.Go(func() {
			for rec := s.next(ctx); rec != nil; rec = s.next(ctx) {
				n, b := int64(len(rec.Requests)), rec.Bytes
				s.work(ctx, rec)
				s.heldRequests.Add(-n)
				s.heldBytes.Add(-b)
				s.mu.Lock()
				if !slices.Contains(s.queue, rec) { // not put back in line (throttled)
					delete(s.queued, rec.ID)
				}
				s.mu.Unlock()
			}
		})
	}
	wg.Wait()
	return nil
}

// work submits one record, trying again after a failure (an upload or a store write that failed
// after the client's own retries) until it is done, another instance owns it, or ctx ends.
func (s *Submitter) work(ctx context.Context, rec *record.Record) {
	for attempt := 0; ; attempt++ {
		err := s.submit(ctx, rec)
		if err == nil || ctx.Err() != nil {
			return
		}
		if errors.Is(err, errThrottled) {
			s.requeue(rec)
			return
		}
		if lost := (*record.InputLost)(nil); errors.As(err, &lost) { // nothing was sent, and never can be
			err = s.fail(ctx, rec, err)
			if err == nil || ctx.Err() != nil {
				return
			}
		}
		if errors.Is(err, record.ErrConflict) {
			s.log.Warn().Err(err).Str("record", rec.ID).Msg("record owned elsewhere now; leaving it")
			s.Release(rec.ID)
			return
		}
		d := s.cfg.Backoff.Delay(attempt)
		s.log.Error().Err(err).Str("record", rec.ID).Float64("retry_in_seconds", d.Seconds()).Msg("submit batch; will retry")
		if !backoff.Sleep(ctx, d) {
			return
		}
	}
}

// submit carries one record from Sealed or Submitting to Submitted or Failed.
func (s *Submitter) submit(ctx context.Context, rec *record.Record) error {
	start := s.cfg.Now()
	if rec.State == record.Sealed {
		if rec.Bytes > s.cfg.FileMaxBytes && len(rec.Requests) > 1 {
			return s.split(ctx, rec)
		}
		rec.Mode = record.ModeFile
		if inlineSize(rec) <= s.cfg.InlineMaxBytes && !rec.Images {
			rec.Mode = record.ModeInline
		}
		rec.State = record.Submitting
		if err := s.store.Update(ctx, rec); err != nil {
			return fmt.Errorf("record %s to submitting: %w", rec.ID, err)
		}
	} else if !rec.CreateAttempted.IsZero() {
		// Resumed after a crash with a create possibly sent: find it before creating again.
		if op, err := s.resolve(ctx, rec); err != nil || op != nil {
			if op != nil {
				return s.adoptOrDisown(ctx, rec, op, start)
			}
			return err
		}
	}
	if rec.Mode == record.ModeFile && rec.InputFile == "" {
		if err := s.upload(ctx, rec); err != nil {
			return err
		}
	}
	for attempt := 0; ; attempt++ {
		rec.CreateAttempted = s.cfg.Now()
		if err := s.store.Update(ctx, rec); err != nil {
			return fmt.Errorf("record %s create intent: %w", rec.ID, err)
		}
		rec.IntentSeen = rec.CreateAttempted
		failpoint.Hit(failpoint.BeforeCreate)
		op, err := s.create(ctx, rec)
		if err == nil {
			failpoint.Hit(failpoint.AfterCreateBeforeRec)
			return s.adoptOrDisown(ctx, rec, op, start)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var apiErr *gemini.APIError
		switch {
		case errors.Is(err, errInputRead):
			return err // nothing was sent: tried again after a while, like a failed upload
		case errors.As(err, &apiErr) && apiErr.HTTPStatus == 429:
			// Not created: the model's quota is spent. Every batch of the model waits out the
			// server's delay, growing while the 429s go on, and this one goes back in line.
			s.m.throttled.Inc()
			hint, _ := apiErr.Status.RetryDelay()
			d := max(apiErr.RetryAfter, hint, s.cfg.Backoff.Delay(s.throttles(rec.Group.Model)))
			s.throttle(rec.Group.Model, d)
			rec.CreateAttempted = time.Time{}
			s.log.Warn().Str("record", rec.ID).Str("model", rec.Group.Model).Float64("retry_in_seconds", d.Seconds()).
				Msg("create throttled (429 RESOURCE_EXHAUSTED); holding the model's batches back")
			return errThrottled
		case errors.Is(err, gemini.ErrOutcomeUnknown):
			// The job may exist though the answer was lost: look before creating again. The
			// grace for it to show in the list runs from now, not from the intent: the request
			// may land after its answer was lost (a freeze with its body half written: the
			// campaign's seed 2029 billed 25 requests twice when one look found nothing).
			s.m.ambiguous.Inc()
			rec.IntentSeen = s.cfg.Now()
			s.log.Warn().Err(err).Str("record", rec.ID).Msg("create answer lost; checking the remote list before any new create")
			op, err := s.resolve(ctx, rec)
			if err != nil {
				return err
			}
			if op != nil {
				return s.adoptOrDisown(ctx, rec, op, start)
			}
		case errors.Is(err, errLeaseLapsed):
			// Not sent: the lease may have lapsed (a freeze, NATS unreachable). Once renewed, the
			// next intent write tells whether the record is still ours.
			s.log.Warn().Str("record", rec.ID).Msg("create held back: the lease is not certainly held; waiting for its renewal")
			if !backoff.Sleep(ctx, time.Second) {
				return ctx.Err()
			}
		case gemini.IsRetryable(err):
			// Nothing was created (the API could not be reached): send again after a while.
			d := s.cfg.Backoff.Delay(attempt)
			s.log.Warn().Err(err).Str("record", rec.ID).Float64("retry_in_seconds", d.Seconds()).Msg("create failed before reaching the API; retrying")
			if !backoff.Sleep(ctx, d) {
				return ctx.Err()
			}
		default:
			s.m.outcomes.WithLabelValues(string(rec.Mode), "failed").Inc()
			return s.fail(ctx, rec, err)
		}
	}
}

// create sends the create call, fenced by the lease: only while this replica has held it
// without a lapse since the intent was written, and certainly holds it for longer than the call
// may take. A freeze between this check and the send that outlasts the lease less the margin
// is the one window no fence closes; disown (here) and find (in the new owner) cancel what it
// lets through.
func (s *Submitter) create(ctx context.Context, rec *record.Record) (*gemini.Operation, error) {
	b, err := s.batch(ctx, rec)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errInputRead, err)
	}
	// Checked once the body is built, as reading it from the store can outlast the lease.
	// Held since the intent was written: a replica that froze after writing it (and whose
	// renewal, on waking, finds the lease lapsed) must not send it, though it holds the lease again.
	if s.cfg.Lease != nil && !s.cfg.Lease.HeldSince(rec.CreateAttempted, s.cfg.CreateTimeout+s.cfg.CreateTimeout/5) {
		return nil, errLeaseLapsed
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.CreateTimeout)
	defer cancel()
	return s.api.CreateBatch(cctx, rec.Group.Kind, rec.Group.Model, b)
}

// lookAgain is how soon resolve looks at the list again, doubling each time: a create that lands
// after its lost answer lands within moments of it, and its job may run at once, before a
// cancel (the fault campaign's jobs end 300 ms after their create; a second look a second
// later, the submitter's backoff, found one ended).
const lookAgain = 50 * time.Millisecond

// resolve looks for rec's job in the remote list, waiting out the list's lag: it returns the job,
// or nil once CreateGrace has passed, on this process's own clock, since it first saw the intent
// (or lost the create's answer).
func (s *Submitter) resolve(ctx context.Context, rec *record.Record) (*gemini.Operation, error) {
	if rec.IntentSeen.IsZero() {
		rec.IntentSeen = s.cfg.Now()
	}
	for attempt := 0; ; attempt++ {
		op, err := s.find(ctx, rec)
		if err == nil && op != nil {
			s.log.Info().Str("record", rec.ID).Str("batch", op.Name).Msg("adopted an existing remote batch")
			return op, nil
		}
		if err != nil {
			s.log.Warn().Err(err).Str("record", rec.ID).Msg("list batches to resolve a create")
		} else if s.cfg.Now().Sub(rec.IntentSeen) >= s.cfg.CreateGrace {
			return nil, nil
		}
		d := lookAgain << min(attempt, 10)
		if err != nil {
			d = s.cfg.Backoff.Delay(attempt)
		}
		if !backoff.Sleep(ctx, min(d, max(time.Second, s.cfg.CreateGrace/4))) {
			return nil, ctx.Err()
		}
	}
}

// adoptOrDisown records op as rec's job, or, when the record was taken over meanwhile, settles
// the job with disown. A create whose answer was lost is found the same way: a replica frozen
// with its create on the wire finds, on waking, the job it made after the new owner had made
// and answered its own (the campaign's before-create freeze billed 22 of 44 requests twice).
func (s *Submitter) adoptOrDisown(ctx context.Context, rec *record.Record, op *gemini.Operation, start time.Time) error {
	err := s.adopt(ctx, rec, op, start)
	if errors.Is(err, record.ErrConflict) || errors.Is(err, record.ErrNotFound) {
		s.disown(ctx, rec.ID, op.Name)
	}
	return err
}

// disown settles a job this replica created for a record it could no longer write: a create
// let through past the fence, the record taken over meanwhile. The record is the arbiter: the
// job it names is the batch's, so once it names another one (or is gone, its batch answered),
// this job is cancelled before it runs. While it names none, its new owner is still looking for
// a job, and may adopt this one; a record that names none within twice the create grace is left
// to its owner's find, which cancels every later job of the same name.
func (s *Submitter) disown(ctx context.Context, id, job string) {
	deadline := s.cfg.Now().Add(2*s.cfg.CreateGrace + time.Second)
	for attempt := 0; ; attempt++ {
		r, err := s.store.Get(ctx, id)
		switch {
		case err == nil && r.RemoteName == job:
			s.log.Info().Str("record", id).Str("batch", job).Msg("the record's new owner adopted the job created here")
			return
		case errors.Is(err, record.ErrNotFound) || err == nil && r.RemoteName != "":
			kept := "" // the record is gone: its batch was answered
			if r != nil {
				kept = r.RemoteName
			}
			s.m.duplicates.Inc()
			s.log.Error().Str("record", id).Str("batch", job).Str("kept", kept).
				Msg("a job created here after the record was taken over; cancelling it before it runs")
			if err := s.api.CancelBatch(ctx, job); err != nil {
				s.log.Warn().Err(err).Str("batch", job).Msg("cancel duplicate job")
			}
			return
		case err != nil:
			s.log.Warn().Err(err).Str("record", id).Msg("read the record to settle a job created after its takeover")
		}
		if s.cfg.Now().After(deadline) || !backoff.Sleep(ctx, min(s.cfg.Backoff.Delay(attempt), time.Second)) {
			s.log.Warn().Str("record", id).Str("batch", job).Msg("the record names no job yet; leaving the job created here to its owner's find")
			return
		}
	}
}

// listSkew is how much older than its record a job may be listed as created, allowing for
// the difference between this machine's clock and the service's.
const listSkew = time.Hour

// find returns the remote batch made for rec, if listed. The list comes newest first, so it
// reads only down to jobs created before the record was sealed. Should a second job with the
// same displayName be there (a create let through by a freeze past the lease), every job but
// the oldest is cancelled and deleted before it runs, and counted.
func (s *Submitter) find(ctx context.Context, rec *record.Record) (*gemini.Operation, error) {
	var found []*gemini.Operation
	for op, err := range s.api.ListBatches(ctx, 100) {
		if err != nil {
			return nil, err
		}
		if op.Metadata == nil {
			continue
		}
		if op.Metadata.DisplayName == rec.DisplayName() {
			found = append(found, op)
		}
		if !op.Metadata.CreateTime.IsZero() && op.Metadata.CreateTime.Before(rec.Sealed.Add(-listSkew)) {
			break
		}
	}
	if len(found) == 0 {
		return nil, nil
	}
	slices.SortFunc(found, func(a, b *gemini.Operation) int { return a.Metadata.CreateTime.Compare(b.Metadata.CreateTime) })
	for _, dup := range found[1:] {
		s.m.duplicates.Inc()
		s.log.Error().Str("record", rec.ID).Str("batch", dup.Name).Str("kept", found[0].Name).
			Msg("a second job was created for one batch; cancelling it before it runs")
		if err := s.api.CancelBatch(ctx, dup.Name); err != nil {
			s.log.Warn().Err(err).Str("batch", dup.Name).Msg("cancel duplicate job")
		}
	}
	return found[0], nil
}

func (s *Submitter) adopt(ctx context.Context, rec *record.Record, op *gemini.Operation, start time.Time) error {
	rec.RemoteName = op.Name
	rec.RemoteState = op.State()
	rec.State = record.Submitted
	rec.Submitted = s.cfg.Now()
	if !s.cfg.KeepBodies {
		for i := range rec.Requests {
			rec.Requests[i].Body = nil // sent; the record keeps only what replies need
		}
	}
	s.resetThrottles(rec.Group.Model)
	if err := s.store.Update(ctx, rec); err != nil {
		return fmt.Errorf("record %s submitted as %s: %w", rec.ID, op.Name, err)
	}
	s.m.outcomes.WithLabelValues(string(rec.Mode), "submitted").Inc()
	s.m.duration.WithLabelValues(string(rec.Mode)).Observe(s.cfg.Now().Sub(start).Seconds())
	s.log.Info().Str("record", rec.ID).Str("batch", op.Name).Str("mode", string(rec.Mode)).
		Int("requests", len(rec.Requests)).Int64("bytes", rec.Bytes).Str("model", rec.Group.Model).Msg("batch submitted")
	s.submitted(rec)
	return nil
}

func (s *Submitter) fail(ctx context.Context, rec *record.Record, cause error) error {
	st := gemini.NewStatus(gemini.CodeInternal, "create batch: %v", cause)
	var apiErr *gemini.APIError
	var lost *record.InputLost
	switch {
	case errors.As(cause, &apiErr) && apiErr.Status.Code != 0:
		st = gemini.NewStatus(httpToCode(apiErr.HTTPStatus), "create batch: %s", apiErr.Status.Message)
	case errors.As(cause, &lost):
		st = gemini.NewStatus(gemini.CodeDataLoss, "batch not sent: %s", lost)
	}
	rec.State = record.Failed
	rec.Error = st
	if err := s.store.Update(ctx, rec); err != nil {
		return fmt.Errorf("record %s to failed: %w", rec.ID, err)
	}
	s.Release(rec.ID)
	s.log.Error().Err(cause).Str("record", rec.ID).Int("requests", len(rec.Requests)).Msg("batch could not be created; answering its requests with the error")
	s.failed(rec)
	return nil
}

// batch builds the create request body. An inline batch whose bodies are in the store is read
// from there (inline batches are small).
func (s *Submitter) batch(ctx context.Context, rec *record.Record) (gemini.Batch, error) {
	b := gemini.Batch{DisplayName: rec.DisplayName(), Priority: gemini.Int64(rec.Group.Priority)}
	if rec.Mode == record.ModeFile {
		b.InputConfig.FileName = rec.InputFile
		return b, nil
	}
	reqs := make([]gemini.InlinedRequest, 0, len(rec.Requests))
	add := func(key string, body json.RawMessage) error {
		reqs = append(reqs, gemini.InlinedRequest{Request: body, Metadata: &gemini.RequestMetadata{Key: key}})
		return nil
	}
	if s.fromStore(rec) {
		if err := s.cfg.Input.EachInput(ctx, rec, add); err != nil {
			return b, fmt.Errorf("read the input of record %s: %w", rec.ID, err)
		}
	} else {
		for _, r := range rec.Requests {
			_ = add(r.Key, r.Body)
		}
	}
	b.InputConfig.Requests = &gemini.InlinedRequests{Requests: reqs}
	return b, nil
}

// fromStore: the record's bodies are not all in memory but in the store: its input chunks, or
// the request stream.
func (s *Submitter) fromStore(rec *record.Record) bool {
	return (rec.Chunks > 0 || rec.InStream) && s.cfg.Input != nil && !allHeld(rec.Requests)
}

// allHeld reports whether every request holds its body.
func allHeld(reqs []record.Request) bool {
	for _, q := range reqs {
		if q.Body == nil {
			return false
		}
	}
	return len(reqs) > 0
}

// upload streams the record's JSONL input to the File API, never holding the file in memory:
// the input chunks as the store keeps them, or the lines written from the bodies held.
func (s *Submitter) upload(ctx context.Context, rec *record.Record) error {
	var src io.ReadCloser
	if s.fromStore(rec) {
		var err error
		if src, err = s.cfg.Input.Input(ctx, rec); err != nil {
			return fmt.Errorf("read the input of record %s: %w", rec.ID, err)
		}
		src = &midway{ReadCloser: src, half: rec.Bytes / 2}
	} else {
		src = s.write(rec)
	}
	f, err := s.api.UploadFile(ctx, src, rec.Bytes, rec.DisplayName(), "jsonl")
	_ = src.Close()
	if err != nil {
		return fmt.Errorf("upload input of record %s (%d bytes): %w", rec.ID, rec.Bytes, err)
	}
	s.m.uploaded.Add(float64(rec.Bytes))
	rec.InputFile = f.Name
	if err := s.store.Update(ctx, rec); err != nil {
		return fmt.Errorf("record %s uploaded as %s: %w", rec.ID, f.Name, err)
	}
	return nil
}

// write streams the input lines of the bodies the record holds.
func (s *Submitter) write(rec *record.Record) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		w := gemini.NewInputWriter(pw)
		for i, r := range rec.Requests {
			if i == len(rec.Requests)/2 {
				failpoint.Hit(failpoint.MidUpload)
			}
			if err := w.Write(r.Key, r.Body); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.Close()
	}()
	return pr
}

// midway hits the mid-upload failpoint once half the input is read.
type midway struct {
	io.ReadCloser
	read, half int64
	hit        bool
}

func (m *midway) Read(p []byte) (int, error) {
	n, err := m.ReadCloser.Read(p)
	m.read += int64(n)
	if !m.hit && m.read >= m.half {
		m.hit = true
		failpoint.Hit(failpoint.MidUpload)
	}
	return n, err
}

// split replaces a record too large for one input file by several that fit.
func (s *Submitter) split(ctx context.Context, rec *record.Record) error {
	if s.fromStore(rec) { // the parts' inputs are written from their bodies
		bodies := map[string]json.RawMessage{}
		if err := s.cfg.Input.EachInput(ctx, rec, func(key string, body json.RawMessage) error { bodies[key] = body; return nil }); err != nil {
			return fmt.Errorf("split record %s: %w", rec.ID, err)
		}
		for i := range rec.Requests {
			rec.Requests[i].Body = bodies[rec.Requests[i].Key]
		}
	}
	var parts []*record.Record
	cur := &record.Record{}
	for _, r := range rec.Requests {
		if len(cur.Requests) > 0 && cur.Bytes+r.Size > s.cfg.FileMaxBytes {
			parts = append(parts, cur)
			cur = &record.Record{}
		}
		cur.Requests = append(cur.Requests, r)
		cur.Count++
		cur.Bytes += r.Size
	}
	parts = append(parts, cur)
	for _, p := range parts {
		p.ID, p.Group, p.State, p.CloseReason, p.Sealed, p.Images = nuid.Next(), rec.Group, record.Sealed, rec.CloseReason, rec.Sealed, rec.Images
		if err := s.store.Create(ctx, p); err != nil {
			return fmt.Errorf("split record %s: %w", rec.ID, err)
		}
	}
	rec.State = record.Cleaned
	if err := s.store.Update(ctx, rec); err != nil {
		return fmt.Errorf("split record %s: %w", rec.ID, err)
	}
	if err := s.store.Delete(ctx, rec.ID); err != nil {
		return fmt.Errorf("split record %s: %w", rec.ID, err)
	}
	s.Release(rec.ID)
	s.log.Info().Str("record", rec.ID).Int("parts", len(parts)).Int64("bytes", rec.Bytes).Msg("batch split to fit the input file limit")
	for _, p := range parts {
		s.Enqueue(p)
	}
	return nil
}

// inlineSize is the size of the record's requests in an inline create body.
func inlineSize(rec *record.Record) int64 {
	const perItem = int64(len(`{"request":,"metadata":{"key":""}},`))
	n := int64(256) // the envelope
	for _, r := range rec.Requests {
		if r.Body == nil { // in the store: its input line is as long as its inline item
			n += r.Size + perItem
			continue
		}
		n += int64(len(r.Body)) + int64(len(r.Key)) + perItem
	}
	return n
}

// httpToCode maps an HTTP status to its gRPC code for error replies.
func httpToCode(status int) int {
	switch status {
	case 400:
		return gemini.CodeInvalidArgument
	case 401:
		return gemini.CodeUnauthenticated
	case 403:
		return gemini.CodePermissionDenied
	case 404:
		return gemini.CodeNotFound
	case 409:
		return gemini.CodeAborted
	case 429:
		return gemini.CodeResourceExhausted
	case 501:
		return gemini.CodeUnimplemented
	case 503:
		return gemini.CodeUnavailable
	case 504:
		return gemini.CodeDeadlineExceeded
	}
	return gemini.CodeInternal
}
