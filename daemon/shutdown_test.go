package daemon_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/embedded"
	"github.com/gembatch/gembatch/metrics"
)

// TestShutdownWithNATSGone: when the NATS server is already gone, SIGTERM finishes promptly
// (well within the grace period, instead of waiting out NATS timeouts), and every record
// stays: on the same store, the next start answers every request, those of the batch that was
// still open included.
func TestShutdownWithNATSGone(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "true"
	cfg.Instance = "gone"
	cfg.BatchMaxRequests = 5
	cfg.BatchMaxWait = time.Hour // the last two requests wait in an open batch
	cfg.ShutdownGrace = 20 * time.Second
	h := start(t, cfg, emulator.Options{JobDelay: 3 * time.Second})

	var keys []string
	for i := range 7 {
		key := fmt.Sprintf("g%d", i)
		keys = append(keys, key)
		h.send("gembatch.generate", key, generateBody("still there? "+key))
	}
	deadline := time.Now().Add(20 * time.Second)
	for h.metric("gembatch_submitter_batches_total", "outcome", "submitted") < 1 || h.metric("gembatch_accumulator_pending_requests") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the first batch was not submitted, or the last two requests not taken, within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	dir := filepath.Dir(h.NATS.StoreDir())
	h.NATS.Shutdown()
	h.NATS.WaitForShutdown()
	began := time.Now()
	err := h.Stop()
	took := time.Since(began)
	t.Logf("stopped %s after SIGTERM with NATS gone (grace %s)", took.Round(time.Millisecond), cfg.ShutdownGrace)
	if err != nil {
		t.Errorf("Run: %v", err)
	}
	if took > cfg.ShutdownGrace/2 {
		t.Errorf("shutdown with NATS gone took %s, over half the %s grace", took.Round(time.Millisecond), cfg.ShutdownGrace)
	}

	// The same store under a new server, and a new gembatchd of the same instance.
	ns, err := embedded.NATS(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	var mu sync.Mutex
	got := map[string]int{}
	if _, err := nc.Subscribe("test.reply.>", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		got[m.Header.Get("Gembatch-Key")]++
	}); err != nil {
		t.Fatal(err)
	}
	cfg.NATSURL = ns.ClientURL()
	cfg.GeminiBaseURL = h.http.URL
	cfg.BatchMaxWait = 200 * time.Millisecond
	cfg.AckWait = 2 * time.Second // the open batch's requests come back soon
	m := daemon.NewMain(cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), metrics.Build{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("second gembatchd: %v", err)
		}
	})
	deadline = time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == len(keys) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the restart %d of %d requests answered: %v", n, len(keys), got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
