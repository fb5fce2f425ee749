package daemon_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/stacktest"
)

// smallPayload is the max_payload of the NATS server in the big-answer tests.
const smallPayload = 64 << 10

// imageBytes is the size of the emulator's image answers there: several times the max payload.
const imageBytes = 200_000

// bigStack runs the stack on a NATS server with a 64 KiB max_payload and the emulator answering
// images of imageBytes, with a client whose replies the harness also sees.
func bigStack(t *testing.T, cfg daemon.Config) (*harness, *client.Client) {
	t.Helper()
	s := stacktest.StartWith(t, cfg, emulator.Options{ImageBytes: imageBytes}, server.Options{MaxPayload: smallPayload})
	h := &harness{Stack: s, t: t, emu: s.Emulator, http: s.API, main: s.Main, replies: make(map[string][]*nats.Msg)}
	var err error
	if h.nc, err = nats.Connect(s.NATS.ClientURL()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.nc.Close)
	if _, err := h.nc.Subscribe("test.reply.>", func(m *nats.Msg) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.replies[m.Header.Get("Gembatch-Key")] = append(h.replies[m.Header.Get("Gembatch-Key")], m)
	}); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(h.nc, client.WithReplyPrefix("test.reply"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return h, c
}

func imagePrompt(text string) json.RawMessage {
	b, _ := json.Marshal(text)
	return json.RawMessage(`{"contents":[{"role":"user","parts":[{"text":` + string(b) + `}]}],"generationConfig":{"responseModalities":["TEXT","IMAGE"]}}`)
}

// submitAll sends every request at once and waits for every reply, resolved by the client.
func submitAll(t *testing.T, c *client.Client, reqs []client.Request) map[string]*client.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[string]*client.Reply{}
	for _, r := range reqs {
		p, err := c.SubmitAsync(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			rep, err := p.Wait(ctx)
			if rep == nil {
				t.Errorf("key %s: %v", r.Key, err)
				return
			}
			mu.Lock()
			out[r.Key] = rep
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// pngOf decodes the image part of a GenerateContentResponse.
func pngOf(t *testing.T, resp json.RawMessage) []byte {
	t.Helper()
	var r struct {
		Candidates []struct {
			Content struct {
				Parts []struct {
					InlineData *struct {
						MimeType string `json:"mimeType"`
						Data     string `json:"data"`
					} `json:"inlineData"`
				} `json:"parts"`
			} `json:"content"`
		} `json:"candidates"`
	}
	if err := json.Unmarshal(resp, &r); err != nil || len(r.Candidates) == 0 {
		t.Fatalf("not a GenerateContentResponse (%v): %.200s", err, resp)
	}
	for _, p := range r.Candidates[0].Content.Parts {
		if p.InlineData != nil && p.InlineData.MimeType == "image/png" {
			b, err := base64.StdEncoding.DecodeString(p.InlineData.Data)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	t.Fatalf("no image in the answer: %.200s", resp)
	return nil
}

// TestBigAnswersByReference: against a 64 KiB server, image answers (a mix with small text
// answers in one batch, which goes by file) and embeddings over GEMBATCH_REPLY_MAX_BYTES (an
// inline batch) are each written whole to the results bucket; their replies carry the usual
// headers plus the reference, and the client package reads every answer back whole.
func TestBigAnswersByReference(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "true"
	cfg.ReplyMaxBytes = 4 << 10
	h, c := bigStack(t, cfg)

	var reqs []client.Request
	for i := range 3 {
		reqs = append(reqs, client.Request{Key: fmt.Sprintf("img-%d", i), Body: imagePrompt(fmt.Sprintf("a lighthouse %d", i))})
	}
	for i := range 3 {
		reqs = append(reqs, client.Request{Key: fmt.Sprintf("txt-%d", i), Body: client.GenerateText(fmt.Sprintf("hello %d", i))})
	}
	for i := range 2 {
		reqs = append(reqs, client.Request{Key: fmt.Sprintf("emb-%d", i), Kind: client.KindEmbed, Model: "gemini-embedding-001",
			Body: json.RawMessage(embedBody(fmt.Sprintf("doc %d", i), 3072))})
	}
	got := submitAll(t, c, reqs)
	raw := h.waitReplies(keysOf(reqs), 10*time.Second)

	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	bucket, err := js.ObjectStore(context.Background(), "gembatch-results")
	if err != nil {
		t.Fatal(err)
	}
	st, err := bucket.Status(context.Background())
	if err != nil || st.TTL() != 72*time.Hour {
		t.Errorf("results bucket TTL %v (%v), want 72h", st.TTL(), err)
	}
	for _, r := range reqs {
		rep, msgs := got[r.Key], raw[r.Key]
		if rep == nil || rep.Err != nil || len(msgs) != 1 {
			t.Fatalf("key %s: reply %+v, %d messages", r.Key, rep, len(msgs))
		}
		m := msgs[0]
		for _, hdr := range []string{"Gembatch-Key", "Gembatch-Status", "Gembatch-Batch", "Nats-Msg-Id"} {
			if m.Header.Get(hdr) == "" {
				t.Errorf("key %s: no %s header", r.Key, hdr)
			}
		}
		big := !strings.HasPrefix(r.Key, "txt-")
		if byRef := m.Header.Get(client.HeaderResultObject) != ""; byRef != big {
			t.Fatalf("key %s: by reference %v, want %v (%d-byte reply)", r.Key, byRef, big, len(m.Data))
		}
		if !big {
			continue
		}
		checkReference(t, h.nc, m, rep, int(cfg.ReplyMaxBytes))
		if strings.HasPrefix(r.Key, "img-") {
			img := pngOf(t, rep.Response)
			if _, err := png.Decode(bytes.NewReader(img)); err != nil {
				t.Errorf("key %s: image does not decode: %v", r.Key, err)
			}
			if len(img) < imageBytes*9/10 {
				t.Errorf("key %s: %d-byte image, want about %d", r.Key, len(img), imageBytes)
			}
		}
	}
	if n := h.metric("gembatch_publisher_result_objects_total", "outcome", "written"); n != 5 {
		t.Errorf("result objects written: %v, want 5", n)
	}
	// The batch that asks for images goes by file whatever its size; the embeddings inline.
	for mode, want := range map[string]float64{"file": 1, "inline": 1} {
		if n := h.metric("gembatch_submitter_batches_total", "mode", mode, "outcome", "submitted"); n != want {
			t.Errorf("batches submitted %s: %v, want %v", mode, n, want)
		}
	}
}

func keysOf(reqs []client.Request) []string {
	var out []string
	for _, r := range reqs {
		out = append(out, r.Key)
	}
	return out
}

// checkReference checks a reply by reference against the contract and the object it names.
func checkReference(t *testing.T, nc *nats.Conn, m *nats.Msg, resolved *client.Reply, limit int) {
	t.Helper()
	key := m.Header.Get("Gembatch-Key")
	var body struct {
		Key    string              `json:"key"`
		Object client.ResultObject `json:"object"`
	}
	if err := json.Unmarshal(m.Data, &body); err != nil || body.Key != key {
		t.Fatalf("key %s: reference body %s (%v)", key, m.Data, err)
	}
	o := body.Object
	if m.Header.Get(client.HeaderResultObject) != o.Bucket+"/"+o.Name || m.Header.Get(client.HeaderResultSize) != strconv.FormatInt(o.Size, 10) {
		t.Errorf("key %s: headers %v, body %s", key, m.Header, m.Data)
	}
	if o.Bucket != "gembatch-results" || strings.Contains(o.Name, key) || !strings.HasPrefix(o.Digest, "SHA-256=") || o.Size <= int64(limit) {
		t.Errorf("key %s: reference %+v", key, o)
	}
	if int64(len(resolved.Line)) != o.Size {
		t.Errorf("key %s: resolved line of %d bytes, object of %d", key, len(resolved.Line), o.Size)
	}
	var line struct {
		Key      string          `json:"key"`
		Response json.RawMessage `json:"response"`
	}
	if err := json.Unmarshal(resolved.Line, &line); err != nil || line.Key != key || !bytes.Equal(line.Response, resolved.Response) {
		t.Errorf("key %s: object is not its result line (%v)", key, err)
	}
}

// TestBigAnswerCoreMode: without JetStream, an answer larger than a NATS message is an error
// reply for its key (RESOURCE_EXHAUSTED, naming the size and the limit), and the others in its
// batch are answered.
func TestBigAnswerCoreMode(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "false"
	h, c := bigStack(t, cfg)
	reqs := []client.Request{
		{Key: "img", Body: imagePrompt("a whale")},
		{Key: "txt", Body: client.GenerateText("hello")},
	}
	got := submitAll(t, c, reqs)
	if r := got["txt"]; r == nil || r.Err != nil || r.Response == nil {
		t.Fatalf("small answer: %+v", r)
	}
	r := got["img"]
	if r == nil || r.Err == nil || r.Err.Status != "RESOURCE_EXHAUSTED" || r.Object != nil {
		t.Fatalf("big answer in core mode: %+v", r)
	}
	var size, limit int
	if _, err := fmt.Sscanf(r.Err.Message, "the answer is %d bytes, more than the %d bytes", &size, &limit); err != nil ||
		size < imageBytes || limit > smallPayload || limit < smallPayload-1024 {
		t.Errorf("error names no size and limit (%v): %s", err, r.Err.Message)
	}
	if n := h.metric("gembatch_publisher_undeliverable_replies_total"); n != 1 {
		t.Errorf("undeliverable replies: %v, want 1", n)
	}
}
