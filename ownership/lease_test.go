package ownership

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/internal/natstest"
)

// clock is a settable clock for the leases under test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func leases(t *testing.T) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(natstest.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "leases"})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// A replica frozen past its lease renews it on waking, but work it began before the lapse (an
// intent written, a batch opened) is no longer its to finish.
func TestLapseBreaksWhatWasBegunBefore(t *testing.T) {
	kv, c := leases(t), &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ctx := context.Background()
	l, err := StartLease(ctx, kv, "a", 30*time.Second, c.now, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	intent := c.now()
	c.advance(10 * time.Second)
	if err := l.renew(ctx); err != nil {
		t.Fatal(err)
	}
	if !l.HeldSince(intent, 5*time.Second) {
		t.Fatal("a lease renewed in time lost the work begun under it")
	}
	c.advance(45 * time.Second) // frozen past the TTL
	if l.HeldSince(intent, 0) {
		t.Fatal("a lapsed lease still holds")
	}
	if err := l.renew(ctx); err != nil {
		t.Fatal(err)
	}
	if l.HeldSince(intent, 0) {
		t.Fatal("renewed after a lapse, the lease holds work begun before it")
	}
	if !l.HeldSince(c.now(), 5*time.Second) {
		t.Fatal("the renewed lease does not hold new work")
	}
}

// A second process under the same instance name takes the key with a newer epoch; the first
// one's next renewal fails with ErrSuperseded.
func TestSecondStartSupersedes(t *testing.T) {
	kv, c := leases(t), &clock{t: time.Now()}
	ctx := context.Background()
	first, err := StartLease(ctx, kv, "a", 30*time.Second, c.now, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	second, err := StartLease(ctx, kv, "a", 30*time.Second, c.now, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if second.Self().Epoch <= first.Self().Epoch {
		t.Fatalf("epochs %d then %d: a restart must be a newer owner", first.Self().Epoch, second.Self().Epoch)
	}
	if err := first.renew(ctx); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("first renewal after the second start: %v", err)
	}
	if err := second.renew(ctx); err != nil {
		t.Fatal(err)
	}
	if v, err := second.Judge(ctx, first.Self()); err != nil || v != Claim {
		t.Fatalf("the second judges the first's records %v (%v), want claim", v, err)
	}
}

// Judge reads a lease that looks dead again before claiming: an observer that missed renewals
// (a lagging watch) sees the fresh revision and leaves the record alone.
func TestJudgeConfirmsBeforeClaiming(t *testing.T) {
	kv, c := leases(t), &clock{t: time.Now()}
	ctx := context.Background()
	owner, err := StartLease(ctx, kv, "b", 30*time.Second, c.now, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	observer, err := StartLease(ctx, kv, "a", 30*time.Second, c.now, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := observer.Judge(ctx, owner.Self()); v != Live {
		t.Fatalf("first sighting: %v, want live", v)
	}
	c.advance(31 * time.Second)              // the observer saw no renewal (no watch runs here)...
	if err := owner.renew(ctx); err != nil { // ...but the owner did renew
		t.Fatal(err)
	}
	if v, _ := observer.Judge(ctx, owner.Self()); v != Live {
		t.Fatalf("after a renewal the observer's watch missed: %v, want live", v)
	}
	c.advance(31 * time.Second) // now truly silent
	if v, _ := observer.Judge(ctx, owner.Self()); v != Claim {
		t.Fatalf("silent for the TTL, read again: %v, want claim", v)
	}
}

// A renewal that landed though its answer was lost (a NATS restart) leaves the key a revision
// ahead: the next renewal finds its own epoch there and goes on, rather than taking itself
// for superseded.
func TestLostRenewalAnswerIsNotSuperseded(t *testing.T) {
	kv, c := leases(t), &clock{t: time.Now()}
	ctx := context.Background()
	l, err := StartLease(ctx, kv, "a", 30*time.Second, c.now, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.renew(ctx); err != nil {
		t.Fatal(err)
	}
	// The same write again, as if a renewal's answer had been lost.
	b, _ := json.Marshal(leaseValue{Instance: "a", Epoch: l.Self().Epoch, Started: c.now()})
	if _, err := kv.Put(ctx, LeaseKey("a"), b); err != nil {
		t.Fatal(err)
	}
	if err := l.renew(ctx); err != nil {
		t.Fatalf("renewal after a lost answer: %v", err)
	}
}
