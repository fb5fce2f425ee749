package daemon_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/publisher"
)

// deadLetters collects what the dead-letter subject receives, by key.
func deadLetters(t *testing.T, h *harness, subject string) func() map[string][]publisher.DeadLetter {
	t.Helper()
	var mu sync.Mutex
	got := map[string][]publisher.DeadLetter{}
	if _, err := h.nc.Subscribe(subject, func(m *nats.Msg) {
		var dl publisher.DeadLetter
		if err := json.Unmarshal(m.Data, &dl); err != nil {
			t.Errorf("dead letter is not JSON: %s", m.Data)
		}
		mu.Lock()
		got[dl.Key] = append(got[dl.Key], dl)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	return func() map[string][]publisher.DeadLetter {
		mu.Lock()
		defer mu.Unlock()
		out := map[string][]publisher.DeadLetter{}
		for k, v := range got {
			out[k] = append([]publisher.DeadLetter(nil), v...)
		}
		return out
	}
}

// TestPerItemRetries: retryable per-item errors go into later batches until they succeed or
// MAX_ATTEMPTS is used up; the others, and those past their deadline, are answered at once and
// dead-lettered.
func TestPerItemRetries(t *testing.T) { modes(t, perItemRetries) }

func perItemRetries(t *testing.T, durable string) {
	cfg := testConfig()
	cfg.Durable = durable
	cfg.MaxAttempts = 3
	cfg.DeadLetterSubject = "test.dead"
	h := start(t, cfg, emulator.Options{})
	dead := deadLetters(t, h, "test.dead")
	texts := map[string]string{
		"fine":    "all is well",
		"flaky":   "fails once [[emulator:error=13,times=1]]",
		"twice":   "fails twice [[emulator:error=14,times=2]]",
		"always":  "always unavailable [[emulator:error=14]]",
		"invalid": "bad request [[emulator:error=3]]",
		"late":    "internal, past its deadline [[emulator:error=13]]",
	}
	for k, text := range texts {
		if k == "late" {
			h.send("gembatch.generate", k, generateBody(text), "Gembatch-Deadline", "1ms")
			continue
		}
		h.send("gembatch.generate", k, generateBody(text))
	}
	keys := []string{"fine", "flaky", "twice", "always", "invalid", "late"}
	got := h.waitReplies(keys, 30*time.Second)
	for _, k := range keys {
		if len(got[k]) != 1 {
			t.Fatalf("key %s: %d replies, want exactly 1", k, len(got[k]))
		}
	}
	for _, k := range []string{"fine", "flaky", "twice"} {
		r := decode(t, got[k][0])
		if r.Error != nil || responseText(t, r.Response) != emulator.ExpectedText(json.RawMessage(generateBody(texts[k]))) {
			t.Errorf("%s: %s, want the emulator's answer", k, got[k][0].Data)
		}
	}
	wantErr := map[string]struct {
		code int
		text string
	}{
		"always":  {gemini.CodeUnavailable, "gave up after 3 attempts"},
		"invalid": {gemini.CodeInvalidArgument, "failed as the request asked"},
		"late":    {gemini.CodeDeadlineExceeded, "passed after attempt 1"},
	}
	for k, want := range wantErr {
		r := decode(t, got[k][0])
		if r.Error == nil || r.Error.Code != want.code || !strings.Contains(r.Error.Message, want.text) {
			t.Errorf("%s: %s, want code %d saying %q", k, got[k][0].Data, want.code, want.text)
		}
	}
	// The failed batches reach the dead-letter subject once each, with their request.
	deadline := time.Now().Add(5 * time.Second)
	for len(dead()) < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	dl := dead()
	if len(dl) != 3 {
		t.Fatalf("dead letters for %d keys, want always, invalid, late", len(dl))
	}
	for k := range wantErr {
		if len(dl[k]) != 1 || dl[k][0].Reply != "test.reply."+k || dl[k][0].Model != "models/gemini-2.5-flash" ||
			!strings.Contains(string(dl[k][0].Request), texts[k][:10]) || dl[k][0].Error == nil {
			t.Errorf("dead letter of %s: %+v", k, dl[k])
		}
	}
	if dl["always"][0].Attempts != 3 || dl["invalid"][0].Attempts != 1 {
		t.Errorf("attempts: always %d, invalid %d", dl["always"][0].Attempts, dl["invalid"][0].Attempts)
	}
	// flaky once, twice twice, always twice before giving up.
	h.wantMetric(5, "gembatch_publisher_resubmitted_requests_total", "reason", "item_error")
	h.wantMetric(1, "gembatch_publisher_gave_up_requests_total", "reason", "attempts")
	h.wantMetric(1, "gembatch_publisher_gave_up_requests_total", "reason", "deadline")
}

// TestExpiredJobPartialResults: an expired job's results are delivered and the requests it left
// are resubmitted; the next batch answers them.
func TestExpiredJobPartialResults(t *testing.T) { modes(t, expiredJobPartialResults) }

func expiredJobPartialResults(t *testing.T, durable string) {
	cfg := testConfig()
	cfg.Durable = durable
	cfg.BatchMaxRequests = 10
	cfg.KeepJobs = true // the jobs are looked at afterwards
	h := start(t, cfg, emulator.Options{Faults: emulator.Faults{StuckPending: true, ExpireAfter: 300 * time.Millisecond, PartialResults: 0.5}})
	keys := sendN(h, 10)
	waitBatches(t, h, 1)
	h.emu.SetFaults(emulator.Faults{}) // the resubmitted batch runs normally
	got := h.waitReplies(keys, 30*time.Second)
	batches := map[string]int{}
	for _, k := range keys {
		if len(got[k]) != 1 {
			t.Fatalf("key %s: %d replies", k, len(got[k]))
		}
		if r := decode(t, got[k][0]); r.Error != nil {
			t.Fatalf("key %s: %s", k, got[k][0].Data)
		}
		batches[got[k][0].Header.Get("Gembatch-Batch")]++
	}
	if len(batches) != 2 || len(h.emu.Batches()) != 2 {
		t.Fatalf("answered from %v (%d jobs); want 5 from the expired job and 5 from its resubmission", batches, len(h.emu.Batches()))
	}
	for b, n := range batches {
		if n != 5 {
			t.Errorf("batch %s answered %d", b, n)
		}
	}
	h.wantMetric(5, "gembatch_publisher_resubmitted_requests_total", "reason", "expired")
}

// TestStuckJobCancelledAndResubmitted: a job PENDING past STUCK_AFTER is reported, cancelled,
// and its requests answered from a new batch.
func TestStuckJobCancelledAndResubmitted(t *testing.T) { modes(t, stuckJobCancelledAndResubmitted) }

func stuckJobCancelledAndResubmitted(t *testing.T, durable string) {
	cfg := testConfig()
	cfg.Durable = durable
	cfg.StuckAfter = 300 * time.Millisecond
	cfg.StuckCancel = true
	cfg.KeepJobs = true // the jobs are looked at afterwards
	h := start(t, cfg, emulator.Options{Faults: emulator.Faults{StuckPending: true}})
	keys := sendN(h, 4)
	waitBatches(t, h, 1)
	h.emu.SetFaults(emulator.Faults{})
	got := h.waitReplies(keys, 30*time.Second)
	for _, k := range keys {
		if len(got[k]) != 1 || decode(t, got[k][0]).Error != nil {
			t.Fatalf("key %s: %d replies, first %s", k, len(got[k]), got[k][0].Data)
		}
	}
	ops := h.emu.Batches()
	states := map[gemini.State]int{}
	for _, op := range ops {
		states[op.State()]++
	}
	if states[gemini.StateCancelled] != 1 || states[gemini.StateSucceeded] != 1 {
		t.Fatalf("jobs %v, want one cancelled and one succeeded", states)
	}
	h.wantMetric(1, "gembatch_poller_stuck_batches_total")
	h.wantMetric(1, "gembatch_poller_stuck_cancelled_total")
	h.wantMetric(0, "gembatch_poller_stuck_batches")
	h.wantMetric(4, "gembatch_publisher_resubmitted_requests_total", "reason", "stuck")
}

// TestQuotaAdmission: with the active job cap at the service's limit, batches wait their turn
// (shown in metrics) and no create meets a 429.
func TestQuotaAdmission(t *testing.T) {
	cfg := testConfig()
	cfg.BatchMaxRequests = 2
	cfg.MaxActiveJobs = 1
	h := start(t, cfg, emulator.Options{JobDelay: 300 * time.Millisecond, Faults: emulator.Faults{MaxActiveJobs: 1}})
	keys := sendN(h, 8)
	var waited float64
	deadline := time.Now().Add(30 * time.Second)
	for len(h.emu.Batches()) < 4 && time.Now().Before(deadline) {
		waited = max(waited, h.metric("gembatch_submitter_waiting_batches", "reason", "jobs"))
		time.Sleep(10 * time.Millisecond)
	}
	got := h.waitReplies(keys, 30*time.Second)
	for _, k := range keys {
		if len(got[k]) != 1 || decode(t, got[k][0]).Error != nil {
			t.Fatalf("key %s: %d replies", k, len(got[k]))
		}
	}
	if h.emu.Throttled() != 0 || h.emu.PeakActive() != 1 || waited == 0 {
		t.Fatalf("429s %d, peak active %d, most waiting %v; want 0, 1, above 0", h.emu.Throttled(), h.emu.PeakActive(), waited)
	}
}

// wantMetric checks one metric's value (summed over the series with the given labels).
func (h *harness) wantMetric(want float64, name string, labels ...string) {
	h.t.Helper()
	if n := h.metric(name, labels...); n != want {
		h.t.Errorf("%s%v = %v, want %v", name, labels, n, want)
	}
}

func sendN(h *harness, n int) []string {
	var keys []string
	for i := range n {
		k := "k" + string(rune('a'+i))
		keys = append(keys, k)
		h.send("gembatch.generate", k, generateBody("request "+k))
	}
	return keys
}

func waitBatches(t *testing.T, h *harness, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(h.emu.Batches()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d batches created within 10s, want %d", len(h.emu.Batches()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBadPricesFileStopsStartUp: a price table that does not read is one line naming the
// variable, the file and the model at fault.
func TestBadPricesFileStopsStartUp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prices.json")
	if err := os.WriteFile(path, []byte(`{"models":{"gemini-2.5-flash":{"input":-1}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	err := runAgainst(t, &server.Options{JetStream: true}, plainURL, func(c *daemon.Config) { c.PricesFile = path })
	if err == nil || !strings.Contains(err.Error(), "GEMBATCH_PRICES_FILE: "+path+`: model "gemini-2.5-flash": input: must not be negative`) {
		t.Fatalf("start-up error %v", err)
	}
}
