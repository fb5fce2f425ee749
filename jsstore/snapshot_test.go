package jsstore_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/jsstore"
	"github.com/gembatch/gembatch/record"
)

// rewriting puts key's current value again and again until the test ends, as a replica does
// while it moves a record through its states. A watcher's marker for "every current value
// read" can then come before the other keys are delivered (nats-server#4824); CI met it in
// TestJobsShowCancel, whose cancelled record was missing from `gembatch jobs`.
func rewriting(t *testing.T, js jetstream.JetStream, bucket, key string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			_, _ = kv.Put(ctx, key, e.Value())
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// busyStore is a store holding records r0, r1 and r2, the last of them written all the while.
func busyStore(t *testing.T) *jsstore.Store {
	t.Helper()
	s, js := openJS(t)
	for i := range 3 {
		if err := s.Create(context.Background(), sealed(fmt.Sprintf("r%d", i), uint64(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	rewriting(t, js, "records", "r2")
	return s
}

// TestListSeesEveryRecordWhileOneIsWritten: a list taken while a record is being written holds
// every record that existed before it, each time.
func TestListSeesEveryRecordWhileOneIsWritten(t *testing.T) {
	s, ctx := busyStore(t), context.Background()
	for try := range 300 {
		recs, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 3 {
			t.Fatalf("list %d while r2 is written: %d records, want 3", try, len(recs))
		}
	}
}

// TestWatchIsReadyOnceEveryRecordIsSeen: Watch closes ready only once it has passed every
// record that existed before it (intake starts then, and checks redelivered messages against
// them), however busy the bucket.
func TestWatchIsReadyOnceEveryRecordIsSeen(t *testing.T) {
	s, ctx := busyStore(t), context.Background()
	for try := range 200 {
		var seen []string
		late := ""
		ready := make(chan struct{})
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- s.Watch(wctx, ready, func(r *record.Record) {
				select {
				case <-ready: // f runs on Watch's goroutine, which closes ready
					if !slices.Contains(seen, r.ID) && late == "" {
						late = r.ID
					}
				default:
					seen = append(seen, r.ID)
				}
			})
		}()
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			t.Fatalf("watch %d: not ready after 10s", try)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if late != "" {
			t.Fatalf("watch %d: %s came after ready", try, late)
		}
	}
}

// TestSweepKeepsTheObjectsOfARecordBeingWritten: the sweep's list of live records is taken
// while replicas write them; a record left out of it would lose its request lines, and its
// batch could not be answered.
func TestSweepKeepsTheObjectsOfARecordBeingWritten(t *testing.T) {
	s, ctx := busyStore(t), context.Background()
	for try := range 100 {
		if n, err := s.Sweep(ctx, time.Now().Add(time.Hour)); err != nil || n != 0 {
			t.Fatalf("sweep %d while r2 is written: deleted %d objects of live records (%v)", try, n, err)
		}
	}
}

// laggingKV is the records bucket as a lagging watch sees it. Held, its watch's entries wait;
// released, an entry whose key has a later revision waiting is dropped, as the server skips a
// message deleted (History 1 keeps one revision) before its consumer reached it, and the later
// revision comes lagDelay after the entries before it.
type laggingKV struct {
	jetstream.KeyValue
	held     chan struct{} // closed: release
	holding  atomic.Bool
	buffered atomic.Int32
}

const lagDelay = 300 * time.Millisecond

func (k *laggingKV) WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	w, err := k.KeyValue.WatchAll(ctx, opts...)
	if err != nil {
		return nil, err
	}
	lw := &laggingWatcher{KeyWatcher: w, out: make(chan jetstream.KeyValueEntry, 64)}
	go lw.run(k)
	return lw, nil
}

type laggingWatcher struct {
	jetstream.KeyWatcher
	out chan jetstream.KeyValueEntry
}

func (w *laggingWatcher) Updates() <-chan jetstream.KeyValueEntry { return w.out }

func (w *laggingWatcher) run(k *laggingKV) {
	defer close(w.out)
	var buf []jetstream.KeyValueEntry
	for {
		select {
		case e, ok := <-w.KeyWatcher.Updates():
			if !ok {
				return
			}
			if k.holding.Load() {
				buf = append(buf, e)
				k.buffered.Add(1)
				continue
			}
			w.out <- e
		case <-k.held:
			k.held = nil
			k.holding.Store(false)
			w.release(buf)
			buf = nil
		}
	}
}

func (w *laggingWatcher) release(buf []jetstream.KeyValueEntry) {
	skipped := map[string]bool{}
	for i, e := range buf {
		superseded := slices.ContainsFunc(buf[i+1:], func(l jetstream.KeyValueEntry) bool { return l != nil && l.Key() == e.Key() })
		switch {
		case superseded:
			skipped[e.Key()] = true
			continue
		case skipped[e.Key()]:
			time.Sleep(lagDelay)
		}
		w.out <- e
	}
}

// TestCaughtUpSeesARecordWhoseFirstRevisionWasSkipped: a replica's watch that lags may never
// see a record's first revision (a later write deleted it before the server sent it), and
// passes the sequence CaughtUp waits for before the record's next revision comes. CaughtUp
// must still wait for it: otherwise HeldElsewhere misses the record that holds a message
// first, and two replicas submit it.
func TestCaughtUpSeesARecordWhoseFirstRevisionWasSkipped(t *testing.T) {
	ctx := context.Background()
	a, js := openJS(t)
	b := openOn(t, js, time.Minute)
	lag := &laggingKV{held: make(chan struct{})}
	b.WrapKV(func(kv jetstream.KeyValue) jetstream.KeyValue { lag.KeyValue = kv; return lag })
	_, stop := watch(t, b)
	defer stop()
	lag.holding.Store(true)

	x, y := sealed("x", 10), sealed("y", 20)
	for _, r := range []*record.Record{x, y} {
		if err := a.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	caught := make(chan error, 1)
	go func() { caught <- b.CaughtUp(ctx) }()
	time.Sleep(100 * time.Millisecond) // CaughtUp has read the bucket's last sequence: y's
	if err := a.Confirmed(ctx, x); err != nil {
		t.Fatal(err)
	}
	for lag.buffered.Load() < 3 { // x, y, and x again
		time.Sleep(time.Millisecond)
	}
	close(lag.held)
	if err := <-caught; err != nil {
		t.Fatal(err)
	}
	if !sealedIn(b, 10) {
		t.Fatal("caught up without record x, whose first revision the watch skipped")
	}
}
