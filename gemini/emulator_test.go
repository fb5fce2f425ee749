package gemini_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
)

// emu is an emulator on loopback with a client for it.
type emu struct {
	srv *emulator.Server
	url string
	c   *gemini.Client
	reg *prometheus.Registry // the client's metrics
}

func startEmulator(t *testing.T, opts emulator.Options, copts ...gemini.Option) emu {
	t.Helper()
	opts.APIKey = testKey
	e := emu{srv: emulator.New(opts)}
	hs := httptest.NewServer(e.srv)
	t.Cleanup(func() {
		hs.Close()
		e.srv.Close()
	})
	e.url = hs.URL
	e.c, e.reg = newClient(hs.URL, copts...)
	return e
}

// waitDone polls a job until it ends.
func waitDone(t *testing.T, c *gemini.Client, name string) *gemini.Operation {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		op, err := c.GetBatch(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if op.State().Terminal() {
			if !op.Done {
				t.Errorf("%s ended without done", name)
			}
			return op
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s still %s", name, op.State())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func generateRequest(i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"contents":[{"parts":[{"text":"question %d"}],"role":"user"}],"generationConfig":{"temperature":0.2}}`, i))
}

// checkAnswers matches results to requests by key, as the service's order is not to be trusted.
func checkAnswers(t *testing.T, results []gemini.Result, requests map[string]json.RawMessage) {
	t.Helper()
	if len(results) != len(requests) {
		t.Fatalf("%d results for %d requests", len(results), len(requests))
	}
	for _, r := range results {
		req, ok := requests[r.Key]
		if !ok || r.Error != nil {
			t.Fatalf("result %+v", r)
		}
		var resp struct {
			Candidates []struct {
				Content struct {
					Parts []struct{ Text string } `json:"parts"`
				} `json:"content"`
			} `json:"candidates"`
		}
		if err := json.Unmarshal(r.Response, &resp); err != nil || len(resp.Candidates) != 1 || len(resp.Candidates[0].Content.Parts) != 1 {
			t.Fatalf("response %s: %v", r.Response, err)
		}
		if got, want := resp.Candidates[0].Content.Parts[0].Text, emulator.ExpectedText(req); got != want {
			t.Errorf("%s: answer %q, want %q", r.Key, got, want)
		}
		delete(requests, r.Key)
	}
}

func TestEmulatorInlineBatch(t *testing.T) {
	c := startEmulator(t, emulator.Options{JobDelay: 100 * time.Millisecond}).c
	ctx := t.Context()
	requests := map[string]json.RawMessage{}
	var inline []gemini.InlinedRequest
	for i := range 5 {
		key := fmt.Sprintf("k%d", i)
		requests[key] = generateRequest(i)
		inline = append(inline, gemini.InlinedRequest{Request: requests[key], Metadata: &gemini.RequestMetadata{Key: key}})
	}
	op, err := c.CreateBatch(ctx, gemini.KindGenerate, "gemini-2.5-flash", gemini.Batch{
		DisplayName: "inline", InputConfig: gemini.InputConfig{Requests: &gemini.InlinedRequests{Requests: inline}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if op.State() != gemini.StatePending || op.Metadata.BatchStats.RequestCount != 5 {
		t.Errorf("created %+v", op.Metadata)
	}
	done := waitDone(t, c, op.Name)
	if done.State() != gemini.StateSucceeded || done.Metadata.BatchStats.SuccessfulRequestCount != 5 {
		t.Fatalf("ended %+v", done.Metadata)
	}
	checkAnswers(t, gemini.InlineResults(done.Output()), requests)

	emb, err := c.CreateBatch(ctx, gemini.KindEmbed, "models/gemini-embedding-001", gemini.Batch{
		InputConfig: gemini.InputConfig{Requests: &gemini.InlinedRequests{Requests: []gemini.InlinedRequest{{
			Request:  json.RawMessage(`{"content":{"parts":[{"text":"embed me"}]},"taskType":"RETRIEVAL_DOCUMENT","outputDimensionality":8}`),
			Metadata: &gemini.RequestMetadata{Key: "e"},
		}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rs := gemini.InlineResults(waitDone(t, c, emb.Name).Output())
	var vec struct {
		Embedding struct{ Values []float32 } `json:"embedding"`
	}
	if len(rs) != 1 || rs[0].Key != "e" || json.Unmarshal(rs[0].Response, &vec) != nil || len(vec.Embedding.Values) != 8 {
		t.Errorf("embed results %+v", rs)
	}

	var names []string
	for op, err := range c.ListBatches(ctx, 1) {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, op.Name)
	}
	if !slices.Contains(names, op.Name) || !slices.Contains(names, emb.Name) || len(names) != 2 {
		t.Errorf("listed %v", names)
	}
}

func TestEmulatorFileBatch(t *testing.T) {
	// One chunk fails halfway: the client must query and resume.
	e := startEmulator(t, emulator.Options{JobDelay: 100 * time.Millisecond, Faults: emulator.Faults{UploadChunkFailures: 1}},
		gemini.WithChunkSize(4096))
	c := e.c
	ctx := t.Context()
	var input bytes.Buffer
	w := gemini.NewInputWriter(&input)
	requests := map[string]json.RawMessage{}
	for i := range 200 {
		key := fmt.Sprintf("request-%d", i)
		requests[key] = generateRequest(i)
		if err := w.Write(key, requests[key]); err != nil {
			t.Fatal(err)
		}
	}
	size := int64(input.Len())
	f, err := c.UploadFile(ctx, &input, size, "input", "application/jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if f.State != "ACTIVE" || int64(f.SizeBytes) != size || f.Name == "" {
		t.Fatalf("uploaded %+v", f)
	}
	if n := metric(t, e.reg, "gembatch_gemini_api_requests_total", "operation", "files.upload.query", "code", "200"); n != 1 {
		t.Errorf("%v queries, want 1 after the failed chunk", n)
	}
	got, err := c.GetFile(ctx, f.Name)
	if err != nil || got.SizeBytes != f.SizeBytes || got.DisplayName != "input" {
		t.Fatalf("get file %+v %v", got, err)
	}

	op, err := c.CreateBatch(ctx, gemini.KindGenerate, "gemini-2.5-flash", gemini.Batch{
		DisplayName: "from-file", InputConfig: gemini.InputConfig{FileName: f.Name},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := waitDone(t, c, op.Name)
	out := done.Output()
	if done.State() != gemini.StateSucceeded || out == nil || out.ResponsesFile == "" {
		t.Fatalf("ended %+v", done)
	}
	rc, err := c.Download(ctx, out.ResponsesFile)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	rr := gemini.NewResultReader(rc)
	var results []gemini.Result
	for {
		r, err := rr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		r.Response = slices.Clone(r.Response) // valid only until the next Next
		results = append(results, r)
	}
	if rr.Malformed() != 0 {
		t.Errorf("%d malformed lines", rr.Malformed())
	}
	checkAnswers(t, results, requests)

	var files []string
	for f, err := range c.ListFiles(ctx, 1) {
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f.Name)
	}
	if !slices.Contains(files, f.Name) {
		t.Errorf("listed %v, not %s", files, f.Name)
	}
	if err := c.DeleteFile(ctx, f.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetFile(ctx, f.Name); !gemini.IsNotFound(err) {
		t.Errorf("after delete: %v", err)
	}
	if _, err := c.Download(ctx, f.Name); err == nil {
		t.Error("an uploaded file downloaded")
	}
}

func TestEmulatorCancelUpdateDelete(t *testing.T) {
	c := startEmulator(t, emulator.Options{JobDelay: time.Hour}).c
	ctx := t.Context()
	batch := gemini.Batch{DisplayName: "slow", InputConfig: gemini.InputConfig{Requests: &gemini.InlinedRequests{
		Requests: []gemini.InlinedRequest{{Request: generateRequest(0), Metadata: &gemini.RequestMetadata{Key: "k"}}},
	}}}
	a, err := c.CreateBatch(ctx, gemini.KindGenerate, "gemini-2.5-flash", batch)
	if err != nil {
		t.Fatal(err)
	}
	name, prio := "renamed", int64(9)
	md, err := c.UpdateBatch(ctx, a.Name, &name, &prio)
	if err != nil || md.DisplayName != "renamed" || md.Priority != 9 {
		t.Fatalf("update %+v %v", md, err)
	}
	if err := c.CancelBatch(ctx, a.Name); err != nil {
		t.Fatal(err)
	}
	op, err := c.GetBatch(ctx, a.Name)
	if err != nil || op.State() != gemini.StateCancelled || !op.Done || op.Error == nil || op.Error.Code != gemini.CodeCancelled {
		t.Fatalf("after cancel %+v %v", op, err)
	}
	var ae *gemini.APIError
	if err := c.CancelBatch(ctx, a.Name); !errors.As(err, &ae) || ae.HTTPStatus != 400 || gemini.IsRetryable(err) {
		t.Errorf("second cancel: %v", err)
	}

	b, err := c.CreateBatch(ctx, gemini.KindGenerate, "gemini-2.5-flash", batch)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteBatch(ctx, b.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetBatch(ctx, b.Name); !gemini.IsNotFound(err) {
		t.Errorf("after delete: %v", err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestEmulatorFaults(t *testing.T) {
	e := startEmulator(t, emulator.Options{})
	em, c := e.srv, e.c
	ctx := t.Context()
	batch := gemini.Batch{DisplayName: "lost", InputConfig: gemini.InputConfig{Requests: &gemini.InlinedRequests{
		Requests: []gemini.InlinedRequest{{Request: generateRequest(0), Metadata: &gemini.RequestMetadata{Key: "k"}}},
	}}}

	em.SetFaults(emulator.Faults{LoseCreateAnswers: 1})
	_, err := c.CreateBatch(ctx, gemini.KindGenerate, "gemini-2.5-flash", batch)
	if !errors.Is(err, gemini.ErrOutcomeUnknown) || gemini.IsRetryable(err) || em.Creates("lost") != 1 {
		t.Errorf("lost create answer: %v, %d jobs", err, em.Creates("lost"))
	}

	em.SetFaults(emulator.Faults{CreateThrottleRate: 1, ThrottleDelay: 3 * time.Second})
	_, err = c.CreateBatch(ctx, gemini.KindGenerate, "gemini-2.5-flash", batch)
	var ae *gemini.APIError
	if !errors.As(err, &ae) || ae.HTTPStatus != 429 || ae.RetryAfter != 3*time.Second || !gemini.IsRetryable(err) {
		t.Errorf("throttled create: %v", err)
	}

	em.SetFaults(emulator.Faults{GetErrorRate: 0.5, Seed: 7})
	patient, reg := newClient(e.url, gemini.WithRetry(gemini.RetryPolicy{MaxAttempts: 12, Initial: time.Millisecond, Max: time.Millisecond}))
	for range 10 {
		if _, err := patient.GetBatch(ctx, em.Batches()[0].Name); err != nil {
			t.Fatalf("get through flaky errors: %v", err)
		}
	}
	if metric(t, reg, "gembatch_gemini_api_retries_total", "operation", "batches.get") == 0 {
		t.Error("no get failed: the fault did not bite")
	}

	wrong := gemini.New("wrong", gemini.WithBaseURL(e.url))
	if err := wrong.Ping(ctx); !errors.As(err, &ae) || ae.HTTPStatus != 400 || gemini.IsRetryable(err) {
		t.Errorf("wrong key: %v", err)
	}
}
