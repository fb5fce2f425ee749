package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/stacktest"
	"github.com/gembatch/gembatch/metrics"
	"github.com/gembatch/gembatch/record"
)

// BenchmarkScrape measures a Prometheus scrape of a durable gembatchd whose records bucket holds
// 10,000 finished records (kept for RECORD_RETENTION): the whole /metrics over HTTP, which
// reads the live records from the ownership coordinator's index, next to the listing of the
// bucket a scrape made before (every record decoded), timed in the same run.
func BenchmarkScrape(b *testing.B) {
	cfg := stacktest.Config()
	cfg.Durable = "true"
	s := stacktest.Start(b, cfg, emulator.Options{})
	nc, err := nats.Connect(s.NATS.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	fillRecords(b, nc, cfg.RecordsBucket, 10000)
	url := "http://" + s.Main.MetricsAddr + "/metrics"

	listing := prometheus.NewRegistry()
	listing.MustRegister(metrics.NewStoreCollector(s.Main.Store, time.Now))
	var scrape, list time.Duration
	for range b.N {
		start := time.Now()
		resp, err := http.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		scrape += time.Since(start)
		start = time.Now()
		if _, err := listing.Gather(); err != nil {
			b.Fatal(err)
		}
		list += time.Since(start)
	}
	b.ReportMetric(float64(scrape.Microseconds())/float64(b.N)/1000, "ms/scrape")
	b.ReportMetric(float64(list.Microseconds())/float64(b.N)/1000, "ms/bucket-listing")
	b.ReportMetric(float64(scrape)/float64(list), "ratio")
}

// fillRecords writes finished records, cleaned by a replica that is gone.
func fillRecords(b *testing.B, nc *nats.Conn, bucket string, n int) {
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		rec := record.Record{ID: fmt.Sprintf("old-%05d", i), Group: record.Group{Kind: gemini.KindGenerate, Model: "models/gemini-2.5-flash"},
			State: record.Cleaned, Sealed: time.Now().Add(-time.Hour), Count: 1000, RemoteName: fmt.Sprintf("batches/old%05d", i),
			RemoteState: gemini.StateSucceeded, Owner: "gone", Epoch: 1}
		data, _ := json.Marshal(&rec)
		if _, err := kv.Put(ctx, rec.ID, data); err != nil {
			b.Fatal(err)
		}
	}
}
