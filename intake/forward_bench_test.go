package intake_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/internal/stacktest"
)

// BenchmarkForwardEveryReplica measures what durable mode's forwarding of plain core requests
// costs: every replica stores each request it receives under one Nats-Msg-Id, and the stream's
// duplicate window (2 minutes) keeps one. Against the baseline of one plain JetStream publish per
// request, in the same run on the same in-process server: the time per request with 1, 2 and 3
// replicas forwarding, and the heap growth per request over 50,000 requests (this process is
// the server: the stored messages' block cache and, with ids, the window; their difference to
// the baseline is what the window holds).
func BenchmarkForwardEveryReplica(b *testing.B) {
	const n = 50000
	body := []byte(strings.Repeat("q", 1024))
	for _, copies := range []int{0, 1, 2, 3} { // 0: no Nats-Msg-Id, one publish: the baseline
		name := fmt.Sprintf("replicas=%d", copies)
		if copies == 0 {
			name = "baseline-no-id"
		}
		b.Run(name, func(b *testing.B) {
			var perReq, heapPer float64
			for range b.N {
				d, h := forwardRound(b, n, copies, body)
				perReq += d.Seconds() / n
				heapPer += h / n
			}
			b.ReportMetric(perReq/float64(b.N)*1e6, "µs/request")
			b.ReportMetric(heapPer/float64(b.N), "heap-B/request")
		})
	}
}

// forwardRound publishes n requests to a fresh stream, each copies times under its own id (or
// once without id), waits for every PubAck, and returns the time and the heap growth.
func forwardRound(b *testing.B, n, copies int, body []byte) (time.Duration, float64) {
	b.Helper()
	nc := stacktest.NATS(b)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "FWD", Subjects: []string{"fwd"}, Duplicates: 2 * time.Minute}); err != nil {
		b.Fatal(err)
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	t0 := time.Now()
	for i := range n {
		for range max(copies, 1) {
			m := &nats.Msg{Subject: "fwd", Data: body}
			opts := []jetstream.PublishOpt{jetstream.WithStallWait(time.Minute)}
			if copies > 0 {
				opts = append(opts, jetstream.WithMsgID(fmt.Sprintf("%064x", i)))
			}
			if _, err := js.PublishMsgAsync(m, opts...); err != nil {
				b.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		b.Fatal("publishes not acknowledged")
	}
	took := time.Since(t0)
	grew := float64(heap()) - float64(before)
	return took, grew
}
