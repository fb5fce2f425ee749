// Package benchkit measures gembatchd against the raw NATS, JetStream and HTTP operations it is
// built on, in one process and one run, for `gembatch bench`. Each measure runs interleaved
// rounds: the baseline and gembatchd take turns, so that load from elsewhere on the machine
// touches both, and the report gives the median and the spread of each figure and of the
// per-round ratio. Nothing is estimated: a figure the daemon cannot produce yet is reported as
// not available, with the reason.
package benchkit

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Options chooses what to measure and how big.
type Options struct {
	// NATSURL is the server to measure on; empty starts one in-process (JetStream on, temp dir).
	NATSURL string
	// Rounds is the number of interleaved rounds of each measure.
	Rounds int
	// Quick shrinks every measure to CI size: seconds, not minutes.
	Quick bool
	// Full sends the 1 GiB batch of the peak-RSS measure (default 128 MiB) and reads a 1 GiB
	// result file (default 64 MiB).
	Full bool
	// PollWindow is how long the polling measure counts API calls and CPU (default a minute).
	PollWindow time.Duration
	// Only lists the measure groups to run (see Groups); empty runs them all.
	Only []string
	// Progress receives one line per round; nil is silent.
	Progress io.Writer
	// Gembatchd returns a command that runs gembatchd configured by its environment (GEMBATCH_*
	// variables are added), for the measure that needs the daemon alone in its process (peak RSS).
	Gembatchd func() *exec.Cmd
}

// Groups are the names --only takes, in the order they run.
var Groups = []string{"intake", "durable", "fanout", "results", "pending", "rss", "bigreply", "polling"}

// Stats summarises one figure over the rounds.
type Stats struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	// Rounds is each round's figure, in the order the rounds ran, so that runs can be pooled:
	// the median of one run of a few rounds moves with the machine's load.
	Rounds []float64 `json:"rounds"`
}

// Row is one line of the report: a figure of gembatchd, its baseline measured in the same
// rounds (nil when the measure has none), and their ratio per round.
type Row struct {
	Group   string `json:"group"`
	Measure string `json:"measure"`
	Unit    string `json:"unit"`
	// Better says which way is good: "higher" (rates) or "lower" (memory, calls, CPU).
	Better        string `json:"better"`
	BaselineLabel string `json:"baseline_label,omitempty"`
	Baseline      *Stats `json:"baseline,omitempty"`
	Gembatchd     *Stats `json:"gembatchd,omitempty"`
	// Ratio is gembatchd over the baseline, per round.
	Ratio *Stats `json:"ratio,omitempty"`
	Note  string `json:"note,omitempty"`
}

// Machine describes where the figures were measured.
type Machine struct {
	CPUs     int    `json:"cpus"`
	CPUModel string `json:"cpu_model"`
	GOOS     string `json:"goos"`
	GOARCH   string `json:"goarch"`
	Go       string `json:"go"`
}

// Report is everything one run measured.
type Report struct {
	Date    time.Time `json:"date"`
	Machine Machine   `json:"machine"`
	NATS    string    `json:"nats"`
	Rounds  int       `json:"rounds"`
	Quick   bool      `json:"quick"`
	Full    bool      `json:"full"`
	TookS   float64   `json:"took_s"`
	Rows    []Row     `json:"rows"`
}

// measure is one group: it runs its rounds and returns its rows.
type measure struct {
	group string
	run   func(ctx context.Context, e *env) ([]Row, error)
}

func measures() []measure {
	return []measure{
		{"intake", coreIntake},
		{"durable", durableIntake},
		{"fanout", fanOut},
		{"results", resultFile},
		{"pending", heapPerPending},
		{"rss", peakRSS},
		{"bigreply", bigReplies},
		{"polling", polling},
	}
}

// Run measures every selected group and returns the report. It stops everything it started,
// and removes its temporary files and (on a server of the caller's) its streams, before it returns.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if opts.Rounds < 1 {
		opts.Rounds = 3
	}
	for _, g := range opts.Only {
		if !slices.Contains(Groups, g) {
			return nil, fmt.Errorf("unknown measure %q (have %s)", g, strings.Join(Groups, ", "))
		}
	}
	start := time.Now()
	e, err := newEnv(opts)
	if err != nil {
		return nil, err
	}
	defer e.close()
	rep := &Report{Date: start.UTC(), Machine: machine(), NATS: e.natsLabel(), Rounds: opts.Rounds, Quick: opts.Quick, Full: opts.Full}
	for _, m := range measures() {
		if len(opts.Only) > 0 && !slices.Contains(opts.Only, m.group) {
			continue
		}
		rows, err := m.run(ctx, e)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.group, err)
		}
		for i := range rows {
			rows[i].Group = m.group
		}
		rep.Rows = append(rep.Rows, rows...)
	}
	rep.TookS = time.Since(start).Seconds()
	return rep, nil
}

// rounds holds one measure's per-round figures.
type rounds struct{ base, daemon []float64 }

func (r *rounds) add(base, daemon float64) {
	r.base = append(r.base, base)
	r.daemon = append(r.daemon, daemon)
}

// row builds a Row with baseline, gembatchd and per-round ratio.
func (r *rounds) row(measure, unit, better, baseLabel string) Row {
	ratios := make([]float64, len(r.daemon))
	for i := range r.daemon {
		ratios[i] = r.daemon[i] / r.base[i]
	}
	return Row{Measure: measure, Unit: unit, Better: better, BaselineLabel: baseLabel,
		Baseline: summarize(r.base), Gembatchd: summarize(r.daemon), Ratio: summarize(ratios)}
}

func summarize(v []float64) *Stats {
	if len(v) == 0 {
		return nil
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return &Stats{Median: med, Min: s[0], Max: s[len(s)-1], Rounds: slices.Clone(v)}
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, Go: runtime.Version(), CPUModel: "unknown"}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return m
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			m.CPUModel = strings.TrimSpace(v)
			break
		}
	}
	return m
}

// progress writes one line of progress.
func (e *env) progress(format string, args ...any) {
	if e.opts.Progress != nil {
		fmt.Fprintf(e.opts.Progress, "bench: "+format+"\n", args...)
	}
}

// size picks the default or the --quick figure.
func (e *env) size(normal, quick int) int {
	if e.opts.Quick {
		return quick
	}
	return normal
}
