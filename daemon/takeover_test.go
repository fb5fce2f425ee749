package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/jsstore"
	"github.com/gembatch/gembatch/metrics"
	"github.com/gembatch/gembatch/ownership"
)

// replica starts a second gembatchd on the harness's NATS and emulator.
func replica(t *testing.T, h *harness, cfg daemon.Config) (*daemon.Main, context.CancelFunc) {
	t.Helper()
	cfg.NATSURL = h.NATS.ClientURL()
	cfg.GeminiBaseURL = h.API.URL
	m := daemon.NewMain(cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), metrics.Build{Version: "test"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("replica %s: %v", cfg.Instance, err)
		}
	})
	select {
	case <-m.Ready:
	case err := <-done:
		t.Fatalf("replica %s did not start: %v", cfg.Instance, err)
	}
	return m, cancel
}

// Finding 6: a replica that takes over another's submitted jobs reads no request bodies (only
// the requests' keys and reply subjects, when it answers), and answers every request once.
func TestTakeoverOfSubmittedJobsReadsNoBodies(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "true"
	cfg.Instance = "a"
	cfg.LeaseTTL = 2 * time.Second
	cfg.BatchMaxRequests = 10
	h := start(t, cfg, emulator.Options{JobDelay: 4 * time.Second})
	var keys []string
	for i := range 50 {
		k := fmt.Sprintf("k%d", i)
		keys = append(keys, k)
		h.send("gembatch.generate", k, generateBody("take me over"))
	}
	deadline := time.Now().Add(20 * time.Second)
	for h.metric("gembatch_submitter_batches_total", "outcome", "submitted") < 5 {
		if time.Now().After(deadline) {
			t.Fatal("the five batches were not submitted by a")
		}
		time.Sleep(50 * time.Millisecond)
	}
	bcfg := cfg
	bcfg.Instance = "b"
	b, _ := replica(t, h, bcfg)
	if err := h.shutdown(); err != nil { // a stops with its five jobs running
		t.Fatal(err)
	}
	replies := h.waitReplies(keys, 30*time.Second)
	for _, k := range keys {
		if n := len(replies[k]); n != 1 {
			t.Errorf("key %s answered %d times", k, n)
		}
	}
	meta, bodies := b.Store.(*jsstore.Store).ObjectReads()
	claimed, err := metrics.Sum(b.Registry, "gembatch_ownership_claimed_records_total")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("b claimed %v records, read %d request-metadata objects and %d body objects", claimed, meta, bodies)
	if claimed < 5 {
		t.Fatalf("b claimed %v records, want the 5 submitted", claimed)
	}
	if bodies != 0 {
		t.Fatalf("b read %d body objects taking over submitted jobs, want 0", bodies)
	}
}

// Finding 2, the second half: a second process started under the same GEMBATCH_INSTANCE is a
// new owner (a new epoch), not a sharer: the first one's lease renewal fails, and it stops with
// an error naming the cause instead of working on records the second now owns.
func TestSameInstanceNameIsANewOwner(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "true"
	cfg.Instance = "same"
	cfg.LeaseTTL = time.Second
	h := start(t, cfg, emulator.Options{})
	second := cfg
	second.NATSURL, second.GeminiBaseURL = h.NATS.ClientURL(), h.API.URL
	m := daemon.NewMain(second, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), metrics.Build{Version: "test"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-m.Ready
	time.Sleep(2 * cfg.LeaseTTL) // the first renews within a third of it, and finds its key taken
	err := h.shutdown()
	if !errors.Is(err, ownership.ErrSuperseded) {
		t.Fatalf("the first process ended with %v, want ErrSuperseded", err)
	}
	h.send("gembatch.generate", "after", generateBody("still served"))
	h.waitReplies([]string{"after"}, 20*time.Second)
}
