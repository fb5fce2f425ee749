// Package gemini is a thin, streaming, typed client for the Gemini Batch API and File API.
//
// It speaks the REST wire exactly as the service carries it (BATCH_STATE_* states, int64
// counts as strings, google.rpc.Status errors) and never holds a whole input or result file
// in memory: uploads read from an io.Reader in 8 MiB chunks and downloads are streams.
// The API key travels only in the x-goog-api-key header.
package gemini

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Kind is the kind of request a batch carries.
type Kind string

// The two batch kinds.
const (
	KindGenerate Kind = "generate"
	KindEmbed    Kind = "embed"
)

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k == KindGenerate || k == KindEmbed }

// State is a batch job's state as the REST wire spells it.
type State string

// Batch states. The SDKs rename these JOB_STATE_*; the wire says BATCH_STATE_*.
const (
	StateUnspecified State = "BATCH_STATE_UNSPECIFIED"
	StatePending     State = "BATCH_STATE_PENDING"
	StateRunning     State = "BATCH_STATE_RUNNING"
	StateSucceeded   State = "BATCH_STATE_SUCCEEDED"
	StateFailed      State = "BATCH_STATE_FAILED"
	StateCancelled   State = "BATCH_STATE_CANCELLED"
	StateExpired     State = "BATCH_STATE_EXPIRED"
)

// Terminal reports whether the job has ended and will not change state again.
func (s State) Terminal() bool {
	switch s {
	case StateSucceeded, StateFailed, StateCancelled, StateExpired:
		return true
	}
	return false
}

// Short is the state without its prefix, lower-cased ("pending", "succeeded"), for labels and logs.
func (s State) Short() string {
	return strings.ToLower(strings.TrimPrefix(string(s), "BATCH_STATE_"))
}

// Int64 is an int64 that the wire carries as a JSON string ("12"). It also accepts a bare number.
type Int64 int64

// MarshalJSON writes the value as a JSON string.
func (v Int64) MarshalJSON() ([]byte, error) {
	return []byte(`"` + strconv.FormatInt(int64(v), 10) + `"`), nil
}

// UnmarshalJSON reads a JSON string or number.
func (v *Int64) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*v = 0
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("gemini: int64 value %q: %w", s, err)
	}
	*v = Int64(n)
	return nil
}

// Status is a google.rpc.Status: the error shape of every failed call and every failed item.
// Code is the gRPC code for items and job errors, and the HTTP status inside an HTTP error body.
type Status struct {
	Code    int               `json:"code"`
	Message string            `json:"message,omitempty"`
	Status  string            `json:"status,omitempty"`
	Details []json.RawMessage `json:"details,omitempty"`
}

// Error makes a Status usable as an error.
func (s *Status) Error() string {
	if s.Status != "" {
		return fmt.Sprintf("%s (%d): %s", s.Status, s.Code, s.Message)
	}
	return fmt.Sprintf("code %d: %s", s.Code, s.Message)
}

// RetryDelay returns the delay of a google.rpc.RetryInfo detail, if the status carries one.
func (s *Status) RetryDelay() (time.Duration, bool) {
	for _, d := range s.Details {
		var ri struct {
			Type       string `json:"@type"`
			RetryDelay string `json:"retryDelay"`
		}
		if json.Unmarshal(d, &ri) != nil || !strings.HasSuffix(ri.Type, "google.rpc.RetryInfo") {
			continue
		}
		if dur, err := time.ParseDuration(ri.RetryDelay); err == nil {
			return dur, true
		}
	}
	return 0, false
}

// gRPC codes used on the wire (google.rpc.Code).
const (
	CodeOK                 = 0
	CodeCancelled          = 1
	CodeUnknown            = 2
	CodeInvalidArgument    = 3
	CodeDeadlineExceeded   = 4
	CodeNotFound           = 5
	CodeAlreadyExists      = 6
	CodePermissionDenied   = 7
	CodeResourceExhausted  = 8
	CodeFailedPrecondition = 9
	CodeAborted            = 10
	CodeOutOfRange         = 11
	CodeUnimplemented      = 12
	CodeInternal           = 13
	CodeUnavailable        = 14
	CodeDataLoss           = 15
	CodeUnauthenticated    = 16
)

var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
}

// CodeName returns the canonical name of a gRPC code ("INVALID_ARGUMENT").
func CodeName(code int) string {
	if code >= 0 && code < len(codeNames) {
		return codeNames[code]
	}
	return "UNKNOWN"
}

// NewStatus builds a Status for a gRPC code with its canonical name.
func NewStatus(code int, format string, args ...any) *Status {
	return &Status{Code: code, Message: fmt.Sprintf(format, args...), Status: CodeName(code)}
}

// RequestMetadata carries a request's key inside an inline batch.
type RequestMetadata struct {
	Key string `json:"key"`
}

// InlinedRequest is one request of an inline batch. Request is passed through byte-exact.
type InlinedRequest struct {
	Request  json.RawMessage  `json:"request"`
	Metadata *RequestMetadata `json:"metadata,omitempty"`
}

// InlinedRequests is the inline input of a batch.
type InlinedRequests struct {
	Requests []InlinedRequest `json:"requests"`
}

// InputConfig names where a batch's requests are: inline, or an uploaded file.
type InputConfig struct {
	FileName string           `json:"fileName,omitempty"`
	Requests *InlinedRequests `json:"requests,omitempty"`
}

// Batch is the batch resource sent on create and update. Output-only fields are left out.
type Batch struct {
	Model       string      `json:"model,omitempty"`
	DisplayName string      `json:"displayName,omitempty"`
	Priority    Int64       `json:"priority,omitempty"`
	InputConfig InputConfig `json:"inputConfig"`
}

// BatchStats counts a job's requests. Zero counts are absent on the wire.
type BatchStats struct {
	RequestCount           Int64 `json:"requestCount,omitempty"`
	SuccessfulRequestCount Int64 `json:"successfulRequestCount,omitempty"`
	FailedRequestCount     Int64 `json:"failedRequestCount,omitempty"`
	PendingRequestCount    Int64 `json:"pendingRequestCount,omitempty"`
}

// ResponseMetadata carries an inline response's key.
type ResponseMetadata struct {
	Key string `json:"key"`
}

// InlinedResponse is one keyed answer of an inline batch: a response or an error.
type InlinedResponse struct {
	Response json.RawMessage   `json:"response,omitempty"`
	Error    *Status           `json:"error,omitempty"`
	Metadata *ResponseMetadata `json:"metadata,omitempty"`
}

// InlinedResponses wraps the inline answers as the wire nests them.
type InlinedResponses struct {
	InlinedResponses []InlinedResponse `json:"inlinedResponses,omitempty"`
}

// Output is where a finished job's answers are: inline, or in a result file.
type Output struct {
	ResponsesFile    string            `json:"responsesFile,omitempty"`
	InlinedResponses *InlinedResponses `json:"inlinedResponses,omitempty"`
}

// BatchMetadata is an Operation's metadata: the batch resource with its state.
type BatchMetadata struct {
	Type        string      `json:"@type,omitempty"`
	Name        string      `json:"name,omitempty"`
	Model       string      `json:"model,omitempty"`
	DisplayName string      `json:"displayName,omitempty"`
	CreateTime  time.Time   `json:"createTime,omitzero"`
	UpdateTime  time.Time   `json:"updateTime,omitzero"`
	EndTime     time.Time   `json:"endTime,omitzero"`
	BatchStats  *BatchStats `json:"batchStats,omitempty"`
	State       State       `json:"state,omitempty"`
	Priority    Int64       `json:"priority,omitempty"`
	Output      *Output     `json:"output,omitempty"`
}

// OperationResponse mirrors a finished job's output, typed by @type.
type OperationResponse struct {
	Type string `json:"@type,omitempty"`
	Output
}

// Operation is what create, get and list return for a batch job.
type Operation struct {
	Name     string             `json:"name"`
	Metadata *BatchMetadata     `json:"metadata,omitempty"`
	Done     bool               `json:"done,omitempty"`
	Error    *Status            `json:"error,omitempty"`
	Response *OperationResponse `json:"response,omitempty"`
}

// State returns the job's state, or StateUnspecified when the operation has no metadata.
func (o *Operation) State() State {
	if o.Metadata == nil || o.Metadata.State == "" {
		return StateUnspecified
	}
	return o.Metadata.State
}

// Output returns the job's output from metadata.output, falling back to the response mirror.
func (o *Operation) Output() *Output {
	if o.Metadata != nil && o.Metadata.Output != nil {
		return o.Metadata.Output
	}
	if o.Response != nil {
		return &o.Response.Output
	}
	return nil
}

// ListBatchesResponse is one page of batches.list.
type ListBatchesResponse struct {
	Operations    []Operation `json:"operations,omitempty"`
	NextPageToken string      `json:"nextPageToken,omitempty"`
}

// File is a File API resource.
type File struct {
	Name           string    `json:"name,omitempty"`
	DisplayName    string    `json:"displayName,omitempty"`
	MimeType       string    `json:"mimeType,omitempty"`
	SizeBytes      Int64     `json:"sizeBytes,omitempty"`
	CreateTime     time.Time `json:"createTime,omitzero"`
	UpdateTime     time.Time `json:"updateTime,omitzero"`
	ExpirationTime time.Time `json:"expirationTime,omitzero"`
	Sha256Hash     string    `json:"sha256Hash,omitempty"`
	URI            string    `json:"uri,omitempty"`
	State          string    `json:"state,omitempty"`
	Source         string    `json:"source,omitempty"`
	Error          *Status   `json:"error,omitempty"`
}

// ListFilesResponse is one page of files.list.
type ListFilesResponse struct {
	Files         []File `json:"files,omitempty"`
	NextPageToken string `json:"nextPageToken,omitempty"`
}

// InputLine is one line of a batch input JSONL file.
type InputLine struct {
	Key     string          `json:"key"`
	Request json.RawMessage `json:"request"`
}

// Result is one keyed answer, from an inline response or a result-file line.
// Exactly one of Response and Error is set.
type Result struct {
	Key      string
	Response json.RawMessage
	Error    *Status
	// Usage is the response's usageMetadata, read with it; nil when it has none (embeddings).
	Usage *UsageMetadata
}

// UsageMetadata is the token accounting of a GenerateContentResponse.
type UsageMetadata struct {
	PromptTokenCount        int64 `json:"promptTokenCount,omitempty"`
	CandidatesTokenCount    int64 `json:"candidatesTokenCount,omitempty"`
	CachedContentTokenCount int64 `json:"cachedContentTokenCount,omitempty"`
	ThoughtsTokenCount      int64 `json:"thoughtsTokenCount,omitempty"`
	TotalTokenCount         int64 `json:"totalTokenCount,omitempty"`
}

// ModelName returns the model with the "models/" prefix the paths need.
func ModelName(model string) string {
	if strings.HasPrefix(model, "models/") {
		return model
	}
	return "models/" + model
}
