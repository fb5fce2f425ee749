package jsstore_test

import (
	"context"
	"errors"
	"fmt"
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

func open(t *testing.T) *jsstore.Store {
	t.Helper()
	s, _ := openJS(t)
	return s
}

// openJS opens a store on a fresh server and returns the JetStream context to look at its buckets.
func openJS(t testing.TB) (*jsstore.Store, jetstream.JetStream) {
	t.Helper()
	js, err := jetstream.New(stacktest.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	s, err := jsstore.Open(context.Background(), js, jsstore.Config{
		RecordsBucket: "records", RequestsBucket: "requests", BodiesBucket: "bodies", Replicas: 1, Storage: jetstream.FileStorage,
		Retention: 72 * time.Hour,
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s, js
}

func sealed(id string, seqs ...uint64) *record.Record {
	r := &record.Record{ID: id, Group: record.Group{Kind: gemini.KindGenerate, Model: "models/m"}, State: record.Sealed, Owner: "a", Epoch: 1}
	for i, q := range seqs {
		k := string(rune('a' + i))
		r.Requests = append(r.Requests, record.Request{ID: k, Key: k, Reply: "r." + k, Body: []byte(`{"contents":[]}`), Size: 10, Seq: q})
	}
	r.Count = len(r.Requests)
	return r
}

// Finding 2: two in-memory copies of one record must not both pass the compare-and-set. Each
// write compares against the revision its own writer read, not the store's last write.
func TestTwoCopiesCannotBothWrite(t *testing.T) {
	s, ctx := open(t), context.Background()
	r := sealed("r1", 1, 2)
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	one, two := *r, *r // two workers holding the record at the same revision
	one.State = record.Submitting
	if err := s.Update(ctx, &one); err != nil {
		t.Fatalf("first writer: %v", err)
	}
	two.State = record.Submitting
	if err := s.Update(ctx, &two); !errors.Is(err, record.ErrConflict) {
		t.Fatalf("second copy at the old revision wrote: err = %v, want ErrConflict", err)
	}
	// A takeover by another owner fences the first writer the same way.
	taken := one
	taken.Owner, taken.Epoch = "b", 9
	if err := s.Update(ctx, &taken); err != nil {
		t.Fatal(err)
	}
	one.State = record.Submitted
	if err := s.Update(ctx, &one); !errors.Is(err, record.ErrConflict) {
		t.Fatalf("stale owner wrote after a takeover: err = %v", err)
	}
}

func TestCreateTwiceAndReadBack(t *testing.T) {
	s, ctx := open(t), context.Background()
	r := sealed("r1", 5, 6, 7)
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, sealed("r1", 8)); !errors.Is(err, record.ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	got, err := s.Get(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Requests) != 3 || got.Requests[1].Key != "b" || got.Requests[1].Seq != 6 || got.Owner != "a" || got.Epoch != 1 {
		t.Fatalf("read back %+v", got)
	}
	for _, q := range got.Requests {
		if q.Body != nil {
			t.Fatalf("Get returned a body: taking over a submitted job must not read bodies")
		}
	}
	bodies, err := s.Bodies(ctx, "r1")
	if err != nil || len(bodies) != 3 || string(bodies["c"]) != `{"contents":[]}` {
		t.Fatalf("bodies = %v, %v", bodies, err)
	}
}

// Finding 5: a redelivered message of a recorded batch is recognised while the record lives,
// its acks confirmed or not (a consumer leader change can lose confirmed acks: seen in
// TestNATSClusterNodeLoss, 15 requests billed twice), and for the redelivery window after it
// is cleaned, also by a store that starts then; after that the index lets it go.
func TestSealedIndexCoversRecordsThroughTheRedeliveryWindow(t *testing.T) {
	ctx := context.Background()
	js, err := jetstream.New(stacktest.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	const window = 600 * time.Millisecond
	s, seen, stop := watching(t, js, window)
	defer stop()
	r := sealed("r1", 11, 12)
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.CaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	if !sealedIn(s, 11) || !sealedIn(s, 12) || sealedIn(s, 13) {
		t.Fatal("a new record's sequences not indexed")
	}
	if _, settled := s.Recorded(11); settled {
		t.Fatal("a record whose acks are not confirmed is settled: its owner may yet give it up")
	}
	<-seen
	if err := s.Confirmed(ctx, r); err != nil {
		t.Fatal(err)
	}
	<-seen
	if _, settled := s.Recorded(11); !settled {
		t.Fatal("a record whose acks are confirmed is not settled")
	}
	if !sealedIn(s, 11) || !sealedIn(s, 12) {
		t.Fatal("confirmed sequences left the index")
	}
	r.State, r.Replied = record.Cleaned, 2 // answered
	if err := s.Update(ctx, r); err != nil {
		t.Fatal(err)
	}
	<-seen
	// A record abandoned before it was sent leaves at once: its messages are batched again.
	abandoned := sealed("r2", 21)
	if err := s.Create(ctx, abandoned); err != nil {
		t.Fatal(err)
	}
	abandoned.State = record.Cleaned
	if err := s.Update(ctx, abandoned); err != nil {
		t.Fatal(err)
	}
	if err := s.CaughtUp(ctx); err != nil || sealedIn(s, 21) {
		t.Fatalf("an abandoned record's message still indexed (%v)", err)
	}
	later, _, stopLater := watching(t, js, window) // a replica starting now
	defer stopLater()
	if !sealedIn(s, 11) || !sealedIn(later, 12) {
		t.Fatal("a record cleaned within the window left the index")
	}
	deadline := time.Now().Add(5 * time.Second)
	for sealedIn(s, 11) || sealedIn(later, 12) {
		if time.Now().After(deadline) {
			t.Fatal("a record cleaned longer than the window ago is still indexed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// watching opens a store on js with the given redelivery window and watches its records.
func watching(t *testing.T, js jetstream.JetStream, window time.Duration) (*jsstore.Store, <-chan *record.Record, func()) {
	t.Helper()
	s := openOn(t, js, window)
	seen, stop := watch(t, s)
	return s, seen, stop
}

// openOn opens a store on js with the given redelivery window.
func openOn(t *testing.T, js jetstream.JetStream, window time.Duration) *jsstore.Store {
	t.Helper()
	s, err := jsstore.Open(context.Background(), js, jsstore.Config{
		RecordsBucket: "records", RequestsBucket: "requests", BodiesBucket: "bodies", Replicas: 1, Storage: jetstream.FileStorage,
		Retention: 72 * time.Hour, RedeliveryWindow: window,
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// watch watches s's records until the returned stop, once the records there are now are read.
func watch(t *testing.T, s *jsstore.Store) (<-chan *record.Record, func()) {
	t.Helper()
	seen := make(chan *record.Record, 10)
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Watch(ctx, ready, func(r *record.Record) {
			select {
			case seen <- r:
			default: // a test that reads none does not stop the watch
			}
		})
	}()
	<-ready
	return seen, func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func TestDeleteDropsBothObjects(t *testing.T) {
	s, ctx := open(t), context.Background()
	r := sealed("r1", 1)
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Bodies(ctx, "r1"); err == nil {
		t.Fatal("bodies still readable after Delete")
	}
	if err := s.Delete(ctx, "r1"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
}

// A record written without its requests (a takeover writes it as the watch gave it) keeps the
// sequences of its unconfirmed messages: dropping them would let a redelivered message be
// batched a second time. The campaign found this (a freeze after sealing, before the acks).
func TestBareWriteKeepsUnconfirmedSequences(t *testing.T) {
	s, ctx := open(t), context.Background()
	seen := make(chan *record.Record, 10)
	ready := make(chan struct{})
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Watch(wctx, ready, func(r *record.Record) { seen <- r }) }()
	<-ready
	r := sealed("r1", 21, 22)
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	claimed := *<-seen // as the watch gives it: no requests
	if len(claimed.Requests) != 0 {
		t.Fatal("the watch gave requests")
	}
	claimed.Owner, claimed.Epoch = "b", 2
	if err := s.Update(ctx, &claimed); err != nil {
		t.Fatal(err)
	}
	<-seen
	if !sealedIn(s, 21) || !sealedIn(s, 22) {
		t.Fatal("a takeover's write dropped the record's unconfirmed sequences")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Finding 8: request objects expire with the record retention even when a crash skips their
// deletion (the bucket had no expiry).
func TestRequestObjectsExpire(t *testing.T) {
	js, err := jetstream.New(stacktest.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := jsstore.Open(ctx, js, jsstore.Config{RecordsBucket: "records", RequestsBucket: "requests", Replicas: 1,
		Storage: jetstream.FileStorage, Retention: 72 * time.Hour}, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	obj, err := js.ObjectStore(ctx, "requests")
	if err != nil {
		t.Fatal(err)
	}
	st, err := obj.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != 72*time.Hour {
		t.Fatalf("request objects live %s, want the 72h retention", st.TTL())
	}
}

// lossyKV is the records bucket as a cluster losing answers shows it (a leader change, a
// reconnect, a timeout): the next writes land, but their callers get an error; the next reads
// fail too.
type lossyKV struct {
	jetstream.KeyValue
	loseWrites, failReads int
}

func (k *lossyKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	n, err := k.KeyValue.Update(ctx, key, value, rev)
	if err == nil && k.loseWrites > 0 {
		k.loseWrites--
		return 0, context.DeadlineExceeded
	}
	return n, err
}

func (k *lossyKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if k.failReads > 0 {
		k.failReads--
		return nil, context.DeadlineExceeded
	}
	return k.KeyValue.Get(ctx, key)
}

// A write whose answer was lost but which landed is the writer's own: seen as done when the
// record can be read back at once, and not taken for another writer's when it cannot (the
// next write of the same copy goes on top of it). Seen in TestNATSClusterNodeLoss: both
// replicas left a record each for good after "context deadline exceeded" then a conflict.
func TestLostAnswerOfALandedWriteIsNoConflict(t *testing.T) {
	s, ctx := open(t), context.Background()
	kv := &lossyKV{}
	s.WrapKV(func(real jetstream.KeyValue) jetstream.KeyValue { kv.KeyValue = real; return kv })
	r := sealed("r1", 1, 2)
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	kv.loseWrites = 1
	r.State = record.Submitting
	if err := s.Update(ctx, r); err != nil {
		t.Fatalf("landed write, answer lost, record readable: %v", err)
	}
	if got, err := s.Head(ctx, r.ID); err != nil || got.Revision != r.Revision || got.State != record.Submitting {
		t.Fatalf("after the lost answer: stored %+v (%v), writer at revision %d", got, err, r.Revision)
	}
	kv.loseWrites, kv.failReads = 1, 1
	r.RemoteName = "batches/x"
	if err := s.Update(ctx, r); err == nil {
		t.Fatal("a write of unknown outcome reported done")
	}
	r.State = record.Submitted // the writer tries again from the same copy, further on
	if err := s.Update(ctx, r); err != nil {
		t.Fatalf("next write on top of its own landed one: %v", err)
	}
	if got, _ := s.Head(ctx, r.ID); got.State != record.Submitted || got.RemoteName != "batches/x" || got.Revision != r.Revision {
		t.Fatalf("stored %+v, writer at revision %d", got, r.Revision)
	}
	// Another writer in between is still a conflict, lost answer or not.
	kv.loseWrites, kv.failReads = 1, 1
	r.State = record.Finished
	if err := s.Update(ctx, r); err == nil {
		t.Fatal("a write of unknown outcome reported done")
	}
	other, _ := s.Head(ctx, r.ID)
	other.Owner, other.Epoch = "b", 2
	if err := s.Update(ctx, other); err != nil {
		t.Fatal(err)
	}
	r.State = record.Replied
	if err := s.Update(ctx, r); !errors.Is(err, record.ErrConflict) {
		t.Fatalf("write over another owner's: %v, want ErrConflict", err)
	}
}

// A replica's redelivery index follows a watch, which lags (most after a reconnect); CaughtUp
// waits until it holds every record written before the call, another replica's included, so
// that a message delivered again is checked against them all. Seen in TestNATSClusterNodeLoss:
// a replica reconnecting after a node loss batched 15 messages whose record the other had just
// written.
func TestCaughtUpSeesAnotherReplicasRecord(t *testing.T) {
	ctx := context.Background()
	js, err := jetstream.New(stacktest.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	s, _, stop := watching(t, js, time.Minute)
	defer stop()
	if err := s.CaughtUp(ctx); err != nil {
		t.Fatalf("empty bucket: %v", err)
	}
	other, _, stopOther := watching(t, js, time.Minute)
	defer stopOther()
	for i := range 50 {
		seq := uint64(100 + i)
		if err := other.Create(ctx, sealed(fmt.Sprintf("r%d", i), seq)); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := s.CaughtUp(cctx)
		cancel()
		if err != nil || !sealedIn(s, seq) {
			t.Fatalf("record %d: caught up %v, sealed %v", i, err, sealedIn(s, seq))
		}
	}
}

// Two replicas that recorded one message each (a consumer leader change delivered it to both):
// once each has caught up with its own write, the record written second sees the first, and
// the first sees nothing, on either replica.
func TestHeldElsewhereNamesTheSecondRecord(t *testing.T) {
	ctx := context.Background()
	js, err := jetstream.New(stacktest.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	a, _, stopA := watching(t, js, time.Minute)
	defer stopA()
	b, _, stopB := watching(t, js, time.Minute)
	defer stopB()
	first, second := sealed("first", 5, 6), sealed("second", 6, 7)
	if err := a.Create(ctx, first); err != nil {
		t.Fatal(err)
	}
	if err := b.Create(ctx, second); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*jsstore.Store{"a": a, "b": b} {
		if err := s.CaughtUp(ctx); err != nil {
			t.Fatal(err)
		}
		if s.HeldElsewhere(first) || !s.HeldElsewhere(second) {
			t.Errorf("replica %s: first held elsewhere %v, second %v; want false, true", name, s.HeldElsewhere(first), s.HeldElsewhere(second))
		}
	}
	// The first record's later writes keep it first; once it is gone (given up), the second
	// holds the message (a resubmission or split holds its requests' sequences the same way).
	if err := a.Confirmed(ctx, first); err != nil {
		t.Fatal(err)
	}
	if err := a.CaughtUp(ctx); err != nil || a.HeldElsewhere(first) || !a.HeldElsewhere(second) {
		t.Fatalf("after the first record's update: %v, first held elsewhere %v", err, a.HeldElsewhere(first))
	}
	first.State = record.Cleaned
	if err := a.Update(ctx, first); err != nil {
		t.Fatal(err)
	}
	if err := a.CaughtUp(ctx); err != nil || a.HeldElsewhere(second) || !sealedIn(a, 6) || !sealedIn(a, 7) || sealedIn(a, 5) {
		t.Fatalf("after the first record was given up: %v, second held elsewhere %v, 5/6/7 recorded %v %v %v",
			err, a.HeldElsewhere(second), sealedIn(a, 5), sealedIn(a, 6), sealedIn(a, 7))
	}
}

// sealedIn reports whether s indexes seq as recorded.
func sealedIn(s *jsstore.Store, seq uint64) bool {
	recorded, _ := s.Recorded(seq)
	return recorded
}
