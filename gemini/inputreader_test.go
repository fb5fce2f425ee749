package gemini

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// TestInputReaderReadsWhatInputWriterWrote: keys with escapes, a request that spans lines
// (compacted by the writer), one longer than the reader's buffer, blank lines and a last line
// without its newline all come back as written.
func TestInputReaderReadsWhatInputWriterWrote(t *testing.T) {
	long := `{"t":"` + strings.Repeat("y", 200<<10) + `"}`
	lines := []struct{ key, request string }{
		{"a", `{"contents":[]}`},
		{"é \"q\" \\ <&>", `{"x":1}`},
		{"spans", "{\n \"x\": [1,\n 2]\n}"},
		{"long", long},
		{"null", `null`},
	}
	var buf bytes.Buffer
	w := NewInputWriter(&buf)
	for _, l := range lines {
		if err := w.Write(l.key, json.RawMessage(l.request)); err != nil {
			t.Fatal(err)
		}
		buf.WriteString("\n") // a blank line between
	}
	buf.Truncate(buf.Len() - 2) // the last line without its newline
	r := NewInputReader(&buf)
	for _, l := range lines {
		key, req, err := r.Next()
		if err != nil {
			t.Fatalf("%s: %v", l.key, err)
		}
		var want bytes.Buffer
		_ = json.Compact(&want, []byte(l.request))
		if key != l.key || !bytes.Equal(req, want.Bytes()) {
			t.Fatalf("got %q %.60s, want %q %.60s", key, req, l.key, want.Bytes())
		}
	}
	if _, _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last line: %v, want EOF", err)
	}
}

// TestInputReaderNamesTheBadLine: a line that is not an input line is an error naming it.
func TestInputReaderNamesTheBadLine(t *testing.T) {
	for _, bad := range []string{`{"key":"b","request":{"x":}`, `{"request":{}}`, `{"key":"","request":{}}`, `{"key":"b"}`, `[1]`} {
		r := NewInputReader(strings.NewReader(`{"key":"a","request":{}}` + "\n" + bad + "\n"))
		if _, _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		_, _, err := r.Next()
		if err == nil || !strings.Contains(err.Error(), "input line 2") {
			t.Errorf("%s: got %v, want an error naming line 2", bad, err)
		}
	}
}

// TestInputReaderRequestIsTheCallers: a request stays intact after later lines are read.
func TestInputReaderRequestIsTheCallers(t *testing.T) {
	var buf bytes.Buffer
	w := NewInputWriter(&buf)
	for i := range 3 {
		_ = w.Write(fmt.Sprint(i), json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)))
	}
	r := NewInputReader(&buf)
	_, first, _ := r.Next()
	_, _, _ = r.Next()
	_, _, _ = r.Next()
	if string(first) != `{"n":0}` {
		t.Fatalf("first request overwritten: %s", first)
	}
}

// BenchmarkInputReader reads 10,000 input lines of 1 KiB requests, and in the same run the same
// file through json.Decoder as it was read before.
func BenchmarkInputReader(b *testing.B) {
	var file bytes.Buffer
	w := NewInputWriter(&file)
	body := `{"contents":[{"parts":[{"text":"` + strings.Repeat("x", 1000) + `"}]}]}`
	for i := range 10000 {
		_ = w.Write(fmt.Sprintf("req-%d", i), json.RawMessage(body))
	}
	var base float64
	b.Run("json-decoder", func(b *testing.B) {
		b.SetBytes(int64(file.Len()))
		for b.Loop() {
			dec := json.NewDecoder(bytes.NewReader(file.Bytes()))
			for {
				var l struct {
					Key     string          `json:"key"`
					Request json.RawMessage `json:"request"`
				}
				if err := dec.Decode(&l); err != nil {
					break
				}
			}
		}
		base = b.Elapsed().Seconds() / float64(b.N)
	})
	b.Run("InputReader", func(b *testing.B) {
		b.SetBytes(int64(file.Len()))
		for b.Loop() {
			r := NewInputReader(bytes.NewReader(file.Bytes()))
			for {
				if _, _, err := r.Next(); err != nil {
					break
				}
			}
		}
		b.ReportMetric(base/(b.Elapsed().Seconds()/float64(b.N)), "x-faster-than-json-decoder")
	})
}
