package emulator_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// api is an emulator behind a real HTTP server, spoken to with raw requests.
type api struct {
	t   *testing.T
	emu *emulator.Server
	url string
	c   *http.Client
}

func start(t *testing.T, opts emulator.Options) *api {
	t.Helper()
	emu := emulator.New(opts)
	srv := httptest.NewServer(emu)
	t.Cleanup(func() {
		srv.Close()
		emu.Close()
	})
	return &api{t: t, emu: emu, url: srv.URL, c: srv.Client()}
}

type reply struct {
	code   int
	header http.Header
	body   []byte
}

// do sends a request to path (relative to the server, or an absolute URL). The first of rest,
// if any, is the body: nil, a string, []byte, or a value to encode as JSON; the others are
// headers as name, value pairs.
func (a *api) do(method, path string, rest ...any) reply {
	a.t.Helper()
	var body any
	if len(rest) > 0 {
		body, rest = rest[0], rest[1:]
	}
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			a.t.Fatal(err)
		}
		r = bytes.NewReader(enc)
	}
	if !strings.HasPrefix(path, "http") {
		path = a.url + path
	}
	req, err := http.NewRequest(method, path, r)
	if err != nil {
		a.t.Fatal(err)
	}
	for i := 0; i+1 < len(rest); i += 2 {
		req.Header.Set(rest[i].(string), rest[i+1].(string))
	}
	resp, err := a.c.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	return reply{code: resp.StatusCode, header: resp.Header, body: got}
}

// ok fails the test unless the reply is a 200.
func (r reply) ok(t *testing.T) reply {
	t.Helper()
	if r.code != http.StatusOK {
		t.Fatalf("status %d, want 200: %s", r.code, r.body)
	}
	return r
}

// status checks an error reply: the HTTP code and the google.rpc.Status envelope.
func (r reply) status(t *testing.T, code int, name string) *gemini.Status {
	t.Helper()
	if r.code != code {
		t.Fatalf("status %d, want %d: %s", r.code, code, r.body)
	}
	var env struct {
		Error *gemini.Status `json:"error"`
	}
	if err := json.Unmarshal(r.body, &env); err != nil || env.Error == nil {
		t.Fatalf("error body %s is not a google.rpc.Status envelope (%v)", r.body, err)
	}
	if env.Error.Code != code || env.Error.Status != name || env.Error.Message == "" {
		t.Fatalf("error %+v, want code %d status %s and a message", env.Error, code, name)
	}
	return env.Error
}

func decode[T any](t *testing.T, r reply) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
	return v
}

// item is one inline request of a create body.
func item(key, text string) map[string]any {
	return map[string]any{
		"request":  map[string]any{"contents": []any{map[string]any{"role": "user", "parts": []any{map[string]any{"text": text}}}}},
		"metadata": map[string]any{"key": key},
	}
}

func inlineBody(displayName string, items ...map[string]any) map[string]any {
	return map[string]any{"batch": map[string]any{
		"displayName": displayName,
		"inputConfig": map[string]any{"requests": map[string]any{"requests": items}},
	}}
}

const generatePath = "/v1beta/models/gemini-2.5-flash:batchGenerateContent"

// create makes an inline generate batch and returns its Operation.
func (a *api) create(displayName string, items ...map[string]any) gemini.Operation {
	a.t.Helper()
	return decode[gemini.Operation](a.t, a.do("POST", generatePath, inlineBody(displayName, items...)).ok(a.t))
}

// get returns the raw and decoded Operation of a batch.
func (a *api) get(name string) (reply, gemini.Operation) {
	a.t.Helper()
	r := a.do("GET", "/v1beta/"+name).ok(a.t)
	return r, decode[gemini.Operation](a.t, r)
}

// wait polls a batch until it is in state want, failing after a bounded time. It returns the
// states seen on the way, in order and without repeats.
func (a *api) wait(name string, want gemini.State) (reply, gemini.Operation, []gemini.State) {
	a.t.Helper()
	var seen []gemini.State
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, op := a.get(name)
		if st := op.State(); len(seen) == 0 || seen[len(seen)-1] != st {
			seen = append(seen, st)
		}
		if op.State() == want {
			return r, op, seen
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("%s: states %v, never %s", name, seen, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// raw decodes a reply into generic JSON for checks of the exact wire shape.
func raw(t *testing.T, r reply) map[string]any {
	t.Helper()
	return decode[map[string]any](t, r)
}

// at walks a generic JSON value along a path of keys.
func at(v any, path ...string) any {
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func compact(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func keys(rs []gemini.InlinedResponse) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		if r.Metadata != nil {
			out[i] = r.Metadata.Key
		}
	}
	return out
}

func errCode(r gemini.InlinedResponse) string {
	if r.Error == nil {
		return "ok"
	}
	return fmt.Sprint(r.Error.Code)
}
