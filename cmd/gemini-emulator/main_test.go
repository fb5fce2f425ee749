package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// runMainEnv makes the test binary run main instead of the tests, so that a test can start the
// command as a process and signal it.
const runMainEnv = "GEMINI_EMULATOR_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
	}
	goleak.VerifyTestMain(m)
}

// syncBuffer is the stderr of an in-process run, read while run writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// listenAddr reads the start line's address from a log line.
func listenAddr(line string) string {
	var l struct{ Message, Addr string }
	if json.Unmarshal([]byte(line), &l) != nil || l.Message != "gemini emulator listening" {
		return ""
	}
	return l.Addr
}

func get(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}

// TestHelp: --help writes every flag and directive to stdout, so that `| less` shows it, and
// exits 0 with nothing on stderr.
func TestHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("--help exited %d", code)
	}
	if errOut.Len() != 0 {
		t.Errorf("--help wrote to stderr: %s", errOut.String())
	}
	for _, want := range []string{
		"--addr", "--api-key", "--job-delay", "--inline-max-bytes", "--file-max-bytes", "--log-level", "--image-bytes",
		"[[emulator:image-bytes=N]]", "/v1alpha",
		"--create-429-rate", "--throttle-delay", "--get-error-rate", "--upload-chunk-failures", "--item-error-rate",
		"--stuck-pending", "--expire-after", "--fail-jobs", "--out-of-order", "--list-lag", "--lose-create-answers",
		"--partial-results", "--max-active-jobs", "--enqueued-token-limit",
		"--seed", "[[emulator:error=N]]", "[[emulator:error=N,times=K]]", "Example",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help does not mention %s", want)
		}
	}
}

func TestBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{"--nope"},
		{"--job-delay", "soon"},
		{"--create-429-rate", "1.5"},
		{"--partial-results", "-0.1"},
		{"--max-active-jobs", "-1"},
		{"--enqueued-token-limit", "-5"},
		{"--log-level", "loud"},
		{"--image-bytes", "0"},
		{"extra"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != 2 {
			t.Errorf("%v exited %d, want 2", args, code)
		}
		if errOut.Len() == 0 || out.Len() != 0 {
			t.Errorf("%v said %q on stdout and %q on stderr, want a word on stderr only", args, out.String(), errOut.String())
		}
	}
}

func TestRunStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	exit := make(chan int, 1)
	go func() {
		exit <- run(ctx, []string{"--addr", "127.0.0.1:0", "--log-level", "debug", "--job-delay", "50ms"}, io.Discard, &out)
	}()
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == ""; {
		for _, line := range strings.Split(out.String(), "\n") {
			if a := listenAddr(line); a != "" {
				addr = a
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no start line: %s", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if body := get(t, "http://"+addr+"/v1beta/batches"); body != "{}\n" {
		t.Errorf("list answered %q", body)
	}
	cancel()
	select {
	case code := <-exit:
		if code != 0 {
			t.Errorf("exited %d: %s", code, out.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
	if log := out.String(); !strings.Contains(log, `"path":"/v1beta/batches"`) || !strings.Contains(log, `"message":"stopped"`) {
		t.Errorf("log lacks the request line or the stop line:\n%s", log)
	}
}

// TestHelpProcess: the built command prints --help on its stdout and exits 0.
func TestHelpProcess(t *testing.T) {
	cmd := exec.Command(os.Args[0], "--help")
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("--help: %v (stderr %q)", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "Usage: gemini-emulator") || stderr.Len() != 0 {
		t.Errorf("--help wrote %d bytes to stdout and %q to stderr", stdout.Len(), stderr.String())
	}
}

// TestSIGTERM runs the command as a process and stops it with SIGTERM.
func TestSIGTERM(t *testing.T) {
	cmd := exec.Command(os.Args[0], "--addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var addr string
	timeout := time.After(10 * time.Second)
	for addr == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("exited before listening: %v", cmd.Wait())
			}
			addr = listenAddr(line)
		case <-timeout:
			_ = cmd.Process.Kill()
			t.Fatal("no start line")
		}
	}
	get(t, "http://"+addr+"/v1beta/files")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range lines { // drain to EOF so Wait can finish
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("after SIGTERM: %v", err)
	}
}
