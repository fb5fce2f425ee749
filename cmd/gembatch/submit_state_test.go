package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSentFile: keys are recorded before and unrecorded after a failed publish, a line cut
// short by a crash is dropped, and the reply prefix stays the same across runs.
func TestSentFile(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out.jsonl")
	s, sent, err := openSent(out, "")
	if err != nil || len(sent) != 0 {
		t.Fatalf("new: %v, %v", sent, err)
	}
	prefix := s.Prefix
	if !strings.HasPrefix(prefix, "_INBOX.gembatch-submit.") {
		t.Errorf("prefix %q", prefix)
	}
	for _, k := range []string{"a", "b\"quoted\"", "c"} {
		if err := s.mark(k, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.mark("c", false); err != nil {
		t.Fatal(err)
	}
	if err := s.close(false); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(sentPath(out), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`+"cut sh`); err != nil { // a crash mid-line
		t.Fatal(err)
	}
	f.Close()

	s, sent, err = openSent(out, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, a := sent["a"]; !a || len(sent) != 2 || s.Prefix != prefix {
		t.Errorf("resumed: sent %v, prefix %q (was %q)", sent, s.Prefix, prefix)
	}
	if err := s.unanswered(sent, map[string]struct{}{"a": {}}, false); err != nil || len(sent) != 1 {
		t.Errorf("unanswered: %v, %v", sent, err)
	}
	if err := s.unanswered(sent, nil, true); err != nil || len(sent) != 0 {
		t.Errorf("resend: %v, %v", sent, err)
	}
	if err := s.close(false); err != nil {
		t.Fatal(err)
	}
	if s, sent, err = openSent(out, ""); err != nil || len(sent) != 1 { // "a" is still recorded as sent
		t.Fatalf("after resend: %v, %v", sent, err)
	}
	if err := s.close(false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := openSent(out, "_INBOX.other"); err == nil || !strings.Contains(err.Error(), "--reply-prefix "+prefix) {
		t.Errorf("another reply prefix: %v", err)
	}
}

// FuzzSentFile: any state file is read or refused, never half-read: a refused file is left as
// it was.
func FuzzSentFile(f *testing.F) {
	for _, s := range []string{
		"{\"id\":\"x\",\"replyPrefix\":\"_INBOX.p\"}\n+\"a\"\n-\"a\"\n+\"b\"\n",
		"{\"id\":\"x\",\"replyPrefix\":\"_INBOX.p\"}\n+\"a", "", "\n", "not json\n", "{\"id\":\"x\"}\n*\"a\"\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		out := filepath.Join(t.TempDir(), "out.jsonl")
		if err := os.WriteFile(sentPath(out), b, 0o644); err != nil {
			t.Fatal(err)
		}
		s, _, err := openSent(out, "")
		if err != nil {
			if after, _ := os.ReadFile(sentPath(out)); string(after) != string(b) {
				t.Fatalf("refused %q and changed it to %q", b, after)
			}
			return
		}
		defer s.close(false)
		if s.Prefix == "" {
			t.Fatalf("read %q with no reply prefix", b)
		}
	})
}
