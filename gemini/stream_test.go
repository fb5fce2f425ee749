package gemini_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
)

// TestStreamBatchMatchesGetBatch: the emulator's finished inline job read as a stream hands
// over the same results, in the same order, as GetBatch holds, and keeps none of them.
func TestStreamBatchMatchesGetBatch(t *testing.T) {
	c := startEmulator(t, emulator.Options{JobDelay: 50 * time.Millisecond}).c
	var inline []gemini.InlinedRequest
	for i := range 5 {
		inline = append(inline, gemini.InlinedRequest{Request: generateRequest(i), Metadata: &gemini.RequestMetadata{Key: fmt.Sprintf("k%d", i)}})
	}
	op, err := c.CreateBatch(t.Context(), gemini.KindGenerate, "gemini-2.5-flash", gemini.Batch{
		InputConfig: gemini.InputConfig{Requests: &gemini.InlinedRequests{Requests: inline}},
	})
	if err != nil {
		t.Fatal(err)
	}
	whole := waitDone(t, c, op.Name)
	var got []gemini.Result
	streamed, err := c.StreamBatch(t.Context(), op.Name, func(r gemini.Result) error { got = append(got, gemini.KeptResult(r)); return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := gemini.InlineResults(whole.Output()); !reflect.DeepEqual(got, want) {
		t.Fatalf("streamed %d results, GetBatch has %d:\n%v\n%v", len(got), len(want), got, want)
	}
	out := streamed.Output()
	if streamed.State() != gemini.StateSucceeded || out == nil || out.InlinedResponses == nil || len(out.InlinedResponses.InlinedResponses) != 0 {
		t.Fatalf("streamed operation %+v", streamed)
	}
	if streamed.Name != whole.Name || streamed.Metadata.BatchStats.SuccessfulRequestCount != 5 || !streamed.Done {
		t.Fatalf("streamed metadata %+v", streamed.Metadata)
	}
	if _, err := c.StreamBatch(t.Context(), op.Name, nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestStreamBatchShapes: the response mirror first, a second copy skipped, nulls, an item
// without response or error, an error from the caller that stops the read and is not retried.
func TestStreamBatchShapes(t *testing.T) {
	const body = `{"name":"batches/x","response":{"@type":"t","inlinedResponses":{"inlinedResponses":[` +
		`{"response":{"a":1},"metadata":{"key":"a"}},{"error":{"code":3,"message":"bad"},"metadata":{"key":"b"}},{"metadata":{"key":"c"}}]}},` +
		`"metadata":{"state":"BATCH_STATE_SUCCEEDED","inputConfig":{"requests":{"requests":[{"request":{}}]}},` +
		`"output":{"inlinedResponses":{"inlinedResponses":[{"response":{"again":1},"metadata":{"key":"a"}}]}}},"done":true,"error":null}`
	gets := 0
	c, _ := inProcess(func(w http.ResponseWriter, r *http.Request) { gets++; writeJSON(w, 200, body) })
	var keys []string
	op, err := c.StreamBatch(context.Background(), "batches/x", func(r gemini.Result) error {
		keys = append(keys, r.Key)
		switch r.Key {
		case "a":
			if string(r.Response) != `{"a":1}` {
				t.Errorf("a: %s", r.Response)
			}
		case "b", "c":
			if r.Error == nil || (r.Key == "c" && !strings.Contains(r.Error.Message, "neither")) {
				t.Errorf("%s: %+v", r.Key, r.Error)
			}
		}
		return nil
	}, nil)
	if err != nil || strings.Join(keys, ",") != "a,b,c" || op.State() != gemini.StateSucceeded || op.Response.Type != "t" {
		t.Fatalf("keys %v, op %+v, err %v", keys, op, err)
	}
	stop := errors.New("stop")
	gets = 0
	n := 0
	_, err = c.StreamBatch(context.Background(), "batches/x", func(gemini.Result) error { n++; return stop }, nil)
	if !errors.Is(err, stop) || n != 1 || gets != 1 {
		t.Fatalf("stopped: err %v after %d results and %d gets", err, n, gets)
	}
}

// TestStreamBatchCutOffIsNotRetried: a body that breaks off after answers were handed over is
// an error, and not fetched again (which would hand them over twice); one that breaks off
// before is retried.
func TestStreamBatchCutOffIsNotRetried(t *testing.T) {
	for _, tt := range []struct {
		body      string
		wantGets  int
		wantItems int
	}{
		{`{"name":"b","metadata":{"output":{"inlinedResponses":{"inlinedResponses":[{"response":{},"metadata":{"key":"a"}},{"resp`, 1, 1},
		{`{"name":"b","metadata":{"sta`, 4, 0},
	} {
		gets, items := 0, 0
		c, _ := inProcess(func(w http.ResponseWriter, r *http.Request) {
			gets++
			w.Header().Set("Content-Length", "100000") // more than comes: the read breaks off
			w.WriteHeader(200)
			_, _ = w.Write([]byte(tt.body))
		})
		_, err := c.StreamBatch(context.Background(), "batches/b", func(gemini.Result) error { items++; return nil }, nil)
		if err == nil || gets != tt.wantGets || items != tt.wantItems {
			t.Errorf("%.40s: err %v, %d gets, %d items", tt.body, err, gets, items)
		}
	}
}

// TestStreamBatchCallerErrorNotRetried: an error of the caller's that looks like the network's
// (a NATS connection lost while replying) stops the read, and the job is not fetched again.
func TestStreamBatchCallerErrorNotRetried(t *testing.T) {
	gets := 0
	c, _ := inProcess(func(w http.ResponseWriter, r *http.Request) {
		gets++
		writeJSON(w, 200, `{"metadata":{"output":{"inlinedResponses":{"inlinedResponses":[{"response":{},"metadata":{"key":"a"}},{"response":{},"metadata":{"key":"b"}}]}}}}`)
	})
	lost := &net.OpError{Op: "write", Net: "tcp", Err: errors.New("broken pipe")}
	_, err := c.StreamBatch(context.Background(), "batches/x", func(gemini.Result) error { return lost }, nil)
	if !errors.Is(err, lost) || gets != 1 {
		t.Fatalf("err %v after %d gets", err, gets)
	}
}
