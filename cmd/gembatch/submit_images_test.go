package main

import (
	"bytes"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/stacktest"
)

// TestSubmitImagesThroughGembatchd: gembatch submit against gembatchd itself on a 64 KiB
// server: image answers several times the max payload come back by reference, and the results
// file holds each whole result line, its picture decodable; a request line larger than the
// max payload goes through the bodies bucket and is answered from its whole body.
func TestSubmitImagesThroughGembatchd(t *testing.T) {
	cfg := stacktest.Config()
	cfg.LogLevel = "error"
	cfg.Durable = "true"
	s := stacktest.StartWith(t, cfg, emulator.Options{JobDelay: 100 * time.Millisecond, ImageBytes: 150_000}, server.Options{MaxPayload: 64 << 10})
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	var input strings.Builder
	for i := range 3 {
		fmt.Fprintf(&input, `{"key":"img-%d","request":{"contents":[{"parts":[{"text":"a cat %d"}]}],"generationConfig":{"responseModalities":["IMAGE"]}}}`+"\n", i, i)
		fmt.Fprintf(&input, `{"key":"txt-%d","request":{"contents":[{"parts":[{"text":"hi %d"}]}]}}`+"\n", i, i)
	}
	bigBody := `{"contents":[{"parts":[{"text":"describe ` + strings.Repeat("this picture ", 10_000) + `"}]}]}`
	fmt.Fprintf(&input, `{"key":"big-request","request":%s}`+"\n", bigBody)
	if err := os.WriteFile(in, []byte(input.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := cmd(t.Context(), "submit", in, "-o", out, "--nats", s.NATS.ClientURL())
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	res := readResultsMax(t, out)
	if len(res) != 7 {
		t.Fatalf("%d results, want 7", len(res))
	}
	if got, want := res["big-request"].Response, emulator.ExpectedText([]byte(bigBody)); !strings.Contains(string(got), `"text":"`+want+`"`) {
		t.Errorf("big request answered %.200s, want the text %q", got, want)
	}
	for i := range 3 {
		img, err := pictureOf([]byte(`{"response":` + string(res[fmt.Sprintf("img-%d", i)].Response) + `}`))
		if err != nil {
			t.Fatalf("img-%d: %v", i, err)
		}
		if _, err := png.Decode(bytes.NewReader(img)); err != nil || len(img) < 140_000 {
			t.Errorf("img-%d: %d-byte picture (%v)", i, len(img), err)
		}
		if r := res[fmt.Sprintf("txt-%d", i)]; r.Response == nil || r.Error != nil {
			t.Errorf("txt-%d: %+v", i, r)
		}
	}
}
