package main

import (
	"encoding/json"
	"math"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gembatch/gembatch/pricing"
)

// TestCostTally: answers are priced by their modelVersion, else the model asked for; those
// without usage or a known model are not counted.
func TestCostTally(t *testing.T) {
	tally := newCostTally(pricing.Default(), "gemini-2.5-pro")
	for _, resp := range []string{
		// 1M prompt + 1M output on 2.5 Flash: $1.40 at batch prices, $2.80 interactively.
		`{"modelVersion":"gemini-2.5-flash","usageMetadata":{"promptTokenCount":1000000,"candidatesTokenCount":1000000}}`,
		// No modelVersion: the model asked for, 2.5 Pro: 0.1M × 0.625 = $0.0625, interactively $0.125.
		`{"usageMetadata":{"promptTokenCount":100000}}`,
		`{"embedding":{"values":[0.1]}}`, // no usage: not counted
		`not json`,
	} {
		tally.add(json.RawMessage(resp))
	}
	if math.Abs(tally.batch-1.4625) > 1e-9 || math.Abs(tally.saved-1.4625) > 1e-9 {
		t.Fatalf("batch $%v, saved $%v; want 1.4625 and 1.4625", tally.batch, tally.saved)
	}
	if got := tally.String(); got != "estimated $1.462500 at batch prices, $1.462500 saved against interactive prices" {
		t.Fatalf("String() = %q", got)
	}
}

// TestSubmitReportsSaving: submit's last line says what the answers cost and what batching saved.
func TestSubmitReportsSaving(t *testing.T) {
	s := startStack(t, 100*time.Millisecond, nil)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	writeInput(t, in, 20, 0)
	code, stdout, stderr := cmd(t.Context(), "submit", in, "-o", out, "--nats", s.natsURL, "--model", "gemini-2.5-flash")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	last := strings.TrimSpace(stdout)
	last = last[strings.LastIndex(last, "\n")+1:]
	if !regexp.MustCompile(`^20 requests answered .*; estimated \$0\.\d+ at batch prices, \$0\.0*[1-9]\d* saved against interactive prices$`).MatchString(last) {
		t.Fatalf("last line %q does not report the saving", last)
	}
}
