package client_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/internal/refdaemon"
)

// smallPayload is the max_payload of the servers of these tests: 64 KiB.
const smallPayload = 64 << 10

// imageAnswer is a GenerateContentResponse with one inline image of n bytes.
func imageAnswer(n int) json.RawMessage {
	img := bytes.Repeat([]byte{0x89, 'P', 'N', 'G'}, n/4)
	return json.RawMessage(`{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"` +
		base64.StdEncoding.EncodeToString(img) + `"}}]}}]}`)
}

// answerBy answers key "big-..." with a 300 KB image and any other key with a short text.
func answerBy(key string, _ []byte) json.RawMessage {
	if strings.HasPrefix(key, "big") {
		return imageAnswer(300 << 10)
	}
	return json.RawMessage(`{"candidates":[{"content":{"parts":[{"text":"short"}]}}]}`)
}

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestBigAnswer: an answer sent by reference is read whole into the Reply, checked against
// its size and digest; WithResultReferences keeps the reference for ReadResult.
func TestBigAnswer(t *testing.T) {
	url := refdaemon.NATS(t, smallPayload)
	d := refdaemon.Start(t, url, client.DefaultGenerateSubject, answerBy)
	nc := connect(t, url)
	ctx := timeout(t, 30*time.Second)
	want := imageAnswer(300 << 10)

	t.Run("resolved", func(t *testing.T) {
		c := newClient(t, nc)
		r, err := c.Submit(ctx, client.Request{Key: "big-1", Body: client.GenerateText("draw a cat")})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.Response, want) {
			t.Fatalf("response is %d bytes, want the %d-byte answer", len(r.Response), len(want))
		}
		if r.Object == nil || r.Object.Bucket != refdaemon.ResultsBucket || r.Object.Size != int64(len(r.Line)) || r.Err != nil || r.Batch != "batches/refdaemon" {
			t.Fatalf("reply %+v, object %+v", r, r.Object)
		}
		if !bytes.HasPrefix(r.Line, []byte(`{"key":"big-1","response":{"candidates"`)) {
			t.Errorf("line starts %.60s", r.Line)
		}
		small, err := c.Submit(ctx, client.Request{Key: "small-1", Body: client.GenerateText("say hi")})
		if err != nil || small.Object != nil || !strings.Contains(string(small.Response), "short") {
			t.Fatalf("small answer %+v, %v", small, err)
		}
	})
	t.Run("reference kept", func(t *testing.T) {
		c := newClient(t, nc, client.WithResultReferences())
		r, err := c.Submit(ctx, client.Request{Key: "big-2", Body: client.GenerateText("draw a dog")})
		if err != nil {
			t.Fatal(err)
		}
		if r.Object == nil || r.Response != nil || !strings.Contains(string(r.Line), `"object":{"bucket":"gembatch-results"`) {
			t.Fatalf("reply %+v: %s", r, r.Line)
		}
		var buf bytes.Buffer
		if err := c.ReadResult(ctx, r.Object, &buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(buf.Bytes(), want) || int64(buf.Len()) != r.Object.Size {
			t.Fatalf("read %d bytes", buf.Len())
		}
	})
	for name, tamper := range map[string]func(*client.ResultObject){
		"wrong digest": func(o *client.ResultObject) { o.Digest = "SHA-256=" + strings.Repeat("A", 43) + "=" },
		"wrong size":   func(o *client.ResultObject) { o.Size-- },
		"missing":      func(o *client.ResultObject) { o.Name = "no-such-object" },
	} {
		t.Run(name, func(t *testing.T) {
			d.SetTamper(tamper)
			defer d.SetTamper(nil)
			c := newClient(t, nc)
			r, err := c.Submit(ctx, client.Request{Key: "big-" + strings.ReplaceAll(name, " ", "-"), Body: client.GenerateText("x")})
			if !errors.Is(err, client.ErrResultObject) || r != nil {
				t.Fatalf("got %+v, %v; want ErrResultObject", r, err)
			}
		})
	}
}

// TestBigRequest: a body larger than the connection may publish goes to the bodies bucket and
// the message carries the reference; a small body goes in the message.
func TestBigRequest(t *testing.T) {
	url := refdaemon.NATS(t, smallPayload)
	d := refdaemon.Start(t, url, client.DefaultGenerateSubject, answerBy)
	nc := connect(t, url)
	ctx := timeout(t, 30*time.Second)
	c := newClient(t, nc)
	big := client.GenerateText(strings.Repeat("describe this picture ", 10_000)) // 220 KB
	// Just at the limit and just over it: the headers count.
	edge := func(n int) json.RawMessage {
		return json.RawMessage(`{"contents":[{"parts":[{"text":"` + strings.Repeat("x", n) + `"}]}]}`)
	}
	// The message of key "at-limit" is its body plus these headers: NATS/1.0, Gembatch-Key, end.
	hdr := len("NATS/1.0\r\n") + len("Gembatch-Key: at-limit\r\n") + len("\r\n")
	atLimit := edge(int(nc.MaxPayload()) - hdr - len(edge(0)))
	overLimit := edge(int(nc.MaxPayload()) - hdr - len(edge(0)) + 1)

	for _, tc := range []struct {
		key   string
		body  json.RawMessage
		byRef bool
	}{{"small", client.GenerateText("hi"), false}, {"big", big, true}, {"at-limit", atLimit, false}, {"at-limiu", overLimit, true}} {
		if _, err := c.Submit(ctx, client.Request{Key: tc.key, Body: tc.body}); err != nil {
			t.Fatalf("%s: %v", tc.key, err)
		}
		seen := d.Seen()
		got := seen[len(seen)-1]
		if got.Key != tc.key || !bytes.Equal(got.Body, tc.body) || (got.BodyObject != "") != tc.byRef {
			t.Errorf("%s (%d bytes): daemon got key %q, %d bytes, body object %q; want by reference %v", tc.key, len(tc.body), got.Key, len(got.Body), got.BodyObject, tc.byRef)
		}
		if tc.byRef && !strings.HasPrefix(got.BodyObject, client.DefaultBodiesBucket+"/") {
			t.Errorf("%s: body object %q", tc.key, got.BodyObject)
		}
	}
	if _, err := c.Publish(ctx, client.Request{Key: "big-published", Body: big}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		seen := d.Seen()
		if got := seen[len(seen)-1]; got.Key == "big-published" {
			if got.BodyObject == "" || !bytes.Equal(got.Body, big) {
				t.Fatalf("published: %q, %d bytes", got.BodyObject, len(got.Body))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(fmt.Sprint("the published request never came: ", len(seen)))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FuzzParseReply: any reply body, with or without the reference header, is either refused or
// gives a reply whose reference, if any, names a bucket and an object.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		`{"key":"k","response":{}}`, `{"key":"k","error":{"code":3}}`,
		`{"key":"k","object":{"bucket":"gembatch-results","name":"abc","size":10,"digest":"SHA-256=x"}}`,
		`{"key":"k","object":{}}`, `{"key":"k","object":null}`, `[]`, ``,
	} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, body []byte, ref bool) {
		m := nats.NewMsg("_INBOX.x.1")
		m.Data = body
		if ref {
			m.Header.Set(client.HeaderResultObject, "gembatch-results/abc")
		}
		r, err := client.ParseReply(m)
		if err != nil {
			return
		}
		if ref != (r.Object != nil) || (r.Object != nil && (r.Object.Bucket == "" || r.Object.Name == "")) {
			t.Fatalf("header %v, body %q: object %+v", ref, body, r.Object)
		}
	})
}
