package benchkit

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestNum(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{
		{211734, "212,000"}, {47200, "47,200"}, {1335.4, "1,340"}, {52.31, "52.3"}, {0.4123, "0.412"},
		{854, "854"}, {49, "49"}, {7.5, "7.50"}, {-2187, "-2,190"}, {0, "0"}, {1e6, "1,000,000"},
	} {
		if got := num(c.v); got != c.want {
			t.Errorf("num(%v) = %q, want %q", c.v, got, c.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	if s := summarize([]float64{3, 1, 2}); !reflect.DeepEqual(*s, Stats{Median: 2, Min: 1, Max: 3, Rounds: []float64{3, 1, 2}}) {
		t.Errorf("odd: %+v", s)
	}
	if s := summarize([]float64{4, 1, 2, 3}); !reflect.DeepEqual(*s, Stats{Median: 2.5, Min: 1, Max: 4, Rounds: []float64{4, 1, 2, 3}}) {
		t.Errorf("even: %+v", s)
	}
	if summarize(nil) != nil {
		t.Error("no rounds should give no figure")
	}
}

// TestRowRatioPerRound checks the ratio is taken round by round, not of the medians.
func TestRowRatioPerRound(t *testing.T) {
	r := rounds{base: []float64{100, 200, 300}, daemon: []float64{50, 20, 150}}
	row := r.row("m", "msg/s", "higher", "raw")
	if !reflect.DeepEqual(*row.Ratio, Stats{Median: 0.5, Min: 0.1, Max: 0.5, Rounds: []float64{0.5, 0.1, 0.5}}) {
		t.Errorf("ratio %+v", row.Ratio)
	}
}

func TestWriteTable(t *testing.T) {
	rep := &Report{Date: time.Date(2026, 11, 29, 14, 0, 0, 0, time.UTC), Machine: Machine{CPUs: 2, CPUModel: "Test CPU", Go: "go1.26"},
		NATS: "in-process", Rounds: 3, Rows: []Row{
			{Measure: "core intake", Unit: "msg/s", Better: "higher", BaselineLabel: "raw",
				Baseline: &Stats{Median: 211700, Min: 200000, Max: 220000}, Gembatchd: &Stats{Median: 47200, Min: 47200, Max: 47200},
				Ratio: &Stats{Median: 0.2, Min: 0.19, Max: 0.24}},
			{Measure: "heap per pending request", Unit: "B", Better: "lower", Gembatchd: &Stats{Median: 209, Min: 209, Max: 209}},
		}}
	var b bytes.Buffer
	if err := WriteTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"2026-11-29 14:00 UTC · 2 CPUs, Test CPU",
		"| core intake | raw: 212,000 msg/s (200,000–220,000) | 47,200 msg/s | 0.20 (0.19–0.24) |",
		"| heap per pending request | — | 209 B | — |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
