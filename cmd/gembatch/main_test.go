package main

import (
	"bytes"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// TestDemo runs the newcomer's command end to end: every request answered, both batch modes used.
func TestDemo(t *testing.T) {
	var out, errb bytes.Buffer
	images := t.TempDir()
	if code := run([]string{"demo", "--job-delay", "200ms", "--requests", "120", "--images-dir", images}, &out, &errb); code != 0 {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{
		"205 sent, 204 answered ok, 1 answered with an error",
		"images     4 written to " + images + " (4 answers over the NATS max payload",
		"2 by JSONL file", // the Pro batch of big prompts, and the image batch whatever its size
		"Every request got exactly one reply",
		"malformed-1  error",
		`"code":3`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
	if !regexp.MustCompile(`saved\s+\$0\.0*[1-9]\d* against interactive prices`).MatchString(out.String()) {
		t.Errorf("the summary does not say what batching saved:\n%s", out.String())
	}
	if strings.Contains(out.String(), "0 by JSONL file") {
		t.Errorf("no batch went by file:\n%s", out.String())
	}
	for i := range 4 {
		f, err := os.Open(filepath.Join(images, fmt.Sprintf("image-%02d.png", i)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(f); err != nil {
			t.Errorf("image %d: %v", i, err)
		}
		f.Close()
	}
	if !strings.Contains(errb.String(), "answered 205/205") {
		t.Errorf("no final progress line:\n%s", errb.String())
	}
}

// TestDemoLogWithoutColour: the daemon's log that -v shows has no colour codes when standard
// error is not a terminal (a pipe, a file), as GEMBATCH_LOG_FORMAT=console does not.
func TestDemoLogWithoutColour(t *testing.T) {
	var out bytes.Buffer
	var errb lockedBuffer // the daemon's goroutines log while the demo prints its progress
	if code := run([]string{"demo", "-v", "--job-delay", "100ms", "--requests", "5", "--images", "0"}, &out, &errb); code != 0 {
		t.Fatalf("demo -v exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	if !strings.Contains(errb.String(), "gembatchd ready") {
		t.Fatalf("demo -v shows no daemon log:\n%s", errb.String())
	}
	if strings.Contains(errb.String(), "\x1b[") {
		t.Errorf("colour codes in the log written to a buffer:\n%q", errb.String())
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes, as os.Stderr is.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "gembatch demo") {
		t.Fatalf("no command: exit %d, %q", code, errb.String())
	}
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: exit %d", code)
	}
}

// TestCommandHelp: each command's --help goes to standard output (so `| less` shows it) with
// exit 0; a bad flag goes to standard error with exit 2.
func TestCommandHelp(t *testing.T) {
	for _, cmd := range []string{"demo", "submit", "jobs", "show", "cancel"} {
		t.Run(cmd, func(t *testing.T) {
			for _, help := range []string{"--help", "-h"} {
				var out, errb bytes.Buffer
				code := run([]string{cmd, help}, &out, &errb)
				if code != 0 || !strings.Contains(out.String(), "Usage: gembatch "+cmd) || !strings.Contains(out.String(), "-nats") && cmd != "demo" || errb.Len() > 0 {
					t.Errorf("%s %s: exit %d, stdout %q, stderr %q", cmd, help, code, out.String(), errb.String())
				}
			}
			var out, errb bytes.Buffer
			code := run([]string{cmd, "--no-such-flag"}, &out, &errb)
			if code != 2 || out.Len() > 0 || !strings.Contains(errb.String(), "no-such-flag") || !strings.Contains(errb.String(), "gembatch "+cmd+" --help") {
				t.Errorf("%s --no-such-flag: exit %d, stdout %q, stderr %q", cmd, code, out.String(), errb.String())
			}
		})
	}
}
