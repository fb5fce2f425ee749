// Package record holds the batch record: a closed batch and everything needed to carry it from
// sealed to answered, whatever state a crash leaves it in. Records live behind a Store.
package record

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/gembatch/gembatch/gemini"
)

// State is a record's place in its lifecycle.
//
//	sealed → submitting → submitted → finished → replied → cleaned
//	  any of the first three → failed (the batch could not be created; every request is answered with an error)
type State string

// Lifecycle states.
const (
	// Sealed: closed by the accumulator and recorded; nothing sent to the API yet.
	Sealed State = "sealed"
	// Submitting: the create call may be in flight; the remote job may or may not exist.
	Submitting State = "submitting"
	// Submitted: the remote job exists (RemoteName set) and is being polled.
	Submitted State = "submitted"
	// Finished: the remote job reached a terminal state; replies are being published.
	Finished State = "finished"
	// Failed: the batch could not be created; replies with the error are being published.
	Failed State = "failed"
	// Replied: every request has its reply; remote files are being deleted.
	Replied State = "replied"
	// Cleaned: nothing remains to do.
	Cleaned State = "cleaned"
)

// States lists every state in lifecycle order, for metrics.
var States = []State{Sealed, Submitting, Submitted, Finished, Failed, Replied, Cleaned}

// Mode is how a batch's requests were sent.
type Mode string

// Submission modes.
const (
	ModeInline Mode = "inline"
	ModeFile   Mode = "file"
)

// Request is one producer request inside a batch.
type Request struct {
	// ID is unique per accepted request and stable across redeliveries; replies carry it as Nats-Msg-Id.
	ID string `json:"id"`
	// Key is the producer's key, unique within the batch.
	Key string `json:"key"`
	// Reply is the subject the answer goes to.
	Reply string `json:"reply"`
	// Body is the request JSON exactly as the producer sent it. It may be dropped once submitted.
	Body json.RawMessage `json:"body,omitempty"`
	// Received is when the daemon accepted the request.
	Received time.Time `json:"received"`
	// Deadline, if set, is when the producer stops caring about the answer.
	Deadline time.Time `json:"deadline,omitzero"`
	// Size is the request's encoded JSONL line size in bytes.
	Size int64 `json:"size"`
	// Seq is the request's stream sequence in durable mode, 0 in core mode.
	Seq uint64 `json:"seq,omitempty"`
	// Attempt is which batch this is for the request: 1 (stored as 0) for its first, one more
	// for each resubmission after a retryable failure.
	Attempt int `json:"attempt,omitempty"`
	// BodyObject names the object in the bodies bucket that holds the body of a request too
	// large for a NATS message (Body is then empty); it is deleted once the batch is recorded.
	BodyObject string `json:"-"`
	// Images: the body asks for images (AsksForImages), as intake read it; the batch it joins
	// is sent by file, though its bodies may be written away or left in their objects.
	Images bool `json:"-"`
	// Msg is the request's stream message while it waits to be recorded (durable mode).
	Msg Held `json:"-"`
}

// Held is a request's stream message: kept from redelivery while its batch is open, handed
// back when the batch cannot be recorded, acknowledged (and the acknowledgement confirmed) once
// it is. It holds no more than the message's acknowledgement subject: an open batch holds no
// bodies. A confirmed acknowledgement asked again is confirmed at once.
type Held interface {
	InProgress() error
	Nak() error
	DoubleAck(ctx context.Context) error
}

// Attempts is the request's attempt number, counting its first batch as 1.
func (q *Request) Attempts() int { return max(1, q.Attempt) }

// Group is what requests are batched by.
type Group struct {
	Kind     gemini.Kind `json:"kind"`
	Model    string      `json:"model"`
	Priority int64       `json:"priority"`
}

// Record is a closed batch.
type Record struct {
	ID          string    `json:"id"`
	Group       Group     `json:"group"`
	State       State     `json:"state"`
	CloseReason string    `json:"closeReason"`
	Sealed      time.Time `json:"sealed"`
	Requests    []Request `json:"requests,omitempty"`
	// Count is len(Requests), kept so that listings without the requests can count them.
	Count int `json:"count"`
	// Bytes is the encoded JSONL size of all requests.
	Bytes int64 `json:"bytes"`
	// Chunks is how many objects hold the batch's JSONL input, in order (durable mode): its
	// requests' bodies were written there as they arrived, and Requests carry none.
	Chunks int `json:"chunks,omitempty"`
	// InStream: the bodies the request stream holds are read back from it, by Seq, for the
	// batch's input; Chunks then hold only the bodies that came through the bodies bucket.
	InStream bool `json:"inStream,omitempty"`
	// Images: a request of the batch asks for images (Request.Images), so the batch goes by
	// file whatever its size; durable records carry no bodies to tell it from.
	Images bool `json:"images,omitempty"`

	Mode      Mode   `json:"mode,omitempty"`
	InputFile string `json:"inputFile,omitempty"`
	// CreateAttempted is when a create call was last sent; a record found in Submitting is
	// resolved against the remote list before any new create.
	CreateAttempted time.Time      `json:"createAttempted,omitzero"`
	RemoteName      string         `json:"remoteName,omitempty"`
	RemoteState     gemini.State   `json:"remoteState,omitempty"`
	Submitted       time.Time      `json:"submitted,omitzero"`
	Finished        time.Time      `json:"finished,omitzero"`
	ResultsFile     string         `json:"resultsFile,omitempty"`
	Error           *gemini.Status `json:"error,omitempty"`
	// Replied counts the requests already answered, so a restart resumes near where it stopped.
	Replied int `json:"replied,omitempty"`
	// RetryOf names the record whose failed requests this one resubmits.
	RetryOf string `json:"retryOf,omitempty"`
	// StuckCancelled is set before gembatch cancels a job that ran past STUCK_AFTER, so that its
	// unfinished requests are resubmitted rather than answered as cancelled.
	StuckCancelled bool `json:"stuckCancelled,omitempty"`

	// Owner and Epoch name the gembatchd instance, and the run of it, working on the record
	// (durable mode). Every write is a compare-and-set on Revision, so a replica that lost the
	// record cannot write it again.
	Owner string `json:"owner,omitempty"`
	Epoch uint64 `json:"epoch,omitempty"`
	// Acked: the acknowledgements of the requests' stream messages are confirmed, so that no
	// message of this record can be delivered again (durable mode).
	Acked bool `json:"acked,omitempty"`
	// Usage is what the batch's responses used and cost, written with the Replied state so that
	// it is counted once whatever a crash interrupts.
	Usage *Usage `json:"usage,omitempty"`

	// IntentSeen is when this process first saw the record's create intent, on its own clock:
	// the create grace runs from it, never from a time another machine wrote.
	IntentSeen time.Time `json:"-"`

	// Revision is the store's version of this record, for compare-and-set updates.
	Revision uint64 `json:"-"`
}

// Usage sums a batch's token counts and estimated cost.
type Usage struct {
	gemini.UsageMetadata
	// EstimatedPrompt counts prompt tokens estimated for responses without usage (embeddings).
	EstimatedPrompt int64   `json:"estimatedPrompt,omitempty"`
	CostUSD         float64 `json:"costUsd,omitempty"`
}

// DisplayName is the remote batch's displayName: it carries the record's id so that a job whose
// create answer was lost can be found again by listing.
func (r *Record) DisplayName() string { return "gembatch-" + r.ID }

// EstimatedTokens is a rough count of the batch's input tokens, four bytes a token, for the
// enqueued-token quota. The service counts its own way; this errs on the high side.
func (r *Record) EstimatedTokens() int64 { return (r.Bytes + 3) / 4 }

// RetryID is the id of the record that resubmits this one's retryable requests: derived, so
// that answering the batch again after a crash finds the retry record already made.
func (r *Record) RetryID() string { return r.ID + "-r" }

// Store errors.
var (
	ErrNotFound = errors.New("record: not found")
	ErrConflict = errors.New("record: revision conflict")
	ErrExists   = errors.New("record: already exists")
)

// InputLost is the error of a batch input that can never be read back (a body's message is no
// longer in the stream): nothing can be sent, and its requests are answered DATA_LOSS.
type InputLost struct{ Reason string }

func (e *InputLost) Error() string { return "batch input lost: " + e.Reason }

// Store keeps records. Update is a compare-and-set on Revision: it fails with ErrConflict when
// the stored record has moved on, so that a writer that lost ownership cannot overwrite it.
// Implementations set Revision on the record they are given.
type Store interface {
	Create(ctx context.Context, r *Record) error
	Update(ctx context.Context, r *Record) error
	// Get returns a record with its requests; a durable store leaves out their bodies.
	Get(ctx context.Context, id string) (*Record, error)
	// Bodies returns the request bodies of a record by request key.
	Bodies(ctx context.Context, id string) (map[string]json.RawMessage, error)
	// List returns every record not cleaned; a durable store may leave out their requests.
	List(ctx context.Context) ([]*Record, error)
	Delete(ctx context.Context, id string) error
}
