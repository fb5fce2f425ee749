// Package ownership decides which gembatchd replica works on which batch record in durable mode,
// and gives the checks that fence every step a replica takes on a record.
//
// Each replica holds one lease: a key named after its instance in the leases bucket, written at
// start with a new epoch (the key's revision at that write, so a restart under the same name is a
// new owner) and renewed on its own goroutine. A record names its owner and epoch. An observer
// judges a lease dead on its own monotonic clock only: the key's revision has not moved for the
// TTL since the observer first saw it, confirmed by a fresh read. No time written by one machine
// is ever compared with another machine's clock.
//
// The decisions are plain functions of values, tested without a clock; Leaser and Coordinator
// are the loops around them.
package ownership

import "time"

// Owner is who a record names as working on it: an instance and the epoch of its lease.
type Owner struct {
	Instance string `json:"instance"`
	Epoch    uint64 `json:"epoch"`
}

// Sighting is what one observer knows of an instance's lease key.
type Sighting struct {
	// Epoch is the epoch the key holds; Revision its last revision seen.
	Epoch    uint64
	Revision uint64
	// Seen is when, on the observer's own monotonic clock, Revision was first seen.
	Seen time.Time
	// Gone: the key was deleted (a clean shutdown releases it) or is not there.
	Gone bool
}

// Silent reports whether the lease has not moved for ttl by the observer's clock.
func (s Sighting) Silent(now time.Time, ttl time.Duration) bool {
	return s.Gone || now.Sub(s.Seen) >= ttl
}

// Verdict is what an observer may do with a record it does not own.
type Verdict int

// Verdicts.
const (
	// Mine: the record names this replica's current epoch.
	Mine Verdict = iota
	// Live: its owner's lease is alive; leave it.
	Live
	// Confirm: the owner's lease looks dead (or was never seen): read the key again before
	// claiming, in case this observer's view lags.
	Confirm
	// Claim: the owner is gone or restarted under a newer epoch; take the record over.
	Claim
)

func (v Verdict) String() string {
	return [...]string{"mine", "live", "confirm", "claim"}[v]
}

// Judge decides about a record owned by owner, seen by self with the lease sightings by key.
func Judge(owner, self Owner, sightings map[string]Sighting, now time.Time, ttl time.Duration) Verdict {
	if owner == self {
		return Mine
	}
	if owner.Instance == "" {
		return Claim
	}
	s, ok := sightings[LeaseKey(owner.Instance)]
	switch {
	case !ok:
		return Confirm
	case s.Gone:
		return Claim
	case s.Epoch > owner.Epoch:
		return Claim // the instance started again: the record's epoch died with its process
	case s.Epoch < owner.Epoch:
		return Confirm // the record is newer than this observer's view of the lease
	case s.Silent(now, ttl):
		return Confirm
	}
	return Live
}

// Holds reports whether a lease last renewed by a write sent at renewSent (the owner's own clock)
// is still certainly held margin from now: no observer can judge it dead before renewSent+ttl,
// since each observer first sees that write no earlier than it was sent.
func Holds(renewSent, now time.Time, ttl, margin time.Duration) bool {
	return !renewSent.IsZero() && now.Add(margin).Before(renewSent.Add(ttl))
}

// GraceOver reports whether a claimer that first saw a record's create intent at firstSeen (its
// own clock) has waited the create grace, so that a create its previous owner may have sent has
// had time to appear in the remote list.
func GraceOver(firstSeen, now time.Time, grace time.Duration) bool {
	return now.Sub(firstSeen) >= grace
}
