package gemini_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gembatch/gembatch/gemini"
)

func TestRetryThenSuccess(t *testing.T) {
	var calls atomic.Int32
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1beta/batches/abc" || r.Method != http.MethodGet {
			t.Errorf("got %s %s", r.Method, r.URL.Path)
		}
		if got := r.Header.Get("x-goog-api-key"); got != testKey {
			t.Errorf("key header %q", got)
		}
		if strings.Contains(r.URL.RawQuery, "key") {
			t.Errorf("key in query %q", r.URL.RawQuery)
		}
		if calls.Add(1) <= 2 {
			writeJSON(w, 503, `{"error":{"code":503,"message":"try later","status":"UNAVAILABLE"}}`)
			return
		}
		writeJSON(w, 200, opJSON)
	})
	c, reg := newClient(srv.URL)
	for _, name := range []string{"batches/abc", "abc"} {
		calls.Store(0)
		op, err := c.GetBatch(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if op.Name != "batches/abc" || op.State() != gemini.StateRunning {
			t.Errorf("got %+v", op)
		}
		if calls.Load() != 3 {
			t.Errorf("%d calls, want 3", calls.Load())
		}
	}
	for _, m := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"gembatch_gemini_api_requests_total", []string{"operation", "batches.get", "code", "503"}, 4},
		{"gembatch_gemini_api_requests_total", []string{"operation", "batches.get", "code", "200"}, 2},
		{"gembatch_gemini_api_retries_total", []string{"operation", "batches.get"}, 4},
		{"gembatch_gemini_api_request_duration_seconds", []string{"operation", "batches.get"}, 6},
	} {
		if got := metric(t, reg, m.name, m.labels...); got != m.want {
			t.Errorf("%s%v = %v, want %v", m.name, m.labels, got, m.want)
		}
	}
}

// TestServerHint checks that the wait before a retry is at least the server's hint.
func TestServerHint(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header string
		body   string
		want   time.Duration
	}{
		{"Retry-After", "7", `{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}`, 7 * time.Second},
		{"RetryInfo", "", `{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12s"}]}}`, 12 * time.Second},
		{"larger of both", "3", `{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"5.5s"}]}}`, 5500 * time.Millisecond},
		{"plain text", "2", "slow down", 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var first time.Time
				var calls int
				c, _ := inProcess(func(w http.ResponseWriter, r *http.Request) {
					calls++
					if calls == 1 {
						first = time.Now()
						if tc.header != "" {
							w.Header().Set("Retry-After", tc.header)
						}
						writeJSON(w, 429, tc.body)
						return
					}
					if waited := time.Since(first); waited < tc.want || waited > tc.want+fastRetry.Max {
						t.Errorf("retried after %v, want %v", waited, tc.want)
					}
					writeJSON(w, 200, opJSON)
				})
				if _, err := c.GetBatch(t.Context(), "abc"); err != nil {
					t.Fatal(err)
				}
				if calls != 2 {
					t.Errorf("%d calls, want 2", calls)
				}
			})
		})
	}
}

// TestHintBeyondDeadline: when the server asks for a wait the caller's deadline cannot cover,
// the client returns the server's answer at once instead of sleeping into the deadline.
func TestHintBeyondDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls int
		c, _ := inProcess(func(w http.ResponseWriter, r *http.Request) {
			calls++
			w.Header().Set("Retry-After", "60")
			writeJSON(w, 429, `{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}`)
		})
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, err := c.GetBatch(ctx, "abc")
		var ae *gemini.APIError
		if !errors.As(err, &ae) || ae.HTTPStatus != 429 || ae.RetryAfter != time.Minute {
			t.Fatalf("got %v", err)
		}
		if calls != 1 || time.Since(start) != 0 {
			t.Errorf("%d calls in %v", calls, time.Since(start))
		}
		if !gemini.IsRetryable(err) {
			t.Error("429 should be retryable for the caller")
		}
	})
}

func TestBackoffGrowsAndCaps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var times []time.Time
		c, _ := inProcess(func(w http.ResponseWriter, r *http.Request) {
			times = append(times, time.Now())
			writeJSON(w, 500, `{"error":{"code":500}}`)
		}, gemini.WithRetry(gemini.RetryPolicy{MaxAttempts: 6, Initial: time.Second, Max: 4 * time.Second}))
		_, err := c.GetBatch(t.Context(), "abc")
		if !gemini.IsRetryable(err) {
			t.Fatalf("got %v", err)
		}
		if len(times) != 6 {
			t.Fatalf("%d attempts, want 6", len(times))
		}
		for i, ceil := range []time.Duration{1, 2, 4, 4, 4} {
			if d := times[i+1].Sub(times[i]); d > ceil*time.Second {
				t.Errorf("wait %d = %v, over %v", i+1, d, ceil*time.Second)
			}
		}
	})
}

func TestCreateNeverRetried(t *testing.T) {
	for _, tc := range []struct {
		status    int
		body      string
		unknown   bool // the job may exist
		retryable bool
	}{
		{503, `{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}`, true, false},
		{500, `internal`, true, false},
		{429, `{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}`, false, true},
		{400, `{"error":{"code":400,"status":"INVALID_ARGUMENT"}}`, false, false},
	} {
		var calls atomic.Int32
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			writeJSON(w, tc.status, tc.body)
		})
		c, _ := newClient(srv.URL)
		_, err := c.CreateBatch(t.Context(), gemini.KindGenerate, "gemini-2.5-flash", gemini.Batch{})
		var ae *gemini.APIError
		if !errors.As(err, &ae) || ae.HTTPStatus != tc.status || calls.Load() != 1 {
			t.Fatalf("%d: got %v after %d calls", tc.status, err, calls.Load())
		}
		if errors.Is(err, gemini.ErrOutcomeUnknown) != tc.unknown || gemini.IsRetryable(err) != tc.retryable {
			t.Errorf("%d: %v: retryable %v", tc.status, err, gemini.IsRetryable(err))
		}
	}
}

func TestCreateOutcomeUnknown(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var calls int
			c, _ := inProcess(func(w http.ResponseWriter, r *http.Request) {
				calls++
				<-r.Context().Done()
			}, gemini.WithCallTimeout(5*time.Second))
			_, err := c.CreateBatch(t.Context(), gemini.KindEmbed, "models/e", gemini.Batch{})
			if !errors.Is(err, gemini.ErrOutcomeUnknown) || gemini.IsRetryable(err) || calls != 1 {
				t.Fatalf("got %v after %d calls", err, calls)
			}
		})
	})
	t.Run("200 that does not parse", func(t *testing.T) {
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, `{"name":`) })
		c, _ := newClient(srv.URL)
		_, err := c.CreateBatch(t.Context(), gemini.KindGenerate, "m", gemini.Batch{})
		if !errors.Is(err, gemini.ErrOutcomeUnknown) || !strings.Contains(err.Error(), "batches.create") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("connection refused is known", func(t *testing.T) {
		srv := serve(t, func(http.ResponseWriter, *http.Request) {})
		srv.Close()
		c, _ := newClient(srv.URL)
		_, err := c.CreateBatch(t.Context(), gemini.KindGenerate, "m", gemini.Batch{})
		if err == nil || errors.Is(err, gemini.ErrOutcomeUnknown) || !gemini.IsRetryable(err) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestCreateRequest(t *testing.T) {
	type got struct{ path, body string }
	var last got
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		last = got{r.URL.Path, string(b)}
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s with %q", r.Method, r.Header.Get("Content-Type"))
		}
		writeJSON(w, 200, `{"name":"batches/new","metadata":{"state":"BATCH_STATE_PENDING","batchStats":{"requestCount":"1"}}}`)
	})
	c, _ := newClient(srv.URL)
	req := json.RawMessage(`{"contents":[{"parts":[{"text":"a <b> & c"}]}]}`)
	b := gemini.Batch{DisplayName: "gembatch-1", Priority: 5, InputConfig: gemini.InputConfig{
		Requests: &gemini.InlinedRequests{Requests: []gemini.InlinedRequest{{Request: req, Metadata: &gemini.RequestMetadata{Key: "k1"}}}},
	}}
	for _, tc := range []struct {
		kind  gemini.Kind
		model string
		path  string
	}{
		{gemini.KindGenerate, "gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:batchGenerateContent"},
		{gemini.KindGenerate, "models/gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:batchGenerateContent"},
		{gemini.KindEmbed, "gemini-embedding-001", "/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent"},
	} {
		op, err := c.CreateBatch(t.Context(), tc.kind, tc.model, b)
		if err != nil {
			t.Fatal(err)
		}
		if op.Name != "batches/new" || op.State() != gemini.StatePending || op.Metadata.BatchStats.RequestCount != 1 {
			t.Errorf("got %+v", op)
		}
		if last.path != tc.path {
			t.Errorf("path %s, want %s", last.path, tc.path)
		}
		want := `{"batch":{"displayName":"gembatch-1","priority":"5","inputConfig":{"requests":{"requests":[{"request":` + string(req) + `,"metadata":{"key":"k1"}}]}}}}` + "\n"
		if last.body != want {
			t.Errorf("body\n%s\nwant\n%s", last.body, want)
		}
	}
	if _, err := c.CreateBatch(t.Context(), "chat", "m", b); err == nil {
		t.Error("unknown kind accepted")
	}
}

func TestContextCancelStopsRetrying(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		var calls int
		c, _ := inProcess(func(w http.ResponseWriter, r *http.Request) {
			calls++
			if calls == 2 {
				cancel()
			}
			writeJSON(w, 503, `{"error":{"code":503}}`)
		}, gemini.WithRetry(gemini.RetryPolicy{MaxAttempts: 10, Initial: time.Second, Max: time.Second}))
		_, err := c.GetBatch(ctx, "abc")
		if !errors.Is(err, context.Canceled) || gemini.IsRetryable(err) {
			t.Fatalf("got %v", err)
		}
		if calls != 2 {
			t.Errorf("%d calls after cancel, want 2", calls)
		}
		if _, err := c.GetBatch(ctx, "abc"); !errors.Is(err, context.Canceled) || calls != 2 {
			t.Errorf("a done context still called out: %v", err)
		}
	})
}

func TestPerAttemptTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls int
		start := time.Now()
		c, _ := inProcess(func(w http.ResponseWriter, r *http.Request) {
			calls++
			if calls == 1 {
				<-r.Context().Done() // hang until the attempt deadline
				return
			}
			writeJSON(w, 200, opJSON)
		}, gemini.WithCallTimeout(30*time.Second))
		if _, err := c.GetBatch(t.Context(), "abc"); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); calls != 2 || d < 30*time.Second || d > 30*time.Second+fastRetry.Max {
			t.Errorf("%d calls in %v", calls, d)
		}
	})
}

func TestNonJSONErrorBody(t *testing.T) {
	page := "<html><head><title>502 Bad Gateway</title></head>\n<body>" + strings.Repeat("<p>upstream went away</p>\n", 400) + "</body></html>"
	var calls atomic.Int32
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(502)
		_, _ = io.WriteString(w, page)
	})
	c, _ := newClient(srv.URL)
	_, err := c.GetBatch(t.Context(), "abc")
	var ae *gemini.APIError
	if !errors.As(err, &ae) || ae.HTTPStatus != 502 || !ae.Retryable() {
		t.Fatalf("got %v", err)
	}
	if calls.Load() != int32(fastRetry.MaxAttempts) {
		t.Errorf("%d calls, want %d", calls.Load(), fastRetry.MaxAttempts)
	}
	msg := ae.Status.Message
	if !strings.HasPrefix(msg, "<html><head><title>502 Bad Gateway</title></head> <body><p>upstream") || len(msg) > 300 || strings.Contains(msg, "\n") {
		t.Errorf("message %q", msg)
	}
	if !strings.Contains(err.Error(), "batches.get") || !strings.Contains(err.Error(), "HTTP 502") {
		t.Errorf("error %q", err)
	}
}

func TestErrorClassification(t *testing.T) {
	for _, tc := range []struct {
		status    int
		body      string
		retryable bool
		notFound  bool
		text      string
	}{
		{404, `{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}`, false, true, "gemini: batches.get: HTTP 404: NOT_FOUND: Requested entity was not found."},
		{400, `{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}`, false, false, "gemini: batches.get: HTTP 400: INVALID_ARGUMENT: bad"},
		{403, `forbidden`, false, false, "gemini: batches.get: HTTP 403: forbidden"},
		{408, ``, true, false, "gemini: batches.get: HTTP 408"},
		{504, `{"error":{"code":504,"status":"DEADLINE_EXCEEDED"}}`, true, false, "gemini: batches.get: HTTP 504: DEADLINE_EXCEEDED"},
	} {
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, tc.status, tc.body) })
		c, _ := newClient(srv.URL, gemini.WithRetry(gemini.RetryPolicy{MaxAttempts: 1}))
		_, err := c.GetBatch(t.Context(), "abc")
		if gemini.IsRetryable(err) != tc.retryable || gemini.IsNotFound(err) != tc.notFound || err.Error() != tc.text {
			t.Errorf("%d: %q retryable=%v notFound=%v", tc.status, err, gemini.IsRetryable(err), gemini.IsNotFound(err))
		}
	}
	if gemini.IsRetryable(nil) || gemini.IsRetryable(context.Canceled) || gemini.IsRetryable(errors.New("x")) {
		t.Error("IsRetryable too eager")
	}
	if !gemini.IsRetryable(fmt.Errorf("read: %w", io.ErrUnexpectedEOF)) {
		t.Error("a truncated stream should be retryable")
	}
}

func TestOKBodyDoesNotParse(t *testing.T) {
	var calls atomic.Int32
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		writeJSON(w, 200, `<html>oops</html>`)
	})
	c, _ := newClient(srv.URL)
	_, err := c.GetBatch(t.Context(), "abc")
	if err == nil || !strings.Contains(err.Error(), "batches.get") || gemini.IsRetryable(err) || calls.Load() != 1 {
		t.Fatalf("got %v after %d calls", err, calls.Load())
	}
}

// TestTruncatedOKBody: a 200 whose connection drops midway is a transport failure, retried.
func TestTruncatedOKBody(t *testing.T) {
	var calls atomic.Int32
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.Header().Set("Content-Length", "1000")
			_, _ = io.WriteString(w, `{"name":"batches/abc","metadata":{"state":"BATCH_STATE_`)
			return
		}
		writeJSON(w, 200, opJSON)
	})
	c, _ := newClient(srv.URL)
	op, err := c.GetBatch(t.Context(), "abc")
	if err != nil || op.State() != gemini.StateRunning || calls.Load() != 2 {
		t.Fatalf("got %+v, %v after %d calls", op, err, calls.Load())
	}
}

func TestListBatchesPages(t *testing.T) {
	pages := map[string]string{
		"":   `{"operations":[{"name":"batches/1"},{"name":"batches/2"}],"nextPageToken":"t1"}`,
		"t1": `{"operations":[{"name":"batches/3"}],"nextPageToken":"t2"}`,
		"t2": `{}`,
	}
	var calls atomic.Int32
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Path != "/v1beta/batches" || r.URL.Query().Get("pageSize") != "2" {
			t.Errorf("got %s", r.URL)
		}
		writeJSON(w, 200, pages[r.URL.Query().Get("pageToken")])
	})
	c, _ := newClient(srv.URL)
	var names []string
	for op, err := range c.ListBatches(t.Context(), 2) {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, op.Name)
	}
	if strings.Join(names, ",") != "batches/1,batches/2,batches/3" || calls.Load() != 3 {
		t.Errorf("got %v in %d calls", names, calls.Load())
	}

	calls.Store(0)
	for range c.ListBatches(t.Context(), 2) {
		break
	}
	if calls.Load() != 1 {
		t.Errorf("breaking early fetched %d pages", calls.Load())
	}
}

func TestListErrorsAndLoops(t *testing.T) {
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("pageToken") {
		case "":
			writeJSON(w, 200, `{"files":[{"name":"files/a"}],"nextPageToken":"same"}`)
		default:
			writeJSON(w, 200, `{"files":[{"name":"files/b"}],"nextPageToken":"same"}`)
		}
	})
	c, _ := newClient(srv.URL)
	var names []string
	var last error
	for f, err := range c.ListFiles(t.Context(), 0) {
		if err != nil {
			last = err
			break
		}
		names = append(names, f.Name)
	}
	if strings.Join(names, ",") != "files/a,files/b" || last == nil || !strings.Contains(last.Error(), "repeated page token") {
		t.Errorf("got %v, %v", names, last)
	}

	failing := serve(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 403, `{"error":{"code":403}}`) })
	c, _ = newClient(failing.URL)
	n := 0
	for op, err := range c.ListBatches(t.Context(), 0) {
		n++
		if op != nil || err == nil {
			t.Errorf("got %v, %v", op, err)
		}
	}
	if n != 1 {
		t.Errorf("%d yields, want the error alone", n)
	}
}

func TestBatchAndFileCalls(t *testing.T) {
	type req struct{ method, uri, body string }
	var got []req
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = append(got, req{r.Method, r.URL.RequestURI(), string(b)})
		switch {
		case r.Method == http.MethodPatch:
			writeJSON(w, 200, `{"name":"batches/b1","displayName":"new","priority":"7","state":"BATCH_STATE_PENDING"}`)
		case strings.HasPrefix(r.URL.Path, "/v1beta/files/"):
			writeJSON(w, 200, `{"name":"files/f1","sizeBytes":"202","state":"ACTIVE"}`)
		case r.Method == http.MethodDelete:
			w.WriteHeader(200) // an empty body stands for {}
		default:
			writeJSON(w, 200, `{}`)
		}
	})
	c, _ := newClient(srv.URL)
	ctx := t.Context()
	if err := c.CancelBatch(ctx, "batches/b1"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteBatch(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	name, prio := "new", int64(7)
	md, err := c.UpdateBatch(ctx, "batches/b1", &name, &prio)
	if err != nil || md.DisplayName != "new" || md.Priority != 7 {
		t.Fatalf("update: %+v %v", md, err)
	}
	if _, err := c.UpdateBatch(ctx, "b1", nil, &prio); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateBatch(ctx, "b1", nil, nil); err == nil {
		t.Error("empty update accepted")
	}
	f, err := c.GetFile(ctx, "files/f1")
	if err != nil || f.SizeBytes != 202 {
		t.Fatalf("get file: %+v %v", f, err)
	}
	if err := c.DeleteFile(ctx, "f1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetBatch(ctx, "batches/"); err == nil {
		t.Error("empty name accepted")
	}
	if _, err := c.GetBatch(ctx, "x:cancel"); err != nil {
		t.Fatal(err)
	}
	want := []req{
		{"POST", "/v1beta/batches/b1:cancel", "{}"},
		{"DELETE", "/v1beta/batches/b1", ""},
		{"PATCH", "/v1beta/batches/b1:updateGenerateContentBatch?updateMask=displayName%2Cpriority", `{"displayName":"new","priority":"7"}` + "\n"},
		{"PATCH", "/v1beta/batches/b1:updateGenerateContentBatch?updateMask=priority", `{"priority":"7"}` + "\n"},
		{"GET", "/v1beta/files/f1", ""},
		{"DELETE", "/v1beta/files/f1", ""},
		{"GET", "/v1beta/batches?pageSize=1", ""},
		{"GET", "/v1beta/batches/x%3Acancel", ""}, // an id cannot reach a custom method
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("requests\n%v\nwant\n%v", got, want)
	}
}

func TestPingDoesNotRetry(t *testing.T) {
	var calls atomic.Int32
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		writeJSON(w, 503, `{"error":{"code":503}}`)
	})
	c, _ := newClient(srv.URL)
	if err := c.Ping(t.Context()); err == nil || calls.Load() != 1 {
		t.Errorf("got %v after %d calls", err, calls.Load())
	}
}

// TestRedirectDropsKey: Go forwards custom headers on redirect; the client must not hand the
// key to another host.
func TestRedirectDropsKey(t *testing.T) {
	other := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if k := r.Header.Get("x-goog-api-key"); k != "" {
			t.Errorf("key reached another host")
		}
		writeJSON(w, 200, opJSON)
	})
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/elsewhere", http.StatusFound)
	})
	c, _ := newClient(srv.URL)
	if _, err := c.GetBatch(t.Context(), "abc"); err != nil {
		t.Fatal(err)
	}
}
