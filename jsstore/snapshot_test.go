package jsstore_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/record"
)

// rewriting puts key's current value again and again until the test ends, as a replica does
// while it moves a record through its states. A watcher's marker for "every current value
// read" can then come before the other keys are delivered (nats-server#4824); CI met it in
// TestJobsShowCancel, whose cancelled record was missing from `gembatch jobs`.
func rewriting(t *testing.T, js jetstream.JetStream, bucket, key string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
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

// TestListSeesEveryRecordWhileOneIsWritten: a list taken while a record is being written holds
// every record that existed before it, each time.
func TestListSeesEveryRecordWhileOneIsWritten(t *testing.T) {
	s, js := openJS(t)
	ctx := context.Background()
	for i := range 3 {
		if err := s.Create(ctx, sealed(fmt.Sprintf("r%d", i), uint64(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	rewriting(t, js, "records", "r2")
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
	s, js := openJS(t)
	ctx := context.Background()
	for i := range 3 {
		if err := s.Create(ctx, sealed(fmt.Sprintf("r%d", i), uint64(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	rewriting(t, js, "records", "r2")
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
	s, js := openJS(t)
	ctx := context.Background()
	for i := range 3 {
		if err := s.Create(ctx, sealed(fmt.Sprintf("r%d", i), uint64(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	rewriting(t, js, "records", "r2")
	for try := range 100 {
		if n, err := s.Sweep(ctx, time.Now().Add(time.Hour)); err != nil || n != 0 {
			t.Fatalf("sweep %d while r2 is written: deleted %d objects of live records (%v)", try, n, err)
		}
	}
}
