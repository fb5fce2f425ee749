package emulator_test

import (
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
)

func items(n int) []map[string]any {
	out := make([]map[string]any, n)
	for i := range out {
		out[i] = item("k"+strconv.Itoa(i), "text "+strconv.Itoa(i))
	}
	return out
}

func TestThrottle(t *testing.T) {
	a := start(t, emulator.Options{Faults: emulator.Faults{CreateThrottleRate: 1, ThrottleDelay: 1500 * time.Millisecond}})
	st := a.do("POST", generatePath, inlineBody("throttled", items(1)...)).status(t, 429, "RESOURCE_EXHAUSTED")
	if d, ok := st.RetryDelay(); !ok || d != 1500*time.Millisecond {
		t.Errorf("RetryInfo %v %v in %+v, want 1.5s", d, ok, st)
	}
	if len(st.Details) != 1 || string(st.Details[0]) != `{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.500s"}` {
		t.Errorf("details %s", st.Details)
	}
	if n := a.emu.Creates("throttled"); n != 0 {
		t.Errorf("a throttled create made %d jobs", n)
	}
}

func TestGetErrors(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: time.Hour})
	op := a.create("flaky", items(1)...)
	a.emu.SetFaults(emulator.Faults{GetErrorRate: 1, Seed: 3})
	seen := map[int]bool{}
	for range 20 {
		r := a.do("GET", "/v1beta/"+op.Name)
		switch r.code {
		case 500:
			r.status(t, 500, "INTERNAL")
		case 503:
			r.status(t, 503, "UNAVAILABLE")
		default:
			t.Fatalf("get answered %d: %s", r.code, r.body)
		}
		seen[r.code] = true
	}
	if !seen[500] || !seen[503] {
		t.Errorf("get errors %v, want both 500 and 503", seen)
	}
	a.emu.SetFaults(emulator.Faults{})
	a.get(op.Name)
}

func TestItemErrors(t *testing.T) {
	pattern := func(seed int64) []string {
		a := start(t, emulator.Options{Faults: emulator.Faults{ItemErrorRate: 0.5, Seed: seed}})
		_, op, _ := a.wait(a.create("items", items(20)...).Name, gemini.StateSucceeded)
		var codes []string
		for _, r := range op.Output().InlinedResponses.InlinedResponses {
			codes = append(codes, errCode(r))
		}
		return codes
	}
	first := pattern(7)
	if !slices.Contains(first, "13") || !slices.Contains(first, "ok") {
		t.Errorf("rate 0.5 gave %v, want both errors 13 and answers", first)
	}
	if again := pattern(7); !slices.Equal(first, again) {
		t.Errorf("the same seed gave %v then %v", first, again)
	}

	a := start(t, emulator.Options{Faults: emulator.Faults{ItemErrorRate: 1}})
	_, op, _ := a.wait(a.create("all", items(3)...).Name, gemini.StateSucceeded)
	for _, r := range op.Output().InlinedResponses.InlinedResponses {
		if r.Error == nil || r.Error.Code != gemini.CodeInternal {
			t.Errorf("rate 1 answered %+v", r)
		}
	}
	if s := op.Metadata.BatchStats; s.FailedRequestCount != 3 || s.SuccessfulRequestCount != 0 {
		t.Errorf("batchStats %+v", s)
	}
}

func TestExpire(t *testing.T) {
	for name, f := range map[string]struct {
		opts emulator.Options
	}{
		"stuck pending": {emulator.Options{JobDelay: 10 * time.Millisecond, Faults: emulator.Faults{StuckPending: true, ExpireAfter: 200 * time.Millisecond}}},
		"slow job":      {emulator.Options{JobDelay: time.Hour, Faults: emulator.Faults{ExpireAfter: 200 * time.Millisecond}}},
	} {
		t.Run(name, func(t *testing.T) {
			a := start(t, f.opts)
			_, op, seen := a.wait(a.create("expire", items(2)...).Name, gemini.StateExpired)
			if seen[0] != gemini.StatePending || slices.Contains(seen, gemini.StateSucceeded) {
				t.Errorf("states %v", seen)
			}
			if name == "stuck pending" && slices.Contains(seen, gemini.StateRunning) {
				t.Errorf("a stuck job ran: %v", seen)
			}
			if !op.Done || op.Error == nil || op.Output() != nil || op.Metadata.EndTime.IsZero() {
				t.Errorf("expired job %+v %+v", op, op.Metadata)
			}
		})
	}
}

func TestFailJobs(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: 20 * time.Millisecond})
	before := a.create("before", items(2)...)
	a.emu.SetFaults(emulator.Faults{FailJobs: true})
	failing := a.create("failing", items(2)...)
	r, op, _ := a.wait(failing.Name, gemini.StateFailed)
	if !op.Done || op.Error == nil || op.Error.Code != gemini.CodeInternal || op.Output() != nil || op.Response != nil {
		t.Errorf("failed job: %s", r.body)
	}
	if op.Metadata.BatchStats.FailedRequestCount != 2 {
		t.Errorf("batchStats %+v", op.Metadata.BatchStats)
	}
	a.wait(before.Name, gemini.StateSucceeded) // faults apply to jobs made after them
}

func TestOutOfOrder(t *testing.T) {
	a := start(t, emulator.Options{Faults: emulator.Faults{OutOfOrder: true}})
	_, op, _ := a.wait(a.create("order", items(3)...).Name, gemini.StateSucceeded)
	if got := keys(op.Output().InlinedResponses.InlinedResponses); !slices.Equal(got, []string{"k2", "k1", "k0"}) {
		t.Errorf("keys %v, want reversed", got)
	}
}

func TestLoseCreateAnswers(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: time.Hour, Faults: emulator.Faults{LoseCreateAnswers: 2}})
	for range 2 {
		a.do("POST", generatePath, inlineBody("lost", items(1)...)).status(t, 503, "UNAVAILABLE")
	}
	a.create("lost", items(1)...)
	if n := a.emu.Creates("lost"); n != 3 {
		t.Errorf("Creates = %d, want 3", n)
	}
	if c := a.emu.CreateCounts(); len(c) != 1 || c["lost"] != 3 {
		t.Errorf("CreateCounts = %v", c)
	}
	list := decode[gemini.ListBatchesResponse](t, a.do("GET", "/v1beta/batches").ok(t))
	if len(list.Operations) != 3 {
		t.Errorf("%d jobs listed, want 3 (the lost answers made theirs)", len(list.Operations))
	}
}
