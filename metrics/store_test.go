package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/metrics"
	"github.com/gembatch/gembatch/record"
)

const storeHelp = `
# HELP gembatch_batches Batch records by lifecycle state (sealed, submitting, submitted, finished, failed, replied, cleaned).
# TYPE gembatch_batches gauge
# HELP gembatch_batches_oldest_unfinished_age_seconds Time since the seal of the oldest batch record not yet replied or cleaned; 0 when none.
# TYPE gembatch_batches_oldest_unfinished_age_seconds gauge
# HELP gembatch_batches_remote Batch records not yet replied, by the remote job's last seen state (pending, running, succeeded, ...).
# TYPE gembatch_batches_remote gauge
# HELP gembatch_batches_requests Requests held in batch records, by the record's lifecycle state.
# TYPE gembatch_batches_requests gauge
# HELP gembatch_store_scrape_errors_total Scrapes whose listing of the batch record store failed or timed out.
# TYPE gembatch_store_scrape_errors_total counter
`

func TestStoreCollector(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	reqs := func(n int) []record.Request { return make([]record.Request, n) }

	tests := []struct {
		name    string
		records []*record.Record
		want    string
	}{
		{
			name: "empty",
			want: `
gembatch_batches{state="sealed"} 0
gembatch_batches{state="submitting"} 0
gembatch_batches{state="submitted"} 0
gembatch_batches{state="finished"} 0
gembatch_batches{state="failed"} 0
gembatch_batches{state="replied"} 0
gembatch_batches{state="cleaned"} 0
gembatch_batches_remote{state="pending"} 0
gembatch_batches_remote{state="running"} 0
gembatch_batches_oldest_unfinished_age_seconds 0
gembatch_batches_requests{state="sealed"} 0
gembatch_batches_requests{state="submitting"} 0
gembatch_batches_requests{state="submitted"} 0
gembatch_batches_requests{state="finished"} 0
gembatch_batches_requests{state="failed"} 0
gembatch_batches_requests{state="replied"} 0
gembatch_batches_requests{state="cleaned"} 0
gembatch_store_scrape_errors_total 0
`,
		},
		{
			name: "every stage",
			records: []*record.Record{
				{ID: "a", State: record.Sealed, Sealed: now.Add(-10 * time.Second), Requests: reqs(3), Count: 3},
				{ID: "b", State: record.Submitted, Sealed: now.Add(-2 * time.Hour), Requests: reqs(5), Count: 5, RemoteState: gemini.StatePending},
				{ID: "c", State: record.Submitted, Sealed: now.Add(-time.Hour), Requests: reqs(1), Count: 1, RemoteState: gemini.StateRunning},
				{ID: "d", State: record.Submitted, Sealed: now.Add(-time.Minute), Requests: reqs(2), Count: 2, RemoteState: gemini.StateRunning},
				{ID: "e", State: record.Finished, Sealed: now.Add(-30 * time.Minute), Requests: reqs(4), Count: 4, RemoteState: gemini.StateExpired},
				{ID: "f", State: record.Failed, Sealed: now.Add(-5 * time.Minute), Requests: reqs(6), Count: 6},
				// Replied and cleaned records count by state but are neither unfinished nor remote.
				{ID: "g", State: record.Replied, Sealed: now.Add(-48 * time.Hour), Requests: reqs(7), Count: 7, RemoteState: gemini.StateSucceeded},
				{ID: "h", State: record.Cleaned, Sealed: now.Add(-72 * time.Hour), RemoteState: gemini.StateSucceeded},
			},
			want: `
gembatch_batches{state="sealed"} 1
gembatch_batches{state="submitting"} 0
gembatch_batches{state="submitted"} 3
gembatch_batches{state="finished"} 1
gembatch_batches{state="failed"} 1
gembatch_batches{state="replied"} 1
gembatch_batches{state="cleaned"} 1
gembatch_batches_remote{state="pending"} 1
gembatch_batches_remote{state="running"} 2
gembatch_batches_remote{state="expired"} 1
gembatch_batches_oldest_unfinished_age_seconds 7200
gembatch_batches_requests{state="sealed"} 3
gembatch_batches_requests{state="submitting"} 0
gembatch_batches_requests{state="submitted"} 8
gembatch_batches_requests{state="finished"} 4
gembatch_batches_requests{state="failed"} 6
gembatch_batches_requests{state="replied"} 7
gembatch_batches_requests{state="cleaned"} 0
gembatch_store_scrape_errors_total 0
`,
		},
		{
			name: "only finished work",
			records: []*record.Record{
				{ID: "g", State: record.Replied, Sealed: now.Add(-48 * time.Hour), Requests: reqs(2), Count: 2, RemoteState: gemini.StateSucceeded},
			},
			want: `
gembatch_batches{state="sealed"} 0
gembatch_batches{state="submitting"} 0
gembatch_batches{state="submitted"} 0
gembatch_batches{state="finished"} 0
gembatch_batches{state="failed"} 0
gembatch_batches{state="replied"} 1
gembatch_batches{state="cleaned"} 0
gembatch_batches_remote{state="pending"} 0
gembatch_batches_remote{state="running"} 0
gembatch_batches_oldest_unfinished_age_seconds 0
gembatch_batches_requests{state="sealed"} 0
gembatch_batches_requests{state="submitting"} 0
gembatch_batches_requests{state="submitted"} 0
gembatch_batches_requests{state="finished"} 0
gembatch_batches_requests{state="failed"} 0
gembatch_batches_requests{state="replied"} 2
gembatch_batches_requests{state="cleaned"} 0
gembatch_store_scrape_errors_total 0
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := record.NewMemStore()
			for _, r := range tt.records {
				if err := store.Create(context.Background(), r); err != nil {
					t.Fatal(err)
				}
			}
			c := metrics.NewStoreCollector(store, clock)
			if err := collectAndCompare(c, storeHelp+tt.want); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// failingStore is a record.Store whose List fails.
type failingStore struct {
	record.Store
	deadline time.Duration // how long the last List was given
}

func (s *failingStore) List(ctx context.Context) ([]*record.Record, error) {
	if d, ok := ctx.Deadline(); ok {
		s.deadline = time.Until(d)
	}
	return nil, errors.New("store unavailable")
}

func TestStoreCollectorListError(t *testing.T) {
	store := &failingStore{Store: record.NewMemStore()}
	c := metrics.NewStoreCollector(store, time.Now)
	for i := 1; i <= 2; i++ {
		want := fmt.Sprintf(`
# HELP gembatch_store_scrape_errors_total Scrapes whose listing of the batch record store failed or timed out.
# TYPE gembatch_store_scrape_errors_total counter
gembatch_store_scrape_errors_total %d
`, i)
		if err := collectAndCompare(c, want); err != nil {
			t.Fatalf("scrape %d: %v", i, err)
		}
	}
	if store.deadline <= 0 || store.deadline > 2*time.Second {
		t.Errorf("List got %v to answer, want a deadline of at most 2s", store.deadline)
	}
}

func TestStoreCollectorRegisters(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(metrics.NewStoreCollector(record.NewMemStore(), time.Now)); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
}

// collectAndCompare is testutil.CollectAndCompare without its diff library (not in go.sum): it
// compares c's text exposition with want, line by line in any order.
func collectAndCompare(c prometheus.Collector, want string) error {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		return err
	}
	mfs, err := reg.Gather()
	if err != nil {
		return err
	}
	var got strings.Builder
	enc := expfmt.NewEncoder(&got, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}
	lines := func(s string) []string {
		var out []string
		for l := range strings.Lines(s) {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, l)
			}
		}
		slices.Sort(out)
		return out
	}
	if g, w := lines(got.String()), lines(want); !slices.Equal(g, w) {
		return fmt.Errorf("collected:\n%s\nwant (in any order):\n%s", got.String(), strings.TrimSpace(want))
	}
	return nil
}
