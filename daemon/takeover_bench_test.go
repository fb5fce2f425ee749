package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/embedded"
	"github.com/gembatch/gembatch/metrics"
	"github.com/gembatch/gembatch/record"
)

// BenchmarkTakeover measures issue 12's takeover figure: with 10,000 finished records in the
// bucket, a replica running 100 jobs is killed (SIGKILL, the real binary), and the time until a
// survivor polls all 100 is reported with the survivor's peak heap meanwhile.
func BenchmarkTakeover(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "gembatchd")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/gembatchd").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	for range b.N {
		took, heap := takeoverRound(b, bin)
		b.ReportMetric(took.Seconds(), "s/takeover")
		b.ReportMetric(float64(heap)/(1<<20), "MiB-peak-heap")
	}
}

func takeoverRound(b *testing.B, bin string) (time.Duration, uint64) {
	ns, err := embedded.NATS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Shutdown()
	emu := emulator.New(emulator.Options{JobDelay: 10 * time.Minute})
	api := httptest.NewServer(emu)
	defer api.Close()
	defer emu.Close()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	cfg := daemon.Defaults()
	storeFinished(b, nc, cfg, 10000)

	dead := exec.Command(bin)
	dead.Env = append(os.Environ(), "GEMBATCH_NATS_URL="+ns.ClientURL(), "GEMBATCH_GEMINI_BASE_URL="+api.URL,
		"GEMBATCH_DURABLE=true", "GEMBATCH_INSTANCE=dead", "GEMBATCH_METRICS_ADDR=127.0.0.1:0", "GEMBATCH_LOG_LEVEL=warn",
		"GEMBATCH_BATCH_MAX_REQUESTS=1", "GEMBATCH_LEASE_TTL=5s")
	dead.Stderr = os.Stderr
	if err := dead.Start(); err != nil {
		b.Fatal(err)
	}
	defer dead.Process.Kill()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) { // its consumer exists once it takes requests
		if _, err := js.Consumer(context.Background(), cfg.Stream, cfg.Consumer); err == nil {
			break
		}
		if time.Since(start) > 30*time.Second {
			b.Fatal("the first replica did not start within 30s")
		}
	}
	for i := range 100 {
		msg := &nats.Msg{Subject: "gembatch.generate", Reply: "_INBOX.bench.reply", Data: []byte(generateBody(fmt.Sprint(i))), Header: nats.Header{}}
		msg.Header.Set("Gembatch-Key", fmt.Sprintf("k%d", i))
		if err := nc.PublishMsg(msg); err != nil {
			b.Fatal(err)
		}
	}
	for start := time.Now(); len(emu.CreateCounts()) < 100; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			b.Fatalf("the first replica created %d jobs of 100 in a minute", len(emu.CreateCounts()))
		}
	}
	time.Sleep(time.Second) // the records name their jobs

	scfg := cfg
	scfg.NATSURL, scfg.GeminiBaseURL, scfg.Durable, scfg.Instance = ns.ClientURL(), api.URL, "true", "survivor"
	scfg.MetricsAddr, scfg.LeaseTTL, scfg.PollInterval = "127.0.0.1:0", 5*time.Second, 100*time.Millisecond
	m := daemon.NewMain(scfg, zerolog.Nop(), metrics.Build{Version: "bench"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-m.Ready

	var peak uint64
	var mu sync.Mutex
	stop := make(chan struct{})
	go func() {
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			mu.Lock()
			peak = max(peak, ms.HeapInuse)
			mu.Unlock()
		}
	}()
	_ = dead.Process.Signal(syscall.SIGKILL)
	_, _ = dead.Process.Wait()
	killed := time.Now()
	b.ResetTimer()
	for {
		watched, err := metrics.Sum(m.Registry, "gembatch_poller_watched_batches")
		if err != nil {
			b.Fatal(err)
		}
		if polls, _ := metrics.Sum(m.Registry, "gembatch_poller_polls_total"); watched >= 100 && polls >= 100 {
			break
		}
		if time.Since(killed) > 2*time.Minute {
			b.Fatal("the survivor did not poll the dead replica's 100 jobs within 2m")
		}
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(killed)
	b.StopTimer()
	close(stop)
	mu.Lock()
	defer mu.Unlock()
	return took, peak
}

// storeFinished writes n cleaned records, as a week of finished batches leaves them.
func storeFinished(b *testing.B, nc *nats.Conn, cfg daemon.Config, n int) {
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: cfg.RecordsBucket, History: 1, TTL: cfg.RecordRetention})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	for i := range n {
		rec := record.Record{ID: fmt.Sprintf("old-%05d", i), Group: record.Group{Kind: gemini.KindGenerate, Model: "models/gemini-2.5-flash"},
			State: record.Cleaned, Sealed: now.Add(-time.Hour), Count: 1000, RemoteName: fmt.Sprintf("batches/old%05d", i),
			RemoteState: gemini.StateSucceeded, Owner: "gone", Epoch: 1}
		data, _ := json.Marshal(&rec)
		if _, err := kv.Put(ctx, rec.ID, data); err != nil {
			b.Fatal(err)
		}
	}
}
