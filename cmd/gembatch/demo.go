package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/embedded"
	"github.com/gembatch/gembatch/metrics"
)

const demoUsage = `Usage: gembatch demo [flags]

Runs the whole pipeline on this machine with nothing else installed: an in-process NATS
server, the Gemini emulator (no API key needed) and gembatchd. A producer then sends sample
requests: generate requests to two models (one with prompts large enough to go to the API as
an uploaded JSONL file), embed requests, a few image requests (their batch goes by file, and
their answers, larger than a NATS message, come back by reference to the object store), and
one malformed request. The demo shows progress, writes the images it gets back to a folder it
names, prints sample replies and a summary, and exits 0 when every request has its reply.

Example:
  go run ./cmd/gembatch demo
  go run ./cmd/gembatch demo --job-delay 5s -v --images-dir ./pictures

Flags:
`

// demoRequest is one request the demo producer sends.
type demoRequest struct {
	key, subject, model, body string
	wantError                 bool
}

func demo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	jobDelay := fs.Duration("job-delay", 2*time.Second, "how long each emulated batch job takes")
	flash := fs.Int("requests", 220, "generate requests for gemini-2.5-flash (batches close at 100)")
	verbose := fs.Bool("v", false, "show gembatchd's log")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up waiting for replies after this long")
	var img demoImages
	fs.IntVar(&img.count, "images", 4, "image-generation requests")
	fs.IntVar(&img.bytes, "image-bytes", emulator.DefaultImageBytes, "size of each emulated image (above the NATS server's 1 MB max payload by default)")
	fs.StringVar(&img.dir, "images-dir", "", "folder the images are written to (default: a new temporary folder, kept)")
	fs.Usage = func() {} // flagError prints it
	if err := fs.Parse(args); err != nil {
		return flagError(fs, err, demoUsage, stdout, stderr)
	}
	if err := runDemo(ctx, stdout, stderr, *jobDelay, *flash, img, *verbose, *timeout); err != nil {
		fmt.Fprintf(stderr, "gembatch demo: %v\n", err)
		return 1
	}
	return 0
}

func runDemo(ctx context.Context, stdout, stderr io.Writer, jobDelay time.Duration, flash int, img demoImages, verbose bool, timeout time.Duration) error {
	started := time.Now()
	dir, err := os.MkdirTemp("", "gembatch-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	ns, err := embedded.NATS(dir)
	if err != nil {
		return err
	}
	defer ns.WaitForShutdown()
	defer ns.Shutdown()

	emu := emulator.New(emulator.Options{JobDelay: jobDelay, ImageBytes: img.bytes})
	defer emu.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	emuSrv := &http.Server{Handler: emu, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = emuSrv.Serve(ln) }()
	defer emuSrv.Close()

	cfg := daemon.Defaults()
	cfg.NATSURL = ns.ClientURL()
	cfg.GeminiBaseURL = "http://" + ln.Addr().String()
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.BatchMaxRequests = 100
	cfg.BatchMaxWait = time.Second
	cfg.InlineMaxBytes = 256 << 10
	cfg.PollInterval = 250 * time.Millisecond
	cfg.PollMaxInterval = time.Second
	logLevel := zerolog.ErrorLevel
	if verbose {
		logLevel = zerolog.InfoLevel
	}
	// Colour only on a terminal, as gembatchd's console format: not in a pipe or a file.
	console := zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.TimeOnly, NoColor: !isTerminal(stderr)}
	log := zerolog.New(console).Level(logLevel).With().Timestamp().Logger()
	d := daemon.NewMain(cfg, log, metrics.Build{Version: "demo"})
	dctx, stopDaemon := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(dctx) }()
	defer func() { stopDaemon(); <-done }()
	select {
	case <-d.Ready:
	case err := <-done:
		done <- err
		return fmt.Errorf("gembatchd did not start: %w", err)
	}
	fmt.Fprintf(stderr, "NATS %s · Gemini emulator %s (jobs take %s) · gembatchd metrics http://%s/metrics\n",
		ns.ClientURL(), cfg.GeminiBaseURL, jobDelay, d.MetricsAddr)

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	replies := map[string]*nats.Msg{}
	var mu sync.Mutex
	sub, err := nc.Subscribe("_INBOX.demo.>", func(m *nats.Msg) {
		mu.Lock()
		replies[m.Header.Get("Gembatch-Key")] = m
		mu.Unlock()
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()

	reqs := append(demoRequests(flash), img.requests()...)
	for _, r := range reqs {
		msg := &nats.Msg{Subject: r.subject, Reply: "_INBOX.demo." + r.key, Data: []byte(r.body), Header: nats.Header{}}
		msg.Header.Set("Gembatch-Key", r.key)
		if r.model != "" {
			msg.Header.Set("Gembatch-Model", r.model)
		}
		if err := nc.PublishMsg(msg); err != nil {
			return err
		}
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "sent %d requests\n", len(reqs))

	tty := isTerminal(stderr)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for {
		mu.Lock()
		n := len(replies)
		mu.Unlock()
		line := fmt.Sprintf("answered %d/%d · batches submitted %d, ended %d · %s",
			n, len(reqs), int(sum(d, "gembatch_submitter_batches_total", "outcome", "submitted")),
			int(sum(d, "gembatch_poller_batches_ended_total")), time.Since(started).Round(100*time.Millisecond))
		if tty {
			fmt.Fprintf(stderr, "\r%s   ", line)
		} else {
			fmt.Fprintln(stderr, line)
		}
		if n >= len(reqs) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted with %d of %d requests answered", n, len(reqs))
		case <-deadline:
			return fmt.Errorf("only %d of %d requests answered within %s", n, len(reqs), timeout)
		case <-tick.C:
		}
	}
	if tty {
		fmt.Fprintln(stderr)
	}
	if err := summarize(stdout, d, reqs, replies, time.Since(started)); err != nil {
		return err
	}
	if err := img.save(ctx, stdout, nc, replies); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\nEvery request got exactly one reply. Next: README.md, \"Run it for real\".")
	return nil
}

// demoRequests builds the sample traffic.
func demoRequests(flash int) []demoRequest {
	var out []demoRequest
	topics := []string{"tides", "bread", "volcanoes", "jazz", "compilers", "bees", "glaciers", "chess"}
	for i := range flash {
		out = append(out, demoRequest{key: fmt.Sprintf("flash-%03d", i), subject: "gembatch.generate", model: "gemini-2.5-flash",
			body: fmt.Sprintf(`{"contents":[{"role":"user","parts":[{"text":"In one sentence, what is interesting about %s? (%d)"}]}],"generationConfig":{"temperature":0.2}}`, topics[i%len(topics)], i)})
	}
	doc := strings.Repeat("The quarterly report covers revenue, costs and outlook in detail. ", 120)
	for i := range 40 {
		out = append(out, demoRequest{key: fmt.Sprintf("pro-%02d", i), subject: "gembatch.generate", model: "gemini-2.5-pro",
			body: fmt.Sprintf(`{"systemInstruction":{"parts":[{"text":"Summarize the document in three bullet points."}]},"contents":[{"role":"user","parts":[{"text":"Document %d: %s"}]}]}`, i, doc)})
	}
	for i := range 40 {
		out = append(out, demoRequest{key: fmt.Sprintf("embed-%02d", i), subject: "gembatch.embed", model: "gemini-embedding-001",
			body: fmt.Sprintf(`{"content":{"parts":[{"text":"passage %d about %s"}]},"taskType":"RETRIEVAL_DOCUMENT","outputDimensionality":8}`, i, topics[i%len(topics)])})
	}
	out = append(out, demoRequest{key: "malformed-1", subject: "gembatch.generate", body: `{"contents": [ this is not JSON`, wantError: true})
	return out
}

func summarize(w io.Writer, d *daemon.Main, reqs []demoRequest, replies map[string]*nats.Msg, took time.Duration) error {
	fmt.Fprintln(w, "\nSample replies:")
	for _, key := range []string{"flash-000", "pro-00", "embed-00", "image-00", "malformed-1"} {
		m := replies[key]
		if m == nil {
			continue
		}
		body := string(m.Data)
		if len(body) > 160 {
			body = body[:160] + "…"
		}
		fmt.Fprintf(w, "  %-12s %-5s %-46s %s\n", key, m.Header.Get("Gembatch-Status"), m.Header.Get("Gembatch-Batch"), body)
	}
	var ok, failed, unexpected int
	for _, r := range reqs {
		status := replies[r.key].Header.Get("Gembatch-Status")
		if status == "ok" {
			ok++
		} else {
			failed++
		}
		if (status == "error") != r.wantError {
			unexpected++
		}
	}
	fmt.Fprintf(w, "\nSummary:\n  requests   %d sent, %d answered ok, %d answered with an error (the malformed one is expected)\n", len(reqs), ok, failed)
	fmt.Fprintf(w, "  batches    %d inline, %d by JSONL file\n",
		int(sum(d, "gembatch_submitter_batches_total", "mode", "inline", "outcome", "submitted")),
		int(sum(d, "gembatch_submitter_batches_total", "mode", "file", "outcome", "submitted")))
	var reasons []string
	for _, r := range []string{"count", "bytes", "wait", "shutdown"} {
		if n := int(sum(d, "gembatch_accumulator_batches_closed_total", "reason", r)); n > 0 {
			reasons = append(reasons, fmt.Sprintf("%d by %s", n, r))
		}
	}
	fmt.Fprintf(w, "  closed     %s\n  time       %s\n", strings.Join(reasons, ", "), took.Round(100*time.Millisecond))
	fmt.Fprintf(w, "  tokens     %d, estimated cost $%.6f at batch prices (gembatch_publisher_cost_usd_total)\n",
		int64(sum(d, "gembatch_publisher_tokens_total")), sum(d, "gembatch_publisher_cost_usd_total"))
	fmt.Fprintf(w, "  saved      $%.6f against interactive prices (gembatch_publisher_cost_saved_usd_total)\n",
		sum(d, "gembatch_publisher_cost_saved_usd_total"))
	if unexpected > 0 {
		return fmt.Errorf("%d replies were not what the demo expected", unexpected)
	}
	return nil
}

// sum reads a metric of the daemon's registry for the summary; a failed gather reads 0.
func sum(d *daemon.Main, name string, labels ...string) float64 {
	v, _ := metrics.Sum(d.Registry, name, labels...)
	return v
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
