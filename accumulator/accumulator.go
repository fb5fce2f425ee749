package accumulator

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

// ErrClosed is returned by Add once Close has begun.
var ErrClosed = errors.New("accumulator: closed")

// SealFunc receives each sealed record, on a goroutine of the record's group, one record at a
// time in the order they were sealed; the group's next batch fills meanwhile. It owns the record
// from then on. A slow SealFunc holds up only its own group, once a second batch waits for it.
type SealFunc func(*record.Record)

// RejectFunc receives a request the accumulator refused, with the reason.
type RejectFunc func(record.Group, record.Request, *gemini.Status)

// BodyStore opens, for each batch as it opens, where its request bodies go as they arrive
// (durable mode), so that an open batch holds only what it needs to know about each request.
type BodyStore interface {
	OpenBodies(batchID string) BodySink
}

// BodySink takes one open batch's request bodies, on its group's goroutine. An error with a
// RequestStatus() *gemini.Status method concerns that request alone: nothing of it was
// written, and it is refused with that status. Any other error loses the batch's bodies: its
// requests are handed back (Nak) to be delivered again.
type BodySink interface {
	// Append writes req's body to the batch's input, or leaves it where it is durable already
	// (its stream message) and says so with inPlace.
	Append(req record.Request) (inPlace bool, err error)
	// Seal writes what remains and says in rec where the batch's input is.
	Seal(rec *record.Record) error
}

// requestError is a BodySink error about one request.
type requestError interface {
	RequestStatus() *gemini.Status
}

// Config sets up an Accumulator.
type Config struct {
	Limits Limits
	// IdleAfter is how long a group with no requests keeps its goroutine; default 5m.
	IdleAfter time.Duration
	// Buffer is the size of each group's queue; default 1024.
	Buffer int
	// QueueBytes bounds the bodies in each group's queue, beyond one request; default 4 MiB.
	// While a group writes a batch's input (durable mode), what arrives meanwhile waits in its
	// queue with its whole message: 1,024 requests of 32 KiB held 32 MiB. A request whose body
	// is in an object weighs nothing here; Buffer bounds those.
	QueueBytes int64
	// Heartbeat is how often the stream is told that the messages of an open batch are still
	// being worked on (durable mode), so that none is delivered elsewhere meanwhile; 0: never.
	Heartbeat time.Duration
	// Bodies, when set, takes every request's body as it joins a batch (durable mode); nil
	// keeps the bodies in the batch (core mode).
	Bodies BodyStore
	// HoldBodies is how many bytes of bodies an open batch keeps (durable mode) when its sink
	// leaves them in place: a batch that small is sent from memory, where reading its bodies
	// back from the stream delivered each message a second time. A batch that grows past it
	// lets them all go. 0 keeps none.
	HoldBodies int64
	// Lost hears of a batch whose bodies could not be written, and whose requests were handed back.
	Lost func(batchID string, requests int, err error)
	// Now and NewID are for tests; default time.Now and a NUID.
	Now   func() time.Time
	NewID func() string
}

// Accumulator owns the open batches. Each group (kind, model, priority) has one goroutine that
// alone holds its open batch and its timer, so nothing mutable is shared, and one that hands
// its sealed batches to the SealFunc in order.
type Accumulator struct {
	cfg    Config
	seal   SealFunc
	reject RejectFunc
	m      *Metrics

	mu      sync.Mutex
	drained *sync.Cond // signalled when a sender leaves once Close has begun
	groups  map[record.Group]*group
	// closed is set by Close under mu; a sender reads it again without mu, after sending.
	closed atomic.Bool
	wg     sync.WaitGroup

	pendingRequests atomic.Int64
	pendingBytes    atomic.Int64
}

type group struct {
	key    record.Group
	in     chan record.Request
	queued byteGate // the bytes of the bodies in in
	// senders counts the Adds between looking the group up and sending to it. It is raised
	// under Accumulator.mu and lowered without it: a lock taken once a request, not twice.
	senders atomic.Int32
}

// New returns a running Accumulator.
func New(cfg Config, seal SealFunc, reject RejectFunc, m *Metrics) *Accumulator {
	if cfg.IdleAfter <= 0 {
		cfg.IdleAfter = 5 * time.Minute
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = 1024
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = 4 << 20
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

// Add puts a request into its group's open batch. It blocks only while that group's queue is
// full, in requests or in bytes.
func (a *Accumulator) Add(g record.Group, req record.Request) error {
	a.mu.Lock()
	if a.closed.Load() {
		a.mu.Unlock()
		return ErrClosed
	}
	gr := a.groups[g]
	if gr == nil {
		gr = &group{key: g, in: make(chan record.Request, a.cfg.Buffer)}
		gr.queued.init(a.cfg.QueueBytes)
		a.groups[g] = gr
		a.wg.Add(1)
		a.m.openGroups.Inc()
		go a.run(gr)
	}
	gr.senders.Add(1)
	a.mu.Unlock()

	a.pendingRequests.Add(1)
	a.pendingBytes.Add(req.Size)
	a.m.pendingRequests.Inc()
	a.m.pendingBytes.Add(float64(req.Size))
	gr.queued.enter(int64(len(req.Body)))
	gr.in <- req

	gr.senders.Add(-1)
	if a.closed.Load() { // Close waits for the last sender
		a.mu.Lock()
		a.drained.Broadcast()
		a.mu.Unlock()
	}
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
	a.closed.Store(true)
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
		if gr.senders.Load() > 0 {
			return true
		}
	}
	return false
}

// batch is a group's open batch: its id (the record's, assigned when it opens, so that its
// bodies can be written under it as they arrive), its requests and where their bodies go.
type batch struct {
	id     string
	reqs   held
	bodies BodySink
	// holding: the batch keeps the bodies its sink left in place, heldBytes of them, while
	// every body of the batch is kept and they fit in Config.HoldBodies.
	holding   bool
	heldBytes int64
	// images: a request asks for images (as intake found), kept for the record, which may
	// carry no bodies.
	images bool
}

// owner is what the goroutine of one group owns: the policy and the open batch.
type owner struct {
	a  *Accumulator
	gr *group
	p  Policy
	b  *batch // nil while no batch is open
	// sealed takes each sealed batch to the group's sealing goroutine: recording a batch (a
	// store write and an acknowledgement per request, in durable mode) does not stop the next
	// one from filling.
	sealed chan sealedBatch
}

// sealedBatch is a record on its way to the SealFunc, with what it holds of the pending counts.
type sealedBatch struct {
	rec   *record.Record
	count int
	bytes int64
}

// sealing hands each batch to the SealFunc in turn, then takes it off the pending counts: only
// once the SealFunc has handed the requests on, so that the daemon's count of what it holds
// never dips between the two.
func (a *Accumulator) sealing(in <-chan sealedBatch, done chan<- struct{}) {
	defer close(done)
	for s := range in {
		a.seal(s.rec)
		a.release(s.count, s.bytes)
	}
}

// run is the goroutine of one group: it owns the open batch and its timer.
func (a *Accumulator) run(gr *group) {
	defer a.wg.Done()
	defer a.m.openGroups.Dec()
	o := &owner{a: a, gr: gr, p: NewPolicy(a.cfg.Limits), sealed: make(chan sealedBatch, 1)}
	sealerDone := make(chan struct{})
	go a.sealing(o.sealed, sealerDone)
	defer func() { close(o.sealed); <-sealerDone }()
	timer := time.NewTimer(a.cfg.IdleAfter)
	defer timer.Stop()
	var armed time.Time // the open batch's deadline the timer is set for; zero: the idle wait
	var beat <-chan time.Time
	if a.cfg.Heartbeat > 0 {
		t := time.NewTicker(a.cfg.Heartbeat)
		defer t.Stop()
		beat = t.C
	}
	for {
		fired := false
		select {
		case <-beat:
			if o.b != nil {
				o.b.reqs.inProgress()
			}
			continue
		case req, ok := <-gr.in:
			if !ok || !o.takeQueued(req) {
				if o.p.Count() > 0 {
					o.flush(ReasonShutdown)
				}
				return
			}
		case <-timer.C:
			fired = true
			if until, open := o.p.Until(a.cfg.Now()); open && until <= 0 {
				o.flush(ReasonWait)
			} else if !open && a.retire(gr) {
				return
			}
		}
		// An open batch's deadline is set when it opens: the timer is set again then, not for
		// each request (time.Now and Timer.Reset were 13% of BenchmarkAdd's CPU).
		deadline, open := o.p.Deadline()
		switch {
		case open && (fired || !deadline.Equal(armed)):
			timer.Reset(max(0, deadline.Sub(a.cfg.Now())))
			armed = deadline
		case !open:
			timer.Reset(a.cfg.IdleAfter)
			armed = time.Time{}
		}
	}
}

// takeQueued takes req and the requests queued behind it, up to a run of queueRun, so that the
// select over every channel, and the timer check after it, are paid once a run rather than
// once a request. It is false once the queue is closed.
func (o *owner) takeQueued(req record.Request) bool {
	for n := 1; ; n++ {
		o.gr.queued.leave(int64(len(req.Body)))
		o.take(req)
		if n == queueRun {
			return true
		}
		select {
		case next, ok := <-o.gr.in:
			if !ok {
				return false
			}
			req = next
		default:
			return true
		}
	}
}

// queueRun is the most requests takeQueued takes at once: the open batch's timer and the
// heartbeat wait no longer than that.
const queueRun = 64

// take puts req into the open batch: refused if its key is already waiting there, after
// sealing the batch if req would not fit.
func (o *owner) take(req record.Request) {
	sum := keySum(req.Key)
	if o.b != nil {
		if i, dup := o.b.reqs.find(req.Key, sum); dup {
			o.a.release(1, req.Size)
			if o.b.reqs.at(i).id != req.ID {
				o.a.reject(o.gr.key, req, gemini.NewStatus(gemini.CodeAlreadyExists,
					"duplicate key %q: another request with this key is waiting in the same batch", req.Key))
			} // else a redelivery of the request already waiting here: it is acked with its batch
			return
		}
		if !o.p.Fits(req.Size) {
			o.flush(ReasonBytes)
		}
	}
	if o.b == nil {
		o.b = &batch{id: o.a.cfg.NewID(), holding: o.a.cfg.HoldBodies > 0}
		if o.a.cfg.Bodies != nil {
			o.b.bodies = o.a.cfg.Bodies.OpenBodies(o.b.id)
		}
	}
	if o.b.bodies != nil && !o.writeBody(&req, sum) {
		return
	}
	o.b.images = o.b.images || req.Images
	o.b.reqs.add(req, sum)
	var now time.Time // only the first request's time counts: it opens the batch's wait
	if o.p.Count() == 0 {
		now = o.a.cfg.Now()
	}
	if full, why := o.p.Add(req.Size, now); full {
		o.flush(why)
	}
}

// writeBody gives req's body to the batch's sink and drops it from req, unless the batch holds
// its bodies (see hold). When the sink refuses it, the request is refused, or the whole batch
// handed back; false then.
func (o *owner) writeBody(req *record.Request, sum uint64) bool {
	inPlace, err := o.b.bodies.Append(*req)
	if err == nil {
		if !o.hold(req, inPlace) {
			req.Body = nil // in the batch's input, or in the stream, now
		}
		return true
	}
	o.a.release(1, req.Size) // not in the policy's count
	var re requestError
	if errors.As(err, &re) {
		o.a.reject(o.gr.key, *req, re.RequestStatus())
		return false
	}
	o.b.reqs.add(*req, sum) // handed back with the rest
	o.lose(fmt.Errorf("write a body of batch %s: %w", o.b.id, err))
	return false
}

// hold reports whether the batch keeps req's body: while it has kept every body so far, this
// one is left in place by the sink (a copy in the input would make holding it pointless), and
// they fit in HoldBodies. Otherwise the batch lets go of those it kept.
func (o *owner) hold(req *record.Request, inPlace bool) bool {
	if !o.b.holding {
		return false
	}
	if inPlace && req.Body != nil && o.b.heldBytes+int64(len(req.Body)) <= o.a.cfg.HoldBodies {
		o.b.heldBytes += int64(len(req.Body))
		return true
	}
	o.b.holding, o.b.heldBytes = false, 0
	o.b.reqs.dropBodies()
	return false
}

// flush seals the open batch and hands it to the SealFunc.
func (o *owner) flush(why Reason) {
	count, bytes := o.p.Count(), o.p.Bytes()
	rec := &record.Record{
		ID:          o.b.id,
		Group:       o.gr.key,
		State:       record.Sealed,
		CloseReason: string(why),
		Sealed:      o.a.cfg.Now(),
		Requests:    o.b.reqs.requests(),
		Count:       count,
		Bytes:       bytes,
		Images:      o.b.images,
	}
	if o.b.bodies != nil {
		if err := o.b.bodies.Seal(rec); err != nil {
			o.lose(fmt.Errorf("seal batch %s: %w", o.b.id, err))
			return
		}
	}
	m := o.a.m
	m.closed.WithLabelValues(string(why)).Inc()
	m.batchRequests.Observe(float64(count))
	m.batchBytes.Observe(float64(bytes))
	o.b = nil
	o.p.Reset()
	o.sealed <- sealedBatch{rec: rec, count: count, bytes: bytes}
}

// lose hands the open batch's requests back to the stream: its bodies could not be written.
func (o *owner) lose(err error) {
	count, bytes := o.p.Count(), o.p.Bytes()
	for _, q := range o.b.reqs.requests() {
		if q.Msg != nil {
			_ = q.Msg.Nak()
		}
	}
	o.a.m.lost.Inc()
	if o.a.cfg.Lost != nil {
		o.a.cfg.Lost(o.b.id, count, err)
	}
	o.b = nil
	o.p.Reset()
	o.a.release(count, bytes)
}

// release takes n requests of size bytes off the pending counts.
func (a *Accumulator) release(n int, bytes int64) {
	a.pendingRequests.Add(-int64(n))
	a.pendingBytes.Add(-bytes)
	a.m.pendingRequests.Sub(float64(n))
	a.m.pendingBytes.Sub(float64(bytes))
}

// retire removes an idle group so that arbitrary priorities or models cannot pin goroutines.
func (a *Accumulator) retire(gr *group) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	// A sender counted here has not sent yet; one no longer counted has sent, and what it sent
	// is still in the queue, as this goroutine alone takes from it.
	if a.closed.Load() || gr.senders.Load() > 0 || len(gr.in) > 0 {
		return false
	}
	delete(a.groups, gr.key)
	return true
}
