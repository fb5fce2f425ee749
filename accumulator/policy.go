// Package accumulator collects accepted requests into open batches, one per (kind, model,
// priority), and seals each batch into a record when it is full, due, or the daemon stops.
package accumulator

import "time"

// Reason says why a batch was closed.
type Reason string

// Close reasons, as counted in metrics.
const (
	ReasonCount    Reason = "count"
	ReasonBytes    Reason = "bytes"
	ReasonWait     Reason = "wait"
	ReasonShutdown Reason = "shutdown"
)

// Limits bound an open batch.
type Limits struct {
	MaxRequests int
	MaxBytes    int64
	MaxWait     time.Duration
}

// Policy is the state of one open batch against its limits: a plain value with no goroutine
// and no clock of its own, so that it can be tested exactly.
type Policy struct {
	limits Limits
	count  int
	bytes  int64
	first  time.Time
}

// NewPolicy returns an empty batch policy.
func NewPolicy(l Limits) Policy { return Policy{limits: l} }

// Fits reports whether a request of size bytes can join the batch without passing MaxBytes.
// An empty batch takes any request, so one request larger than the limit still goes out alone.
func (p *Policy) Fits(size int64) bool {
	return p.count == 0 || p.bytes+size <= p.limits.MaxBytes
}

// Add counts a request in and reports whether the batch is now full, and why. now is read only
// for the first request, whose time starts the batch's wait.
func (p *Policy) Add(size int64, now time.Time) (full bool, why Reason) {
	if p.count == 0 {
		p.first = now
	}
	p.count++
	p.bytes += size
	switch {
	case p.count >= p.limits.MaxRequests:
		return true, ReasonCount
	case p.bytes >= p.limits.MaxBytes:
		return true, ReasonBytes
	}
	return false, ""
}

// Until says how long from now the batch is due; false when it is empty.
func (p *Policy) Until(now time.Time) (time.Duration, bool) {
	deadline, open := p.Deadline()
	if !open {
		return 0, false
	}
	return max(0, deadline.Sub(now)), true
}

// Deadline is when the open batch closes by time, and whether a batch is open.
func (p *Policy) Deadline() (time.Time, bool) {
	if p.count == 0 {
		return time.Time{}, false
	}
	return p.first.Add(p.limits.MaxWait), true
}

// Reset empties the batch.
func (p *Policy) Reset() { p.count, p.bytes, p.first = 0, 0, time.Time{} }

// Count is the number of requests in the batch.
func (p *Policy) Count() int { return p.count }

// Bytes is the encoded size of the batch.
func (p *Policy) Bytes() int64 { return p.bytes }
