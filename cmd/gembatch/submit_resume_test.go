package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/daemon"
)

// billed is what the emulator was asked to do: requests over every batch created, and the
// most times one displayName was created.
func billed(s *testStack) (requests int64, maxCreates int) {
	l := s.emu.Ledger() // the emulator's own account, across jobs since deleted
	for _, e := range l.Entries {
		requests += int64(e.Billed)
	}
	for _, n := range l.Creates {
		maxCreates = max(maxCreates, n)
	}
	return requests, maxCreates
}

// observer counts, from outside submit, the requests published to gembatchd and the replies
// gembatchd published.
type observer struct {
	mu                 sync.Mutex
	requests, replies  map[string]int
	subReq, subReplies *nats.Subscription
}

func observe(t *testing.T, url string) *observer {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	o := &observer{requests: map[string]int{}, replies: map[string]int{}}
	count := func(m map[string]int) nats.MsgHandler {
		return func(msg *nats.Msg) {
			if key := msg.Header.Get("Gembatch-Key"); key != "" { // not JetStream's own inbox traffic
				o.mu.Lock()
				m[key]++
				o.mu.Unlock()
			}
		}
	}
	if o.subReq, err = nc.Subscribe("gembatch.generate", count(o.requests)); err != nil {
		t.Fatal(err)
	}
	if o.subReplies, err = nc.Subscribe("_INBOX.>", count(o.replies)); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return o
}

func (o *observer) counts() (requests, replies int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.requests), len(o.replies)
}

// waitFor polls cond every 10 ms for up to 60 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not %s within 60s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func lines(path string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte("\n"))
}

// TestSubmitResumeBillsOnce interrupts a submit at several moments and resumes it: every
// request is billed once (counted by the emulator, not by submit), every key is answered once,
// and no answer is an error that only reflects the earlier run.
func TestSubmitResumeBillsOnce(t *testing.T) {
	const n = 300
	for _, tc := range []struct {
		name     string
		jobDelay time.Duration
		tune     func(*daemon.Config)
		flags    []string
		// interruptWhen says when to press Ctrl-C; afterwards says what to wait for before resuming.
		interruptWhen, afterwards func(s *testStack, o *observer, out string) bool
	}{
		{
			name: "before the batch closes", jobDelay: 100 * time.Millisecond,
			tune:          func(c *daemon.Config) { c.BatchMaxWait = 5 * time.Second },
			interruptWhen: func(_ *testStack, o *observer, _ string) bool { r, _ := o.counts(); return r == n },
		},
		{
			name: "while the job runs", jobDelay: 3 * time.Second,
			interruptWhen: func(s *testStack, _ *observer, _ string) bool { r, _ := billed(s); return r == n },
		},
		{
			name: "answers come while away", jobDelay: time.Second,
			interruptWhen: func(s *testStack, _ *observer, _ string) bool { r, _ := billed(s); return r == n },
			afterwards:    func(_ *testStack, o *observer, _ string) bool { _, r := o.counts(); return r == n },
		},
		{
			name: "mid-answers", jobDelay: 100 * time.Millisecond,
			tune:          func(c *daemon.Config) { c.BatchMaxRequests = 100 },
			flags:         []string{"--max-in-flight", "100"},
			interruptWhen: func(_ *testStack, _ *observer, out string) bool { return lines(out) >= 100 },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startStack(t, tc.jobDelay, tc.tune)
			o := observe(t, s.natsURL)
			dir := t.TempDir()
			in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
			writeInput(t, in, n, 0)
			args := append([]string{"submit", in, "-o", out, "--nats", s.natsURL}, tc.flags...)

			ctx, cancel := context.WithCancel(t.Context())
			var first sync.WaitGroup
			var code int
			var stderr string
			first.Go(func() { code, _, stderr = cmd(ctx, args...) })
			waitFor(t, "ready to interrupt", func() bool { return tc.interruptWhen(s, o, out) })
			cancel()
			first.Wait()
			if code != 1 || !strings.Contains(stderr, "interrupted with") {
				t.Fatalf("interrupted run: exit %d\n%s", code, stderr)
			}
			answeredFirst := len(readResults(t, out))
			if answeredFirst == n {
				t.Fatalf("the first run answered all %d before the interrupt", n)
			}
			if tc.afterwards != nil {
				waitFor(t, "answered while away", func() bool { return tc.afterwards(s, o, out) })
				rq, rp := o.counts()
				t.Logf("observed %d requests, %d replies", rq, rp)
			}

			code, stdout, stderr := cmd(t.Context(), args...)
			if code != 0 {
				t.Errorf("resumed run: exit %d\n%s\n%s", code, stdout, stderr)
			}
			res := readResults(t, out)
			errs := 0
			for _, r := range res {
				if r.Error != nil {
					errs++
				}
			}
			requests, creates := billed(s)
			if len(res) != n || errs != 0 || requests != n || creates != 1 {
				t.Errorf("after the resume: %d keys answered, %d errors; the emulator was sent %d requests and created one batch up to %d times; want %d, 0, %d, 1",
					len(res), errs, requests, creates, n, n)
			}
			if _, err := os.Stat(out + ".sent"); !os.IsNotExist(err) {
				t.Errorf("the state file is left after a complete run: %v", err)
			}
			t.Logf("first run answered %d; resume:\n%s%s", answeredFirst, stdout, stderr)
		})
	}
}

// TestSubmitResumeAfterKill kills a submit process with SIGKILL mid-run (no chance to flush or
// close anything) and resumes it: every request billed once, every key answered once.
func TestSubmitResumeAfterKill(t *testing.T) {
	const n = 300
	s := startStack(t, 500*time.Millisecond, func(c *daemon.Config) { c.BatchMaxRequests = 100 })
	o := observe(t, s.natsURL)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	writeInput(t, in, n, 0)
	args := []string{"submit", in, "-o", out, "--nats", s.natsURL, "--max-in-flight", "100"}

	child := exec.CommandContext(t.Context(), os.Args[0], args...)
	child.Env = append(os.Environ(), "GEMBATCH_TEST_RUN=1")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second hundred sent", func() bool { r, _ := o.counts(); return r >= 200 })
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	killedAt := len(readResults(t, out))

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	code, stdout, stderr := cmd(ctx, args...)
	if code != 0 {
		t.Errorf("resumed run: exit %d\n%s\n%s", code, stdout, stderr)
	}
	res := readResults(t, out)
	requests, creates := billed(s)
	if len(res) != n || requests != n || creates != 1 {
		t.Errorf("after the resume: %d keys answered; the emulator was sent %d requests, created one batch up to %d times; want %d, %d, 1",
			len(res), requests, creates, n, n)
	}
	t.Logf("killed with %d answers written; resume:\n%s%s", killedAt, stdout, stderr)
}
