package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/failpoint"
	"github.com/gembatch/gembatch/record"
)

// API is the part of the Gemini client that answering a batch needs.
type API interface {
	// StreamBatch gets a job, handing its inline answers to each one at a time (each Result's
	// Response and Usage good until each returns), and calls handedAll after the last one,
	// before the rest of the job is read.
	StreamBatch(ctx context.Context, name string, each func(gemini.Result) error, handedAll func()) (*gemini.Operation, error)
	Download(ctx context.Context, name string) (io.ReadCloser, error)
	DeleteFile(ctx context.Context, name string) error
	DeleteBatch(ctx context.Context, name string) error
}

// Batches answers every request of a finished or failed batch record, then cleans it up.
type Batches struct {
	pub    *Publisher
	store  record.Store
	api    API
	log    zerolog.Logger
	Policy Policy
	// CheckpointEvery is how many results pass between progress checkpoints.
	CheckpointEvery int
	Now             func() time.Time
	// KeepJobs leaves finished jobs in the API's list; by default each is deleted once its
	// answers are out, so that the list, which resolving a lost create reads, stays short.
	KeepJobs bool
	// Own stamps a record this replica creates (a resubmission) with its owner; nil in core mode.
	Own func(*record.Record)

	unpriced sync.Map // models without a price, warned about once
	// flushed holds, by record id, how many results of an answer that failed were published and
	// flushed, so that a retry in this process sends none of them again.
	flushed sync.Map
}

// NewBatches returns a batch replier that never resubmits; set Policy to change that.
func NewBatches(pub *Publisher, store record.Store, api API, log zerolog.Logger) *Batches {
	return &Batches{pub: pub, store: store, api: api, log: log, Policy: Policy{MaxAttempts: 1}, CheckpointEvery: 1000, Now: time.Now}
}

// answering tracks one batch's replies: which requests have theirs, and how many results were
// consumed, so that a resumed run re-reads the same results but publishes only past the checkpoint.
type answering struct {
	// salvage: results that cannot be read end the reading instead of failing the answer, and
	// the requests left get an error saying why (unreadable).
	salvage    bool
	unreadable error
	usage      gemini.UsageMetadata // summed over the batch's responses
	estimated  int64                // prompt tokens estimated for responses without usage
	cost       float64              // estimated, in US dollars
	saved      float64              // interactive-price equivalent minus cost, in US dollars
	priced     bool                 // the model has a price
	ctx        context.Context
	b          *Batches
	rec        *record.Record
	byKey      map[string]int
	answered   []bool
	seq        int
	// retry lists the requests kept for a later batch, with counts by reason.
	retry        []int
	retryReasons map[string]int
	// stored holds request bodies read back from the store, by key, once needed.
	stored map[string]json.RawMessage
	// sent is how many results an earlier try in this process published and flushed.
	sent int
	// checkpointing has the outcome of the checkpoint being written while the next results
	// are published, or is nil when none is.
	checkpointing chan checkpoint
}

// checkpoint is a progress checkpoint written: the record as written, or why not.
type checkpoint struct {
	rec *record.Record
	err error
}

// flush waits for the replies published so far, and remembers them as sent in this process.
func (a *answering) flush() error {
	if err := a.b.pub.Flush(); err != nil {
		return err
	}
	a.flushedUpTo(a.seq)
	return nil
}

// flushedUpTo remembers that the results up to n are published and flushed, so that a retry in
// this process sends none of them again.
func (a *answering) flushedUpTo(n int) {
	a.sent = max(a.sent, n)
	a.b.flushed.Store(a.rec.ID, a.sent)
}

// Answer publishes one reply for every request of rec, which is Finished or Failed. op is the
// job's final Operation when the caller has it; otherwise it is fetched again. If the results
// cannot be read, it returns the error and the batch can be answered again later.
func (b *Batches) Answer(ctx context.Context, rec *record.Record, op *gemini.Operation) error {
	return b.answer(ctx, rec, op, false)
}

// Salvage answers rec like Answer, but results that cannot be read (a download that fails or
// breaks off, a job that cannot be fetched) do not stop it: the results read so far are
// published and every other request gets an error that says the results were unreadable. It is
// the last resort once Answer has failed for long enough, so that no request is left unanswered.
// A request answered before the failure may be answered again, with the same Nats-Msg-Id.
func (b *Batches) Salvage(ctx context.Context, rec *record.Record, op *gemini.Operation) error {
	return b.answer(ctx, rec, op, true)
}

func (b *Batches) answer(ctx context.Context, rec *record.Record, op *gemini.Operation, salvage bool) error {
	if rec.State == record.Replied {
		return b.clean(ctx, rec) // answered before a crash: only the cleanup is left
	}
	if len(rec.Requests) == 0 && rec.Count > 0 {
		full, err := b.store.Get(ctx, rec.ID) // taken over without its requests
		if err != nil {
			return fmt.Errorf("read the requests of record %s: %w", rec.ID, err)
		}
		rec.Requests = full.Requests
	}
	a := &answering{ctx: ctx, b: b, rec: rec, salvage: salvage, byKey: make(map[string]int, len(rec.Requests)),
		answered: make([]bool, len(rec.Requests)), retryReasons: map[string]int{}, priced: true}
	for i, r := range rec.Requests {
		a.byKey[r.Key] = i
	}
	if n, ok := b.flushed.Load(rec.ID); ok {
		a.sent = n.(int)
	}
	err := a.answerResults(ctx, op)
	if cerr := a.checkpointed(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if a.unreadable != nil {
		b.pub.m.unreadable.Inc()
		b.log.Error().Err(a.unreadable).Str("record", rec.ID).Str("batch", rec.RemoteName).
			Msg("results unreadable; answering the requests left with an error")
	}
	st, reason, retry := b.unfinished(rec)
	for i, ok := range a.answered {
		if ok {
			continue
		}
		if a.unreadable != nil {
			st := gemini.NewStatus(gemini.CodeInternal, "the results of batch %s could not be read: %v", rec.RemoteName, a.unreadable)
			if err := a.reply(i, nil, st, false); err != nil {
				return err
			}
			continue
		}
		if rec.RemoteState == gemini.StateSucceeded {
			b.pub.m.missingKeys.Inc()
		}
		if err := a.settle(i, st, reason, retry, false); err != nil {
			return err
		}
	}
	if err := a.flush(); err != nil {
		return err
	}
	if err := a.resubmit(); err != nil {
		return err
	}
	failpoint.Hit(failpoint.AfterReplyBeforeReplied)
	rec.Replied = a.seq
	rec.State = record.Replied
	// The sums go with the Replied state, in one write: a resumed run re-reads every result, so
	// they are whole, and a record already Replied is never answered again.
	rec.Usage = &record.Usage{UsageMetadata: a.usage, EstimatedPrompt: a.estimated, CostUSD: a.cost}
	if err := b.store.Update(ctx, rec); err != nil {
		return fmt.Errorf("record %s replied: %w", rec.ID, err)
	}
	b.flushed.Delete(rec.ID)
	b.pub.m.batches.WithLabelValues(rec.RemoteState.Short()).Inc()
	b.pub.m.countTokens(rec.Group.Model, a.usage, a.estimated)
	b.pub.m.cost.WithLabelValues(rec.Group.Model).Add(a.cost)
	b.pub.m.saved.WithLabelValues(rec.Group.Model).Add(a.saved)
	if !a.priced {
		if _, warned := b.unpriced.LoadOrStore(rec.Group.Model, true); !warned {
			b.log.Warn().Str("model", rec.Group.Model).Msg("no price for this model (GEMBATCH_PRICES_FILE); its cost is not estimated")
		}
	}
	b.log.Info().Str("record", rec.ID).Str("batch", rec.RemoteName).Int("requests", len(rec.Requests)).
		Int("resubmitted", len(a.retry)).Float64("cost_usd", a.cost).Float64("saved_usd", a.saved).Str("state", string(rec.RemoteState)).Msg("batch answered")
	return b.clean(ctx, rec)
}

// answerResults answers the requests that have results, or the error that stands for them.
func (a *answering) answerResults(ctx context.Context, op *gemini.Operation) error {
	switch {
	case a.rec.State == record.Failed:
		return a.all(a.rec.Error)
	case a.rec.RemoteState == gemini.StateFailed:
		return a.all(jobError(a.rec))
	default: // SUCCEEDED, and EXPIRED or CANCELLED with whatever results they carry
		return a.results(ctx, op)
	}
}

// clean deletes the uploaded input file and the record. Result files are left to expire (48h):
// their names are longer than the 40 characters the files API addresses. A file already gone is
// not an error.
func (b *Batches) clean(ctx context.Context, rec *record.Record) error {
	if f := rec.InputFile; f != "" {
		if err := b.api.DeleteFile(ctx, f); err != nil && !gemini.IsNotFound(err) {
			b.log.Warn().Err(err).Str("record", rec.ID).Str("file", f).Msg("could not delete the input file; it expires in 48h")
		}
	}
	if rec.RemoteName != "" && !b.KeepJobs {
		if err := b.api.DeleteBatch(ctx, rec.RemoteName); err != nil && !gemini.IsNotFound(err) {
			b.log.Warn().Err(err).Str("record", rec.ID).Str("batch", rec.RemoteName).Msg("could not delete the finished job; it stays listed")
		}
	}
	failpoint.Hit(failpoint.BeforeClean)
	rec.State = record.Cleaned
	if err := b.store.Update(ctx, rec); err != nil {
		return fmt.Errorf("record %s cleaned: %w", rec.ID, err)
	}
	if err := b.store.Delete(ctx, rec.ID); err != nil && !errors.Is(err, record.ErrNotFound) {
		return fmt.Errorf("delete record %s: %w", rec.ID, err)
	}
	return nil
}

// results reads a succeeded job's answers: inline ones as the job is fetched, one at a time
// (the poller's op does not hold them), or from its result file.
func (a *answering) results(ctx context.Context, op *gemini.Operation) error {
	if out := heldInline(op); out != nil {
		for _, r := range gemini.InlineResults(out) { // the caller holds them already
			if err := a.result(r); err != nil {
				return err
			}
		}
		return nil
	}
	if op == nil || op.Output() == nil || op.Output().ResponsesFile == "" {
		replyErr, err := prefetch(ctx, func(ctx context.Context, each func(gemini.Result) error, handedAll func()) (err error) {
			op, err = a.b.api.StreamBatch(ctx, a.rec.RemoteName, each, handedAll)
			return err
		}, a.result)
		if replyErr != nil {
			return replyErr
		}
		if err != nil {
			return a.fail(fmt.Errorf("get %s for its results: %w", a.rec.RemoteName, err))
		}
	}
	out := op.Output()
	if out == nil {
		if a.rec.RemoteState != gemini.StateSucceeded {
			return nil // an expired or cancelled job usually ends with no results at all
		}
		return a.all(gemini.NewStatus(gemini.CodeInternal, "batch %s succeeded with no output", a.rec.RemoteName))
	}
	if out.ResponsesFile == "" {
		return nil // answered as they came
	}
	a.rec.ResultsFile = out.ResponsesFile
	body, err := a.b.api.Download(ctx, out.ResponsesFile)
	if err != nil {
		return a.fail(fmt.Errorf("download results %s of %s: %w", out.ResponsesFile, a.rec.RemoteName, err))
	}
	defer body.Close()
	rr := gemini.NewResultReader(body)
	for {
		r, err := rr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if err := a.fail(fmt.Errorf("read results %s of %s: %w", out.ResponsesFile, a.rec.RemoteName, err)); err != nil {
				return err
			}
			break
		}
		if err := a.result(r); err != nil {
			return err
		}
	}
	if n := rr.Malformed(); n > 0 {
		a.b.pub.m.badLines.Add(float64(n))
		a.b.log.Warn().Str("batch", a.rec.RemoteName).Int("lines", n).Msg("result lines without a readable key")
	}
	return nil
}

// heldInline is op's output if op holds inline answers, nil otherwise.
func heldInline(op *gemini.Operation) *gemini.Output {
	if op == nil {
		return nil
	}
	if out := op.Output(); out != nil && out.InlinedResponses != nil && len(out.InlinedResponses.InlinedResponses) > 0 {
		return out
	}
	return nil
}

// fail is a results error: returned, or, when salvaging, kept to explain the requests left.
func (a *answering) fail(err error) error {
	if !a.salvage {
		return err
	}
	a.unreadable = err
	return nil
}

// result answers the request that one result is for.
func (a *answering) result(r gemini.Result) error {
	a.seq++
	i, ok := a.byKey[r.Key]
	switch {
	case r.Key == "":
		a.b.pub.m.badLines.Inc()
		return nil
	case !ok || a.answered[i]:
		a.b.pub.m.unknownKeys.Inc()
		a.b.log.Warn().Str("batch", a.rec.RemoteName).Str("key", r.Key).Msg("result for a key that is not waiting in this batch")
		return nil
	}
	if r.Error != nil {
		cancelled := r.Error.Code == gemini.CodeCancelled && a.rec.StuckCancelled
		reason := ResubmitItemError
		if cancelled {
			reason = ResubmitStuck
		}
		return a.settle(i, r.Error, reason, Retryable(r.Error.Code) || cancelled, true)
	}
	a.account(i, r.Usage)
	return a.reply(i, r.Response, nil, true)
}

// account adds one response's tokens and estimated cost to the batch's sums, from the usage
// the result reader read with the response. Responses without usageMetadata (embeddings)
// count their request's size, four bytes a token, as prompt tokens.
func (a *answering) account(i int, u *gemini.UsageMetadata) {
	usage := gemini.UsageMetadata{PromptTokenCount: (a.rec.Requests[i].Size + 3) / 4}
	if u != nil {
		usage = *u
		a.usage.CandidatesTokenCount += usage.CandidatesTokenCount
		a.usage.CachedContentTokenCount += usage.CachedContentTokenCount
		a.usage.ThoughtsTokenCount += usage.ThoughtsTokenCount
		a.usage.PromptTokenCount += usage.PromptTokenCount
	} else {
		a.estimated += usage.PromptTokenCount
	}
	if a.b.Policy.Prices == nil {
		return
	}
	e, ok := a.b.Policy.Prices.Costs(a.rec.Group.Model, usage)
	a.cost += e.Batch
	a.saved += e.Saved()
	a.priced = a.priced && ok
}

// all answers every request with the same error.
func (a *answering) all(st *gemini.Status) error {
	for i := range a.rec.Requests {
		a.seq++
		if err := a.reply(i, nil, st, true); err != nil {
			return err
		}
	}
	return nil
}

// reply publishes one answer unless an earlier run already did (a counted result before the
// checkpoint, or flushed by an earlier try in this process), and checkpoints progress every
// CheckpointEvery results.
func (a *answering) reply(i int, resp []byte, st *gemini.Status, counted bool) error {
	a.answered[i] = true
	if counted && a.seq <= max(a.rec.Replied, a.sent) {
		return nil
	}
	req := a.rec.Requests[i]
	if err := a.publish(req, resp, st); err != nil {
		return err
	}
	a.b.pub.m.replyLatency.Observe(a.b.Now().Sub(req.Received).Seconds())
	if st != nil {
		if err := a.deadLetter(i, st); err != nil {
			return err
		}
	}
	if a.seq == len(a.rec.Requests)/2 {
		failpoint.Hit(failpoint.MidReply)
	}
	if counted && a.b.CheckpointEvery > 0 && a.seq%a.b.CheckpointEvery == 0 {
		return a.checkpoint()
	}
	return nil
}

// checkpoint starts writing, behind the replies that follow, that the results up to this one
// are answered: once the server has every reply published so far, the record is written with
// them counted as Replied. It first waits for the checkpoint before, and returns its error.
// Waiting on a flush and a record write at every checkpoint stopped the replies each time: a
// third of a 10,000-reply fan-out.
func (a *answering) checkpoint() error {
	if err := a.checkpointed(); err != nil {
		return err
	}
	rec, done := *a.rec, make(chan checkpoint, 1)
	rec.Replied = a.seq
	a.checkpointing = done
	go func() {
		if err := a.b.pub.Flush(); err != nil {
			done <- checkpoint{err: err}
			return
		}
		if err := a.b.store.Update(a.ctx, &rec); err != nil {
			done <- checkpoint{err: fmt.Errorf("checkpoint record %s at %d: %w", rec.ID, rec.Replied, err)}
			return
		}
		done <- checkpoint{rec: &rec}
	}()
	return nil
}

// checkpointed waits for the checkpoint being written, if any, and takes its revision and
// progress into the record; it returns the checkpoint's error.
func (a *answering) checkpointed() error {
	if a.checkpointing == nil {
		return nil
	}
	c := <-a.checkpointing
	a.checkpointing = nil
	if c.err != nil {
		return c.err
	}
	a.rec.Revision, a.rec.Replied = c.rec.Revision, c.rec.Replied
	a.flushedUpTo(c.rec.Replied)
	return nil
}

// publish sends one reply. An answer larger than a NATS message may be goes by reference to
// the object store, where there is one. A reply that can never be published as it is (too large
// with no object store to take it, or to a refused subject) is that request's own outcome: it is
// answered with an error saying why, or skipped with a log line if even that cannot go, and
// nothing else waits. Any other failure is the connection's, and the batch is tried again.
func (a *answering) publish(req record.Request, resp []byte, st *gemini.Status) error {
	r := Reply{Subject: req.Reply, Key: req.Key, MsgID: req.ID, Batch: a.rec.RemoteName, Response: resp, Error: st,
		Record: a.rec.ID}
	err := a.b.pub.PublishContext(a.ctx, r)
	var ud *UndeliverableError
	if !errors.As(err, &ud) {
		return err
	}
	a.b.pub.m.undeliverable.Inc()
	if st == nil {
		msg := fmt.Sprintf("the answer is %d bytes, more than the %d bytes a NATS message may carry on this connection", ud.Size, ud.Limit)
		if ud.Stored {
			msg += ", and it could not be written to the results object store"
		}
		r.Response, r.Error = nil, gemini.NewStatus(gemini.CodeResourceExhausted, "%s", msg)
		a.b.log.Warn().Err(err).Str("record", a.rec.ID).Str("key", req.Key).Int("size_bytes", ud.Size).Int("limit_bytes", ud.Limit).
			Msg("answer too large to publish; answering the request with an error")
		if err = a.b.pub.PublishContext(a.ctx, r); !errors.As(err, &ud) {
			return err
		}
	}
	a.b.log.Error().Err(err).Str("record", a.rec.ID).Str("key", req.Key).Msg("reply cannot be published; skipped")
	return nil
}

// jobError is the error every request of a job that ended without results is answered with.
func jobError(rec *record.Record) *gemini.Status {
	var detail string
	if rec.Error != nil {
		detail = ": " + rec.Error.Message
	}
	switch rec.RemoteState {
	case gemini.StateCancelled:
		return gemini.NewStatus(gemini.CodeCancelled, "batch %s was cancelled%s", rec.RemoteName, detail)
	case gemini.StateExpired:
		return gemini.NewStatus(gemini.CodeDeadlineExceeded, "batch %s expired before it completed%s", rec.RemoteName, detail)
	default:
		code := gemini.CodeInternal
		if rec.Error != nil && rec.Error.Code > 0 && rec.Error.Code <= gemini.CodeUnauthenticated {
			code = rec.Error.Code
		}
		return gemini.NewStatus(code, "batch %s ended %s%s", rec.RemoteName, rec.RemoteState, detail)
	}
}
