package accumulator

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

// ErrClosed is returned by Add once Close has begun.
var ErrClosed = errors.New("accumulator: closed")

// SealFunc receives each sealed record, on the goroutine of the batch it came from. It owns the
// record from then on. A slow SealFunc holds up only its own group.
type SealFunc func(*record.Record)

// RejectFunc receives a request the accumulator refused, with the reason.
type RejectFunc func(record.Group, record.Request, *gemini.Status)

// Config sets up an Accumulator.
type Config struct {
	Limits Limits
	// IdleAfter is how long a group with no requests keeps its goroutine; default 5m.
	IdleAfter time.Duration
	// Buffer is the size of each group's queue; default 1024.
	Buffer int
	// Heartbeat is how often the stream is told that the messages of an open batch are still
	// being worked on (durable mode), so that none is delivered elsewhere meanwhile; 0: never.
	Heartbeat time.Duration
	// Now and NewID are for tests; default time.Now and a NUID.
	Now   func() time.Time
	NewID func() string
}

// Accumulator owns the open batches. Each group (kind, model, priority) has one goroutine that
// alone holds its batch and its timer, so nothing mutable is shared.
type Accumulator struct {
	cfg    Config
	seal   SealFunc
	reject RejectFunc
	m      *Metrics

	mu      sync.Mutex
	drained *sync.Cond // signalled when a sender leaves, so Close can wait for them
	groups  map[record.Group]*group
	closed  bool
	wg      sync.WaitGroup

	pendingRequests atomic.Int64
	pendingBytes    atomic.Int64
}

type group struct {
	key     record.Group
	in      chan record.Request
	senders int // Adds between lookup and send; guarded by Accumulator.mu
}

// New returns a running Accumulator.
func New(cfg Config, seal SealFunc, reject RejectFunc, m *Metrics) *Accumulator {
	if cfg.IdleAfter <= 0 {
		cfg.IdleAfter = 5 * time.Minute
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = 1024
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NewID == nil {
		cfg.NewID = nuid.Next
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	a := &Accumulator{cfg: cfg, seal: seal, reject: reject, m: m, groups: make(map[record.Group]*group)}
	a.drained = sync.NewCond(&a.mu)
	return a
}

// Add puts a request into its group's open batch. It blocks only while that group's queue is full.
func (a *Accumulator) Add(g record.Group, req record.Request) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	gr := a.groups[g]
	if gr == nil {
		gr = &group{key: g, in: make(chan record.Request, a.cfg.Buffer)}
		a.groups[g] = gr
		a.wg.Add(1)
		a.m.openGroups.Inc()
		go a.run(gr)
	}
	gr.senders++
	a.mu.Unlock()

	a.pendingRequests.Add(1)
	a.pendingBytes.Add(req.Size)
	a.m.pendingRequests.Inc()
	a.m.pendingBytes.Add(float64(req.Size))
	gr.in <- req

	a.mu.Lock()
	gr.senders--
	a.drained.Broadcast()
	a.mu.Unlock()
	return nil
}

// Pending returns the requests and bytes accepted but not yet sealed.
func (a *Accumulator) Pending() (requests, bytes int64) {
	return a.pendingRequests.Load(), a.pendingBytes.Load()
}

// Close stops taking requests, seals every open batch with reason shutdown, and returns when
// each SealFunc call has returned.
func (a *Accumulator) Close() {
	a.mu.Lock()
	a.closed = true
	for a.busy() {
		a.drained.Wait()
	}
	for _, gr := range a.groups {
		close(gr.in)
	}
	a.mu.Unlock()
	a.wg.Wait()
}

func (a *Accumulator) busy() bool {
	for _, gr := range a.groups {
		if gr.senders > 0 {
			return true
		}
	}
	return false
}

// run is the goroutine of one group: it owns the open batch and its timer.
func (a *Accumulator) run(gr *group) {
	defer a.wg.Done()
	defer a.m.openGroups.Dec()
	p := NewPolicy(a.cfg.Limits)
	var reqs held

	flush := func(why Reason) {
		count, bytes := p.Count(), p.Bytes()
		rec := &record.Record{
			ID:          a.cfg.NewID(),
			Group:       gr.key,
			State:       record.Sealed,
			CloseReason: string(why),
			Sealed:      a.cfg.Now(),
			Requests:    reqs.requests(),
			Count:       count,
			Bytes:       bytes,
		}
		a.m.closed.WithLabelValues(string(why)).Inc()
		a.m.batchRequests.Observe(float64(count))
		a.m.batchBytes.Observe(float64(bytes))
		reqs = held{}
		p.Reset()
		a.seal(rec)
		// Only now: the sealer has handed the requests on, so the daemon's count of what it
		// holds never dips between the two.
		a.pendingRequests.Add(-int64(count))
		a.pendingBytes.Add(-bytes)
		a.m.pendingRequests.Sub(float64(count))
		a.m.pendingBytes.Sub(float64(bytes))
	}

	timer := time.NewTimer(a.cfg.IdleAfter)
	defer timer.Stop()
	var beat <-chan time.Time
	if a.cfg.Heartbeat > 0 {
		t := time.NewTicker(a.cfg.Heartbeat)
		defer t.Stop()
		beat = t.C
	}
	for {
		select {
		case <-beat:
			reqs.inProgress()
			continue
		case req, ok := <-gr.in:
			if !ok {
				if p.Count() > 0 {
					flush(ReasonShutdown)
				}
				return
			}
			if i, dup := reqs.find(req.Key); dup {
				a.pendingRequests.Add(-1)
				a.pendingBytes.Add(-req.Size)
				a.m.pendingRequests.Dec()
				a.m.pendingBytes.Sub(float64(req.Size))
				if reqs.at(i).id != req.ID {
					a.reject(gr.key, req, gemini.NewStatus(gemini.CodeAlreadyExists,
						"duplicate key %q: another request with this key is waiting in the same batch", req.Key))
				} // else a redelivery of the request already waiting here: it is acked with its batch
				continue
			}
			if !p.Fits(req.Size) {
				flush(ReasonBytes)
			}
			reqs.add(req)
			if full, why := p.Add(req.Size, a.cfg.Now()); full {
				flush(why)
			}
		case <-timer.C:
			if until, open := p.Until(a.cfg.Now()); open && until <= 0 {
				flush(ReasonWait)
			} else if !open && a.retire(gr) {
				return
			}
		}
		if until, open := p.Until(a.cfg.Now()); open {
			timer.Reset(until)
		} else {
			timer.Reset(a.cfg.IdleAfter)
		}
	}
}

// retire removes an idle group so that arbitrary priorities or models cannot pin goroutines.
func (a *Accumulator) retire(gr *group) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || gr.senders > 0 || len(gr.in) > 0 {
		return false
	}
	delete(a.groups, gr.key)
	return true
}
