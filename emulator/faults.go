package emulator

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/gembatch/gembatch/gemini"
)

// Faults are the failures the emulator injects, each one a kind of trouble met with the real
// service. The zero value injects none.
//
// The job faults (ItemErrorRate, StuckPending, ExpireAfter, FailJobs, OutOfOrder) are taken
// when a job is created and stay with it; the request faults apply to each request as it comes.
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
	hit, delay := s.chance(s.faults.CreateThrottleRate), s.faults.ThrottleDelay
	s.mu.Unlock()
	if !hit {
		return false
	}
	retry := []byte(`{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"` + protoDuration(delay) + `"}`)
	writeStatus(w, http.StatusTooManyRequests, &gemini.Status{
		Code:    http.StatusTooManyRequests,
		Message: "Resource has been exhausted (e.g. check quota).",
		Status:  gemini.CodeName(gemini.CodeResourceExhausted),
		Details: []json.RawMessage{retry},
	})
	return true
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
