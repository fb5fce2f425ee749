package jsstore_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/record"
)

// BenchmarkInput writes one batch of 5,000 requests of 1 KiB as its input, request by request
// as the accumulator does, and reports its time against a baseline measured in the same run:
// one object put of the same JSONL bytes, built beforehand (what writing the bodies once at
// seal costs the object store). The ratio is the price of the copy into chunks.
func BenchmarkInput(b *testing.B) {
	s, js := openJS(b)
	ctx := context.Background()
	obj, err := js.ObjectStore(ctx, "requests")
	if err != nil {
		b.Fatal(err)
	}
	reqs := make([]record.Request, 5000)
	for i := range reqs {
		reqs[i] = request(fmt.Sprintf("k%d", i), 1024)
	}
	file := wantInput(b, reqs)
	var base, input time.Duration
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		if _, err := obj.Put(ctx, jetstream.ObjectMeta{Name: fmt.Sprintf("base%d", i)}, bytes.NewReader(file)); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		in := s.OpenInput(fmt.Sprintf("b%d", i), false)
		for _, q := range reqs {
			if _, err := in.Append(q); err != nil {
				b.Fatal(err)
			}
		}
		if err := in.Seal(&record.Record{}); err != nil {
			b.Fatal(err)
		}
		base, input = base+t1.Sub(t0), input+time.Since(t1)
	}
	n := float64(b.N * len(reqs))
	b.ReportMetric(n/input.Seconds(), "requests/s")
	b.ReportMetric(n/base.Seconds(), "baseline-requests/s")
	b.ReportMetric(float64(input)/float64(base), "ratio-to-one-put")
}
