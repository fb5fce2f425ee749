package gemini_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/gembatch/gembatch/gemini"
)

// show renders a result compactly for comparisons.
func show(r gemini.Result) string {
	if r.Error != nil {
		return fmt.Sprintf("%s err=%d %s", r.Key, r.Error.Code, r.Error.Message)
	}
	return fmt.Sprintf("%s resp=%s", r.Key, r.Response)
}

// readAll drains a ResultReader.
func readAll(rr *gemini.ResultReader) ([]string, error) {
	var out []string
	for {
		r, err := rr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, show(r))
	}
}

func TestResultReader(t *testing.T) {
	big := `{"text":"` + strings.Repeat("x", 1<<20) + `"}` // longer than the reader's buffer
	for _, tc := range []struct {
		name      string
		in        string
		want      []string
		malformed int
	}{
		{"response and error",
			`{"key":"a","response":{"candidates":[]}}` + "\n" + `{"key":"b","error":{"code":3,"message":"bad"}}` + "\n",
			[]string{`a resp={"candidates":[]}`, "b err=3 bad"}, 0},
		{"status instead of error", `{"key":"s","status":{"code":13,"message":"boom"}}`,
			[]string{"s err=13 boom"}, 0},
		{"blank lines, CRLF, no final newline", "\n  \r\n" + `{"key":"a","response":{}}` + "\r\n\n" + `{"key":"b","response":1}`,
			[]string{"a resp={}", "b resp=1"}, 0},
		{"broken line with a key", `{"key":"ok","response":{}}` + "\n" + `{"key":"k","response":{"candidates":[` + "\n" + `{"key":"after","response":{}}`,
			[]string{"ok resp={}", "k err=13 result line 2 does not parse: unexpected end of JSON input", "after resp={}"}, 0},
		{"broken line without a key", "garbage\n" + `{"response":{}}` + "\n[1,2]\n" + `{"key":5,"response":{}}` + "\n" + `{"key":"z","response":{}}`,
			[]string{"z resp={}"}, 4},
		{"key after the damage", `{"response":{"a":tru},"key":"late"}`, nil, 1},
		{"trailing garbage", `{"key":"t","response":{}} x`,
			[]string{"t err=13 result line 1 does not parse: invalid character 'x' after top-level value"}, 0},
		{"wrong type recovers key", `{"key":"w","error":"oops"}`,
			[]string{"w err=13 result line 1 does not parse: json: cannot unmarshal string into Go value of type gemini.Status"}, 0},
		{"neither", `{"key":"n"}` + "\n" + `{"key":"m","response":null}`,
			[]string{"n err=13 result line 1 has neither response nor error", "m err=13 result line 2 has neither response nor error"}, 0},
		{"error wins over response", `{"key":"e","response":{},"error":{"code":1,"message":"cancelled"}}`,
			[]string{"e err=1 cancelled"}, 0},
		{"error that claims OK", `{"key":"o","error":{"message":"?"}}`,
			[]string{"o err=2 ?"}, 0},
		{"long line", `{"key":"big","response":` + big + "}\n" + `{"key":"next","response":{}}`,
			[]string{"big resp=" + big, "next resp={}"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rr := gemini.NewResultReader(strings.NewReader(tc.in))
			got, err := readAll(rr)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", trunc(got), trunc(tc.want))
			}
			if rr.Malformed() != tc.malformed {
				t.Errorf("malformed %d, want %d", rr.Malformed(), tc.malformed)
			}
		})
	}
}

func trunc(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		if len(l) > 200 {
			l = l[:200] + "..."
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}

func TestResultReaderReadError(t *testing.T) {
	boom := errors.New("connection reset")
	src := io.MultiReader(strings.NewReader(`{"key":"a","response":{}}`+"\n"+`{"key":"b","resp`), iotest.ErrReader(boom))
	rr := gemini.NewResultReader(iotest.OneByteReader(src))
	got, err := readAll(rr)
	if !errors.Is(err, boom) || len(got) != 1 {
		t.Fatalf("got %v, %v", got, err)
	}
	if _, err := rr.Next(); !errors.Is(err, boom) {
		t.Errorf("error not sticky: %v", err)
	}
}

func TestInlineResults(t *testing.T) {
	var op gemini.Operation
	err := json.Unmarshal([]byte(`{"name":"batches/x","done":true,"response":{"@type":"t","inlinedResponses":{"inlinedResponses":[
		{"response":{"candidates":[]},"metadata":{"key":"a"}},
		{"error":{"code":3,"message":"bad"},"metadata":{"key":"b"}},
		{"response":{}},
		{"metadata":{"key":"d"}},
		{"error":{"message":"no code"},"metadata":{"key":"e"}}]}}}`), &op)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range gemini.InlineResults(op.Output()) {
		got = append(got, show(r))
	}
	want := []string{`a resp={"candidates":[]}`, "b err=3 bad", " resp={}", "d err=13 inline response 4 has neither response nor error", "e err=2 no code"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if op.Output().InlinedResponses.InlinedResponses[4].Error.Code != 0 {
		t.Error("InlineResults changed the operation")
	}
	if gemini.InlineResults(nil) != nil || gemini.InlineResults(&gemini.Output{ResponsesFile: "files/x"}) != nil {
		t.Error("results from nothing")
	}
}

func TestInputWriter(t *testing.T) {
	for _, tc := range []struct {
		name, key, req, want string
	}{
		{"byte-exact", "k1", `{"contents": [{"parts":[{"text":"a <b> & c"}]}]}`,
			`{"key":"k1","request":{"contents": [{"parts":[{"text":"a <b> & c"}]}]}}`},
		{"multi-line request is compacted", "k2", "{\n  \"contents\": [\r\n    {\"parts\": [{\"text\": \"x\\ny\"}]}\n  ]\n}",
			`{"key":"k2","request":{"contents":[{"parts":[{"text":"x\ny"}]}]}}`},
		{"key escaped", "a\"b\\c\u00e9\n", `{}`, `{"key":"a\"b\\cé\n","request":{}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := gemini.NewInputWriter(&buf)
			if err := w.Write(tc.key, json.RawMessage(tc.req)); err != nil {
				t.Fatal(err)
			}
			if got := buf.String(); got != tc.want+"\n" {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			if size := gemini.InputLineSize(tc.key, json.RawMessage(tc.req)); w.Bytes() != int64(buf.Len()) || size != w.Bytes() {
				t.Errorf("Bytes %d, InputLineSize %d, written %d", w.Bytes(), size, buf.Len())
			}
			var line gemini.InputLine
			if err := json.Unmarshal(bytes.TrimSuffix(buf.Bytes(), []byte("\n")), &line); err != nil || line.Key != tc.key {
				t.Errorf("line does not read back: %+v %v", line, err)
			}
		})
	}
}

func TestInputWriterRefuses(t *testing.T) {
	var buf bytes.Buffer
	w := gemini.NewInputWriter(&buf)
	for _, tc := range []struct{ key, req string }{
		{"", `{}`},
		{"k", ``},
		{"k", `{"a":`},
		{"k", "{\"a\":\n"},
		{"k", `{} {}`},
	} {
		if err := w.Write(tc.key, json.RawMessage(tc.req)); err == nil {
			t.Errorf("%q %q accepted", tc.key, tc.req)
		}
	}
	if buf.Len() != 0 || w.Bytes() != 0 {
		t.Errorf("wrote %q", buf.String())
	}

	boom := errors.New("disk full")
	w = gemini.NewInputWriter(failWriter{boom})
	if err := w.Write("k", json.RawMessage(`{}`)); !errors.Is(err, boom) {
		t.Errorf("got %v", err)
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

// TestInputRoundTrip: what InputWriter writes, a result file with the same lines reads back.
func TestInputRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := gemini.NewInputWriter(&buf)
	for i := range 100 {
		if err := w.Write(fmt.Sprintf("key-%d", i), json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	rr := gemini.NewResultReader(strings.NewReader(strings.ReplaceAll(buf.String(), `"request"`, `"response"`)))
	got, err := readAll(rr)
	if err != nil || len(got) != 100 || got[99] != `key-99 resp={"n":99}` {
		t.Errorf("got %d results, last %q, %v", len(got), got[len(got)-1], err)
	}
}

// TestResultUsage: the usage metadata comes with the result, read in the same pass, for result
// files and inline results alike; embeddings have none.
func TestResultUsage(t *testing.T) {
	const gen = `{"candidates":[],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":8,"cachedContentTokenCount":1,"thoughtsTokenCount":2,"totalTokenCount":13}}`
	want := gemini.UsageMetadata{PromptTokenCount: 3, CandidatesTokenCount: 8, CachedContentTokenCount: 1, ThoughtsTokenCount: 2, TotalTokenCount: 13}
	rr := gemini.NewResultReader(strings.NewReader(`{"key":"g","response":` + gen + "}\n" +
		`{"key":"e","response":{"embedding":{"values":[0.5,-0.25]}}}` + "\n"))
	r, err := rr.Next()
	if err != nil || r.Usage == nil || *r.Usage != want || string(r.Response) != gen {
		t.Fatalf("generate result %+v (usage %+v), %v", r, r.Usage, err)
	}
	if r, err = rr.Next(); err != nil || r.Usage != nil || r.Response == nil {
		t.Fatalf("embedding result %+v, %v", r, err)
	}
	inline := gemini.InlineResults(&gemini.Output{InlinedResponses: &gemini.InlinedResponses{
		InlinedResponses: []gemini.InlinedResponse{{Metadata: &gemini.ResponseMetadata{Key: "i"}, Response: json.RawMessage(gen)}}}})
	if len(inline) != 1 || inline[0].Usage == nil || *inline[0].Usage != want {
		t.Fatalf("inline results %+v", inline)
	}
}
