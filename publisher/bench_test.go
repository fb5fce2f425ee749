package publisher_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/internal/stacktest"
	"github.com/gembatch/gembatch/publisher"
)

// fanOut times n replies from the first published to the last received by a subscriber on
// its own connection; publish sends reply i on the given subject.
func fanOut(b *testing.B, sub *nats.Conn, subject string, n int, publish func(i int)) time.Duration {
	var got atomic.Int64
	done := make(chan struct{})
	s, err := sub.Subscribe(subject, func(*nats.Msg) {
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Unsubscribe()
	_ = s.SetPendingLimits(-1, -1)
	if err := sub.Flush(); err != nil { // the subscription is in place before the clock starts
		b.Fatal(err)
	}
	t0 := time.Now()
	for i := range n {
		publish(i)
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		b.Fatalf("%d of %d replies received", got.Load(), n)
	}
	return time.Since(t0)
}

// BenchmarkReplyFanOut publishes a batch's 10,000 replies (1 KiB responses) with Publisher and
// reports replies/s next to two baselines on the same server in the same run, interleaved:
// raw publishes of the same messages built beforehand (same headers and body), and raw
// publishes of the bodies alone, with no headers.
func BenchmarkReplyFanOut(b *testing.B) {
	const n = 10000
	nc := stacktest.NATS(b)
	sub, err := nats.Connect(nc.ConnectedUrl())
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	pub := publisher.New(nc, nil)
	response := []byte(`{"candidates":[{"content":{"parts":[{"text":"` + strings.Repeat("a", 900) + `"}],"role":"model"}}]}`)
	replies := make([]publisher.Reply, n)
	for i := range replies {
		replies[i] = publisher.Reply{Key: fmt.Sprintf("request-%06d", i), MsgID: fmt.Sprintf("ID%020d", i), Batch: "batches/abcdefghijklmnop", Response: response}
	}
	built := make([]*nats.Msg, n)
	for i, r := range replies {
		m := &nats.Msg{Data: publisher.Body(r.Key, r.Response, nil), Header: nats.Header{}}
		m.Header.Set(publisher.HeaderKey, r.Key)
		m.Header.Set(publisher.HeaderStatus, "ok")
		m.Header.Set(publisher.HeaderBatch, r.Batch)
		m.Header.Set(publisher.HeaderMsgID, r.MsgID)
		built[i] = m
	}
	var withHeaders, bodies, gembatch time.Duration
	round := 0
	for b.Loop() {
		round++
		subject := fmt.Sprintf("bench.raw.%d", round)
		withHeaders += fanOut(b, sub, subject, n, func(i int) {
			built[i].Subject = subject
			if err := nc.PublishMsg(built[i]); err != nil {
				b.Fatal(err)
			}
		})
		subject = fmt.Sprintf("bench.body.%d", round)
		bodies += fanOut(b, sub, subject, n, func(i int) {
			if err := nc.Publish(subject, built[i].Data); err != nil {
				b.Fatal(err)
			}
		})
		subject = fmt.Sprintf("bench.gembatch.%d", round)
		gembatch += fanOut(b, sub, subject, n, func(i int) {
			r := replies[i]
			r.Subject = subject
			if err := pub.Publish(r); err != nil {
				b.Fatal(err)
			}
		})
	}
	rate := func(d time.Duration) float64 { return float64(n*round) / d.Seconds() }
	allocs := testing.AllocsPerRun(1000, func() {
		r := replies[0]
		r.Subject = "bench.allocs"
		_ = pub.Publish(r)
	})
	b.ReportMetric(rate(gembatch), "replies/s")
	b.ReportMetric(rate(withHeaders), "raw-msgs/s")
	b.ReportMetric(rate(bodies), "raw-bodies/s")
	b.ReportMetric(rate(gembatch)/rate(withHeaders), "ratio-vs-raw-msgs")
	b.ReportMetric(rate(gembatch)/rate(bodies), "ratio-vs-raw-bodies")
	built[0].Subject = "bench.allocs"
	rawAllocs := testing.AllocsPerRun(1000, func() { _ = nc.PublishMsg(built[0]) })
	b.ReportMetric(allocs, "allocs/reply")
	b.ReportMetric(rawAllocs, "allocs/raw-msg")
}
