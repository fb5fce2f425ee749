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
