package benchkit

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gembatch/gembatch/internal/liveheap"
)

// settledHeap is the live heap once goroutines stop ending and the heap stops shrinking: what
// earlier rounds leave winding down (a stopped daemon's connection draining) is not counted
// against this one.
func settledHeap() uint64 {
	for range 50 {
		n := runtime.NumGoroutine()
		time.Sleep(100 * time.Millisecond)
		if runtime.NumGoroutine() >= n {
			break
		}
	}
	h := liveheap.Bytes()
	for range 20 {
		time.Sleep(50 * time.Millisecond)
		next := liveheap.Bytes()
		if next+next/100 >= h {
			return next
		}
		h = next
	}
	return h
}

// procStatus reads a kB field (VmRSS, VmHWM) of /proc/<pid>/status in bytes.
func procStatus(pid, field string) (int64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, fmt.Errorf("read memory figures (Linux only): %w", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%s/status", field, pid)
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// heapPerPending: core gembatchd holds n 1 KiB requests in one open batch; the heap it grew by,
// less the request bodies, per request. One more request then closes the batch, which is
// submitted as a job that outlasts the run: with MAX_ATTEMPTS 1 the daemon drops the bodies on
// submit and keeps only each request's bookkeeping, which stays put while later rounds are
// measured (answering 100,000 requests between rounds would take minutes).
func heapPerPending(ctx context.Context, e *env) ([]Row, error) {
	n := e.size(100000, 20000) // fewer and the heap figure is lost in the noise of a busy machine
	e.dropStreams()            // core mode needs none, and what earlier measures left is freed now, not mid-measure
	a, err := startAPI(time.Hour)
	if err != nil {
		return nil, err
	}
	defer a.close()
	cfg := e.config(false, a.url)
	cfg.BatchMaxRequests, cfg.BatchMaxBytes, cfg.BatchMaxWait = n+1, 2<<30-1, time.Hour
	cfg.MaxPending, cfg.MaxAttempts = int64(n+1), 1
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
	body := generateBody(1024)
	// A first round, not counted, warms the daemon up (its maps and pools reach their working
	// size) and lets what earlier measures left behind be freed before anything is counted.
	if _, err := e.pendingRound(ctx, d, f, n, body, -1); err != nil {
		return nil, err
	}
	var heap []float64
	for round := range e.opts.Rounds {
		h, err := e.pendingRound(ctx, d, f, n, body, round)
		if err != nil {
			return nil, err
		}
		heap = append(heap, h)
		e.progress("pending round %d/%d: %.0f B of heap per request above its %d B body", round+1, e.opts.Rounds, h, len(body))
	}
	return []Row{{Measure: fmt.Sprintf("heap per pending request above its %d B body (%s pending, core mode)", len(body), num(float64(n))),
		Unit: "B", Better: "lower", Gembatchd: summarize(heap)}}, nil
}

// pendingRound sends n requests, measures, then closes the batch with one more and waits until
// it is submitted; it returns the heap per request above its body.
func (e *env) pendingRound(ctx context.Context, d *gembatchd, f *fleet, n int, body []byte, round int) (float64, error) {
	submitted := d.metric("gembatch_submitter_batches_total", "outcome", "submitted")
	msgs := requests(d.cfg.SubjectGenerate, replySubject(d.cfg, "void"), fmt.Sprintf("p%d", round), body, n+1, false)
	last := msgs[n%producers][len(msgs[n%producers])-1]
	msgs[n%producers] = msgs[n%producers][:len(msgs[n%producers])-1]
	heap0 := settledHeap()
	if _, err := d.accepted(ctx, n, func() error { return f.publish(msgs) }); err != nil {
		return 0, err
	}
	heap1 := liveheap.Bytes()
	runtime.KeepAlive(msgs) // counted in both figures
	if err := f.conns[0].PublishMsg(last); err != nil {
		return 0, err
	}
	if err := waitFor(ctx, 5*time.Minute, "submit the batch", func() bool {
		return d.metric("gembatch_submitter_batches_total", "outcome", "submitted") > submitted
	}); err != nil {
		return 0, err
	}
	return (float64(heap1)-float64(heap0))/float64(n) - float64(len(body)), nil
}
