package emulator_test

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
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
	if n := a.emu.Throttled(); n != 1 {
		t.Errorf("Throttled = %d, want 1", n)
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

// request is the JSON of an inline item's request, as the create body carries it.
func request(t *testing.T, it map[string]any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(it["request"])
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// answerText is the text of an inline response, or "" if it has none.
func answerText(t *testing.T, resp json.RawMessage) string {
	t.Helper()
	var r struct {
		Candidates []struct {
			Content struct{ Parts []struct{ Text string } }
		}
	}
	if err := json.Unmarshal(resp, &r); err != nil || len(r.Candidates) == 0 || len(r.Candidates[0].Content.Parts) == 0 {
		t.Fatalf("response %s has no text (%v)", resp, err)
	}
	return r.Candidates[0].Content.Parts[0].Text
}

// TestDirectiveTimes checks that [[emulator:error=N,times=K]] fails the first K answers to its
// text, counted across jobs, and that later ones are answered as any request.
func TestDirectiveTimes(t *testing.T) {
	a := start(t, emulator.Options{})
	const flaky = "flaky [[emulator:error=14,times=2]]"
	want := emulator.ExpectedText(request(t, item("", flaky)))

	_, op, _ := a.wait(a.create("first", item("a", flaky), item("once", "once [[emulator:error=8,times=1]]"),
		item("never", "never [[emulator:error=8,times=0]]")).Name, gemini.StateSucceeded)
	rs := op.Output().InlinedResponses.InlinedResponses
	if got := []string{errCode(rs[0]), errCode(rs[1]), errCode(rs[2])}; !slices.Equal(got, []string{"14", "8", "ok"}) {
		t.Errorf("first job answered %v, want [14 8 ok]", got)
	}

	_, op, _ = a.wait(a.create("second", item("b", flaky), item("c", flaky), item("once", "once [[emulator:error=8,times=1]]")).Name, gemini.StateSucceeded)
	rs = op.Output().InlinedResponses.InlinedResponses
	if got := []string{errCode(rs[0]), errCode(rs[1]), errCode(rs[2])}; !slices.Equal(got, []string{"14", "ok", "ok"}) {
		t.Fatalf("second job answered %v, want [14 ok ok]", got)
	}
	if got := answerText(t, rs[1].Response); got != want {
		t.Errorf("after its failures the request was answered %q, want %q", got, want)
	}

	// The count holds for file input too, and a directive without times fails every time.
	data := `{"key":"f","request":{"contents":[{"parts":[{"text":"` + flaky + `"}],"role":"user"}]}}` + "\n" +
		`{"key":"always","request":{"contents":[{"parts":[{"text":"[[emulator:error=13]]"}]}]}}` + "\n"
	f := a.uploadFile([]byte(data), 1<<20)
	fop := decode[gemini.Operation](t, a.do("POST", generatePath, `{"batch":{"inputConfig":{"fileName":"`+f.Name+`"}}}`).ok(t))
	_, fop, _ = a.wait(fop.Name, gemini.StateSucceeded)
	lines := resultLines(t, a, fop.Output().ResponsesFile)
	if lines[0].Error != nil || answerText(t, lines[0].Response) != want {
		t.Errorf("file line answered %+v, want %q", lines[0], want)
	}
	if lines[1].Error == nil || lines[1].Error.Code != gemini.CodeInternal {
		t.Errorf("a directive without times answered %+v, want error 13", lines[1])
	}
}

type resultLine struct {
	Key      string
	Response json.RawMessage
	Error    *gemini.Status
}

// resultLines downloads a result file and decodes its lines.
func resultLines(t *testing.T, a *api, name string) []resultLine {
	t.Helper()
	body := a.do("GET", "/v1beta/"+name+":download?alt=media").ok(t).body
	var out []resultLine
	for _, l := range strings.Split(strings.TrimSpace(string(body)), "\n") {
		var r resultLine
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("result line %q: %v", l, err)
		}
		out = append(out, r)
	}
	return out
}

// TestPartialResults checks that an expired or cancelled job answers its first requests, as a
// succeeded job would, when Faults.PartialResults asks it to.
func TestPartialResults(t *testing.T) {
	reqs := items(5)
	reqs[1] = item("k1", "bad [[emulator:error=5]]")
	for _, tc := range []struct {
		name   string
		faults emulator.Faults
		end    gemini.State
		code   int
		file   bool
	}{
		{"expired inline", emulator.Faults{ExpireAfter: 100 * time.Millisecond}, gemini.StateExpired, gemini.CodeDeadlineExceeded, false},
		{"expired file", emulator.Faults{ExpireAfter: 100 * time.Millisecond}, gemini.StateExpired, gemini.CodeDeadlineExceeded, true},
		{"cancelled inline", emulator.Faults{}, gemini.StateCancelled, gemini.CodeCancelled, false},
		{"cancelled file", emulator.Faults{}, gemini.StateCancelled, gemini.CodeCancelled, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.faults.PartialResults = 0.6 // 3 of 5
			a := start(t, emulator.Options{JobDelay: time.Hour, Faults: tc.faults})
			var op gemini.Operation
			if tc.file {
				var data strings.Builder
				for i, it := range reqs {
					data.WriteString(`{"key":"k` + strconv.Itoa(i) + `","request":` + string(request(t, it)) + "}\n\n")
				}
				f := a.uploadFile([]byte(data.String()), 1<<20)
				op = decode[gemini.Operation](t, a.do("POST", generatePath, `{"batch":{"inputConfig":{"fileName":"`+f.Name+`"}}}`).ok(t))
			} else {
				op = a.create("partial", reqs...)
			}
			if tc.end == gemini.StateCancelled {
				a.do("POST", "/v1beta/"+op.Name+":cancel", nil).ok(t)
			}
			r, op, _ := a.wait(op.Name, tc.end)
			if !op.Done || op.Error == nil || op.Error.Code != tc.code {
				t.Errorf("ended job: %s", r.body)
			}
			body := raw(t, r)
			if got := compact(t, at(body, "metadata", "batchStats")); got != `{"failedRequestCount":"1","requestCount":"5","successfulRequestCount":"2"}` {
				t.Errorf("batchStats %s", got)
			}
			mirror, _ := at(body, "response").(map[string]any)
			delete(mirror, "@type")
			if mirror == nil || compact(t, mirror) != compact(t, at(body, "metadata", "output")) {
				t.Errorf("response %v does not mirror metadata.output %v", mirror, at(body, "metadata", "output"))
			}

			var got []resultLine
			if tc.file {
				if want := "files/batch-" + strings.TrimPrefix(op.Name, "batches/"); op.Output().ResponsesFile != want {
					t.Fatalf("responsesFile %q, want %s", op.Output().ResponsesFile, want)
				}
				got = resultLines(t, a, op.Output().ResponsesFile)
			} else {
				for _, r := range op.Output().InlinedResponses.InlinedResponses {
					got = append(got, resultLine{Key: r.Metadata.Key, Response: r.Response, Error: r.Error})
				}
			}
			var keys []string
			for _, l := range got {
				keys = append(keys, l.Key)
			}
			if !slices.Equal(keys, []string{"k0", "k1", "k2"}) {
				t.Fatalf("answered keys %v, want [k0 k1 k2]", keys)
			}
			for i, l := range got {
				if i == 1 {
					if l.Error == nil || l.Error.Code != 5 {
						t.Errorf("k1 answered %+v, want error 5", l)
					}
					continue
				}
				if want := emulator.ExpectedText(request(t, reqs[i])); l.Error != nil || answerText(t, l.Response) != want {
					t.Errorf("%s answered %+v, want %q", l.Key, l, want)
				}
			}
		})
	}
}
