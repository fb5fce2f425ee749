package daemon_test

import (
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/emulator"
)

// callCounter counts the emulator's request log lines: one per API call.
type callCounter struct{ n atomic.Int64 }

func (c *callCounter) Write(p []byte) (int, error) { c.n.Add(1); return len(p), nil }

// readyz returns /readyz's status and body.
func (h *harness) readyz() (int, string) {
	h.t.Helper()
	resp, err := http.Get("http://" + h.main.MetricsAddr + "/readyz")
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestReadyFollowsAPITraffic: the daemon's own calls count as the API answering. Once a batch
// has been answered, the API going away does not make /readyz fail at its next probe (README:
// ready while the API answered within the last minute), and the probe does not ping.
func TestReadyFollowsAPITraffic(t *testing.T) {
	h := start(t, testConfig(), emulator.Options{})
	h.send("gembatch.generate", "r1", generateBody("are you there?"))
	h.waitReplies([]string{"r1"}, 30*time.Second)
	h.http.Close() // the API is gone: every call from now on fails
	if code, body := h.readyz(); code != http.StatusOK {
		t.Fatalf("/readyz %d %q seconds after the API answered real traffic, want 200", code, body)
	}
	if n := h.metric("gembatch_gemini_api_requests_total", "code", "error"); n != 0 {
		t.Fatalf("%v failed API requests counted: the probe pinged", n)
	}
}

// TestReadyPingsAreNotCounted: with no traffic, /readyz pings the API, and that ping stays out
// of the API metrics that feed the error alert.
func TestReadyPingsAreNotCounted(t *testing.T) {
	var calls callCounter
	h := start(t, testConfig(), emulator.Options{Logger: zerolog.New(&calls).Level(zerolog.DebugLevel)})
	before := calls.n.Load()
	if code, body := h.readyz(); code != http.StatusOK {
		t.Fatalf("/readyz %d %q", code, body)
	}
	if calls.n.Load() == before {
		t.Fatal("/readyz did not ping an idle daemon's API")
	}
	for _, name := range []string{"gembatch_gemini_api_requests_total", "gembatch_gemini_api_request_duration_seconds", "gembatch_gemini_api_retries_total"} {
		if n := h.metric(name, "operation", "ping"); n != 0 {
			t.Errorf("%s{operation=\"ping\"} = %v: the probe's ping is counted", name, n)
		}
	}
	// A second probe within the minute answers from the first ping's answer, without a call.
	before = calls.n.Load()
	if code, _ := h.readyz(); code != http.StatusOK || calls.n.Load() != before {
		t.Fatalf("second probe: status %d, %d more API calls", code, calls.n.Load()-before)
	}
}
