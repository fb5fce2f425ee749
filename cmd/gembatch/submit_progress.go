package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

// jobView is what gembatchd's records say about the batches sealed since a run began (they
// are this run's, give or take other producers' batches sealed meanwhile).
type jobView struct {
	// known is false when the records cannot be read (core mode, no JetStream).
	known bool
	// creating, pending, running and answering count batches by where they are: sealed but
	// not yet created remotely, remote job PENDING, RUNNING, finished and being answered.
	creating, pending, running, answering int
	// requests counts the requests in those batches.
	requests int64
}

// viewJobs reads the records sealed since since and not yet answered.
func viewJobs(recs []*record.Record, since time.Time) jobView {
	v := jobView{known: true}
	for _, r := range recs {
		if r.Sealed.Before(since) {
			continue
		}
		switch {
		case r.State == record.Sealed || r.State == record.Submitting:
			v.creating++
		case r.State == record.Submitted && r.RemoteState == gemini.StateRunning:
			v.running++
		case r.State == record.Submitted && (r.RemoteState == gemini.StatePending || r.RemoteState == "" || r.RemoteState == gemini.StateUnspecified):
			v.pending++
		case r.State == record.Submitted || r.State == record.Finished || r.State == record.Failed:
			v.answering++
		default: // replied, cleaned: nothing left to wait for
			continue
		}
		v.requests += int64(r.Count)
	}
	return v
}

// waitInput is what the progress line knows when it says what the run is waiting on.
type waitInput struct {
	jobs jobView
	// outstanding counts requests sent (by this run or an earlier one) and not yet answered.
	outstanding int64
	answered    int64
	// sinceFirstSend is how long ago this run sent its first request; maxWait is gembatchd's
	// GEMBATCH_BATCH_MAX_WAIT when submit knows it (0 otherwise).
	sinceFirstSend, maxWait time.Duration
	// answeredRecently: an answer was written in the last seconds.
	answeredRecently bool
}

// waitingOn says what a run is waiting on: an open batch to close, jobs PENDING or RUNNING,
// answers arriving. Empty when nothing is outstanding.
func waitingOn(in waitInput) string {
	if in.outstanding == 0 {
		return ""
	}
	var parts []string
	if in.answeredRecently {
		parts = append(parts, "answers arriving")
	}
	j := in.jobs
	for _, c := range []struct {
		n    int
		what string
	}{{j.creating, "being created"}, {j.pending, "PENDING"}, {j.running, "RUNNING"}, {j.answering, "being answered"}} {
		if c.n > 0 {
			parts = append(parts, plural(int64(c.n), "batch", "batches")+" "+c.what)
		}
	}
	// Requests that no recorded batch holds are still in an open batch. Without the records,
	// that is so until the first answer comes.
	inOpenBatch := j.known && in.outstanding > j.requests || !j.known && in.answered == 0 && !in.answeredRecently
	if inOpenBatch {
		switch left := in.maxWait - in.sinceFirstSend; {
		case in.maxWait <= 0:
			parts = append(parts, "waiting for gembatchd to close the batch (GEMBATCH_BATCH_MAX_WAIT)")
		case left >= time.Second:
			parts = append(parts, fmt.Sprintf("open batch closing in %d s", int(left.Seconds())))
		default:
			parts = append(parts, "open batch closing")
		}
	}
	return strings.Join(parts, " · ")
}

// batchMaxWait is gembatchd's GEMBATCH_BATCH_MAX_WAIT when it is set where submit runs too.
func batchMaxWait() time.Duration {
	d, err := time.ParseDuration(os.Getenv("GEMBATCH_BATCH_MAX_WAIT"))
	if err != nil {
		return 0
	}
	return d
}

// jobWatcher reads gembatchd's records every interval, in the background, for the progress
// line. It reads nothing when the records bucket is not there.
type jobWatcher struct {
	view   atomic.Pointer[jobView]
	cancel context.CancelFunc
	done   sync.WaitGroup
}

// watchJobs starts watching the records of batches sealed since since.
func watchJobs(ctx context.Context, nc *nats.Conn, since time.Time, every time.Duration) *jobWatcher {
	w := &jobWatcher{}
	w.view.Store(&jobView{})
	ctx, w.cancel = context.WithCancel(ctx)
	w.done.Go(func() {
		js, err := jetstream.New(nc)
		if err != nil {
			return
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		kv, err := js.KeyValue(cctx, envOr("GEMBATCH_RECORDS_BUCKET", "gembatch-records"))
		cancel()
		if err != nil {
			return // core mode: the progress line does without
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if recs, err := listRecords(ctx, recordsBucket{js, kv}); err == nil {
				v := viewJobs(recs, since)
				w.view.Store(&v)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return w
}

// jobs returns the last view read.
func (w *jobWatcher) jobs() jobView { return *w.view.Load() }

// stop stops watching and waits for the watcher.
func (w *jobWatcher) stop() {
	w.cancel()
	w.done.Wait()
}
