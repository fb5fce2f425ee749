package ownership

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/record"
)

// Records is the part of the record store the coordinator uses.
type Records interface {
	// Watch calls f with every record as it is written, closing ready once the records that
	// exist at the start are read.
	Watch(ctx context.Context, ready chan<- struct{}, f func(*record.Record)) error
	Update(ctx context.Context, r *record.Record) error
}

// Coordinator learns of every record from the store's watch, keeps an index of the live ones,
// takes over those whose owner died, and tells the pipeline when a record it works on became
// another replica's. It is the one place that decides ownership in a process.
type Coordinator struct {
	lease *Leaser
	store Records
	log   zerolog.Logger
	m     *Metrics
	// Route hands a record this replica took over to its stage; Lost says that a record this
	// replica worked on is now another's. Both are set before Run.
	Route func(*record.Record)
	Lost  func(id string)

	mu    sync.Mutex
	index map[string]*record.Record // live records (not cleaned), without requests
	mine  map[string]bool           // records handed to a stage by this process
	// claiming holds the claims written but not yet settled: by their answer, or, when that
	// was lost, by the watch showing the record in this replica's name.
	claiming map[string]pendingClaim
	kick     chan struct{}
}

// NewCoordinator returns a Coordinator for the lease's replica.
func NewCoordinator(lease *Leaser, store Records, log zerolog.Logger, m *Metrics) *Coordinator {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Coordinator{lease: lease, store: store, log: log, m: m, index: map[string]*record.Record{}, mine: map[string]bool{},
		claiming: map[string]pendingClaim{}, kick: make(chan struct{}, 1)}
}

// Run watches the records and takes over what it may, until ctx ends. ready is closed once the
// records that existed at the start are known.
func (c *Coordinator) Run(ctx context.Context, ready chan<- struct{}) error {
	watched := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- c.store.Watch(ctx, watched, c.observe) }()
	select {
	case <-watched:
		close(ready)
	case err := <-errc:
		return err
	case <-ctx.Done():
		return nil
	}
	tick := time.NewTicker(c.lease.TTL() / 4)
	defer tick.Stop()
	for {
		c.takeOver(ctx)
		select {
		case <-ctx.Done():
			return <-errc
		case err := <-errc:
			return err
		case <-tick.C:
		case <-c.kick:
		}
	}
}

// Adopt records that this process works on a record it made itself (sealed or resubmitted).
func (c *Coordinator) Adopt(id string) {
	c.mu.Lock()
	c.mine[id] = true
	c.mu.Unlock()
}

// Done forgets a record this process finished with.
func (c *Coordinator) Done(id string) {
	c.mu.Lock()
	delete(c.mine, id)
	c.mu.Unlock()
}

// observe keeps the index current, notices records taken from this process, and settles a
// claim whose answer was lost.
func (c *Coordinator) observe(r *record.Record) {
	self := c.lease.Self()
	c.mu.Lock()
	if r.State == record.Cleaned {
		delete(c.index, r.ID)
		delete(c.mine, r.ID)
	} else {
		c.index[r.ID] = r
	}
	lost := c.mine[r.ID] && (Owner{r.Owner, r.Epoch}) != self
	if lost {
		delete(c.mine, r.ID)
	}
	claimed := c.settle(r.ID, r.Revision, (Owner{r.Owner, r.Epoch}) == self)
	c.m.live.Set(float64(len(c.index)))
	c.mu.Unlock()
	if lost {
		c.m.lost.Inc()
		c.log.Warn().Str("record", r.ID).Str("to", r.Owner).Msg("a record this replica worked on was taken over")
		c.Lost(r.ID)
	}
	if claimed != nil {
		c.route(claimed)
	}
	if r.State != record.Cleaned && (Owner{r.Owner, r.Epoch}) != self {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// Others returns the live records other replicas own, for the shared quota.
func (c *Coordinator) Others() []*record.Record {
	self := c.lease.Self()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*record.Record
	for _, r := range c.index {
		if (Owner{r.Owner, r.Epoch}) != self {
			out = append(out, r)
		}
	}
	return out
}

// List returns the live records (without their requests) as the watch last showed them: what
// a metrics scrape needs, read from memory rather than by listing the bucket. It never fails.
func (c *Coordinator) List(context.Context) ([]*record.Record, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*record.Record, 0, len(c.index))
	for _, r := range c.index {
		cp := *r
		out = append(out, &cp)
	}
	return out, nil
}

// takeOver claims every live record whose owner is dead.
func (c *Coordinator) takeOver(ctx context.Context) {
	for _, r := range c.candidates() {
		v, err := c.lease.Judge(ctx, Owner{r.Owner, r.Epoch})
		if err != nil {
			c.log.Warn().Err(err).Str("record", r.ID).Msg("judge a record's owner")
			continue
		}
		if v == Claim {
			c.claim(ctx, r)
		}
	}
}

// candidates are the live records neither this replica's, nor handed to a stage here, nor
// being claimed (a claim whose answer was lost waits for the watch to settle it).
func (c *Coordinator) candidates() []*record.Record {
	self := c.lease.Self()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*record.Record
	for id, r := range c.index {
		if p, ok := c.claiming[id]; ok && c.lease.now().Sub(p.sent) > c.lease.TTL() {
			delete(c.claiming, id) // the watch never showed it: claim again, on what it shows
		}
		if _, claiming := c.claiming[id]; !claiming && !c.mine[id] && (Owner{r.Owner, r.Epoch}) != self {
			out = append(out, r)
		}
	}
	return out
}

// claim takes a record over by a compare-and-set on the revision this replica read, and hands
// it to its stage. A claim that loses the race leaves the record to the winner; one whose
// answer was lost is settled by the watch.
func (c *Coordinator) claim(ctx context.Context, seen *record.Record) {
	r := *seen
	r.Owner, r.Epoch = c.lease.Self().Instance, c.lease.Self().Epoch
	if r.State == record.Submitting && !r.CreateAttempted.IsZero() {
		r.IntentSeen = c.lease.now() // the grace runs from this replica's own sighting
	}
	c.mu.Lock()
	pending := r // settled by this goroutine or the watch's: neither shares r with the write
	c.claiming[r.ID] = pendingClaim{rec: &pending, sent: c.lease.now()}
	c.mu.Unlock()
	err := c.store.Update(ctx, &r)
	if err != nil && !errors.Is(err, record.ErrConflict) {
		c.log.Warn().Err(err).Str("record", r.ID).Msg("take over a record; its answer was lost, the watch will tell")
		return
	}
	c.mu.Lock()
	claimed := c.settle(r.ID, r.Revision, err == nil)
	c.mu.Unlock()
	if claimed != nil {
		c.route(claimed)
	}
}

// settle ends a pending claim of a record now at revision, which it won or not, and returns the
// record to hand to its stage if won. The claim's answer and the watch may both settle it: the
// first does, once. c.mu is held.
func (c *Coordinator) settle(id string, revision uint64, won bool) *record.Record {
	p, ok := c.claiming[id]
	if !ok {
		return nil
	}
	delete(c.claiming, id)
	if !won {
		return nil
	}
	r := *p.rec
	r.Revision = revision
	c.mine[id] = true
	indexed := r // the stage changes the record it is handed; the index keeps its own
	c.index[id] = &indexed
	return &r
}

// pendingClaim is a claim written and not yet settled.
type pendingClaim struct {
	rec  *record.Record
	sent time.Time
}

// route counts and hands a record this replica took over to its stage.
func (c *Coordinator) route(r *record.Record) {
	c.m.claimed.WithLabelValues(string(r.State)).Inc()
	c.log.Info().Str("record", r.ID).Str("state", string(r.State)).Msg("took over a record")
	c.Route(r)
}
