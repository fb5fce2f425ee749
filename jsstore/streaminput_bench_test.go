package jsstore_test

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/jsstore"
	"github.com/gembatch/gembatch/record"
)

// streamRecord publishes reqs to a stream of their own and returns a store that reads bodies
// back from it, with the record InStream that names them.
func streamRecord(tb testing.TB, js jetstream.JetStream, reqs []record.Request) (*jsstore.Store, *record.Record) {
	tb.Helper()
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "REQS", Subjects: []string{"reqs.>"}}); err != nil {
		tb.Fatal(err)
	}
	rec := &record.Record{ID: "streamed", InStream: true}
	for _, q := range reqs {
		ack, err := js.Publish(ctx, "reqs.generate", q.Body)
		if err != nil {
			tb.Fatal(err)
		}
		q.Seq, q.Body = ack.Sequence, nil
		rec.Requests = append(rec.Requests, q)
		rec.Count, rec.Bytes = rec.Count+1, rec.Bytes+q.Size
	}
	s, err := jsstore.Open(ctx, js, jsstore.Config{RecordsBucket: "records", RequestsBucket: "requests", BodiesBucket: "bodies",
		Replicas: 1, Storage: jetstream.FileStorage, Retention: time.Hour, Stream: "REQS"}, zerolog.Nop())
	if err != nil {
		tb.Fatal(err)
	}
	return s, rec
}

// BenchmarkReadBack reads the input of a batch of 10,000 requests of 1 KiB back from the
// request stream, and reports its time against a baseline measured in the same run: reading
// the same input from the chunks it was copied into before.
func BenchmarkReadBack(b *testing.B) {
	_, js := openJS(b)
	reqs := make([]record.Request, 10000)
	for i := range reqs {
		reqs[i] = request(fmt.Sprintf("k%d", i), 1024)
	}
	s, streamed := streamRecord(b, js, reqs)
	chunked := &record.Record{ID: "chunked"}
	in := s.OpenInput(chunked.ID, false)
	for _, q := range reqs {
		if _, err := in.Append(q); err != nil {
			b.Fatal(err)
		}
	}
	if err := in.Seal(chunked); err != nil {
		b.Fatal(err)
	}
	read := func(rec *record.Record) time.Duration {
		t0 := time.Now()
		rd, err := s.Input(context.Background(), rec)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rd)
		_ = rd.Close()
		if err != nil || n != streamed.Bytes {
			b.Fatalf("read %d of %d bytes: %v", n, streamed.Bytes, err)
		}
		return time.Since(t0)
	}
	var base, back time.Duration
	for b.Loop() {
		base += read(chunked)
		back += read(streamed)
	}
	n := float64(b.N * len(reqs))
	b.ReportMetric(n/back.Seconds(), "requests/s")
	b.ReportMetric(n/base.Seconds(), "baseline-requests/s")
	b.ReportMetric(float64(back)/float64(base), "ratio-to-chunks")
}
