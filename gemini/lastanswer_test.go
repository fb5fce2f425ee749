package gemini_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// TestLastAnswer: any call's successful answer sets LastAnswer (a failed one does not), and
// Ping sets it without counting in the metrics.
func TestLastAnswer(t *testing.T) {
	var fail atomic.Bool
	c, reg := inProcess(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			writeJSON(w, http.StatusBadRequest, `{"error":{"code":400,"message":"no","status":"INVALID_ARGUMENT"}}`)
			return
		}
		writeJSON(w, http.StatusOK, opJSON)
	})
	ctx := context.Background()
	if !c.LastAnswer().IsZero() {
		t.Fatalf("LastAnswer %v before any call", c.LastAnswer())
	}
	before := time.Now()
	if _, err := c.GetBatch(ctx, "batches/abc"); err != nil {
		t.Fatal(err)
	}
	got := c.LastAnswer()
	if got.Before(before) || got.After(time.Now()) {
		t.Fatalf("LastAnswer %v, want the time of the get", got)
	}
	fail.Store(true)
	if _, err := c.GetBatch(ctx, "batches/abc"); err == nil {
		t.Fatal("want the 400")
	}
	if c.LastAnswer() != got {
		t.Fatal("a failed call moved LastAnswer")
	}
	fail.Store(false)
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if !c.LastAnswer().After(got) {
		t.Fatal("Ping did not set LastAnswer")
	}
	for _, name := range []string{"gembatch_gemini_api_requests_total", "gembatch_gemini_api_request_duration_seconds"} {
		if n := metric(t, reg, name, "operation", "ping"); n != 0 {
			t.Errorf("%s counts %v pings", name, n)
		}
	}
	if n := metric(t, reg, "gembatch_gemini_api_requests_total", "operation", "batches.get"); n != 2 {
		t.Errorf("batches.get counted %v times, want 2", n)
	}
}
