package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/internal/refdaemon"
)

// bigImage is a GenerateContentResponse with a 300 KB inline image.
func bigImage() json.RawMessage {
	img := bytes.Repeat([]byte{0x89, 'P', 'N', 'G'}, 75<<10)
	return json.RawMessage(`{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"` +
		base64.StdEncoding.EncodeToString(img) + `"}}]}}]}`)
}

// TestSubmitBigAnswersAndBodies: against a server with a 64 KiB max_payload, an answer sent
// by reference is written whole to the results, a request body over the limit goes by
// reference, and an answer that cannot be read whole leaves no partial line behind.
func TestSubmitBigAnswersAndBodies(t *testing.T) {
	url := refdaemon.NATS(t, 64<<10)
	d := refdaemon.Start(t, url, client.DefaultGenerateSubject, func(key string, _ []byte) json.RawMessage {
		if strings.HasPrefix(key, "big-answer") {
			return bigImage()
		}
		return json.RawMessage(`{"candidates":[{"content":{"parts":[{"text":"short"}]}}]}`)
	})
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	bigPrompt := strings.Repeat("describe this picture ", 10_000)
	input := fmt.Sprintf(`{"key":"big-answer-1","request":{"contents":[{"parts":[{"text":"draw a cat"}]}]}}
{"key":"big-request","request":{"contents":[{"parts":[{"text":%q}]}]}}
{"key":"small","request":{"contents":[{"parts":[{"text":"hi"}]}]}}
`, bigPrompt)
	if err := os.WriteFile(in, []byte(input), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := cmd(t.Context(), "submit", in, "-o", out, "--nats", url)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	res := readResultsMax(t, out)
	if got := res["big-answer-1"].Response; !bytes.Equal(got, bigImage()) {
		t.Errorf("big answer: %d bytes in the results, want %d", len(got), len(bigImage()))
	}
	if len(res) != 3 || res["small"].Response == nil || res["big-request"].Response == nil {
		t.Errorf("results %v", res)
	}
	for _, r := range d.Seen() {
		if byRef := r.BodyObject != ""; byRef != (r.Key == "big-request") || (byRef && !bytes.Contains(r.Body, []byte(bigPrompt))) {
			t.Errorf("daemon got %q with body object %q, %d bytes", r.Key, r.BodyObject, len(r.Body))
		}
	}

	// An answer whose digest does not match: not written, not counted, the run says so.
	d.SetTamper(func(o *client.ResultObject) { o.Digest = "SHA-256=" + strings.Repeat("A", 43) + "=" })
	out2 := filepath.Join(dir, "out2.jsonl")
	code, stdout, stderr = cmd(t.Context(), "submit", in, "-o", out2, "--nats", url)
	if code != 1 || !strings.Contains(stderr, `key "big-answer-1": client: cannot read the result object`) || !strings.Contains(stderr, "only 2 of 3 requests answered") {
		t.Fatalf("tampered: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if res := readResultsMax(t, out2); len(res) != 2 {
		t.Errorf("tampered: %d results, want the 2 small ones", len(res))
	}
}

// readResultsMax is readResults for lines of up to 4 MB.
func readResultsMax(t *testing.T, path string) map[string]resultLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]resultLine{}
	for i, l := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
		var r resultLine
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("%s line %d: %v", path, i+1, err)
		}
		if _, dup := out[r.Key]; dup {
			t.Fatalf("%s: key %q answered twice", path, r.Key)
		}
		out[r.Key] = r
	}
	return out
}
