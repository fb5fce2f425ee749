package benchkit

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/gembatch/gembatch/intake"
	"github.com/gembatch/gembatch/metrics"
)

// TestWatchedSeriesIsReadAlone: the count the bench times a round by is read from its own
// collector: it agrees with a Gather of the whole registry, and costs as much however many
// series the registry holds, where a Gather costs more with each. Other series still come
// from the whole registry.
func TestWatchedSeriesIsReadAlone(t *testing.T) {
	const name = acceptedSeries
	w := newWatchedRegistry()
	f := promauto.With(w)
	accepted := f.NewCounterVec(prometheus.CounterOpts{Name: name, Help: "accepted"}, []string{"kind", "model"})
	other := f.NewCounter(prometheus.CounterOpts{Name: "gembatch_other_total", Help: "other"})
	accepted.WithLabelValues("generate", "gemini-2.5-flash").Add(3)
	accepted.WithLabelValues("embed", "gemini-embedding-001").Add(4)
	other.Add(5)

	whole, err := metrics.Sum(w.Registry, name)
	if err != nil {
		t.Fatal(err)
	}
	if got := w.metric(name); got != 7 || got != whole {
		t.Errorf("watched read %v, whole registry %v, want 7", got, whole)
	}
	if got := w.metric("gembatch_other_total"); got != 5 {
		t.Errorf("unwatched read %v, want 5", got)
	}
	// Its cost does not grow with the registry, as a Gather's does.
	alone, gather := allocs(w, name)
	for i := range 100 {
		f.NewGauge(prometheus.GaugeOpts{Name: fmt.Sprintf("gembatch_filler_%d", i), Help: "filler"})
	}
	aloneLarge, gatherLarge := allocs(w, name)
	t.Logf("allocations a read, 2 series then 102: %v then %v alone, %v then %v by Gather", alone, aloneLarge, gather, gatherLarge)
	if aloneLarge != alone || gatherLarge < gather+100 {
		t.Errorf("a watched read allocates %v then %v times, a Gather %v then %v: want the watched read unchanged", alone, aloneLarge, gather, gatherLarge)
	}
}

func allocs(w *watchedRegistry, name string) (alone, gather float64) {
	return testing.AllocsPerRun(100, func() { w.metric(name) }),
		testing.AllocsPerRun(100, func() { _, _ = metrics.Sum(w.Registry, name) })
}

// TestWatchedSeriesOfTheDaemon: intake's own collector is the one watched (its name is read off
// its description), so a bench of a real daemon reads it alone.
func TestWatchedSeriesOfTheDaemon(t *testing.T) {
	w := newWatchedRegistry()
	intake.NewMetrics(w)
	if w.accepted == nil {
		t.Errorf("no collector of %s kept", acceptedSeries)
	}
}
