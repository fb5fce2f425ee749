package daemon_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
)

// benchConfig is the daemon of the intake benchmarks: a live emulator whose jobs end a second
// after their create, so that a round's batches are answered after it is timed, and replies to
// a subject nobody reads. Between rounds the benchmark waits until every accepted request is
// answered (drained), so that memory stays bounded and no pending limit is reached whatever the
// -benchtime. (They once pointed at a dead API with fixed pending limits: past those limits a
// round waited forever.)
func benchConfig(durable bool) (daemon.Config, emulator.Options) {
	cfg := testConfig()
	cfg.Durable = strconv.FormatBool(durable)
	cfg.LogLevel = "error"
	cfg.BatchMaxRequests = 5000
	cfg.BatchMaxWait = 200 * time.Millisecond
	cfg.PollInterval = 50 * time.Millisecond
	cfg.PollMaxInterval = 500 * time.Millisecond
	return cfg, emulator.Options{JobDelay: time.Second}
}

// benchReply is where benchmark requests are answered: allowed (test.>), not subscribed.
const benchReply = "test.bench.void"

// drained waits, outside the timed part of a round, until every accepted request is answered.
func (h *harness) drained(b *testing.B) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for h.metric("gembatch_publisher_replies_published_total") < h.metric("gembatch_intake_requests_accepted_total") {
		if time.Now().After(deadline) {
			b.Fatal("accepted requests not answered within 5 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkIntake publishes 1 KiB requests to the daemon and reports accepted requests per
// second next to raw NATS publish→subscribe throughput of the same messages on the same server,
// measured in the same run, and their ratio.
func BenchmarkIntake(b *testing.B) {
	const n = 20000
	cfg, emu := benchConfig(false)
	h := start(b, cfg, emu)
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
			msg := &nats.Msg{Subject: "gembatch.generate", Reply: benchReply, Data: body, Header: nats.Header{}}
			msg.Header.Set("Gembatch-Key", fmt.Sprintf("r%d-%d", round, i))
			if err := h.nc.PublishMsg(msg); err != nil {
				b.Fatal(err)
			}
		}
		for h.metric("gembatch_intake_requests_accepted_total")-before < n {
			time.Sleep(20 * time.Millisecond) // a Gather costs about a millisecond: poll gently
		}
		daemon += time.Since(t0)
		h.drained(b)
	}
	rawRate := float64(n*round) / raw.Seconds()
	daemonRate := float64(n*round) / daemon.Seconds()
	b.ReportMetric(daemonRate, "accepted/s")
	b.ReportMetric(rawRate, "raw-nats-msgs/s")
	b.ReportMetric(daemonRate/rawRate, "ratio")
}

// BenchmarkDurableIntake publishes 1 KiB requests into the request stream with JetStream and
// reports requests per second that a durable gembatchd consumes, checks, batches, records and
// acks, next to a plain JetStream consumer that only acks the same messages from a stream on the
// same server, measured in the same run, and their ratio.
func BenchmarkDurableIntake(b *testing.B) {
	const n = 20000
	cfg, emu := benchConfig(true)
	h := start(b, cfg, emu)
	js, err := jetstream.New(h.nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	raw, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCHRAW", Subjects: []string{"bench.js.>"}})
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(generateBody(strings.Repeat("q", 1024-len(generateBody("")))))

	publish := func(subject string, round int, hdr func(*nats.Msg, int)) {
		for i := range n {
			msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
			hdr(msg, i)
			if _, err := js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			b.Fatal("publishes not acknowledged within a minute")
		}
	}
	var rawTime, daemonTime time.Duration
	var round int
	for b.Loop() {
		round++
		// Raw JetStream: publish, then a consumer that acks every message.
		var acked atomic.Int64
		done := make(chan struct{})
		cons, err := raw.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: fmt.Sprintf("c%d", round), AckPolicy: jetstream.AckExplicitPolicy,
			FilterSubject: fmt.Sprintf("bench.js.%d", round)})
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		cc, err := cons.Consume(func(m jetstream.Msg) {
			_ = m.Ack()
			if acked.Add(1) == n {
				close(done)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		publish(fmt.Sprintf("bench.js.%d", round), round, func(*nats.Msg, int) {})
		<-done
		rawTime += time.Since(t0)
		cc.Stop()

		// gembatchd: the same messages as requests, until every one is accepted into a batch.
		before := h.metric("gembatch_intake_requests_accepted_total")
		t0 = time.Now()
		publish("gembatch.stream.generate", round, func(m *nats.Msg, i int) {
			m.Header.Set("Gembatch-Key", fmt.Sprintf("d%d-%d", round, i))
			m.Header.Set("Gembatch-Reply", benchReply)
		})
		for h.metric("gembatch_intake_requests_accepted_total")-before < n || ackPending(b, js) > 0 {
			time.Sleep(20 * time.Millisecond)
		}
		daemonTime += time.Since(t0)
		h.drained(b)
	}
	rawRate := float64(n*round) / rawTime.Seconds()
	daemonRate := float64(n*round) / daemonTime.Seconds()
	b.ReportMetric(daemonRate, "accepted/s")
	b.ReportMetric(rawRate, "raw-js-acked/s")
	b.ReportMetric(daemonRate/rawRate, "ratio")
}

// ackPending is the number of requests delivered to gembatchd and not yet acked (not yet recorded).
func ackPending(b *testing.B, js jetstream.JetStream) int {
	c, err := js.Consumer(context.Background(), "GEMBATCH", "gembatch")
	if err != nil {
		b.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return info.NumAckPending + int(info.NumPending)
}
