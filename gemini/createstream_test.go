package gemini_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"testing"

	"github.com/gembatch/gembatch/gemini"
)

// TestInlineCreateIsNotJoinedInMemory: an inline create of 8 MB is written to the wire as it is
// sent, not joined into one buffer first (which held a second copy of every body, up to 20 MB,
// for as long as the upload took). The server gets exactly the bytes the Content-Length
// announces, and they are the create body encoding/json would write.
func TestInlineCreateIsNotJoinedInMemory(t *testing.T) {
	body, _ := json.Marshal(map[string]any{"contents": []any{map[string]any{"parts": []any{map[string]any{"text": string(bytes.Repeat([]byte("x"), 1000))}}}}})
	reqs := make([]gemini.InlinedRequest, 8000)
	for i := range reqs {
		reqs[i] = gemini.InlinedRequest{Request: body, Metadata: &gemini.RequestMetadata{Key: fmt.Sprintf("req-%d", i)}}
	}
	b := gemini.Batch{DisplayName: "gembatch-big", InputConfig: gemini.InputConfig{Requests: &gemini.InlinedRequests{Requests: reqs}}}
	var want bytes.Buffer
	enc := json.NewEncoder(&want)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(map[string]gemini.Batch{"batch": b}); err != nil {
		t.Fatal(err)
	}
	wantSum := sha256.Sum256(want.Bytes())

	var gotLen int64
	var gotSum [32]byte
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			t.Errorf("reading the create: %v", err)
		}
		if n != r.ContentLength {
			t.Errorf("read %d bytes; Content-Length said %d", n, r.ContentLength)
		}
		gotLen = r.ContentLength
		h.Sum(gotSum[:0])
		writeJSON(w, 200, `{"name":"batches/big","metadata":{"state":"BATCH_STATE_PENDING"}}`)
	})
	c, _ := newClient(srv.URL)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if _, err := c.CreateBatch(t.Context(), gemini.KindGenerate, "gemini-2.5-flash", b); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if gotLen != int64(want.Len()) || gotSum != wantSum {
		t.Fatalf("the server got %d bytes (sha256 %x); want the %d-byte create body (sha256 %x)", gotLen, gotSum[:4], want.Len(), wantSum[:4])
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d-byte create: %d bytes allocated by client and server together", want.Len(), allocated)
	if allocated > uint64(want.Len())/8 {
		t.Errorf("sending a %d-byte create allocated %d bytes: the body was built in memory", want.Len(), allocated)
	}
}
