package submitter_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
	"github.com/gembatch/gembatch/submitter"
)

// createJobs makes n jobs directly, as other batches of the same API key would.
func createJobs(t *testing.T, e *env, n int, displayName func(int) string) {
	t.Helper()
	api := gemini.New("test-api-key-0123", gemini.WithBaseURL(e.url))
	for i := range n {
		b := gemini.Batch{DisplayName: displayName(i)}
		b.InputConfig.Requests = &gemini.InlinedRequests{Requests: []gemini.InlinedRequest{{Request: []byte(`{"contents":[{"parts":[{"text":"x"}]}]}`), Metadata: &gemini.RequestMetadata{Key: "k"}}}}
		if _, err := api.CreateBatch(context.Background(), gemini.KindGenerate, "models/m", b); err != nil {
			t.Fatal(err)
		}
	}
}

// Finding 9: resolving a create whose answer was lost reads the batch list (newest first) only
// down to the jobs made before the record was sealed, not every job the key ever made.
func TestResolveReadsOnlyTheRecentPartOfTheList(t *testing.T) {
	e := setup(t, emulator.Options{}, submitter.Config{InlineMaxBytes: 1 << 20, CreateGrace: 50 * time.Millisecond})
	createJobs(t, e, 450, func(i int) string { return fmt.Sprintf("old-%d", i) })
	rec := sealed(2, 1)
	rec.State, rec.Mode, rec.CreateAttempted = record.Submitting, record.ModeInline, time.Now()
	// The old jobs predate the record by more than the allowance for clock difference.
	rec.Sealed = time.Now().Add(2 * time.Hour)
	before := e.emu.Calls("GET", "/v1beta/batches")
	e.run(t, rec)
	lists := e.emu.Calls("GET", "/v1beta/batches") - before
	if len(e.submitted) != 1 || e.emu.Creates(rec.DisplayName()) != 1 {
		t.Fatalf("%d submitted, %d creates", len(e.submitted), e.emu.Creates(rec.DisplayName()))
	}
	t.Logf("list pages read to resolve one create among 450 older jobs: %d", lists)
	if lists > 4 {
		t.Fatalf("read %d list pages; the 450 older jobs take 5 pages a pass, and none of them can be the record's", lists)
	}
}

// The last line of defence: should a second job with the record's displayName exist (a create
// let through by a freeze past the lease), the oldest is adopted and the other cancelled.
func TestSecondJobWithTheSameNameIsCancelled(t *testing.T) {
	e := setup(t, emulator.Options{JobDelay: 5 * time.Second}, submitter.Config{InlineMaxBytes: 1 << 20, CreateGrace: 50 * time.Millisecond})
	rec := sealed(2, 1)
	rec.State, rec.Mode, rec.CreateAttempted = record.Submitting, record.ModeInline, time.Now()
	createJobs(t, e, 2, func(int) string { return rec.DisplayName() })
	e.run(t, rec)
	if len(e.submitted) != 1 {
		t.Fatalf("%d submitted", len(e.submitted))
	}
	states := map[gemini.State]int{}
	for _, op := range e.emu.Batches() {
		if op.Metadata.DisplayName == rec.DisplayName() {
			states[op.State()]++
		}
	}
	if states[gemini.StateCancelled] != 1 {
		t.Fatalf("jobs of the record by state: %v; want the second cancelled", states)
	}
	if e.submitted[0].RemoteName == "" {
		t.Fatal("no job adopted")
	}
}
