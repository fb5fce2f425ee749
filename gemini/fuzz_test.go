package gemini_test

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"

	"github.com/gembatch/gembatch/gemini"
)

// checkResult holds the Result contract: a key, and exactly one of a valid JSON response and an error.
func checkResult(t *testing.T, r gemini.Result, keyed bool) {
	t.Helper()
	if keyed && r.Key == "" {
		t.Errorf("result without a key: %+v", r)
	}
	if (r.Error == nil) == (r.Response == nil) {
		t.Errorf("result must carry exactly one of response and error: %+v", r)
	}
	if r.Error != nil && r.Error.Code == gemini.CodeOK {
		t.Errorf("error with code OK: %+v", r.Error)
	}
	if r.Response != nil && !json.Valid(r.Response) {
		t.Errorf("response is not JSON: %q", r.Response)
	}
}

// checkUsage holds a result's Usage to what decoding its response with encoding/json gives.
func checkUsage(t *testing.T, r gemini.Result) {
	t.Helper()
	if r.Response == nil {
		if r.Usage != nil {
			t.Errorf("usage without a response: %+v", r)
		}
		return
	}
	var u struct {
		UsageMetadata *gemini.UsageMetadata `json:"usageMetadata"`
	}
	if json.Unmarshal(r.Response, &u) != nil {
		return // a field encoding/json refuses: no reference to compare with
	}
	if (u.UsageMetadata == nil) != (r.Usage == nil) || (r.Usage != nil && *r.Usage != *u.UsageMetadata) {
		t.Errorf("usage %+v, encoding/json reads %+v from %s", r.Usage, u.UsageMetadata, r.Response)
	}
}

// FuzzResultReader: any file reads to the end without panicking; every line is a result, a
// skipped malformed line or blank; every result keeps the Result contract.
func FuzzResultReader(f *testing.F) {
	f.Add([]byte(`{"key":"a","response":{"candidates":[]}}` + "\n" + `{"key":"b","error":{"code":3,"message":"x"}}` + "\n"))
	f.Add([]byte(`{"key":"k","status":{"code":13}}` + "\r\n\n" + `{"key":"k2","response":{"a":`))
	f.Add([]byte(`{"key":"u","response":{"candidates":[],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":8,"totalTokenCount":11}}}` + "\n" +
		`{"Key":"v","response":{"UsageMetadata":{"promptTokenCount":-9223372036854775808,"thoughtsTokenCount":1e2},"usageMetadata":null}}`))
	f.Add([]byte(`{"key":"e","response":{"embedding":{"values":[0.012,-1.5e-3,0]}},"status":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rr := gemini.NewResultReader(bytes.NewReader(data))
		results := 0
		for {
			r, err := rr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("a bytes.Reader cannot fail, got %v", err)
			}
			checkResult(t, r, true)
			checkUsage(t, r)
			results++
		}
		if lines := bytes.Count(data, []byte("\n")) + 1; results+rr.Malformed() > lines {
			t.Errorf("%d results and %d malformed from %d lines", results, rr.Malformed(), lines)
		}
	})
}

// FuzzOperationDecode: an Operation that decodes re-encodes to a fixed point, and its
// accessors and inline results hold their contracts.
func FuzzOperationDecode(f *testing.F) {
	f.Add([]byte(`{"name":"batches/x","metadata":{"state":"BATCH_STATE_PENDING","batchStats":{"requestCount":"3"}}}`))
	f.Add([]byte(`{"name":"batches/x","done":true,"error":{"code":1,"message":"cancelled"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var op gemini.Operation
		if json.Unmarshal(data, &op) != nil {
			return
		}
		_ = op.State().Terminal()
		_ = op.State().Short()
		for _, r := range gemini.InlineResults(op.Output()) {
			checkResult(t, r, false)
		}
		once, err := json.Marshal(&op)
		if err != nil {
			t.Fatalf("decoded operation does not encode: %v", err)
		}
		var again gemini.Operation
		if err := json.Unmarshal(once, &again); err != nil {
			t.Fatalf("re-decode of %s: %v", once, err)
		}
		twice, err := json.Marshal(&again)
		if err != nil || !bytes.Equal(once, twice) {
			t.Errorf("not a fixed point:\n%s\n%s", once, twice)
		}
	})
}
