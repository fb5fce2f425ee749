package submitter

import (
	"errors"
	"maps"
	"slices"
	"time"

	"github.com/gembatch/gembatch/record"
)

// Quota bounds what gembatch asks of the service at once, so that batches wait sealed and safe
// instead of being sent into 429s.
type Quota struct {
	// MaxActiveJobs caps the remote jobs not yet ended (the service allows 100); 0 is no cap.
	MaxActiveJobs int
	// TokenBudget caps, per model ("models/..."), the estimated input tokens of its active jobs.
	// A model not named has no budget.
	TokenBudget map[string]int64
}

// Reasons a batch waits for admission, as the waiting gauge labels them.
const (
	waitJobs    = "jobs"
	waitTokens  = "tokens"
	waitBackoff = "backoff"
)

// reservation is what one admitted record holds of the quota until its job ends.
type reservation struct {
	model  string
	tokens int64
}

// admission is the quota's bookkeeping; its fields are guarded by Submitter.mu.
type admission struct {
	held   map[string]reservation // by record id: one a job
	tokens map[string]int64       // by model, the sum of held tokens
	// othersJobs and othersTokens are held by records other instances work on (durable mode).
	othersJobs   int
	othersTokens map[string]int64
	// backoff holds a model's creates until the time a 429 asked for; strikes counts the 429s
	// in a row, to grow the wait while they go on.
	backoff map[string]time.Time
	strikes map[string]int
}

// errThrottled: the create was answered 429 and the record goes back in line.
var errThrottled = errors.New("create throttled")

// active is the number of jobs held here and elsewhere.
func (a *admission) active() int { return len(a.held) + a.othersJobs }

// used is a model's estimated tokens held here and elsewhere.
func (a *admission) used(model string) int64 { return a.tokens[model] + a.othersTokens[model] }

func newAdmission() admission {
	return admission{held: map[string]reservation{}, tokens: map[string]int64{}, othersTokens: map[string]int64{}, backoff: map[string]time.Time{}, strikes: map[string]int{}}
}

// blocked says why rec cannot be created now, or "" if it fits. A record whose create may
// already have been sent is never held back: its job may exist and must be found.
func (s *Submitter) blocked(rec *record.Record, now time.Time) string {
	if rec.State == record.Submitting && !rec.CreateAttempted.IsZero() {
		return ""
	}
	a, q, model := &s.adm, s.cfg.Quota, rec.Group.Model
	switch {
	case now.Before(a.backoff[model]):
		return waitBackoff
	case q.MaxActiveJobs > 0 && a.active() >= q.MaxActiveJobs:
		return waitJobs
	}
	if budget, ok := q.TokenBudget[model]; ok {
		used := a.used(model)
		// A batch larger than the whole budget goes alone rather than never.
		if used > 0 && used+rec.EstimatedTokens() > budget {
			return waitTokens
		}
	}
	return ""
}

// reserve takes rec's share of the quota; the caller holds s.mu.
func (s *Submitter) reserve(rec *record.Record) {
	if _, ok := s.adm.held[rec.ID]; ok {
		return
	}
	r := reservation{model: rec.Group.Model, tokens: rec.EstimatedTokens()}
	s.adm.held[rec.ID] = r
	s.adm.tokens[r.model] += r.tokens
	s.showQuota(r.model)
}

// showQuota sets the quota gauges: active jobs, and the tokens of the models given; the caller
// holds s.mu.
func (s *Submitter) showQuota(models ...string) {
	s.m.active.Set(float64(s.adm.active()))
	for _, model := range models {
		s.m.enqueuedTokens.WithLabelValues(model).Set(float64(s.adm.used(model)))
	}
}

// Hold counts a record whose job already exists (resumed straight to polling) against the quota.
func (s *Submitter) Hold(rec *record.Record) {
	s.mu.Lock()
	s.reserve(rec)
	s.mu.Unlock()
}

// Release gives back what a record held of the quota: its job ended, its create failed, or
// another instance owns it now. Waiting batches are looked at again.
func (s *Submitter) Release(id string) {
	s.mu.Lock()
	r, ok := s.adm.held[id]
	if ok {
		delete(s.adm.held, id)
		s.adm.tokens[r.model] -= r.tokens
		s.showQuota(r.model)
	}
	s.mu.Unlock()
	if ok {
		s.wake()
	}
}

// SetOthers counts the jobs of the records other instances own, from a listing of every record:
// with several replicas, the quota is the service's, shared by all of them. self is this
// instance's name; its own records are counted as it reserves them.
func (s *Submitter) SetOthers(recs []*record.Record, self string) {
	jobs, tokens := 0, map[string]int64{}
	s.mu.Lock()
	for _, r := range recs {
		if _, held := s.adm.held[r.ID]; held || r.Owner == self || (r.State != record.Submitting && r.State != record.Submitted) {
			continue
		}
		jobs++
		tokens[r.Group.Model] += r.EstimatedTokens()
	}
	freed := jobs < s.adm.othersJobs
	models := slices.Collect(maps.Keys(tokens))
	for model, n := range s.adm.othersTokens {
		freed = freed || tokens[model] < n
		models = append(models, model)
	}
	s.adm.othersJobs, s.adm.othersTokens = jobs, tokens
	s.showQuota(models...)
	s.mu.Unlock()
	if freed {
		s.wake()
	}
}

// throttle holds every create of a model until the service's retry delay has passed.
func (s *Submitter) throttle(model string, d time.Duration) {
	s.mu.Lock()
	until := s.cfg.Now().Add(d)
	if until.After(s.adm.backoff[model]) {
		s.adm.backoff[model] = until
	}
	s.mu.Unlock()
}

// throttles counts a 429 for the model and returns how many came before it in a row.
func (s *Submitter) throttles(model string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.adm.strikes[model]
	s.adm.strikes[model] = n + 1
	return n
}

// resetThrottles ends a model's run of 429s: a create went through.
func (s *Submitter) resetThrottles(model string) {
	s.mu.Lock()
	delete(s.adm.strikes, model)
	s.mu.Unlock()
}
