package gemini

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"testing"
	"testing/iotest"
)

// createBatchRequest is the create body as encoding/json writes it: the oracle createBody is
// checked against.
type createBatchRequest struct {
	Batch Batch `json:"batch"`
}

func createBodies() map[string]Batch {
	reqs := func(bodies ...string) *InlinedRequests {
		r := &InlinedRequests{Requests: []InlinedRequest{}}
		for i, b := range bodies {
			r.Requests = append(r.Requests, InlinedRequest{Request: json.RawMessage(b), Metadata: &RequestMetadata{Key: fmt.Sprintf("k-%d", i)}})
		}
		return r
	}
	return map[string]Batch{
		"file":                  {DisplayName: "gembatch-1", InputConfig: InputConfig{FileName: "files/abc"}},
		"inline":                {DisplayName: "gembatch-2", Priority: 7, InputConfig: InputConfig{Requests: reqs(`{"contents":[{"parts":[{"text":"hi"}]}]}`, `{"contents":[]}`)}},
		"negative priority":     {Priority: -3, InputConfig: InputConfig{Requests: reqs(`{}`)}},
		"escapes everywhere":    {Model: "models/g\"x", DisplayName: "a<b>&c \u2028 é\n\t\\", InputConfig: InputConfig{Requests: reqs(`{"t":"<&>"}`)}},
		"nil requests":          {InputConfig: InputConfig{Requests: &InlinedRequests{}}},
		"empty":                 {},
		"no metadata, nil body": {InputConfig: InputConfig{Requests: &InlinedRequests{Requests: []InlinedRequest{{}, {Request: json.RawMessage(`[1,2]`)}}}}},
		"odd keys": {InputConfig: InputConfig{Requests: &InlinedRequests{Requests: []InlinedRequest{
			{Request: json.RawMessage(`{}`), Metadata: &RequestMetadata{Key: "\x01\"\\ü<"}},
			{Request: json.RawMessage(`{}`), Metadata: &RequestMetadata{}}}}}},
	}
}

// TestCreateBodyIsWhatEncodingJSONWrites: for compact bodies, the create body is byte for byte
// what encoding/json wrote before it was hand-written.
func TestCreateBodyIsWhatEncodingJSONWrites(t *testing.T) {
	for name, b := range createBodies() {
		want, err := encodeJSON(createBatchRequest{Batch: b})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := readCreateBody(t, b); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s", name, got, want)
		}
	}
}

// readCreateBody reads b's create body whole, and checks that its size was announced right.
func readCreateBody(t *testing.T, b Batch) []byte {
	t.Helper()
	c := newCreateBody(b)
	out, err := io.ReadAll(c)
	if err != nil || int64(len(out)) != c.size {
		t.Fatalf("read %d bytes (%v); the body announced %d", len(out), err, c.size)
	}
	return out
}

// TestCreateBodyReadsInAnyPieces: however small the reads, the body is the same bytes, and the
// reader keeps io.Reader's rules (testing/iotest checks them).
func TestCreateBodyReadsInAnyPieces(t *testing.T) {
	for name, b := range createBodies() {
		if err := iotest.TestReader(newCreateBody(b), readCreateBody(t, b)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		var got bytes.Buffer
		if _, err := io.Copy(&got, iotest.OneByteReader(newCreateBody(b))); err != nil || !bytes.Equal(got.Bytes(), readCreateBody(t, b)) {
			t.Errorf("%s: read a byte at a time (%v):\n%s", name, err, got.Bytes())
		}
	}
}

// TestCreateBodyKeepsRequestsAsHeld: a request body goes out as it was received, whitespace and
// all, and the whole create is still valid JSON that decodes to the same batch.
func TestCreateBodyKeepsRequestsAsHeld(t *testing.T) {
	body := "{\n  \"contents\": [ {\"parts\":[{\"text\":\"a b\"}]} ]\n}"
	b := Batch{InputConfig: InputConfig{Requests: &InlinedRequests{Requests: []InlinedRequest{{Request: json.RawMessage(body), Metadata: &RequestMetadata{Key: "k"}}}}}}
	got := readCreateBody(t, b)
	if !bytes.Contains(got, []byte(body)) {
		t.Fatalf("the request body was not sent as held: %s", got)
	}
	var back createBatchRequest
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatalf("create body is not JSON: %v\n%s", err, got)
	}
	if r := back.Batch.InputConfig.Requests.Requests[0]; string(r.Request) != body || r.Metadata.Key != "k" {
		t.Fatalf("decoded back %+v", r)
	}
}

// BenchmarkCreateBody writes a 10,000-request inline create of 1 KiB bodies, and in the same run
// the same batch through encoding/json as it was encoded before.
func BenchmarkCreateBody(b *testing.B) {
	text := bytes.Repeat([]byte("x"), 1000)
	body, _ := json.Marshal(map[string]any{"contents": []any{map[string]any{"parts": []any{map[string]any{"text": string(text)}}}}})
	reqs := make([]InlinedRequest, 10000)
	for i := range reqs {
		reqs[i] = InlinedRequest{Request: body, Metadata: &RequestMetadata{Key: fmt.Sprintf("req-%d", i)}}
	}
	batch := Batch{DisplayName: "gembatch-bench", InputConfig: InputConfig{Requests: &InlinedRequests{Requests: reqs}}}
	size := newCreateBody(batch).size
	var base, fast float64
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if _, err := encodeJSON(createBatchRequest{Batch: batch}); err != nil {
				b.Fatal(err)
			}
		}
		base = b.Elapsed().Seconds() / float64(b.N)
	})
	b.Run("createBody", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if _, err := io.Copy(io.Discard, newCreateBody(batch)); err != nil {
				b.Fatal(err)
			}
		}
		fast = b.Elapsed().Seconds() / float64(b.N)
		if base > 0 {
			b.ReportMetric(base/fast, "x-faster-than-encoding-json")
		}
	})
}
