package daemon_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/emulator"
)

// BenchmarkIntake publishes 1 KiB requests to the daemon and reports accepted requests per
// second next to raw NATS publish→subscribe throughput of the same messages on the same server,
// measured in the same run, and their ratio.
func BenchmarkIntake(b *testing.B) {
	const n = 20000
	cfg := testConfig()
	cfg.BatchMaxRequests = 5000
	cfg.BatchMaxWait = time.Second
	cfg.MaxPending = 1 << 30
	cfg.PollInterval = time.Second
	cfg.PollMaxInterval = 2 * time.Second
	h := start(b, cfg, emulator.Options{JobDelay: 10 * time.Millisecond})
	body := []byte(generateBody(strings.Repeat("q", 1024-len(generateBody("")))))

	var raw, daemon time.Duration
	var round int
	for b.Loop() {
		round++
		// Raw NATS: the same messages to a plain subscriber.
		var got atomic.Int64
		done := make(chan struct{})
		sub, err := h.nc.Subscribe(fmt.Sprintf("bench.raw.%d", round), func(*nats.Msg) {
			if got.Add(1) == n {
				close(done)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		_ = sub.SetPendingLimits(-1, -1)
		t0 := time.Now()
		for range n {
			if err := h.nc.PublishRequest(sub.Subject, "test.reply.raw", body); err != nil {
				b.Fatal(err)
			}
		}
		<-done
		raw += time.Since(t0)
		_ = sub.Unsubscribe()

		// The daemon: the same messages as requests, timed until every one is accepted.
		before := h.metric("gembatch_intake_requests_accepted_total")
		t0 = time.Now()
		for i := range n {
			msg := &nats.Msg{Subject: "gembatch.generate", Reply: "test.reply.bench", Data: body, Header: nats.Header{}}
			msg.Header.Set("Gembatch-Key", fmt.Sprintf("r%d-%d", round, i))
			if err := h.nc.PublishMsg(msg); err != nil {
				b.Fatal(err)
			}
		}
		for h.metric("gembatch_intake_requests_accepted_total")-before < n {
			time.Sleep(20 * time.Millisecond) // a Gather costs about a millisecond: poll gently
		}
		daemon += time.Since(t0)
	}
	rawRate := float64(n*round) / raw.Seconds()
	daemonRate := float64(n*round) / daemon.Seconds()
	b.ReportMetric(daemonRate, "accepted/s")
	b.ReportMetric(rawRate, "raw-nats-msgs/s")
	b.ReportMetric(daemonRate/rawRate, "ratio")
}
