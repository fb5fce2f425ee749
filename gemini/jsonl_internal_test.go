package gemini

import (
	"io"
	"strings"
	"testing"
)

// TestResultLineCut: a line past the cap is cut, not read whole, and the stream goes on.
func TestResultLineCut(t *testing.T) {
	in := `{"key":"big","response":"` + strings.Repeat("x", 200) + `"}` + "\n" +
		`{"key":"ok","response":{}}` + "\n" +
		strings.Repeat("y", 300) + "\n" +
		`{"key":"end","response":{}}`
	r := NewResultReader(strings.NewReader(in))
	r.maxLine = 100
	var got []string
	for {
		res, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		s := res.Key
		if res.Error != nil {
			s += " " + res.Error.Message
		}
		got = append(got, s)
	}
	want := "big result line 1 is longer than 100 bytes|ok|end"
	if strings.Join(got, "|") != want || r.Malformed() != 1 {
		t.Errorf("got %q, %d malformed", got, r.Malformed())
	}
	if cap(r.line) > 2*r.maxLine {
		t.Errorf("line buffer grew to %d", cap(r.line))
	}
}

// FuzzQuotedLen: the length InputLineLen counts for a key is the length encoding/json writes.
func FuzzQuotedLen(f *testing.F) {
	for _, s := range []string{"", "k-1", `a"b\c`, "<&>", "\x00\x1f\x7f", "é🙂", "\u2028\u2029", "\xff\xfe", "\b\f\n\r\t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := quotedLen(s), len(jsonString(s)); got != want {
			t.Fatalf("quotedLen(%q) = %d, encoding/json writes %d", s, got, want)
		}
	})
}
