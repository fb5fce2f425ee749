package ownership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// ErrSuperseded: another process wrote this instance's lease key; this one owns nothing now.
var ErrSuperseded = errors.New("ownership: the lease was taken by another process with the same instance name")

// leaseValue is a lease key's value. Started is informational: nothing compares it with a clock.
type leaseValue struct {
	Instance string    `json:"instance"`
	Epoch    uint64    `json:"epoch,omitempty"` // 0 on the first write: its revision is the epoch
	Started  time.Time `json:"started"`
}

// Leaser holds this replica's lease and watches every other replica's.
type Leaser struct {
	kv   jetstream.KeyValue
	self Owner
	key  string
	ttl  time.Duration
	log  zerolog.Logger
	now  func() time.Time

	mu        sync.Mutex
	rev       uint64
	renewSent time.Time // when the last renewal that landed was sent
	unbroken  time.Time // since when the lease has been held without a lapse
	sightings map[string]Sighting
}

// LeaseKey is the leases-bucket key of an instance name: characters a key may not hold become '_'.
func LeaseKey(instance string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '=':
			return r
		}
		return '_'
	}, instance)
}

// StartLease writes this instance's lease with a new epoch: the key's revision at that write.
func StartLease(ctx context.Context, kv jetstream.KeyValue, instance string, ttl time.Duration, now func() time.Time, log zerolog.Logger) (*Leaser, error) {
	l := &Leaser{kv: kv, key: LeaseKey(instance), ttl: ttl, log: log, now: now, sightings: map[string]Sighting{}}
	sent := now()
	b, _ := json.Marshal(leaseValue{Instance: instance, Started: sent})
	rev, err := kv.Put(ctx, l.key, b)
	if err != nil {
		return nil, fmt.Errorf("write lease of %s: %w", instance, err)
	}
	l.self = Owner{Instance: instance, Epoch: rev}
	l.rev, l.renewSent, l.unbroken = rev, sent, sent
	return l, nil
}

// Self is this replica's owner identity.
func (l *Leaser) Self() Owner { return l.self }

// TTL is the lease's time to live.
func (l *Leaser) TTL() time.Duration { return l.ttl }

// HeldSince reports whether the lease has been held without a lapse since t, and still is for
// margin more: work begun at t (requests held in an open batch) is still this replica's.
func (l *Leaser) HeldSince(t time.Time, margin time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !t.Before(l.unbroken) && Holds(l.renewSent, l.now(), l.ttl, margin)
}

// Run renews the lease every TTL/3 and keeps the sightings of every lease up to date, until ctx
// ends (nil) or another process takes the key (ErrSuperseded).
func (l *Leaser) Run(ctx context.Context) error {
	w, err := l.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch leases: %w", err)
	}
	defer w.Stop()
	renew := time.NewTicker(l.ttl / 3)
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-renew.C:
			if err := l.renew(ctx); err != nil {
				return err
			}
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e != nil {
				l.see(e)
			}
		}
	}
}

// renew extends the lease by a compare-and-set on its last revision.
func (l *Leaser) renew(ctx context.Context) error {
	sent := l.now()
	b, _ := json.Marshal(leaseValue{Instance: l.self.Instance, Epoch: l.self.Epoch, Started: sent})
	rctx, cancel := context.WithTimeout(ctx, l.ttl/3)
	defer cancel()
	rev, err := l.kv.Update(rctx, l.key, b, l.rev)
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
		// Either another process took the name, or an earlier renewal of ours landed though its
		// answer was lost (a NATS restart): the key's epoch tells which.
		if !l.ownWrite(rctx) {
			return fmt.Errorf("%w: %s", ErrSuperseded, l.self.Instance)
		}
		rev, err = l.kv.Update(rctx, l.key, b, l.rev)
	}
	switch {
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyNotFound):
		return fmt.Errorf("%w: %s", ErrSuperseded, l.self.Instance)
	case err != nil:
		if ctx.Err() == nil {
			l.log.Warn().Err(err).Msg("renew lease; will try again")
		}
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !Holds(l.renewSent, sent, l.ttl, 0) {
		// The lease lapsed (a freeze, a NATS outage): others may have taken its records, and
		// messages it held may have been delivered elsewhere. Work begun before now is not ours.
		l.unbroken = sent
		l.log.Warn().Str("since_last_renewal", sent.Sub(l.renewSent).String()).Msg("lease lapsed and is renewed; work begun before is given up")
	}
	l.rev, l.renewSent = rev, sent
	return nil
}

// ownWrite reports whether the lease key still holds this process's epoch, taking its revision
// if so: a renewal whose answer was lost did land.
func (l *Leaser) ownWrite(ctx context.Context) bool {
	e, err := l.kv.Get(ctx, l.key)
	if err != nil {
		return false
	}
	var v leaseValue
	if json.Unmarshal(e.Value(), &v) != nil || v.Epoch != l.self.Epoch {
		return false
	}
	l.rev = e.Revision()
	return true
}

// see records one lease key's update as this observer sees it now.
func (l *Leaser) see(e jetstream.KeyValueEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sightings[e.Key()] = sighting(e, l.sightings[e.Key()], l.now())
}

func sighting(e jetstream.KeyValueEntry, prev Sighting, now time.Time) Sighting {
	if e.Operation() != jetstream.KeyValuePut {
		return Sighting{Revision: e.Revision(), Seen: now, Gone: true}
	}
	if prev.Revision == e.Revision() && !prev.Gone {
		return prev
	}
	var v leaseValue
	_ = json.Unmarshal(e.Value(), &v) // an unreadable value still moves: it is alive
	epoch := v.Epoch
	if epoch == 0 {
		epoch = e.Revision()
	}
	return Sighting{Epoch: epoch, Revision: e.Revision(), Seen: now}
}

// Judge decides about a record owned by owner. A lease that looks dead is read again first, so
// that a lagging watch cannot make this replica take a live owner's record.
func (l *Leaser) Judge(ctx context.Context, owner Owner) (Verdict, error) {
	l.mu.Lock()
	v := Judge(owner, l.self, l.sightings, l.now(), l.ttl)
	l.mu.Unlock()
	if v != Confirm {
		return v, nil
	}
	key := LeaseKey(owner.Instance)
	e, err := l.kv.Get(ctx, key)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		l.sightings[key] = Sighting{Seen: l.now(), Gone: true}
	case err != nil:
		return Live, fmt.Errorf("read lease of %s: %w", owner.Instance, err)
	default:
		l.sightings[key] = sighting(e, l.sightings[key], l.now())
	}
	v = Judge(owner, l.self, l.sightings, l.now(), l.ttl)
	if v == Confirm && l.sightings[key].Silent(l.now(), l.ttl) { // read again: still silent
		v = Claim
	} else if v == Confirm {
		v = Live
	}
	return v, nil
}

// Release deletes the lease at a clean shutdown, so that other replicas take over at once
// whatever this one leaves. It deletes only its own revision.
func (l *Leaser) Release(ctx context.Context) error {
	l.mu.Lock()
	rev := l.rev
	l.mu.Unlock()
	if err := l.kv.Delete(ctx, l.key, jetstream.LastRevision(rev)); err != nil {
		return fmt.Errorf("release lease of %s: %w", l.self.Instance, err)
	}
	return nil
}
