package benchkit

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// WriteTable writes the report as a Markdown table (readable in a terminal, pasteable into
// README): measure, baseline, gembatchd, ratio; each a median with its min–max over the rounds.
func WriteTable(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "gembatch bench, %s · %d CPUs, %s · %s · %s · %d rounds, medians (min–max)%s\n\n",
		r.Date.Format("2006-01-02 15:04 MST"), r.Machine.CPUs, r.Machine.CPUModel, r.Machine.Go, r.NATS, r.Rounds, sizeNote(r))
	b.WriteString("| measure | baseline | gembatchd | ratio |\n|---|---|---|---|\n")
	for _, row := range r.Rows {
		base := "—"
		if row.Baseline != nil {
			base = row.BaselineLabel + ": " + figure(row.Baseline, row.Unit)
		}
		got := figure(row.Gembatchd, row.Unit)
		ratio := "—"
		if row.Ratio != nil {
			ratio = ratioText(row.Ratio)
		}
		measure := row.Measure
		if row.Note != "" {
			measure += " (" + row.Note + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", measure, base, got, ratio)
	}
	fmt.Fprintf(&b, "\nTook %.0f s.\n", r.TookS)
	_, err := io.WriteString(w, b.String())
	return err
}

func sizeNote(r *Report) string {
	switch {
	case r.Quick:
		return " · --quick sizes"
	case r.Full:
		return " · --full sizes"
	}
	return ""
}

// figure is "median unit (min–max)", or the median alone when every round agrees.
func figure(s *Stats, unit string) string {
	if s == nil {
		return "—"
	}
	if num(s.Min) == num(s.Max) {
		return num(s.Median) + " " + unit
	}
	return fmt.Sprintf("%s %s (%s–%s)", num(s.Median), unit, num(s.Min), num(s.Max))
}

func ratioText(s *Stats) string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }
	if f(s.Min) == f(s.Max) {
		return f(s.Median)
	}
	return fmt.Sprintf("%s (%s–%s)", f(s.Median), f(s.Min), f(s.Max))
}

// num rounds to three significant figures and groups thousands: 211,700; 52.3; 0.412; 49.
func num(v float64) string {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	digits := 2 - int(math.Floor(math.Log10(math.Abs(v))))
	if digits > 0 && v == math.Trunc(v) {
		digits = 0 // a count: 49, not 49.0
	}
	if digits > 0 {
		return strconv.FormatFloat(v, 'f', digits, 64)
	}
	p := math.Pow(10, float64(-digits))
	s := strconv.FormatInt(int64(math.Round(v/p)*p), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}
