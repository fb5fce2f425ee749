package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/internal/benchkit"
	"github.com/gembatch/gembatch/internal/stacktest"
)

// TestBenchQuickJSON runs every measure at CI size and checks the report has each one with
// positive figures: a baseline where the measure has one, gembatchd's figure (big answers
// included: the measure fails when one is not delivered by reference), and their ratio; one
// round keeps it short under -race. Goroutines left behind fail the package (goleak in
// TestMain); temporary files and child processes left behind fail this test.
func TestBenchQuickJSON(t *testing.T) {
	t.Setenv("GEMBATCH_TEST_RUN", "1") // the peak-RSS measure runs gembatchd as this binary: see TestMain
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // the run's own temporary directories, and the emulator's, go here
	var out, errb bytes.Buffer
	if code := run([]string{"bench", "--quick", "--rounds", "1", "-o", "json"}, &out, &errb); code != 0 {
		t.Fatalf("bench exit %d\nstderr:\n%s", code, errb.String())
	}
	var rep benchkit.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	t.Logf("stderr:\n%s", errb.String())
	if rep.Machine.CPUs < 1 || rep.Machine.CPUModel == "" || rep.Date.IsZero() || !rep.Quick || rep.Rounds != 1 {
		t.Errorf("report header: %+v", rep)
	}
	groups := map[string]int{}
	for _, row := range rep.Rows {
		groups[row.Group]++
		checkRow(t, row)
	}
	for _, g := range benchkit.Groups {
		if groups[g] == 0 {
			t.Errorf("no row for measure %q", g)
		}
	}
	if left, err := os.ReadDir(tmp); err != nil || len(left) > 0 {
		t.Errorf("temporary files left behind: %v %v", left, err)
	}
	if kids := children(t); len(kids) > 0 {
		t.Errorf("processes left running: %v", kids)
	}
}

func checkRow(t *testing.T, row benchkit.Row) {
	t.Helper()
	positive := func(what string, s *benchkit.Stats) {
		if s == nil || s.Min <= 0 || s.Median < s.Min || s.Max < s.Median {
			t.Errorf("%s: %s is not a positive median within its spread: %+v", row.Measure, what, s)
			return
		}
		// Each round's figure, so that runs can be pooled: one here (--rounds 1).
		if len(s.Rounds) != 1 || s.Rounds[0] != s.Median {
			t.Errorf("%s: %s does not give its one round's figure: %+v", row.Measure, what, s)
		}
	}
	if row.Measure == "" || row.Unit == "" || (row.Better != "higher" && row.Better != "lower") {
		t.Errorf("row without measure, unit or direction: %+v", row)
	}
	if row.Baseline != nil || row.BaselineLabel != "" {
		positive("baseline", row.Baseline)
	}
	positive("gembatchd", row.Gembatchd)
	if row.Baseline != nil {
		positive("ratio", row.Ratio)
	}
}

// children lists this process's child processes, from /proc.
func children(t *testing.T) []string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // ended meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after its closing parenthesis.
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(os.Getpid()) {
			out = append(out, string(b[:bytes.LastIndexByte(b, ')')+1]))
		}
	}
	return out
}

// TestBenchOnYourServer runs a measure against a server given by --nats and checks that
// every stream, bucket and consumer the run made there is gone afterwards.
func TestBenchOnYourServer(t *testing.T) {
	nc := stacktest.NATS(t)
	var out, errb bytes.Buffer
	code := run([]string{"bench", "--quick", "--rounds", "1", "--only", "bigreply,durable", "--nats", nc.ConnectedUrl()}, &out, &errb)
	if code != 0 {
		t.Fatalf("bench exit %d\nstderr:\n%s", code, errb.String())
	}
	for _, want := range []string{"| measure | baseline | gembatchd | ratio |", "durable intake", "answers of 2.1 MB delivered"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if !strings.Contains(out.String(), nc.ConnectedUrl()) {
		t.Errorf("table does not name the server measured:\n%s", out.String())
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	names := js.StreamNames(context.Background())
	for n := range names.Name() {
		left = append(left, n)
	}
	if err := names.Err(); err != nil && err != jetstream.ErrEndOfData {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("streams left on the server: %v", left)
	}
}

func TestBenchFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"bench", "--only", "nonsense", "-q"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), `unknown measure "nonsense"`) {
		t.Errorf("unknown measure: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"bench", "-o", "yaml"}, &out, &errb); code != 2 {
		t.Errorf("-o yaml: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"bench", "--help"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "interleaved rounds") {
		t.Errorf("--help: exit %d, %q", code, errb.String())
	}
}
