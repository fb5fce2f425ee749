package emulator_test

import (
	"strings"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
)

// quota checks a create refused by a quota: 429 with the RetryInfo of a throttled create.
func quota(t *testing.T, r reply, says string) {
	t.Helper()
	st := r.status(t, 429, "RESOURCE_EXHAUSTED")
	if d, ok := st.RetryDelay(); !ok || d != 20*time.Millisecond {
		t.Errorf("RetryInfo %v %v, want 20ms", d, ok)
	}
	if !strings.Contains(st.Message, says) {
		t.Errorf("message %q does not say %q", st.Message, says)
	}
}

func TestMaxActiveJobs(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: 500 * time.Millisecond,
		Faults: emulator.Faults{MaxActiveJobs: 2, ThrottleDelay: 20 * time.Millisecond}})
	first := a.create("a", item("k", "x"))
	second := a.create("b", item("k", "x"))
	quota(t, a.do("POST", generatePath, inlineBody("c", item("k", "x"))), "concurrent batch jobs")
	if n := a.emu.Creates("c"); n != 0 {
		t.Errorf("a refused create made %d jobs", n)
	}

	a.do("POST", "/v1beta/"+first.Name+":cancel", nil).ok(t) // a cancelled job frees its place
	a.create("c", item("k", "x"))
	quota(t, a.do("POST", generatePath, inlineBody("d", item("k", "x"))), "concurrent batch jobs")

	a.wait(second.Name, gemini.StateSucceeded) // so does one that has ended
	a.create("d", item("k", "x"))

	if n := a.emu.PeakActive(); n != 2 {
		t.Errorf("PeakActive = %d, want 2", n)
	}
	if n := a.emu.Throttled(); n != 2 {
		t.Errorf("Throttled = %d, want 2", n)
	}
	if n := len(a.emu.Batches()); n != 4 {
		t.Errorf("%d batches, want 4", n)
	}
}

func TestEnqueuedTokenLimit(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: time.Hour,
		Faults: emulator.Faults{EnqueuedTokenLimit: 200, ThrottleDelay: 20 * time.Millisecond}})
	big := item("k", strings.Repeat("x", 400))
	small := item("k", "small")
	tokens := func(it map[string]any) int64 { return (int64(len(request(t, it))) + 3) / 4 }
	bigTokens := tokens(big)
	if bigTokens > 200 || 2*bigTokens <= 200 || bigTokens+tokens(small) > 200 {
		t.Fatalf("the test's sizes are off: %d tokens", bigTokens)
	}
	const pro = "/v1beta/models/gemini-2.5-pro:batchGenerateContent"

	held := a.create("held", big)
	quota(t, a.do("POST", generatePath, inlineBody("over", big)), "batch enqueued tokens of models/gemini-2.5-flash")
	a.create("fits", small)                         // what is left of the limit can still be used
	a.do("POST", pro, inlineBody("pro", big)).ok(t) // each model has its own limit

	// A file's estimate is a quarter of its size, rounded up: one byte more than what is left
	// of the limit is over it.
	lineOf := func(size int) []byte {
		const head, tail = `{"key":"f","request":{"contents":[{"parts":[{"text":"`, `"}]}]}}` + "\n"
		return []byte(head + strings.Repeat("y", size-len(head)-len(tail)) + tail)
	}
	left := int(200 - bigTokens)
	over := a.uploadFile(lineOf(4*left+1), 1<<20)
	quota(t, a.do("POST", pro, `{"batch":{"inputConfig":{"fileName":"`+over.Name+`"}}}`), "batch enqueued tokens of models/gemini-2.5-pro")
	exact := a.uploadFile(lineOf(4*left), 1<<20)
	a.do("POST", pro, `{"batch":{"inputConfig":{"fileName":"`+exact.Name+`"}}}`).ok(t)

	a.do("POST", "/v1beta/"+held.Name+":cancel", nil).ok(t)
	a.create("after", big)

	if got, want := a.emu.PeakEnqueuedTokens("gemini-2.5-flash"), bigTokens+tokens(small); got != want {
		t.Errorf("PeakEnqueuedTokens(flash) = %d, want %d", got, want)
	}
	if got := a.emu.PeakEnqueuedTokens("models/gemini-2.5-pro"); got != 200 {
		t.Errorf("PeakEnqueuedTokens(pro) = %d, want 200", got)
	}
	if n := a.emu.PeakActive(); n != 4 {
		t.Errorf("PeakActive = %d, want 4", n)
	}
	if n := a.emu.Throttled(); n != 2 {
		t.Errorf("Throttled = %d, want 2", n)
	}
	if n := len(a.emu.Batches()); n != 5 {
		t.Errorf("%d batches, want 5", n)
	}
}
