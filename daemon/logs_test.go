package daemon

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestLogDurationsHaveUnits: the convention is a duration logged as a float field named
// <what>_seconds; zerolog's Dur writes a bare number of milliseconds ("grace":25000), so no
// package logs with it.
func TestLogDurationsHaveUnits(t *testing.T) {
	dur := regexp.MustCompile(`(?m)(?:\.|^\s*)Dur\("([a-z_]+)"`)
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range dur.FindAllStringSubmatch(string(src), -1) {
			t.Errorf("%s logs duration %q with Dur: a bare number; log %s_seconds with Float64", path, m[1], m[1])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEffectiveShowsUnits: the start-up line shows sizes as they are written ("100MiB", not
// "104857600") and an empty token budget as empty, not "map[]".
func TestEffectiveShowsUnits(t *testing.T) {
	c := Defaults()
	e := c.Effective()
	for name, want := range map[string]string{
		"GEMBATCH_BATCH_MAX_BYTES": "100MiB", "GEMBATCH_INLINE_MAX_BYTES": "19MiB", "GEMBATCH_MAX_REQUEST_BYTES": "8MiB",
		"GEMBATCH_MAX_PENDING_BYTES": "1GiB", "GEMBATCH_TOKEN_BUDGET": "", "GEMBATCH_BATCH_MAX_WAIT": "1m0s",
	} {
		if e[name] != want {
			t.Errorf("%s shows as %q, want %q", name, e[name], want)
		}
	}
	if err := c.TokenBudget.Decode("gemini-2.5-pro=5000000,gemini-2.5-flash=3000000"); err != nil {
		t.Fatal(err)
	}
	c.BatchMaxBytes = 1000
	e = c.Effective()
	if got := e["GEMBATCH_TOKEN_BUDGET"]; got != "models/gemini-2.5-flash=3000000,models/gemini-2.5-pro=5000000" {
		t.Errorf("token budget shows as %q", got)
	}
	if got := e["GEMBATCH_BATCH_MAX_BYTES"]; got != "1000B" {
		t.Errorf("1000 bytes show as %q", got)
	}
}

// TestConsoleLogWithoutTerminal: console format writes no colour codes to a file or pipe.
func TestConsoleLogWithoutTerminal(t *testing.T) {
	c := Defaults()
	c.LogFormat = "console"
	var out bytes.Buffer
	log, err := NewLogger(c, &out)
	if err != nil {
		t.Fatal(err)
	}
	log.Warn().Str("record", "r1").Msg("hello")
	if strings.Contains(out.String(), "\x1b[") {
		t.Fatalf("colour codes in %q", out.String())
	}
	if !strings.Contains(out.String(), "hello") || !strings.Contains(out.String(), "record=r1") {
		t.Fatalf("console line %q", out.String())
	}
}
