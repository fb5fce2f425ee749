package jsstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/stacktest"
	"github.com/gembatch/gembatch/jsstore"
	"github.com/gembatch/gembatch/record"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, stacktest.LeakOptions()...) }

// clock is a settable time for lease expiry.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func setup(t *testing.T) (jetstream.JetStream, *clock) {
	t.Helper()
	js, err := jetstream.New(stacktest.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	return js, &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func open(t *testing.T, js jetstream.JetStream, c *clock, instance string) *jsstore.Store {
	t.Helper()
	s, err := jsstore.Open(context.Background(), js, jsstore.Config{
		RecordsBucket: "records", RequestsBucket: "requests", Replicas: 1, Storage: jetstream.FileStorage,
		Retention: 72 * time.Hour, Instance: instance, LeaseTTL: 30 * time.Second, Now: c.now,
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sealed(id string, seqs ...uint64) *record.Record {
	r := &record.Record{ID: id, Group: record.Group{Kind: gemini.KindGenerate, Model: "models/m"}, State: record.Sealed}
	for i, q := range seqs {
		k := string(rune('a' + i))
		r.Requests = append(r.Requests, record.Request{ID: k, Key: k, Reply: "r." + k, Body: []byte(`{"contents":[]}`), Size: 10, Seq: q})
	}
	return r
}

func TestCreateGetUpdate(t *testing.T) {
	js, c := setup(t)
	ctx := context.Background()
	s := open(t, js, c, "a")
	r := sealed("r1", 5, 6, 9)
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, sealed("r1")); !errors.Is(err, record.ErrExists) {
		t.Fatalf("second Create = %v, want ErrExists", err)
	}
	r.State, r.RemoteName = record.Submitted, "batches/x"
	if err := s.Update(ctx, r); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != record.Submitted || got.RemoteName != "batches/x" || got.Owner != "a" || len(got.Requests) != 3 ||
		got.Requests[2].Seq != 9 || string(got.Requests[0].Body) != `{"contents":[]}` {
		t.Fatalf("read back %+v", got)
	}
	for _, q := range []uint64{5, 6, 9} {
		if !s.Sealed(q) {
			t.Fatalf("seq %d not known as sealed", q)
		}
	}
	if s.Sealed(7) {
		t.Fatal("seq 7 known as sealed")
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, record.ErrNotFound) {
		t.Fatalf("Get of a missing record = %v", err)
	}
}

// TestTakeoverFencesTheOldOwner: b takes a's record only once a's lease has expired; after
// that, a's writes are refused.
func TestTakeoverFencesTheOldOwner(t *testing.T) {
	js, c := setup(t)
	ctx := context.Background()
	a, b := open(t, js, c, "a"), open(t, js, c, "b")
	r := sealed("r1", 1)
	if err := a.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	if recs, all, err := b.ClaimAll(ctx); err != nil || len(recs) != 0 || len(all) != 1 || all[0].ID != "r1" || all[0].Owner != "a" {
		t.Fatalf("b claimed %d records under a live lease (%v), saw %v", len(recs), err, all)
	}
	c.advance(20 * time.Second)
	a.Renew(ctx) // a is alive: its lease moves on
	c.advance(20 * time.Second)
	if recs, _, _ := b.ClaimAll(ctx); len(recs) != 0 {
		t.Fatal("b took a record whose lease was renewed")
	}
	c.advance(31 * time.Second) // a paused: no renewal
	recs, _, err := b.ClaimAll(ctx)
	if err != nil || len(recs) != 1 || recs[0].Owner != "b" || len(recs[0].Requests) != 1 {
		t.Fatalf("b claimed %v (%v), want r1 with its request", recs, err)
	}
	r.State = record.Submitting
	if err := a.Update(ctx, r); !errors.Is(err, record.ErrConflict) {
		t.Fatalf("old owner's write = %v, want ErrConflict", err)
	}
	if a.Owned() != 0 || b.Owned() != 1 {
		t.Fatalf("owned: a %d, b %d", a.Owned(), b.Owned())
	}
	got, _ := b.Get(ctx, "r1")
	if got.State != record.Sealed || got.Owner != "b" {
		t.Fatalf("record after the refused write: %+v", got)
	}
}

// TestRestartResumesOwnRecordsAtOnce: a new process with the same instance name claims its
// records without waiting for the lease.
func TestRestartResumesOwnRecordsAtOnce(t *testing.T) {
	js, c := setup(t)
	ctx := context.Background()
	if err := open(t, js, c, "a").Create(ctx, sealed("r1", 1)); err != nil {
		t.Fatal(err)
	}
	again := open(t, js, c, "a")
	recs, _, err := again.ClaimAll(ctx)
	if err != nil || len(recs) != 1 {
		t.Fatalf("restart claimed %d records (%v), want 1", len(recs), err)
	}
}

func TestWatchSeesOtherInstancesAndCleaning(t *testing.T) {
	js, c := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	a, b := open(t, js, c, "a"), open(t, js, c, "b")
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- b.Watch(ctx, ready) }()
	<-ready
	r := sealed("r1", 40, 41)
	if err := a.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return b.Sealed(40) && b.Sealed(41) })
	r.State = record.Cleaned
	if err := a.Update(ctx, r); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !b.Sealed(40) })
	if err := a.Delete(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if recs, _ := a.List(ctx); len(recs) != 0 {
		t.Fatalf("List shows %d records after cleaning", len(recs))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
