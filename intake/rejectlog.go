package intake

import (
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
)

// rejectLogInterval is how often refusals of one kind and reason are summarised.
const rejectLogInterval = 10 * time.Second

// rejectLog keeps refused requests from flooding the log (a resumed file of 300 keys still in
// their batch is 300 duplicates): per kind and reason, the first refusal of an interval is
// logged in full; the others are counted, and logged as one line when the interval ends.
type rejectLog struct {
	log    zerolog.Logger
	mu     sync.Mutex
	closed bool
	open   map[rejectKey]*rejectCount
}

type rejectKey struct {
	kind   gemini.Kind
	reason string
}

// rejectCount is an interval's refusals after the first.
type rejectCount struct {
	n       int
	lastKey string
	timer   *time.Timer
}

// first counts a refusal and reports whether it is the first of its interval, to log in full.
func (r *rejectLog) first(kind gemini.Kind, reason, key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return true
	}
	k := rejectKey{kind, reason}
	if c, ok := r.open[k]; ok {
		c.n++
		c.lastKey = key
		return false
	}
	if r.open == nil {
		r.open = map[rejectKey]*rejectCount{}
	}
	r.open[k] = &rejectCount{timer: time.AfterFunc(rejectLogInterval, func() { r.flush(k) })}
	return true
}

// flush ends k's interval and logs its count.
func (r *rejectLog) flush(k rejectKey) {
	r.mu.Lock()
	c := r.open[k]
	delete(r.open, k)
	r.mu.Unlock()
	if c != nil {
		r.summarise(k, c)
	}
}

func (r *rejectLog) summarise(k rejectKey, c *rejectCount) {
	if c.n == 0 {
		return
	}
	r.log.Warn().Str("kind", string(k.kind)).Str("reason", k.reason).Int("count", c.n).Str("last_key", c.lastKey).
		Float64("interval_seconds", rejectLogInterval.Seconds()).Msg("more requests refused for the same reason")
}

// close logs every open count; refusals after it are logged in full.
func (r *rejectLog) close() {
	r.mu.Lock()
	open := r.open
	r.open, r.closed = nil, true
	r.mu.Unlock()
	for k, c := range open {
		c.timer.Stop()
		r.summarise(k, c)
	}
}
