package benchkit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/daemon"
)

// peakRSS: a batch of 32 KiB requests sent by JetStream producers to a durable gembatchd in a
// process of its own (Options.Gembatchd), which uploads it as a JSONL file; the peak RSS of that
// process (VmHWM) once the batch is submitted, next to its RSS when ready and idle. Each round
// starts a fresh process, so the peak is of that round alone.
func peakRSS(ctx context.Context, e *env) ([]Row, error) {
	if e.opts.Gembatchd == nil {
		return nil, errors.New("peak RSS needs Options.Gembatchd, to run gembatchd as a process of its own")
	}
	size := e.size(128<<20, 8<<20)
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
	f, err := e.fleet()
	if err != nil {
		return nil, err
	}
	defer f.close()
	body := generateBody(reqBytes)
	var r rounds
	for round := range e.opts.Rounds {
		msgs := requests(cfg.StreamSubject+".generate", replySubject(cfg, "void"), fmt.Sprintf("b%d", round), body, n, true)
		idle, peak, err := e.rssRound(ctx, cfg, f, msgs)
		if err != nil {
			return nil, err
		}
		r.add(idle, peak)
		e.progress("peak RSS round %d/%d (%d MiB batch): gembatchd %.0f MiB idle, %.0f MiB at its peak", round+1, e.opts.Rounds, size>>20, idle, peak)
	}
	row := r.row(fmt.Sprintf("peak RSS of gembatchd sending a %d MiB batch by file (durable, 32 KiB requests, own process)", size>>20),
		"MiB", "lower", "the same process ready and idle")
	if !e.opts.Full {
		row.Note = "--full sends 1 GiB"
	}
	return []Row{row}, nil
}

// rssRound starts gembatchd, sends one batch and returns the process's RSS when ready and its
// peak once the batch is submitted, in MiB; it waits for the batch to be answered before it
// stops the process.
func (e *env) rssRound(ctx context.Context, cfg daemon.Config, f *fleet, msgs [][]*nats.Msg) (idle, peak float64, err error) {
	p, err := e.startProcess(ctx, cfg)
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		if stopErr := p.stop(); err == nil {
			err = stopErr
		}
	}()
	rss, err := procStatus(p.pid(), "VmRSS")
	if err != nil {
		return 0, 0, err
	}
	if err := f.publishJS(ctx, msgs); err != nil {
		return 0, 0, err
	}
	if err := waitFor(ctx, 10*time.Minute, "submit the batch by file", func() bool {
		return p.metric("gembatch_submitter_batches_total", `mode="file"`, `outcome="submitted"`) > 0
	}); err != nil {
		return 0, 0, fmt.Errorf("%w (%.0f requests accepted)", err, p.metric("gembatch_intake_requests_accepted_total"))
	}
	hwm, err := procStatus(p.pid(), "VmHWM")
	if err != nil {
		return 0, 0, err
	}
	err = waitFor(ctx, 5*time.Minute, "answer the batch", func() bool {
		return p.metric("gembatch_publisher_replies_published_total") >= p.metric("gembatch_intake_requests_accepted_total")
	})
	return float64(rss) / (1 << 20), float64(hwm) / (1 << 20), err
}
