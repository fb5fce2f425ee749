package emulator

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/gembatch/gembatch/gemini"
)

// Faults are the failures the emulator injects, each one a kind of trouble met with the real
// service. The zero value injects none.
//
// The job faults (ItemErrorRate, StuckPending, ExpireAfter, FailJobs, OutOfOrder,
// PartialResults) are taken when a job is created and stay with it; the request faults and the
// quotas apply to each request as it comes.
type Faults struct {
	// CreateThrottleRate is the share of creates answered 429 RESOURCE_EXHAUSTED with a
	// google.rpc.RetryInfo of ThrottleDelay. Nothing is created.
	CreateThrottleRate float64
	// ThrottleDelay is the RetryInfo retryDelay of a throttled create (default 1s).
	ThrottleDelay time.Duration
	// GetErrorRate is the share of batches.get answered 500 INTERNAL or 503 UNAVAILABLE.
	GetErrorRate float64
	// UploadChunkFailures makes the next N upload chunks store half of their bytes and answer
	// 503, so the client must ask how much arrived (X-Goog-Upload-Command: query) and resume.
	UploadChunkFailures int
	// ItemErrorRate is the share of items answered with per-item error 13 INTERNAL.
	ItemErrorRate float64
	// StuckPending keeps jobs PENDING until they expire.
	StuckPending bool
	// ExpireAfter ends a job that is still not done this long after its create as EXPIRED,
	// with no results. Zero means the service's own 48 hours.
	ExpireAfter time.Duration
	// FailJobs ends jobs FAILED with error 13 INTERNAL instead of SUCCEEDED.
	FailJobs bool
	// OutOfOrder answers inline results in reverse order, as the service has been seen to.
	OutOfOrder bool
	// ListLag leaves batches created less than this long ago out of batches.list.
	ListLag time.Duration
	// PartialResults is the share (0..1) of a job's requests, the first in input order, that are
	// answered when it ends EXPIRED or is cancelled: the job carries them as output, as a
	// succeeded one would, besides its error. Zero gives such jobs no output, as the service does.
	PartialResults float64
	// MaxActiveJobs caps the jobs that may be PENDING or RUNNING at once; a create past it is
	// answered as a throttled one (429 with RetryInfo). Zero means no cap.
	MaxActiveJobs int
	// EnqueuedTokenLimit caps, per model, the estimated tokens of its active jobs (a quarter of
	// the bytes of their requests' JSON); a create past it is answered 429. Zero means no cap.
	EnqueuedTokenLimit int64
	// LoseCreateAnswers makes the next N creates make their job but answer 503, as if the
	// answer were lost on the way: a client that retries blindly creates the job twice.
	LoseCreateAnswers int
	// Seed seeds the draws of the rates, so a run with faults can be repeated.
	Seed int64
}

const (
	defaultThrottleDelay = time.Second
	serviceExpiry        = 48 * time.Hour // the service expires jobs not done after this
)

// SetFaults replaces the faults; the counters (UploadChunkFailures, LoseCreateAnswers) start
// again from the new values and the draws restart from the seed. Jobs already created keep the
// job faults they were created with.
func (s *Server) SetFaults(f Faults) {
	if f.ThrottleDelay <= 0 {
		f.ThrottleDelay = defaultThrottleDelay
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
	s.rng = rand.New(rand.NewPCG(uint64(f.Seed), 0))
}

// chance draws against rate; the caller holds s.mu.
func (s *Server) chance(rate float64) bool {
	return rate > 0 && s.rng.Float64() < rate
}

// throttle answers 429 with RetryInfo if this create is to be throttled.
func (s *Server) throttle(w http.ResponseWriter) bool {
	s.mu.Lock()
	hit := s.chance(s.faults.CreateThrottleRate)
	s.mu.Unlock()
	if hit {
		s.refuse(w, "Resource has been exhausted (e.g. check quota).")
	}
	return hit
}

// refuse answers a create 429 RESOURCE_EXHAUSTED with a RetryInfo of ThrottleDelay, and counts it.
func (s *Server) refuse(w http.ResponseWriter, message string) {
	s.mu.Lock()
	s.throttled++
	delay := s.faults.ThrottleDelay
	s.mu.Unlock()
	retry := []byte(`{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"` + protoDuration(delay) + `"}`)
	writeStatus(w, http.StatusTooManyRequests, &gemini.Status{
		Code:    http.StatusTooManyRequests,
		Message: message,
		Status:  gemini.CodeName(gemini.CodeResourceExhausted),
		Details: []json.RawMessage{retry},
	})
}

// overQuota names the quota that a new job would break, or is empty; the caller holds s.mu.
func (s *Server) overQuota(b *batch, now time.Time) string {
	jobs, tokens := s.load(now, b.model)
	switch f := s.faults; {
	case f.MaxActiveJobs > 0 && jobs >= f.MaxActiveJobs:
		return fmt.Sprintf("Quota exceeded for concurrent batch jobs: %d of %d active.", jobs, f.MaxActiveJobs)
	case f.EnqueuedTokenLimit > 0 && tokens+b.tokens > f.EnqueuedTokenLimit:
		return fmt.Sprintf("Quota exceeded for batch enqueued tokens of %s: %d enqueued and %d asked, limit %d.",
			b.model, tokens, b.tokens, f.EnqueuedTokenLimit)
	}
	return ""
}

// load is how many jobs are active (PENDING or RUNNING) at now and the estimated tokens of
// those of model; the caller holds s.mu.
func (s *Server) load(now time.Time, model string) (jobs int, tokens int64) {
	for _, b := range s.batches {
		if st, _ := b.scheduled(now); !st.Terminal() {
			jobs++
			if b.model == model {
				tokens += b.tokens
			}
		}
	}
	return jobs, tokens
}

// failGet answers 500 or 503 if this batches.get is to fail.
func (s *Server) failGet(w http.ResponseWriter) bool {
	s.mu.Lock()
	hit := s.chance(s.faults.GetErrorRate)
	unavailable := hit && s.rng.IntN(2) == 0
	s.mu.Unlock()
	switch {
	case !hit:
		return false
	case unavailable:
		writeError(w, http.StatusServiceUnavailable, gemini.CodeUnavailable, "The service is currently unavailable.")
	default:
		writeError(w, http.StatusInternalServerError, gemini.CodeInternal, "Internal error encountered.")
	}
	return true
}

// take uses up one of a counted fault, reporting whether one was left.
func (s *Server) take(n *int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if *n <= 0 {
		return false
	}
	*n--
	return true
}
