package benchkit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/daemon"
)

// peakRSS: one batch of large requests, sent by the client package to a durable gembatchd in
// a process of its own (Options.Gembatchd), which writes them into the batch's input chunks as
// they arrive and uploads the chunks as a JSONL file; the peak RSS of that process (VmHWM) once
// the batch is submitted, next to its RSS when ready and idle. Requests of 5 MB are larger than
// a NATS message: the client puts each body in the bodies bucket and publishes a reference.
// Requests of 32 KiB go through the stream, many more of them for the same bytes. Each round
// starts a fresh process, so the peak is of that round alone.
func peakRSS(ctx context.Context, e *env) ([]Row, error) {
	if e.opts.Gembatchd == nil {
		return nil, errors.New("peak RSS needs Options.Gembatchd, to run gembatchd as a process of its own")
	}
	size := e.size(128e6, 10e6)
	if e.opts.Full {
		size = 1e9
	}
	a, err := startAPI(0)
	if err != nil {
		return nil, err
	}
	defer a.close()
	cfg := e.config(true, a.url)
	cfg.BatchMaxBytes, cfg.BatchMaxWait = 2<<30-1, 5*time.Minute
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
	f, err := e.fleet()
	if err != nil {
		return nil, err
	}
	defer f.close()
	var rows []Row
	for _, v := range []struct {
		bytes      int
		size, path string
	}{{5e6, "5 MB", "by object"}, {32 << 10, "32 KiB", "published to the stream"}} {
		n := max(1, size/v.bytes)
		cfg.BatchMaxRequests = n
		body := generateBody(v.bytes)
		var r rounds
		for round := range e.opts.Rounds {
			tag := fmt.Sprintf("b%d-%d", v.bytes, round)
			send := func() error {
				if v.bytes < 1<<20 { // JetStream producers: the stream holds what gembatchd has not taken
					return f.publishJS(ctx, requests(cfg.StreamSubject+".generate", replySubject(cfg, "void"), tag, body, n, true))
				}
				for i := range n {
					if _, err := c.Publish(ctx, client.Request{Key: fmt.Sprintf("%s-%d", tag, i), Body: body}); err != nil {
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
			e.progress("peak RSS round %d/%d (%d requests of %s %s): gembatchd %.0f MiB idle, %.0f MiB at its peak", round+1, e.opts.Rounds, n, v.size, v.path, idle, peak)
		}
		row := r.row(fmt.Sprintf("peak RSS of gembatchd sending %s requests of %s (%d MB) %s, in one batch by file (durable, own process)", num(float64(n)), v.size, n*v.bytes/1e6, v.path),
			"MiB", "lower", "the same process ready and idle")
		if !e.opts.Full {
			row.Note = "--full sends 1 GB"
		}
		rows = append(rows, row)
	}
	return rows, nil
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
