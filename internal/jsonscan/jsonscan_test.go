package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// validate reads a whole document the way a caller that skips everything would.
func validate(data []byte) (Scanner, error) {
	s := New(data)
	s.Skip()
	return s, s.End()
}

// stdError is encoding/json's verdict on data: nil, or its syntax error. It decodes into a
// RawMessage, which checks the syntax whole and converts nothing: a number too large for a
// float64 is valid JSON (the fuzzer found 300 eights failing an `any` decode).
func stdError(t testing.TB, data []byte) *json.SyntaxError {
	var v json.RawMessage
	err := json.Unmarshal(data, &v)
	if err == nil {
		return nil
	}
	var syn *json.SyntaxError
	if !errors.As(err, &syn) {
		t.Fatalf("encoding/json: %v", err)
	}
	return syn
}

// sameVerdict holds the scanner to encoding/json: the same documents valid, the same first
// error at the same offset, and the whitespace count Compact would drop.
func sameVerdict(t *testing.T, data []byte) {
	t.Helper()
	s, err := validate(data)
	want := stdError(t, data)
	if want == nil {
		if err != nil {
			t.Fatalf("%q: scanner says %v, encoding/json accepts it", data, err)
		}
		var c bytes.Buffer
		if json.Compact(&c, data) != nil || c.Len() != len(data)-s.Space {
			t.Fatalf("%q: %d whitespace bytes counted, Compact drops %d", data, s.Space, len(data)-c.Len())
		}
		if s.Newline != bytes.ContainsAny(data, "\r\n") {
			t.Fatalf("%q: Newline %v", data, s.Newline)
		}
		return
	}
	var got *SyntaxError
	if !errors.As(err, &got) {
		t.Fatalf("%q: scanner accepts it, encoding/json says %v", data, want)
	}
	if got.Msg != want.Error() || int64(got.Offset) != want.Offset {
		t.Fatalf("%q: scanner says %q at %d, encoding/json %q at %d", data, got.Msg, got.Offset, want.Error(), want.Offset)
	}
}

var cases = []string{
	``, ` `, `{}`, `[]`, `{"a":1}`, `{"a":1,}`, `{,}`, `{"a" : [1, 2.5e-3, -0, true, false, null, "x\u00e9\n"]}`,
	`[1 2]`, `{"a":01}`, `01`, `1x`, `-`, `-a`, `1.`, `1.e5`, `1e`, `1e+`, `1E+9`, `tru`, `trux`, `nul`, `"\x"`,
	`"\u12g4"`, "\"a\x01b\"", `"abc`, `{"a"}`, `{"a":}`, `{"a":1 "b":2}`, `[,]`, `[1,]`, ` {"a" :1 } `, "{\r\n\t\"k\": 1}",
	`"\ud800"`, "\"\xff\xfe\"", `{"a":{"b":{"c":[[[]]]}}}`, `[1,2,3]]`, `{"a":1}}`, `'`, `"'"`, "\x00", `{"x":"y"}x`,
	`[12345678901234567890,-0.0123456789e-12345678,1.2345678:]`, `[0.12345678/9]`, `[1234567 ,1e123456789a]`,
	`[0.00000000000000000000000000000000000000000000000001]`, "[1.23456789\xff]", `{"v":[9.87654321E+3,-1]}`,
	`[1,2,]`, `[-]`, `[-,1]`, `[-0.5,01]`, `[0.5,1.]`, `[1,-x]`, `[1.5`, `[1.5,`, `[1,2 ]`, `[1 ,2]`, `[1,[2]]`,
	`[0,1e5,2]`, `[-01]`, `[0.25,-0.5]`, `[[0.5,1],[2,-3.75]]`, `[1,"a",2]`, `[0.5]x`, `[1,2`,
	strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	strings.Repeat(`{"a":`, 10001) + "1" + strings.Repeat("}", 10001),
}

func TestAgreesWithEncodingJSON(t *testing.T) {
	for _, c := range cases {
		sameVerdict(t, []byte(c))
	}
}

func FuzzAgreesWithEncodingJSON(f *testing.F) {
	for _, c := range cases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, data []byte) { sameVerdict(t, data) })
}

func TestMembers(t *testing.T) {
	s := New([]byte(` { "model" : "m1", "Contents":[1], "mod\u0065l":null, "u": {"n": 7} } `))
	if !s.Open() {
		t.Fatal(s.Err())
	}
	var got []string
	for s.More() {
		k := s.Key()
		switch {
		case KeyIs(k, "u"):
			if !s.Open() {
				t.Fatal(s.Err())
			}
			for s.More() {
				got = append(got, "u."+string(s.Key())+"="+string(s.Skip()))
			}
		case KeyIs(k, "contents"), KeyIs(k, "model"):
			got = append(got, string(k)+"="+string(s.Skip()))
		default:
			t.Fatalf("unexpected key %q", k)
		}
	}
	if err := s.End(); err != nil {
		t.Fatal(err)
	}
	want := `model="m1" Contents=[1] mod\u0065l=null u.n=7`
	if strings.Join(got, " ") != want {
		t.Fatalf("got %s\nwant %s", strings.Join(got, " "), want)
	}
}

func TestString(t *testing.T) {
	for in, want := range map[string]string{`"abc"`: "abc", `"a\nb"`: "a\nb", `"\u00e9"`: "é", `5`: "", `null`: ""} {
		got, ok := String([]byte(in))
		if string(got) != want || ok != (in[0] == '"') {
			t.Errorf("String(%s) = %q, %v", in, got, ok)
		}
	}
}

// TestStringDecodesAsEncodingJSONDoes: bytes that are not UTF-8 come out as U+FFFD, as
// encoding/json gives them, with or without escapes in the string (FuzzStreamOperation found a
// key read raw by the one and replaced by the other).
func TestStringDecodesAsEncodingJSONDoes(t *testing.T) {
	for _, in := range []string{"\"\xb2\"", "\"a\xffb\"", "\"\xe2\x82\"", "\"\xed\xa0\x80\"", "\"é\xb2\\n\"", `"ok"`, `"é"`} {
		checkString(t, []byte(in))
	}
}

// FuzzString holds String to encoding/json's decoding of the same string value.
func FuzzString(f *testing.F) {
	for _, s := range []string{`"abc"`, `"a\nb"`, `"\u00e9"`, "\"\xb2\"", `"\ud800"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		s := New(v)
		val := s.Skip()
		if val == nil || s.End() != nil || val[0] != '"' {
			return // String is given the string values Skip returns
		}
		checkString(t, val)
	})
}

func checkString(t *testing.T, v []byte) {
	t.Helper()
	var want string
	if err := json.Unmarshal(v, &want); err != nil {
		t.Fatalf("encoding/json refuses %q: %v", v, err)
	}
	if got, ok := String(v); !ok || string(got) != want {
		t.Errorf("String(%q) = %q, %v; encoding/json gives %q", v, got, ok, want)
	}
}

func TestScanDoesNotAllocate(t *testing.T) {
	doc := []byte(`{"model":"models/x","contents":[{"parts":[{"text":"hello \"world\" \u00e9"}]}],"n":[1,-2.5e3,true,null]}`)
	allocs := testing.AllocsPerRun(100, func() {
		s := New(doc)
		s.Open()
		for s.More() {
			if KeyIs(s.Key(), "model") {
				String(s.Skip())
				continue
			}
			s.Skip()
		}
		if s.End() != nil {
			t.Fatal(s.Err())
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per scan", allocs)
	}
}
