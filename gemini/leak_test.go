package gemini_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
)

// TestKeyNeverLeaks provokes every error path with a known key, against a server that echoes
// the key wherever it can, and checks that no error text or log line carries it.
func TestKeyNeverLeaks(t *testing.T) {
	const key = "AIzaSy-LEAK-CANARY-8d3f2a91c7"
	var sawKey atomic.Int32
	var srvURL string
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		k := r.Header.Get("x-goog-api-key")
		if k == key {
			sawKey.Add(1)
		}
		switch path := r.URL.Path; {
		case strings.HasPrefix(path, "/x/json/"):
			writeJSON(w, 400, `{"error":{"code":400,"message":"API key not valid: `+k+`","status":"INVALID_ARGUMENT"}}`)
		case strings.HasPrefix(path, "/x/text/"):
			writeJSON(w, 503, "<html>overloaded, key="+k+"</html>")
		case strings.HasPrefix(path, "/x/garbage/"):
			writeJSON(w, 200, "not json "+k)
		case strings.HasPrefix(path, "/x/hang/"):
			_, _ = io.Copy(io.Discard, r.Body) // the server notices the client leaving only after the body
			<-r.Context().Done()
		case strings.HasPrefix(path, "/x/cut/"):
			w.Header().Set("Content-Length", "1000")
			_, _ = io.WriteString(w, `{"name":"`+k)
		case path == "/upload/v1beta/files":
			w.Header().Set("X-Goog-Upload-URL", uploadURLs[r.Header.Get("X-Goog-Upload-Header-Content-Type")](srvURL, k))
		case strings.HasPrefix(path, "/session"):
			if r.Header.Get("X-Goog-Upload-Command") == "query" {
				writeJSON(w, 404, `{"error":{"code":404,"message":"no session for `+k+`"}}`)
				return
			}
			writeJSON(w, 503, "try again "+k)
		default:
			writeJSON(w, 403, `{"error":{"code":403,"message":"denied for `+k+`","status":"PERMISSION_DENIED"}}`)
		}
	})
	srvURL = srv.URL
	closed := serve(t, func(http.ResponseWriter, *http.Request) {})
	closed.Close()

	var logs bytes.Buffer
	opts := []gemini.Option{
		gemini.WithRetry(gemini.RetryPolicy{MaxAttempts: 2, Initial: time.Millisecond, Max: time.Millisecond}),
		gemini.WithCallTimeout(100 * time.Millisecond),
		gemini.WithLogger(zerolog.New(&logs).Level(zerolog.DebugLevel)),
		gemini.WithMetrics(gemini.NewMetrics(prometheus.NewRegistry())),
	}
	client := func(base string) *gemini.Client {
		return gemini.New(key, append([]gemini.Option{gemini.WithBaseURL(base)}, opts...)...)
	}
	at := func(suffix string) *gemini.Client { return client(srv.URL + "/x" + suffix) }
	ctx := t.Context()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	upload := func(c *gemini.Client, mode string) error {
		_, err := c.UploadFile(ctx, strings.NewReader("line\n"), 5, "d", mode)
		return err
	}
	download := func(c *gemini.Client) error {
		rc, err := c.Download(ctx, "files/x")
		if err != nil {
			return err
		}
		defer rc.Close()
		_, err = io.ReadAll(rc)
		return err
	}
	cases := map[string]error{}
	add := func(name string, err error) { cases[name] = err }
	_, err := at("/json").GetBatch(ctx, "b")
	add("JSON error echoing the key", err)
	_, err = at("/text").GetBatch(ctx, "b")
	add("plain-text error echoing the key", err)
	_, err = at("/garbage").GetBatch(ctx, "b")
	add("200 that does not parse", err)
	_, err = at("/hang").GetBatch(ctx, "b")
	add("attempt deadline", err)
	_, err = at("/cut").GetBatch(ctx, "b")
	add("truncated body", err)
	_, err = client(closed.URL).GetBatch(ctx, "b")
	add("connection refused", err)
	_, err = client(srv.URL).GetBatch(cancelled, "b")
	add("cancelled", err)
	_, err = client("http://bad host/"+key).GetBatch(ctx, "b")
	add("bad base URL", err)
	_, err = at("/hang").CreateBatch(ctx, gemini.KindGenerate, "m", gemini.Batch{})
	add("create timeout", err)
	_, err = at("/json").CreateBatch(ctx, gemini.KindGenerate, "m", gemini.Batch{})
	add("create refused", err)
	_, err = client("http://bad host/"+key).CreateBatch(ctx, gemini.KindGenerate, "m", gemini.Batch{})
	add("create with a bad base URL", err)
	for _, err := range at("/json").ListBatches(ctx, 1) {
		add("list", err)
	}
	for _, err := range at("/text").ListFiles(ctx, 1) {
		add("list files", err)
	}
	add("cancel", at("/json").CancelBatch(ctx, "b"))
	add("delete", at("/text").DeleteBatch(ctx, "b"))
	name := "n"
	_, err = at("/json").UpdateBatch(ctx, "b", &name, nil)
	add("update", err)
	_, err = at("/json").GetFile(ctx, "f")
	add("get file", err)
	add("delete file", at("/garbage").DeleteFile(ctx, "f"))
	add("ping", at("/json").Ping(ctx))
	add("upload: session URL does not parse", upload(client(srv.URL), "bad-url"))
	add("upload: session on a dead host", upload(client(srv.URL), "dead-host"))
	add("upload: chunk fails, query fails", upload(client(srv.URL), "session"))
	add("upload: start refused", upload(at("/json"), "x"))
	add("download refused", download(client(srv.URL)))
	add("download cut", download(at("/cut")))

	if sawKey.Load() == 0 {
		t.Fatal("the server never saw the key: the test proves nothing")
	}
	for name, err := range cases {
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err)} {
			if strings.Contains(s, key) {
				t.Errorf("%s: key in %q", name, s)
			}
		}
	}
	if !strings.Contains(logs.String(), "retrying") {
		t.Error("no retry was logged: the log check proves nothing")
	}
	if strings.Contains(logs.String(), key) {
		t.Errorf("key in logs: %s", logs.String())
	}
}

// uploadURLs, by the mime type the test passes, builds the session URL the server hands out,
// each one carrying the key the way a careless server might.
var uploadURLs = map[string]func(base, key string) string{
	"bad-url":   func(_, key string) string { return "http://[::1%zz]/?key=" + key },
	"dead-host": func(_, key string) string { return "http://127.0.0.1:1/session?key=" + key },
	"session":   func(base, key string) string { return base + "/session?key=" + key },
}
