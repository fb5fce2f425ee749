package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/embedded"
)

// build compiles gembatchd once for the subprocess tests.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gembatchd")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestHelpListsEveryVariable: --help goes to standard output (so `| less` shows it), exits 0
// and lists every variable in columns that line up.
func TestHelpListsEveryVariable(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	if errOut.Len() > 0 {
		t.Errorf("--help wrote to stderr: %q", errOut.String())
	}
	for _, v := range []string{"GEMBATCH_NATS_URL", "GEMBATCH_BATCH_MAX_WAIT", "GEMBATCH_INLINE_MAX_BYTES", "GEMBATCH_REPLY_ALLOW", "GEMBATCH_SHUTDOWN_GRACE", "1m"} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("--help does not mention %s", v)
		}
	}
	// Every row's default and meaning start at the same columns as the header's.
	var header string
	rows := 0
	for line := range strings.SplitSeq(out.String(), "\n") {
		if strings.Contains(line, "\t") {
			t.Errorf("tab in %q: columns are not laid out", line)
		}
		if strings.HasPrefix(strings.TrimSpace(line), "VARIABLE ") {
			header = line
			continue
		}
		if header != "" && line == "" {
			break // the end of the table
		}
		if header == "" {
			continue
		}
		rows++
		for _, col := range []string{"DEFAULT", "MEANING"} {
			at := strings.Index(header, col)
			if len(line) <= at || line[at-1] != ' ' {
				t.Errorf("row %q does not line up with column %s", line, col)
			}
		}
		if at := strings.Index(header, "MEANING"); len(line) > at && line[at] == ' ' {
			t.Errorf("row %q has no meaning under MEANING", line)
		}
	}
	if rows < 50 {
		t.Errorf("--help lists %d variables in its table", rows)
	}
	out.Reset()
	if code := run([]string{"--version"}, &out, io.Discard); code != 0 || !strings.HasPrefix(out.String(), "gembatchd ") {
		t.Fatalf("--version: exit %d, stdout %q", code, out.String())
	}
	if code := run([]string{"--bogus"}, io.Discard, io.Discard); code != 2 {
		t.Fatalf("unknown flag: exit %d, want 2", code)
	}
}

// TestBadValuesStopBeforeNATS: every bad value is refused with exit 2 and one line naming the
// variable, before gembatchd connects to anything (GEMBATCH_NATS_URL points nowhere: a value
// that slipped through would fail later, with exit 1).
func TestBadValuesStopBeforeNATS(t *testing.T) {
	for _, tt := range []struct{ env, value string }{
		{"GEMBATCH_METRICS_ADDR", "notanaddr"},
		{"GEMBATCH_METRICS_ADDR", "127.0.0.1:http-alt"},
		{"GEMBATCH_GEMINI_BASE_URL", "localhost:8085"},
		{"GEMBATCH_PRICES_FILE", "/nonexistent/prices.json"},
		{"GEMBATCH_NATS_CREDS_FILE", "/nonexistent/user.creds"},
		{"GEMBATCH_SUBJECT_EMBED", "gembatch embed"},
		{"GEMBATCH_REPLY_ALLOW", "_INBOX.>.more"},
		{"GEMBATCH_BATCH_MAX_WIAT", "5s"},
		{"GEMBATCH_LOG_LEVEL", "banana"},
		{"GEMBATCH_LEASES_BUCKET", "leases.v1"},
		{"GEMBATCH_CONSUMER", "gembatch.v1"},
		{"GEMBATCH_KEEP_JOBS", "maybe"},
		{"GEMBATCH_NATS_TLS_KEY", "/etc/hostname"},
		{"GEMBATCH_SUBJECT_GENERATE", "gembatch.stream.generate"},
		{"GEMBATCH_STREAM_SUBJECT", "gembatch"},
	} {
		t.Run(tt.env+"="+tt.value, func(t *testing.T) {
			cleanEnv(t)
			t.Setenv("GEMBATCH_NATS_URL", "nats://127.0.0.1:1")
			t.Setenv(tt.env, tt.value)
			var errOut bytes.Buffer
			code := run(nil, io.Discard, &errOut)
			lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
			if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], tt.env) {
				t.Fatalf("exit %d, stderr %q: want exit 2 and one line naming %s", code, errOut.String(), tt.env)
			}
		})
	}
	t.Run("LOG_LEVEL=banana is not gembatchd's", func(t *testing.T) {
		cleanEnv(t)
		t.Setenv("GEMBATCH_NATS_URL", "nats://127.0.0.1:1")
		t.Setenv("LOG_LEVEL", "banana")
		var errOut bytes.Buffer
		if code := run(nil, io.Discard, &errOut); code != 1 || !strings.Contains(errOut.String(), "cannot reach NATS") {
			t.Fatalf("exit %d, stderr %q: want the configuration accepted and NATS not reached", code, errOut.String())
		}
	})
}

// cleanEnv unsets every GEMBATCH_* variable for the test, so that what the shell or CI exports
// (GEMBATCH_FAULT_REPORT...) is not taken for a typo.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, k := range daemonVars(os.Environ()) {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

// daemonVars are the names of the GEMBATCH_* variables in environ.
func daemonVars(environ []string) []string {
	var out []string
	for _, kv := range environ {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "GEMBATCH_") {
			out = append(out, k)
		}
	}
	return out
}

// hermeticEnv is os.Environ without GEMBATCH_* variables, for the gembatchd subprocesses.
func hermeticEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GEMBATCH_") })
}

// TestBinary runs the real gembatchd: a bad variable stops it with one line and exit 2; a good
// configuration serves requests and health endpoints; SIGTERM submits open batches and exits 0.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := build(t)

	cmd := exec.Command(bin)
	cmd.Env = append(hermeticEnv(), "GEMBATCH_BATCH_MAX_WAIT=whenever")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("bad config: %v, want exit 2", err)
	}
	if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "GEMBATCH_BATCH_MAX_WAIT") {
		t.Fatalf("bad config output %q: want one line naming the variable", out)
	}

	ns, err := embedded.NATS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	emu := emulator.New(emulator.Options{JobDelay: 100 * time.Millisecond})
	srv := httptest.NewServer(emu)
	defer func() { srv.Close(); emu.Close() }()

	const key = "AIzaSy-test-key-that-must-not-leak"
	cmd = exec.Command(bin)
	cmd.Env = append(hermeticEnv(),
		"GEMBATCH_NATS_URL="+ns.ClientURL(),
		"GEMBATCH_GEMINI_BASE_URL="+srv.URL,
		"GEMBATCH_GEMINI_API_KEY="+key,
		"GEMBATCH_METRICS_ADDR=127.0.0.1:0",
		"GEMBATCH_BATCH_MAX_WAIT=1h",
		"GEMBATCH_LOG_LEVEL=debug",
	)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	ready := make(chan string, 1)
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			logs.WriteString(line + "\n")
			if strings.Contains(line, `"gembatchd ready"`) {
				i := strings.Index(line, `"metrics":"`) + len(`"metrics":"`)
				ready <- line[i : i+strings.Index(line[i:], `"`)]
			}
		}
	}()
	var metricsAddr string
	select {
	case metricsAddr = <-ready:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("gembatchd not ready:\n%s", logs.String())
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for i := range 20 {
		if err := nc.PublishRequest("gembatch.generate", "_INBOX.bin", []byte(fmt.Sprintf(`{"contents":[{"parts":[{"text":"q%d"}]}]}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // let intake take them before the signal
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-logDone
	if err := cmd.Wait(); err != nil {
		t.Fatalf("gembatchd after SIGTERM: %v\n%s", err, logs.String())
	}
	t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	var total int64
	for _, op := range emu.Batches() {
		total += int64(op.Metadata.BatchStats.RequestCount)
	}
	if total != 20 {
		t.Fatalf("batches created on SIGTERM hold %d requests, want 20\n%s", total, logs.String())
	}
	if strings.Contains(logs.String(), key) {
		t.Fatal("the API key appears in the log")
	}
	if !strings.Contains(logs.String(), `"GEMBATCH_GEMINI_API_KEY":"[redacted]"`) {
		t.Fatalf("start line does not show the redacted key:\n%s", logs.String())
	}
}
