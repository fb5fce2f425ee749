package benchkit

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/gembatch/gembatch/gemini"
)

// resultFile: a file batch of embeddings (3072 values each); gembatchd's MB/s and replies/s
// from the first reply to the last, against a raw HTTP read of the same result file.
func resultFile(ctx context.Context, e *env) ([]Row, error) {
	size := e.size(64<<20, 2<<20)
	if e.opts.Full {
		size = 1 << 30
	}
	const lineBytes = 41 << 10 // about one embedding line of 3072 values; the figure uses the real size
	n := max(1, size/lineBytes)
	a, err := startAPI(0)
	if err != nil {
		return nil, err
	}
	defer a.close()
	a.keepFiles.Store(true)
	cfg := e.config(false, a.url)
	cfg.KeepJobs = true // the job's result file is read afterwards
	cfg.BatchMaxRequests, cfg.BatchMaxWait, cfg.InlineMaxBytes = n, time.Minute, 0
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
	client := gemini.New("bench", gemini.WithBaseURL(a.url))
	body := []byte(`{"content":{"parts":[{"text":"a passage to embed"}]},"taskType":"RETRIEVAL_DOCUMENT","outputDimensionality":3072}`)
	var mbs, lines rounds
	var fileBytes int64
	for round := range e.opts.Rounds {
		replies, err := e.tally(replySubject(cfg, "emb"), n)
		if err != nil {
			return nil, err
		}
		if err := f.publish(requests(cfg.SubjectEmbed, replySubject(cfg, "emb"), fmt.Sprintf("e%d", round), body, n, false)); err != nil {
			return nil, err
		}
		if err := replies.wait(ctx, 10*time.Minute); err != nil {
			return nil, fmt.Errorf("gembatchd replies: %w", err)
		}
		took := replies.last.Sub(replies.first)
		if err := d.drained(ctx); err != nil {
			return nil, err
		}
		ops := a.emu.Batches()
		out := ops[len(ops)-1].Output()
		if out == nil || out.ResponsesFile == "" {
			return nil, fmt.Errorf("the batch has no result file")
		}
		t0 := time.Now()
		rc, err := client.Download(ctx, out.ResponsesFile)
		if err != nil {
			return nil, err
		}
		fileBytes, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
		rawTook := time.Since(t0)
		a.deleteFile(out.ResponsesFile)
		mb := float64(fileBytes) / 1e6
		mbs.add(mb/rawTook.Seconds(), mb/took.Seconds())
		lines.add(rate(n, rawTook), rate(n, took))
		e.progress("result file round %d/%d (%.0f MB): raw read %.0f MB/s, gembatchd %.1f MB/s, %.0f replies/s",
			round+1, e.opts.Rounds, mb, mb/rawTook.Seconds(), mb/took.Seconds(), rate(n, took))
	}
	what := fmt.Sprintf("reading a result file (%.0f MB, %s embeddings of 3,072 values)", float64(fileBytes)/1e6, num(float64(n)))
	return []Row{
		mbs.row(what, "MB/s", "higher", "raw HTTP read of the same file"),
		lines.row(what+", replies", "replies/s", "higher", "raw HTTP read, lines/s"),
	}, nil
}
