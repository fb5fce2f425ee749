package benchkit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/daemon"
)

// peakRSS: a batch of 5 MB requests, each larger than a NATS message, sent by the client
// package (which puts each body in the bodies bucket and publishes a reference) to a durable
// gembatchd in a process of its own (Options.Gembatchd), which writes them into the batch's
// input chunks as they arrive and uploads the chunks as a JSONL file; the peak RSS of that
// process (VmHWM) once the batch is submitted, next to its RSS when ready and idle. Each round
// starts a fresh process, so the peak is of that round alone.
func peakRSS(ctx context.Context, e *env) ([]Row, error) {
	if e.opts.Gembatchd == nil {
		return nil, errors.New("peak RSS needs Options.Gembatchd, to run gembatchd as a process of its own")
	}
	size := e.size(128e6, 10e6)
	if e.opts.Full {
		size = 1e9
	}
	const reqBytes = 5e6
	n := max(1, size/reqBytes)
	a, err := startAPI(0)
	if err != nil {
		return nil, err
	}
	defer a.close()
	cfg := e.config(true, a.url)
	cfg.BatchMaxRequests, cfg.BatchMaxBytes, cfg.BatchMaxWait = n, 2<<30-1, 5*time.Minute
	cfg.MaxPendingBytes = 2 << 30
	cfg.InlineMaxBytes = 1 << 20 // by file at every size, --quick's too
	nc, err := e.connect()
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	c, err := client.New(nc, client.WithSubjects(cfg.SubjectGenerate, cfg.SubjectEmbed),
		client.WithReplyPrefix(replySubject(cfg, "void")), client.WithBodiesBucket(cfg.BodiesBucket))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	body := generateBody(reqBytes)
	var r rounds
	for round := range e.opts.Rounds {
		send := func() error {
			for i := range n {
				if _, err := c.Publish(ctx, client.Request{Key: fmt.Sprintf("b%d-%d", round, i), Body: body}); err != nil {
					return err
				}
			}
			return nil
		}
		idle, peak, err := e.rssRound(ctx, cfg, send)
		if err != nil {
			return nil, err
		}
		r.add(idle, peak)
		e.progress("peak RSS round %d/%d (%d requests of 5 MB): gembatchd %.0f MiB idle, %.0f MiB at its peak", round+1, e.opts.Rounds, n, idle, peak)
	}
	row := r.row(fmt.Sprintf("peak RSS of gembatchd sending %d requests of 5 MB (%d MB) by object, in one batch by file (durable, own process)", n, n*reqBytes/1e6),
		"MiB", "lower", "the same process ready and idle")
	if !e.opts.Full {
		row.Note = "--full sends 200 (1 GB)"
	}
	return []Row{row}, nil
}

// rssRound starts gembatchd, sends one batch and returns the process's RSS when ready and its
// peak once the batch is submitted, in MiB; it waits for the batch to be answered before it
// stops the process.
func (e *env) rssRound(ctx context.Context, cfg daemon.Config, send func() error) (idle, peak float64, err error) {
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
	if err := send(); err != nil {
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
