package kvsnap_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/internal/kvsnap"
	"github.com/gembatch/gembatch/internal/natstest"
	"github.com/gembatch/gembatch/internal/stacktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, stacktest.LeakOptions()...) }

func bucket(t *testing.T, cfg jetstream.KeyValueConfig) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	js, err := jetstream.New(natstest.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return js, kv
}

func keys(t *testing.T, js jetstream.JetStream, kv jetstream.KeyValue) []string {
	t.Helper()
	var got []string
	err := kvsnap.Each(t.Context(), js, kv, func(e jetstream.KeyValueEntry) error {
		got = append(got, e.Key())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	return got
}

// TestEachSeesEveryKeyWhileOneIsWritten: with one key written all the while, the watcher's
// marker often comes before the keys after it; Each still gives every key, each once.
func TestEachSeesEveryKeyWhileOneIsWritten(t *testing.T) {
	js, kv := bucket(t, jetstream.KeyValueConfig{Bucket: "b", History: 1})
	ctx := t.Context()
	for _, k := range []string{"a", "b", "c"} {
		if _, err := kv.Put(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	wctx, stop := context.WithCancel(ctx)
	written := make(chan struct{})
	go func() {
		defer close(written)
		for wctx.Err() == nil {
			_, _ = kv.Put(wctx, "c", []byte("c"))
		}
	}()
	defer func() { stop(); <-written }()
	for try := range 300 {
		if got := keys(t, js, kv); !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Fatalf("read %d while c is written: %v", try, got)
		}
	}
}

// TestEachLeavesOutDeletedKeys: a deleted key's marker is a message of the stream, not a value.
func TestEachLeavesOutDeletedKeys(t *testing.T) {
	js, kv := bucket(t, jetstream.KeyValueConfig{Bucket: "b", History: 1})
	ctx := t.Context()
	for i := range 5 {
		if _, err := kv.Put(ctx, fmt.Sprint(i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "1"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "3"); err != nil {
		t.Fatal(err)
	}
	if got := keys(t, js, kv); !slices.Equal(got, []string{"0", "2", "4"}) {
		t.Fatalf("keys %v, want 0 2 4", got)
	}
	empty, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "empty"})
	if err != nil {
		t.Fatal(err)
	}
	if got := keys(t, js, empty); len(got) != 0 {
		t.Fatalf("empty bucket: %v", got)
	}
}

// TestAnExpiredKeyIsNotWaitedFor: a key that expires between Begin and the watch is never
// delivered; the watch is late for it until DropGone finds it gone.
func TestAnExpiredKeyIsNotWaitedFor(t *testing.T) {
	js, kv := bucket(t, jetstream.KeyValueConfig{Bucket: "b", TTL: 300 * time.Millisecond})
	ctx := t.Context()
	if _, err := kv.Put(ctx, "old", []byte("v")); err != nil {
		t.Fatal(err)
	}
	start, err := kvsnap.Begin(ctx, js, kv)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := kv.Get(ctx, "old"); err != nil {
			break // expired
		}
		time.Sleep(50 * time.Millisecond)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	start.Saw(<-w.Updates())
	if start.Done() || !start.Late() {
		t.Fatalf("after the marker alone: done %v, late %v; want false, true", start.Done(), start.Late())
	}
	if err := start.DropGone(ctx); err != nil {
		t.Fatal(err)
	}
	if !start.Done() {
		t.Fatal("not done once the expired key is dropped")
	}
}
