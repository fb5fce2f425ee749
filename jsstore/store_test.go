package jsstore_test

import (
	"context"
	"errors"
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

// Finding 5: a redelivered message of a recorded batch is recognised until its acks are
// confirmed; after that the stream cannot deliver it again, and the index lets it go.
func TestSealedIndexCoversUnconfirmedRecords(t *testing.T) {
	s, ctx := open(t), context.Background()
	seen := make(chan *record.Record, 10)
	ready := make(chan struct{})
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Watch(wctx, ready, func(r *record.Record) { seen <- r }) }()
	<-ready
	r := sealed("r1", 11, 12)
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	if !s.Sealed(11) || !s.Sealed(12) || s.Sealed(13) {
		t.Fatal("unconfirmed sequences not indexed")
	}
	<-seen
	if err := s.Confirmed(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got := <-seen; !got.Acked {
		t.Fatalf("watch saw %+v", got)
	}
	if s.Sealed(11) || s.Sealed(12) {
		t.Fatal("confirmed sequences still indexed")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
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
	if !s.Sealed(21) || !s.Sealed(22) {
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
