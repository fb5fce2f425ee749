package intake

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/internal/natstest"
	"github.com/gembatch/gembatch/record"
)

// BenchmarkConfirmAcks confirms the acknowledgements of batches of 10,000 messages pulled from
// one consumer, and reports the time a batch takes against a baseline measured in the same run:
// the same batch with a confirmation asked for every message (confirmEach).
func BenchmarkConfirmAcks(b *testing.B) {
	nc := natstest.NATS(b)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}})
	if err != nil {
		b.Fatal(err)
	}
	cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: -1})
	if err != nil {
		b.Fatal(err)
	}
	const n = 10000
	batch := func() []*ackHandle {
		for range n {
			if _, err := js.PublishAsync("s", []byte("x")); err != nil {
				b.Fatal(err)
			}
		}
		<-js.PublishAsyncComplete()
		msgs, err := cons.Fetch(n)
		if err != nil {
			b.Fatal(err)
		}
		var hs []*ackHandle
		for m := range msgs.Messages() {
			hs = append(hs, &ackHandle{nc: nc, reply: m.Reply(), consumer: "c"})
		}
		return hs
	}
	var base, last time.Duration
	for b.Loop() {
		hs := batch()
		t0 := time.Now()
		if err := confirmEach(ctx, nc, hs); err != nil {
			b.Fatal(err)
		}
		base += time.Since(t0)
		hs = batch()
		t0 = time.Now()
		if err := ConfirmAcks(ctx, requests(hs)); err != nil {
			b.Fatal(err)
		}
		last += time.Since(t0)
	}
	b.ReportMetric(float64(last.Milliseconds())/float64(b.N), "ms/batch")
	b.ReportMetric(float64(base.Milliseconds())/float64(b.N), "baseline-ms/batch")
	b.ReportMetric(float64(last)/float64(base), "ratio")
}

func requests(hs []*ackHandle) []record.Request {
	out := make([]record.Request, len(hs))
	for i, h := range hs {
		out[i].Msg = h
	}
	return out
}
