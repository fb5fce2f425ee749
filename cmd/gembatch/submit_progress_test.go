package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

func TestWaitingOn(t *testing.T) {
	recorded := func(j jobView) jobView { j.known = true; return j }
	for _, tc := range []struct {
		name string
		in   waitInput
		want string
	}{
		{"nothing outstanding", waitInput{outstanding: 0, jobs: recorded(jobView{running: 1})}, ""},
		{"open batch, max wait unknown", waitInput{outstanding: 3, jobs: recorded(jobView{})},
			"waiting for gembatchd to close the batch (GEMBATCH_BATCH_MAX_WAIT)"},
		{"open batch, max wait known", waitInput{outstanding: 3, jobs: recorded(jobView{}), maxWait: time.Minute, sinceFirstSend: 15500 * time.Millisecond},
			"open batch closing in 44 s"},
		{"open batch past its wait", waitInput{outstanding: 3, jobs: recorded(jobView{}), maxWait: time.Minute, sinceFirstSend: 2 * time.Minute},
			"open batch closing"},
		{"no records, no answer yet", waitInput{outstanding: 3}, "waiting for gembatchd to close the batch (GEMBATCH_BATCH_MAX_WAIT)"},
		{"no records, answers came", waitInput{outstanding: 3, answered: 2}, ""},
		{"one job pending", waitInput{outstanding: 3, jobs: recorded(jobView{pending: 1, requests: 3})}, "1 batch PENDING"},
		{"jobs and an open batch", waitInput{outstanding: 5, jobs: recorded(jobView{pending: 1, running: 2, requests: 3})},
			"1 batch PENDING · 2 batches RUNNING · waiting for gembatchd to close the batch (GEMBATCH_BATCH_MAX_WAIT)"},
		{"answers arriving", waitInput{outstanding: 2, answeredRecently: true, jobs: recorded(jobView{answering: 1, requests: 2})},
			"answers arriving · 1 batch being answered"},
		{"being created", waitInput{outstanding: 2, jobs: recorded(jobView{creating: 2, requests: 2})}, "2 batches being created"},
	} {
		if got := waitingOn(tc.in); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestViewJobs(t *testing.T) {
	since := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	rec := func(sealed time.Duration, st record.State, remote gemini.State, n int) *record.Record {
		return &record.Record{Sealed: since.Add(sealed), State: st, RemoteState: remote, Count: n}
	}
	v := viewJobs([]*record.Record{
		rec(-time.Minute, record.Submitted, gemini.StateRunning, 100), // before the run: not ours
		rec(time.Second, record.Sealed, "", 1),
		rec(time.Second, record.Submitted, gemini.StatePending, 2),
		rec(time.Second, record.Submitted, gemini.StateRunning, 4),
		rec(time.Second, record.Finished, gemini.StateSucceeded, 8),
		rec(time.Second, record.Replied, gemini.StateSucceeded, 16), // answered
	}, since)
	want := jobView{known: true, creating: 1, pending: 1, running: 1, answering: 1, requests: 15}
	if v != want {
		t.Errorf("%+v, want %+v", v, want)
	}
}

func TestPlural(t *testing.T) {
	for n, want := range map[int64]string{0: "0 batches", 1: "1 batch", 2: "2 batches"} {
		if got := plural(n, "batch", "batches"); got != want {
			t.Errorf("plural(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestSubmitProgressSaysWhatItWaitsOn: the progress lines of a run name the open batch, then
// the job PENDING and RUNNING, as gembatchd's records show them.
func TestSubmitProgressSaysWhatItWaitsOn(t *testing.T) {
	s := startStack(t, 3*time.Second, func(c *daemon.Config) { c.BatchMaxWait = time.Second })
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	writeInput(t, in, 5, 0)
	code, stdout, stderr := cmd(t.Context(), "submit", in, "-o", out, "--nats", s.natsURL, "--progress-every", "100ms")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	for _, want := range []string{
		"· waiting for gembatchd to close the batch (GEMBATCH_BATCH_MAX_WAIT)\n",
		"· 1 batch PENDING\n",
		"· 1 batch RUNNING\n",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("no progress line ending %q in:\n%s", want, stderr)
		}
	}
	if !strings.Contains(stdout, "5 requests answered (0 skipped as already answered) in 1 batch,") {
		t.Errorf("summary: %s", stdout)
	}
}
