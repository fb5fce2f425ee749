package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/accumulator"
	"github.com/gembatch/gembatch/intake"
	"github.com/gembatch/gembatch/internal/backoff"
	"github.com/gembatch/gembatch/internal/clock"
	"github.com/gembatch/gembatch/internal/failpoint"
	"github.com/gembatch/gembatch/jsstore"
	"github.com/gembatch/gembatch/ownership"
	"github.com/gembatch/gembatch/record"
	"github.com/gembatch/gembatch/submitter"
)

// openStore opens the record store and starts this replica's lease with a new epoch.
func (m *Main) openStore(ctx context.Context, js jetstream.JetStream) (*jsstore.Store, *ownership.Leaser, error) {
	cfg := m.Config
	st, err := jsstore.Open(ctx, js, jsstore.Config{
		RecordsBucket: cfg.RecordsBucket, RequestsBucket: cfg.RequestsBucket,
		BodiesBucket: cfg.BodiesBucket, BodiesTTL: cfg.StreamMaxAge, // a body lives as long as its message may
		Replicas: cfg.StreamReplicas, Storage: storageType(cfg.StreamStorage), Retention: cfg.RecordRetention,
		RedeliveryWindow: 2 * cfg.EffectiveAckWait(), Stream: cfg.Stream,
	}, m.Log.With().Str("component", "store").Logger())
	if err != nil {
		return nil, nil, err
	}
	kv, err := js.KeyValue(ctx, cfg.LeasesBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: cfg.LeasesBucket, Description: "gembatch replicas' leases", History: 1,
			TTL: 24 * time.Hour, Replicas: cfg.StreamReplicas, Storage: storageType(cfg.StreamStorage),
		})
	}
	if err != nil {
		return nil, nil, fmt.Errorf("leases bucket %s: %w", cfg.LeasesBucket, err)
	}
	lease, err := ownership.StartLease(ctx, kv, cfg.Instance, cfg.LeaseTTL, m.now, m.Log.With().Str("component", "lease").Logger())
	if err != nil {
		return nil, nil, err
	}
	m.Log.Info().Str("instance", cfg.Instance).Uint64("epoch", lease.Self().Epoch).Msg("lease taken")
	return st, lease, nil
}

// now is the daemon's wall clock (shifted in the fault tests' clock-skew trials).
func (m *Main) now() time.Time { return clock.Now() }

// fence is the submitter's view of the lease; none in core mode.
func fence(l *ownership.Leaser) submitter.Lease {
	if l == nil {
		return nil
	}
	return l
}

// coreSealer records a sealed batch in memory and passes it to the submitter.
func (m *Main) coreSealer(sub *submitter.Submitter) accumulator.SealFunc {
	return func(rec *record.Record) {
		if err := m.Store.Create(context.Background(), rec); err != nil {
			m.Log.Error().Err(err).Str("record", rec.ID).Int("requests", len(rec.Requests)).Msg("could not record a sealed batch")
			return
		}
		sub.Enqueue(rec)
	}
}

// durableSealer records a sealed batch under this replica's lease, then confirms its messages'
// acknowledgements, then passes it on. A batch begun before the lease last lapsed is not this
// replica's to record: its messages may have been delivered elsewhere meanwhile, so they are
// handed back instead.
type durableSealer struct {
	store  *jsstore.Store
	lease  *ownership.Leaser
	own    func(*record.Record)
	sub    *submitter.Submitter
	log    zerolog.Logger
	margin time.Duration
	// ackWait is the stream's redelivery wait: a batch whose recording took longer may have had
	// its messages delivered elsewhere meanwhile.
	ackWait time.Duration
	now     func() time.Time
}

func (d *durableSealer) seal(rec *record.Record) {
	d.own(rec)
	// The accumulator seals a group's next batch while this one is recorded, with no heartbeat
	// for one waiting its turn: past a quarter of the AckWait, some of its messages may be
	// delivered elsewhere before a refresh could reach them.
	if waited := d.now().Sub(rec.Sealed); waited > d.ackWait/4 {
		d.giveUp(rec, 0, fmt.Sprintf("it waited %s to be recorded, more than a quarter of ACK_WAIT", waited.Round(time.Millisecond)))
		return
	}
	retry := backoff.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second}
	// Every message's AckWait runs at least from when it was pulled. A batch sealed well within
	// it is recorded without an InProgress per message (each is a consumer write on the server,
	// a raft proposal in a cluster); an older one is refreshed first, and on every try after the
	// first. The AckWait counts from the first refresh: a later one may be lost with a NATS node.
	since := oldest(rec)
	refresh := d.now().Sub(since) > d.ackWait/4
	if refresh {
		since = d.now()
	}
	for attempt := 0; ; attempt++ {
		// Checked before every try: a freeze during a slow write must not let a later try
		// record messages that were meanwhile delivered to another replica.
		if !d.lease.HeldSince(oldest(rec), d.margin) {
			d.giveUp(rec, attempt, "the lease lapsed while the batch was open")
			return
		}
		if refresh || attempt > 0 {
			inProgress(rec)
		}
		err := d.store.Create(context.Background(), rec)
		if err == nil || (attempt > 0 && errors.Is(err, record.ErrExists) && d.landedNow(rec)) {
			// The write itself may have outlasted the lease (a freeze mid-write) or the
			// AckWait: then another replica may have batched these messages meanwhile.
			if !d.lease.HeldSince(oldest(rec), d.margin) || d.now().Sub(since) > d.ackWait*3/4 || d.heldElsewhere(rec) {
				d.abandon(rec, "it was recorded too late to be sure no other replica holds its messages")
				return
			}
			break
		}
		if attempt == 5 || errors.Is(err, nats.ErrConnectionClosed) {
			d.log.Error().Err(err).Str("record", rec.ID).Int("requests", len(rec.Requests)).
				Msg("could not record a sealed batch; its requests will be delivered again")
			d.giveUp(rec, attempt+1, "it could not be recorded")
			return
		}
		d.log.Warn().Err(err).Str("record", rec.ID).Msg("record sealed batch; retrying")
		time.Sleep(retry.Delay(attempt))
	}
	failpoint.Hit(failpoint.AfterSealBeforeAck)
	for attempt := 0; ; attempt++ {
		err := intake.ConfirmAcks(context.Background(), rec.Requests)
		if err == nil {
			err = d.store.Confirmed(context.Background(), rec)
		}
		if err == nil || errors.Is(err, record.ErrConflict) {
			break
		}
		if errors.Is(err, nats.ErrConnectionClosed) {
			// Shutting down without NATS: whoever takes the record over settles it before
			// going on (ready), so none of its messages is batched again.
			d.log.Warn().Err(err).Str("record", rec.ID).Msg("acknowledgements not confirmed; left to the record's next owner")
			return
		}
		d.log.Warn().Err(err).Str("record", rec.ID).Msg("confirm the acknowledgements of a recorded batch; retrying")
		time.Sleep(retry.Delay(attempt))
	}
	d.store.DeleteBodyObjects(context.Background(), rec.Requests) // in the recorded input now
	d.sub.Enqueue(rec)
}

// bodySinks gives the accumulator each open batch's input in the requests bucket, which holds
// only the bodies that came through the bodies bucket when the stream keeps its messages.
type bodySinks struct {
	st *jsstore.Store
	in *intake.StreamIntake
}

func (b bodySinks) OpenBodies(id string) accumulator.BodySink {
	return b.st.OpenInput(id, b.in.KeepsMessages())
}

// sweepEvery is how often the requests bucket is swept of objects no record names.
const sweepEvery = 10 * time.Minute

// sweep deletes, now and then, the request objects that no live record names: the input of a
// batch a crash left open, or a record's objects its delete missed. Only objects older than
// any open batch can be are touched.
func (m *Main) sweep(ctx context.Context, st *jsstore.Store) {
	age := max(time.Hour, 2*m.Config.BatchMaxWait)
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		n, err := st.Sweep(ctx, m.now().Add(-age))
		switch {
		case err != nil && ctx.Err() == nil:
			m.Log.Warn().Err(err).Msg("sweep the requests bucket")
		case n > 0:
			m.Log.Info().Int("objects", n).Msg("swept request objects no record names")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// landed reports whether an earlier try of Create, whose answer was lost, recorded rec after
// all (the record is there, ours), and takes its revision. An error means it cannot tell.
func (d *durableSealer) landed(rec *record.Record) (bool, error) {
	got, err := d.store.Head(context.Background(), rec.ID)
	switch {
	case errors.Is(err, record.ErrNotFound):
		return false, nil
	case err != nil:
		return false, err
	case got.Owner != rec.Owner || got.Epoch != rec.Epoch:
		return false, nil
	}
	rec.Revision = got.Revision
	return true, nil
}

// heldElsewhere reports whether a message of rec is in a record written before it (a consumer
// leader change delivered it to two replicas at once), or whether that cannot be told: either
// way, rec yields.
func (d *durableSealer) heldElsewhere(rec *record.Record) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.store.CaughtUp(ctx); err != nil {
		d.log.Warn().Err(err).Str("record", rec.ID).Msg("cannot tell whether another replica recorded these messages too; yielding")
		return true
	}
	if d.store.HeldElsewhere(rec) {
		d.log.Warn().Str("record", rec.ID).Msg("another replica recorded some of these messages first; yielding")
		return true
	}
	return false
}

// landedNow is landed, with "cannot tell" taken as no.
func (d *durableSealer) landedNow(rec *record.Record) bool {
	ok, err := d.landed(rec)
	return ok && err == nil
}

// giveUp hands a batch back that could not be recorded in time. A try whose answer was lost may
// have recorded it all the same: that record is abandoned, so that no replica sends it later;
// when NATS cannot say yet, the messages go back at once and the record is settled later.
func (d *durableSealer) giveUp(rec *record.Record, tries int, why string) {
	if tries == 0 {
		d.handBack(rec, why)
		return
	}
	ok, err := d.landed(rec)
	switch {
	case err != nil:
		d.handBack(rec, why)
		go d.cleanLate(rec)
	case ok:
		d.abandon(rec, why)
	default:
		d.handBack(rec, why)
	}
}

// inProgress tells the stream that a batch's messages are still being worked on.
func inProgress(rec *record.Record) {
	for _, q := range rec.Requests {
		_ = q.Msg.InProgress()
	}
}

// abandon drops a batch recorded too late to be sure its messages were not delivered elsewhere
// meanwhile: the record is cleaned before anything is sent for it, and the messages handed back
// (those another replica batched are acknowledged already, and the rest are delivered again).
func (d *durableSealer) abandon(rec *record.Record, why string) {
	if err := d.clean(rec); err != nil {
		go d.cleanLate(rec)
	}
	d.handBack(rec, why)
}

// clean marks an abandoned record cleaned, so that no replica ever submits it.
func (d *durableSealer) clean(rec *record.Record) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec.State = record.Cleaned
	if err := d.store.Update(ctx, rec); err != nil {
		d.log.Warn().Err(err).Str("record", rec.ID).Msg("abandon a batch recorded after the lease lapsed; trying again")
		return err
	}
	if err := d.store.Delete(ctx, rec.ID); err != nil {
		d.log.Warn().Err(err).Str("record", rec.ID).Msg("delete the objects of an abandoned batch; they expire")
	}
	return nil
}

// cleanLate settles, once NATS answers, a record whose messages were handed back but which may
// have been written (or could not be marked cleaned): it is cleaned if it is there and still
// ours, and left alone otherwise (gone, or taken over: its new owner finds its messages
// batched elsewhere and abandons it).
func (d *durableSealer) cleanLate(rec *record.Record) {
	retry := backoff.Policy{Initial: 200 * time.Millisecond, Max: 10 * time.Second}
	for attempt := 0; attempt < 60; attempt++ {
		time.Sleep(retry.Delay(attempt))
		ok, err := d.landed(rec)
		if err == nil && !ok {
			return
		}
		if err == nil && d.clean(rec) == nil {
			return
		}
	}
	d.log.Error().Str("record", rec.ID).Msg("could not settle an abandoned batch's record; its next owner abandons it")
}

// handBack leaves a batch's messages to the stream instead of recording them: they may have been
// delivered to another replica since they were pulled (why says how). They are not
// nak'ed: a nak of a delivery the stream has since made again elsewhere (the AckWait passed)
// delivers the message once more, while the other replica still holds it in an open batch, and
// both would batch it (TestNATSClusterNodeLoss found this). Unacknowledged, each comes back
// after the AckWait, to whichever replica does not hold it already.
func (d *durableSealer) handBack(rec *record.Record, why string) {
	d.log.Warn().Str("record", rec.ID).Int("requests", len(rec.Requests)).Str("reason", why).
		Msg("batch handed back unrecorded; its messages are left to the stream, delivered again after ACK_WAIT")
	if err := d.store.Delete(context.Background(), rec.ID); err != nil { // its input: never sent
		d.log.Warn().Err(err).Str("record", rec.ID).Msg("delete the input of a batch handed back; the sweep removes it")
	}
}

// oldest is when the batch's first request was received.
func oldest(rec *record.Record) time.Time {
	t := rec.Sealed
	for _, q := range rec.Requests {
		if q.Received.Before(t) {
			t = q.Received
		}
	}
	return t
}

// takeOver readies a record this replica just took over and hands it to its stage, trying
// again with backoff until it can: the record has no other owner while this replica lives, so
// a read or removal given up on would leave its requests unanswered for good.
func (m *Main) takeOver(ctx context.Context, st *jsstore.Store, in *intake.StreamIntake, rec *record.Record, route func(*record.Record)) {
	retry := backoff.Policy{Initial: 500 * time.Millisecond, Max: 30 * time.Second}
	for attempt := 0; ; attempt++ {
		err := m.ready(ctx, st, in, rec)
		if err == nil {
			route(rec)
			return
		}
		if errors.Is(err, record.ErrConflict) || errors.Is(err, record.ErrNotFound) {
			m.Log.Warn().Err(err).Str("record", rec.ID).Msg("a record taken over changed hands or ended meanwhile; left to its new owner")
			return
		}
		wait := retry.Delay(attempt)
		m.Log.Error().Err(err).Str("record", rec.ID).Int("attempt", attempt+1).Float64("retry_in_seconds", wait.Seconds()).
			Msg("ready a record taken over")
		if !backoff.Sleep(ctx, wait) {
			return
		}
	}
}

// ready fills in what a taken-over record needs before its stage can go on. A record still to
// be submitted needs its requests (its upload streams its input; a record written before chunks
// needs its bodies in hand), and a record whose acks were never confirmed is settled: its
// messages removed from the stream first, so that none is delivered again, unless they hold its
// bodies.
func (m *Main) ready(ctx context.Context, st *jsstore.Store, in *intake.StreamIntake, rec *record.Record) error {
	if rec.State != record.Sealed && rec.State != record.Submitting {
		return nil
	}
	full, err := st.Get(ctx, rec.ID)
	if err != nil {
		return fmt.Errorf("read its requests: %w", err)
	}
	if rec.Chunks == 0 && !rec.InStream {
		bodies, err := st.Bodies(ctx, rec.ID)
		if err != nil {
			return fmt.Errorf("read its bodies: %w", err)
		}
		for i := range full.Requests {
			full.Requests[i].Body = bodies[full.Requests[i].Key]
		}
	}
	rec.Requests = full.Requests
	if rec.Acked {
		return nil
	}
	// The messages of a record InStream are its bodies: they stay. One its dead owner left
	// unacknowledged comes back within an AckWait and is acknowledged as recorded once the
	// record is confirmed; the index keeps its sequences until twice the AckWait after it is
	// cleaned.
	if !rec.InStream {
		if err := in.Remove(ctx, rec.Requests); err != nil {
			return fmt.Errorf("remove its messages from the stream: %w", err)
		}
	}
	return st.Confirmed(ctx, rec)
}

// shareQuota tells the submitter what jobs the other replicas hold, from the coordinator's
// index, for the quota shared by all of them.
func (m *Main) shareQuota(ctx context.Context, coord *ownership.Coordinator, sub *submitter.Submitter) {
	t := time.NewTicker(m.Config.LeaseTTL / 2)
	defer t.Stop()
	for {
		sub.SetOthers(coord.Others(), m.Config.Instance)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
