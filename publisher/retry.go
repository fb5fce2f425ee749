package publisher

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/pricing"
	"github.com/gembatch/gembatch/record"
)

// Policy is what happens to requests whose batch did not answer them well.
type Policy struct {
	// MaxAttempts bounds the batches one request is sent in; 1 never resubmits.
	MaxAttempts int
	// ResubmitExpired resubmits the unfinished requests of an EXPIRED job.
	ResubmitExpired bool
	// ResubmitCancelled resubmits the unfinished requests of a job cancelled outside gembatch.
	// Jobs gembatch cancelled itself for being stuck are always resubmitted.
	ResubmitCancelled bool
	// DeadLetter, if set, is the subject every finally failed request is published to.
	DeadLetter string
	// Prices estimate the cost of answered requests; nil counts no cost.
	Prices *pricing.Table
	// Resubmit receives each new record of resubmitted requests, recorded and Sealed.
	Resubmit func(*record.Record)
}

// Retryable reports whether a per-item error code is worth another batch: the service's
// transient failures, as opposed to answers about the request itself (3 INVALID_ARGUMENT...).
func Retryable(code int) bool {
	switch code {
	case gemini.CodeInternal, gemini.CodeUnavailable, gemini.CodeDeadlineExceeded, gemini.CodeResourceExhausted:
		return true
	}
	return false
}

// Reasons a request is resubmitted, as counted in metrics.
const (
	ResubmitItemError = "item_error"
	ResubmitMissing   = "missing_result"
	ResubmitExpired   = "expired"
	ResubmitCancelled = "cancelled"
	ResubmitStuck     = "stuck"
)

// DeadLetter is the message published to the dead-letter subject for a request that finally
// failed: everything needed to look into it or send it again.
type DeadLetter struct {
	Key      string          `json:"key"`
	Reply    string          `json:"reply"`
	Kind     gemini.Kind     `json:"kind"`
	Model    string          `json:"model"`
	Priority int64           `json:"priority,omitempty"`
	Batch    string          `json:"batch,omitempty"`
	Attempts int             `json:"attempts"`
	Received time.Time       `json:"received"`
	Error    *gemini.Status  `json:"error"`
	Request  json.RawMessage `json:"request,omitempty"`
}

// deadLetter publishes request i's dead letter, if there is a dead-letter subject.
func (a *answering) deadLetter(i int, st *gemini.Status) error {
	subject := a.b.Policy.DeadLetter
	if subject == "" {
		return nil
	}
	q := a.rec.Requests[i]
	body, err := a.body(i)
	if err != nil {
		return err
	}
	data, err := json.Marshal(DeadLetter{
		Key: q.Key, Reply: q.Reply, Kind: a.rec.Group.Kind, Model: a.rec.Group.Model, Priority: a.rec.Group.Priority,
		Batch: a.rec.RemoteName, Attempts: q.Attempts(), Received: q.Received, Error: st, Request: body,
	})
	if err != nil {
		return fmt.Errorf("encode dead letter for key %q: %w", q.Key, err)
	}
	msg := &nats.Msg{Subject: subject, Header: nats.Header{}}
	msg.Header.Set(HeaderKey, q.Key)
	msg.Header.Set(HeaderStatus, "error")
	msg.Header.Set(HeaderMsgID, q.ID)
	// Too large for a NATS message, it goes by reference like an answer (durable mode).
	object := ObjectName(a.rec.ID, q.ID+"/dead-letter")
	err = a.b.pub.send(a.ctx, msg, q.Key, object, data)
	if errors.As(err, new(*UndeliverableError)) && body != nil {
		// Too large with the request in it: the letter still says what failed and why.
		data, _ = json.Marshal(DeadLetter{
			Key: q.Key, Reply: q.Reply, Kind: a.rec.Group.Kind, Model: a.rec.Group.Model, Priority: a.rec.Group.Priority,
			Batch: a.rec.RemoteName, Attempts: q.Attempts(), Received: q.Received, Error: st,
		})
		err = a.b.pub.send(a.ctx, msg, q.Key, "", data)
	}
	if errors.As(err, new(*UndeliverableError)) {
		a.b.pub.m.undeliverable.Inc()
		a.b.log.Error().Err(err).Str("key", q.Key).Str("subject", subject).Msg("dead letter cannot be published; skipped")
		return nil
	}
	if err != nil {
		a.b.pub.m.errors.Inc()
		return fmt.Errorf("publish dead letter for key %q to %s: %w", q.Key, subject, err)
	}
	a.b.pub.m.deadLetters.Inc()
	return nil
}

// body is request i's body: held in the record, or read back from the store once (the
// submitter drops bodies from memory once sent when the store keeps them). Nil if gone.
func (a *answering) body(i int) (json.RawMessage, error) {
	if b := a.rec.Requests[i].Body; b != nil {
		return b, nil
	}
	if a.stored == nil {
		bodies, err := a.b.store.Bodies(a.ctx, a.rec.ID)
		var lost *record.InputLost
		if errors.As(err, &lost) { // never to be read: each is answered as not held
			a.b.log.Error().Err(err).Str("record", a.rec.ID).Msg("request bodies lost; failed requests cannot be resubmitted")
			bodies, err = map[string]json.RawMessage{}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read the request bodies of record %s back: %w", a.rec.ID, err)
		}
		a.stored = bodies
	}
	return a.stored[a.rec.Requests[i].Key], nil
}

// settle decides what becomes of request i, which failed with st: a retryable failure is kept
// for a later batch while the request has attempts left and its deadline has not passed;
// anything else is its final error reply.
func (a *answering) settle(i int, st *gemini.Status, reason string, retry, counted bool) error {
	q := &a.rec.Requests[i]
	if retry {
		now := a.b.Now()
		switch {
		case !q.Deadline.IsZero() && !now.Before(q.Deadline):
			a.b.pub.m.gaveUp.WithLabelValues("deadline").Inc()
			st = gemini.NewStatus(gemini.CodeDeadlineExceeded, "deadline %s passed after attempt %d; last error: %s",
				q.Deadline.UTC().Format(time.RFC3339), q.Attempts(), st.Message)
		case q.Attempts() >= a.b.Policy.MaxAttempts:
			if a.b.Policy.MaxAttempts > 1 {
				a.b.pub.m.gaveUp.WithLabelValues("attempts").Inc()
				st = gemini.NewStatus(st.Code, "%s (gave up after %d attempts)", st.Message, q.Attempts())
			}
		default:
			body, err := a.body(i)
			if err != nil {
				return err
			}
			if body != nil {
				a.answered[i] = true
				a.retry = append(a.retry, i)
				a.retryReasons[reason]++
				return nil
			}
			st = gemini.NewStatus(st.Code, "%s (cannot resubmit: the request body is no longer held)", st.Message)
		}
	}
	return a.reply(i, nil, st, counted)
}

// resubmit records the requests kept for a later batch as a new Sealed record and hands it on.
// The record's id is derived from this one's, so a batch answered again after a crash finds
// it already recorded and does not make a second.
func (a *answering) resubmit() error {
	if len(a.retry) == 0 {
		return nil
	}
	next := &record.Record{
		ID: a.rec.RetryID(), Group: a.rec.Group, State: record.Sealed, CloseReason: "retry",
		Sealed: a.b.Now(), RetryOf: a.rec.ID, Requests: make([]record.Request, 0, len(a.retry)), Images: a.rec.Images,
	}
	for _, i := range a.retry {
		q := a.rec.Requests[i]
		q.Body, _ = a.body(i) // settle kept only requests whose body it could read
		q.Attempt = q.Attempts() + 1
		q.Msg = nil
		next.Requests = append(next.Requests, q)
		next.Bytes += q.Size
	}
	next.Count = len(next.Requests)
	if a.b.Own != nil {
		a.b.Own(next)
	}
	err := a.b.store.Create(a.ctx, next)
	if errors.Is(err, record.ErrExists) {
		return nil // made before a crash; whoever owns it carries it on
	}
	if err != nil {
		return fmt.Errorf("record the resubmission of %d requests of %s: %w", len(next.Requests), a.rec.ID, err)
	}
	for reason, n := range a.retryReasons {
		a.b.pub.m.resubmitted.WithLabelValues(reason).Add(float64(n))
	}
	a.b.log.Info().Str("record", a.rec.ID).Str("batch", a.rec.RemoteName).Str("retry", next.ID).
		Int("requests", len(next.Requests)).Interface("reasons", a.retryReasons).Msg("resubmitting requests in a new batch")
	if a.b.Policy.Resubmit != nil {
		a.b.Policy.Resubmit(next)
	}
	return nil
}

// unfinished is what becomes of the requests a job ended without answering: the error they
// get, why they would be resubmitted, and whether they may be.
func (b *Batches) unfinished(rec *record.Record) (st *gemini.Status, reason string, retry bool) {
	switch rec.RemoteState {
	case gemini.StateExpired:
		return jobError(rec), ResubmitExpired, b.Policy.ResubmitExpired
	case gemini.StateCancelled:
		if rec.StuckCancelled {
			return jobError(rec), ResubmitStuck, true
		}
		return jobError(rec), ResubmitCancelled, b.Policy.ResubmitCancelled
	case gemini.StateSucceeded:
		return gemini.NewStatus(gemini.CodeInternal, "batch %s returned no result for this key", rec.RemoteName), ResubmitMissing, true
	}
	return jobError(rec), "", false
}
