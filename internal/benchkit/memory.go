package benchkit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// heapAfterGC is the live heap once garbage is collected.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// procStatus reads a kB field of /proc/self/status (VmRSS, VmHWM) in bytes.
func procStatus(field string) (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read memory figures (Linux only): %w", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/self/status", field)
}

// resetPeak returns freed memory to the system and resets the peak RSS (VmHWM) to the current
// RSS, which it returns.
func resetPeak() (int64, error) {
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return 0, fmt.Errorf("reset peak RSS (Linux only): %w", err)
	}
	return procStatus("VmRSS")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// heapPerPending: core gembatchd holds n 1 KiB requests in one open batch (the API is never
// called); the heap it grew by, less the request bodies, per request. Each round is a fresh daemon.
func heapPerPending(ctx context.Context, e *env) ([]Row, error) {
	n := e.size(100000, 5000)
	body := generateBody(1024)
	var heap, rss []float64
	for round := range e.opts.Rounds {
		h, r, err := e.pendingRound(ctx, n, body, round)
		if err != nil {
			return nil, err
		}
		heap, rss = append(heap, h), append(rss, r)
		e.progress("pending round %d/%d: %.0f B heap, %.0f B RSS per request above its %d B body", round+1, e.opts.Rounds, h, r, len(body))
	}
	what := fmt.Sprintf("per pending request above its %d B body (%d pending, core mode)", len(body), n)
	return []Row{
		{Measure: "heap " + what, Unit: "B", Better: "lower", Gembatchd: summarize(heap)},
		{Measure: "RSS " + what, Unit: "B", Better: "lower", Gembatchd: summarize(rss),
			Note: "in-process: includes what the NATS server keeps for the connections"},
	}, nil
}

func (e *env) pendingRound(ctx context.Context, n int, body []byte, round int) (heap, rss float64, err error) {
	cfg := e.config(false, deadAPI)
	cfg.BatchMaxRequests, cfg.BatchMaxBytes, cfg.BatchMaxWait = n+1, 2<<30-1, time.Hour
	cfg.MaxPending, cfg.ShutdownGrace = int64(n+1), time.Second
	d, err := e.startDaemon(cfg)
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		// the open batch cannot be submitted to the dead API: shutdown gives up after its grace
		_ = d.close()
	}()
	f, err := e.fleet()
	if err != nil {
		return 0, 0, err
	}
	defer f.close()
	msgs := requests(cfg.SubjectGenerate, replySubject(cfg, "void"), fmt.Sprintf("p%d", round), body, n, false)
	heap0 := heapAfterGC()
	rss0, err := resetPeak()
	if err != nil {
		return 0, 0, err
	}
	if _, err := d.accepted(ctx, n, func() error { return f.publish(msgs) }); err != nil {
		return 0, 0, err
	}
	heap1 := heapAfterGC()
	runtime.KeepAlive(msgs) // counted in both figures
	rss1, err := procStatus("VmRSS")
	if err != nil {
		return 0, 0, err
	}
	per := func(grew float64) float64 { return grew/float64(n) - float64(len(body)) }
	return per(float64(heap1) - float64(heap0)), per(float64(rss1 - rss0)), nil
}

// peakRSS: a batch of 32 KiB requests sent by JetStream producers to durable gembatchd, which
// uploads it as a JSONL file; the growth of the process's peak RSS until the batch is submitted,
// against the same messages published into a plain stream and consumed.
func peakRSS(ctx context.Context, e *env) ([]Row, error) {
	size := e.size(128<<20, 16<<20)
	if e.opts.Full {
		size = 1 << 30
	}
	// 32 KiB requests: with 512 KiB ones, durable intake's pull of 1,024 messages overflows the
	// client's 64 MiB pending limit and the dropped messages wait for their ack wait.
	const reqBytes = 32 << 10
	n := size / reqBytes
	a, err := startAPI(0)
	if err != nil {
		return nil, err
	}
	defer a.close()
	cfg := e.config(true, a.url)
	cfg.BatchMaxRequests, cfg.BatchMaxBytes, cfg.BatchMaxWait = n, 2<<30-1, 5*time.Minute
	cfg.MaxPendingBytes = 2 << 30
	cfg.InlineMaxBytes = 1 << 20 // by file at every size, --quick's too
	d, err := e.startDaemon(cfg)
	if err != nil {
		return nil, err
	}
	defer d.close()
	f, err := e.fleet()
	if err != nil {
		return nil, err
	}
	defer f.close()
	raw := e.name()
	stream, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: strings.ToUpper(raw), Subjects: []string{raw + ".>"}})
	if err != nil {
		return nil, err
	}
	defer func() { _ = e.js.DeleteStream(context.Background(), stream.CachedInfo().Config.Name) }()
	body := generateBody(reqBytes)
	var r rounds
	for round := range e.opts.Rounds {
		var base, got float64
		err := interleave(round,
			func() error {
				subject := fmt.Sprintf("%s.r%d", raw, round)
				msgs := requests(subject, "", fmt.Sprint(round), body, n, true)
				rss0, err := resetPeak()
				if err != nil {
					return err
				}
				if _, err := e.rawJetStream(ctx, f, stream, subject, msgs, n); err != nil {
					return err
				}
				base, err = peakGrowth(rss0)
				return err
			},
			func() error {
				msgs := requests(cfg.StreamSubject+".generate", replySubject(cfg, "void"), fmt.Sprintf("b%d", round), body, n, true)
				submitted := d.metric("gembatch_submitter_batches_total", "outcome", "submitted")
				accepted := d.metric("gembatch_intake_requests_accepted_total")
				rss0, err := resetPeak()
				if err != nil {
					return err
				}
				if err := f.publishJS(ctx, msgs); err != nil {
					return err
				}
				if err := waitFor(ctx, 10*time.Minute, "submit the batch", func() bool {
					return d.metric("gembatch_submitter_batches_total", "outcome", "submitted") > submitted
				}); err != nil {
					return fmt.Errorf("%w (%.0f of %d requests accepted)", err, d.metric("gembatch_intake_requests_accepted_total")-accepted, n)
				}
				if got, err = peakGrowth(rss0); err != nil {
					return err
				}
				if d.metric("gembatch_submitter_batches_total", "mode", "file", "outcome", "submitted") == 0 {
					return errors.New("the batch was not sent by file")
				}
				return d.drained(ctx)
			})
		if err != nil {
			return nil, err
		}
		r.add(base, got)
		e.progress("peak RSS round %d/%d (%d MiB batch): raw JetStream +%.0f MiB, gembatchd +%.0f MiB", round+1, e.opts.Rounds, size>>20, base, got)
	}
	row := r.row(fmt.Sprintf("peak RSS growth sending a %d MiB batch by file (durable)", size>>20), "MiB", "lower", "JetStream publish + consume-and-ack of the same messages")
	if !e.opts.Full {
		row.Note = "--full sends 1 GiB"
	}
	row.Note = strings.TrimPrefix(row.Note+"; in-process: includes the NATS server and the producers", "; ")
	return []Row{row}, nil
}

// peakGrowth is the peak RSS since rss0 was taken, above it, in MiB.
func peakGrowth(rss0 int64) (float64, error) {
	hwm, err := procStatus("VmHWM")
	return float64(hwm-rss0) / (1 << 20), err
}
