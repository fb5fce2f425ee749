package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/stacktest"
)

func TestMain(m *testing.M) {
	// TestSubmitLarge runs the command in a process of its own, to measure its memory alone.
	if os.Getenv("GEMBATCH_TEST_RUN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m, stacktest.LeakOptions()...)
}

// testStack is NATS, the emulator and gembatchd, in-process.
type testStack struct {
	natsURL, geminiURL string
	emu                *emulator.Server
}

func startStack(t *testing.T, jobDelay time.Duration, tune func(*daemon.Config)) *testStack {
	t.Helper()
	cfg := stacktest.Config()
	cfg.LogLevel = "error"
	if tune != nil {
		tune(&cfg)
	}
	s := stacktest.Start(t, cfg, emulator.Options{JobDelay: jobDelay})
	return &testStack{natsURL: s.NATS.ClientURL(), geminiURL: s.API.URL, emu: s.Emulator}
}

// cmd runs a gembatch command with a context and returns its exit status and output.
func cmd(ctx context.Context, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	var code int
	switch args[0] {
	case "submit":
		code = submit(ctx, args[1:], &out, &errb)
	case "jobs":
		code = jobs(ctx, args[1:], &out, &errb)
	case "show":
		code = show(ctx, args[1:], &out, &errb)
	case "cancel":
		code = cancelJob(ctx, args[1:], &out, &errb)
	default:
		code = run(args, &out, &errb)
	}
	return code, out.String(), errb.String()
}

// writeInput writes n request lines; every errEvery-th asks the emulator for an INVALID_ARGUMENT.
func writeInput(t testing.TB, path string, n, errEvery int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := range n {
		text := fmt.Sprintf("prompt number %d", i)
		if errEvery > 0 && i%errEvery == errEvery-1 {
			text += " [[emulator:error=3]]"
		}
		fmt.Fprintf(w, `{"key":"k%07d","request":{"contents":[{"role":"user","parts":[{"text":%q}]}]}}`+"\n", i, text)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

type resultLine struct {
	Key      string          `json:"key"`
	Response json.RawMessage `json:"response"`
	Error    *struct {
		Code   int    `json:"code"`
		Status string `json:"status"`
	} `json:"error"`
}

// readResults reads a results file, failing on a key answered twice.
func readResults(t testing.TB, path string) map[string]resultLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]resultLine{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		var r resultLine
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s line %d: %v: %s", path, n, err, sc.Bytes())
		}
		if _, dup := out[r.Key]; dup {
			t.Fatalf("%s: key %q answered twice (line %d)", path, r.Key, n)
		}
		out[r.Key] = r
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSubmitFile: answers for every line, line numbers as keys, errors counted, exit status 1.
func TestSubmitFile(t *testing.T) {
	s := startStack(t, 100*time.Millisecond, nil)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	input := `{"key":"a","request":{"contents":[{"role":"user","parts":[{"text":"hello"}]}]}}
{"request":{"contents":[{"role":"user","parts":[{"text":"no key: line 2"}]}]}}

{"key":"bad-item","request":{"contents":[{"role":"user","parts":[{"text":"x [[emulator:error=3]]"}]}]}}
{"key":"bad-body","request":{"contents":"not a list"}}
this is not JSON
{"key":"no-request"}
{"key":7,"request":{"contents":[{"role":"user","parts":[{"text":"numeric key"}]}]}}
{"key":"bad\u0007key","request":{"contents":[{"role":"user","parts":[{"text":"control character in the key"}]}]}}
`
	if err := os.WriteFile(in, []byte(input), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := cmd(t.Context(), "submit", in, "-o", out, "--nats", s.natsURL, "--model", "gemini-2.5-flash", "--progress-every", "50ms")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (some errors)\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "8 requests answered") || !strings.Contains(stdout, `answers are errors: they are the lines with "error" in `+out) {
		t.Errorf("stdout: %s", stdout)
	}
	if !strings.Contains(stderr, "sent ") || !strings.Contains(stderr, " · 1 batch · ") {
		t.Errorf("no progress line: %s", stderr)
	}
	res := readResults(t, out)
	want := map[string]int{"a": 0, "2": 0, "bad-item": 3, "bad-body": 0, "6": 3, "no-request": 3, "7": 0, "bad\akey": 3}
	if len(res) != len(want) {
		t.Fatalf("results %v", res)
	}
	for k, code := range want {
		r, ok := res[k]
		switch {
		case !ok:
			t.Errorf("no result for %q", k)
		case code == 0 && r.Error == nil && len(r.Response) == 0:
			t.Errorf("%s: neither response nor error", k)
		case code != 0 && (r.Error == nil || r.Error.Code != code):
			t.Errorf("%s: %+v, want error %d", k, r, code)
		}
	}

	// Run again: everything is answered, nothing is sent.
	code, stdout, stderr = cmd(t.Context(), "submit", in, "-o", out, "--nats", s.natsURL)
	if code != 1 || !strings.Contains(stdout, "0 requests answered (8 skipped") {
		t.Fatalf("second run: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if len(readResults(t, out)) != 8 {
		t.Fatal("second run changed the results")
	}

	// --wait=false only publishes; the replies go to the reply prefix, read elsewhere.
	nc, err := nats.Connect(s.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	got := make(chan *nats.Msg, 10)
	sub, err := nc.ChanSubscribe("_INBOX.elsewhere.>", got)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = cmd(t.Context(), "submit", in, "--wait=false", "--reply-prefix", "_INBOX.elsewhere", "--nats", s.natsURL)
	if code != 0 || !strings.Contains(stdout, "published 5 requests; replies go to _INBOX.elsewhere.*") || !strings.Contains(stderr, ":6: not sent: not a JSON object") {
		t.Fatalf("--wait=false: exit %d\n%s\n%s", code, stdout, stderr)
	}
	keys := map[string]bool{}
	for len(keys) < 5 {
		select {
		case m := <-got:
			keys[m.Header.Get("Gembatch-Key")] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d replies on the reply prefix: %v", len(keys), keys)
		}
	}
}

// TestSubmitUsage: usage errors exit 2 with the fix; an unreachable NATS names the fix.
func TestSubmitUsage(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"submit"}, 2, "give one input file"},
		{[]string{"submit", "in.jsonl"}, 2, "add -o results.jsonl"},
		{[]string{"submit", "in.jsonl", "-o", "x", "--kind", "chat"}, 2, `--kind "chat"`},
		{[]string{"submit", "in.jsonl", "-o", "x", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"submit", "/nonexistent/in.jsonl", "-o", "x"}, 2, "cannot read the input"},
		{[]string{"show"}, 2, "give one batch"},
		{[]string{"jobs", "-o", "yaml"}, 2, `-o "yaml"`},
	} {
		code, _, stderr := cmd(ctx, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
	in := filepath.Join(t.TempDir(), "in.jsonl")
	writeInput(t, in, 1, 0)
	code, _, stderr := cmd(ctx, "submit", in, "-o", in+".out", "--nats", "nats://127.0.0.1:1")
	if code != 1 || !strings.Contains(stderr, "cannot reach NATS at nats://127.0.0.1:1: is gembatchd's NATS running? set GEMBATCH_NATS_URL or --nats") {
		t.Errorf("no NATS: exit %d, %q", code, stderr)
	}
	code, _, stderr = cmd(ctx, "jobs", "--nats", "nats://127.0.0.1:1")
	if code != 1 || !strings.Contains(stderr, "cannot reach NATS") {
		t.Errorf("jobs without NATS: exit %d, %q", code, stderr)
	}
}

// TestSubmitResume interrupts a submit midway, then runs it again: every key answered once.
func TestSubmitResume(t *testing.T) {
	s := startStack(t, 300*time.Millisecond, func(c *daemon.Config) { c.BatchMaxRequests = 100 })
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	const n = 2000
	writeInput(t, in, n, 0)

	ctx, cancel := context.WithCancel(t.Context())
	var stopped sync.WaitGroup
	var code atomic.Int64
	var stderr string
	stopped.Go(func() {
		c, _, e := cmd(ctx, "submit", in, "-o", out, "--nats", s.natsURL, "--max-in-flight", "500")
		code.Store(int64(c))
		stderr = e
	})
	// Interrupt once some answers are written.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(out); err == nil && bytes.Count(b, []byte("\n")) >= 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no answers written within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	stopped.Wait()
	first := len(readResults(t, out))
	if code.Load() != 1 || !strings.Contains(stderr, "interrupted with") || !strings.Contains(stderr, "run the same command again to resume") {
		t.Fatalf("interrupted run: exit %d, stderr %s", code.Load(), stderr)
	}
	if first >= n {
		t.Fatalf("the interrupted run answered everything (%d)", first)
	}
	// A crash could leave a line cut short: the resume drops it.
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"key":"k00019`); err != nil {
		t.Fatal(err)
	}
	f.Close()

	c, stdout, e := cmd(t.Context(), "submit", in, "-o", out, "--nats", s.natsURL, "--max-in-flight", "500")
	if c != 0 {
		t.Fatalf("resumed run: exit %d\n%s\n%s", c, stdout, e)
	}
	if !strings.Contains(e, fmt.Sprintf("resuming: %d keys already answered", first)) ||
		!strings.Contains(stdout, fmt.Sprintf("%d requests answered (%d skipped", n-first, first)) {
		t.Errorf("resumed run output:\n%s\n%s", stdout, e)
	}
	res := readResults(t, out)
	if len(res) != n {
		t.Fatalf("%d of %d keys answered after the resume", len(res), n)
	}
	t.Logf("first run answered %d, the resume %d", first, n-first)
}

// TestSubmitLarge sends 100,000 lines (20,000 with -short or under the race detector, which
// slows the in-process daemon about fivefold) and reports time and peak memory.
func TestSubmitLarge(t *testing.T) {
	n := 100_000
	if testing.Short() || raceEnabled() {
		n = 20_000
		t.Logf("%d lines (-short or -race); run without both for 100,000", n)
	}
	if v, err := strconv.Atoi(os.Getenv("GEMBATCH_SUBMIT_LINES")); err == nil && v > 0 {
		n = v // e.g. 1000000 for the million-line check
	}
	s := startStack(t, 100*time.Millisecond, func(c *daemon.Config) {
		c.BatchMaxRequests = 10_000
		c.BatchMaxWait = 500 * time.Millisecond
	})
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	writeInput(t, in, n, 1000)
	// The command runs in a child process (this test binary, re-run as gembatch), so that its
	// peak memory is its own, not the daemon's, NATS's or the emulator's.
	start := time.Now()
	c := exec.CommandContext(t.Context(), os.Args[0], "submit", in, "-o", out, "--nats", s.natsURL)
	c.Env = append(os.Environ(), "GEMBATCH_TEST_RUN=1")
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	took := time.Since(start)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(stdout.String(), fmt.Sprintf("%d answers are errors", n/1000)) {
		t.Fatalf("submit: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	res := readResults(t, out)
	if len(res) != n {
		t.Fatalf("%d of %d answered", len(res), n)
	}
	var rss float64
	if ru, ok := c.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = float64(ru.Maxrss) / 1024 // KiB on Linux
	}
	t.Logf("%d lines in %s (%.0f lines/s); gembatch submit peak RSS %.1f MiB (--max-in-flight 10000)",
		n, took.Round(time.Millisecond), float64(n)/took.Seconds(), rss)
}

// FuzzParseInputLine: any input line gives a key and either a request object or a problem.
func FuzzParseInputLine(f *testing.F) {
	for _, s := range []string{
		`{"key":"a","request":{"contents":[]}}`, `{"request":{}}`, `{"key":7,"request":{}}`, `{"key":null}`,
		`not json`, `{"key":"","request":[1]}`, `{"key":{"x":1},"request":{"a":"b"}}`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		key, body, problem := parseInputLine(b, 42)
		if key == "" {
			t.Fatalf("no key for %q", b)
		}
		if problem == "" && (len(body) == 0 || body[0] != '{' || !json.Valid(body)) {
			t.Fatalf("accepted %q with body %q", b, body)
		}
		if problem != "" && body != nil {
			t.Fatalf("problem %q with a body", problem)
		}
		if !json.Valid(errorLine(key, 3, "INVALID_ARGUMENT", problem)) {
			t.Fatalf("error line for key %q is not JSON", key)
		}
	})
}

func TestAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		5 * time.Second: "5s", 12 * time.Minute: "12m", 3*time.Hour + 5*time.Minute: "3h05m", 52 * time.Hour: "2d04h",
	} {
		if got := age(d); got != want {
			t.Errorf("age(%s) = %s, want %s", d, got, want)
		}
	}
}

// raceEnabled reports whether the test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}
