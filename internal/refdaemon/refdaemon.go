// Package refdaemon plays gembatchd's side of the contract for requests and answers larger than
// a NATS message, so that producers (the client package, gembatch submit) are tested against a
// real NATS server with a small max_payload: it reads a body sent by reference from the bodies
// bucket, and sends an answer too large to publish by reference in the results bucket.
package refdaemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/internal/embedded"
)

// ResultsBucket is the bucket answers are written to, gembatchd's default GEMBATCH_RESULTS_BUCKET.
const ResultsBucket = "gembatch-results"

// NATS starts a NATS server with JetStream and the given max_payload for the test alone and
// returns its URL; it stops when the test ends.
func NATS(t testing.TB, maxPayload int32) string {
	t.Helper()
	ns, err := embedded.NATSWith(&server.Options{MaxPayload: maxPayload}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns.ClientURL()
}

// Request is a request as the daemon received it.
type Request struct {
	Key string
	// BodyObject is the Gembatch-Body-Object header, empty when the body came in the message.
	BodyObject string
	// Body is the request body, read from the object store when it came by reference.
	Body []byte
}

// Daemon answers requests on one subject.
type Daemon struct {
	t      testing.TB
	nc     *nats.Conn
	js     jetstream.JetStream
	answer func(key string, body []byte) json.RawMessage

	mu     sync.Mutex
	seen   []Request
	tamper func(*client.ResultObject)

	// serving is held while a request is answered, so that the end of the test waits for it.
	serving sync.Mutex
	stopped bool
}

// Start answers each request on subject with {"key":...,"response":answer(key, body)}, over its
// own connection to url, until the test ends.
func Start(t testing.TB, url, subject string, answer func(key string, body []byte) json.RawMessage) *Daemon {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{t: t, nc: nc, js: js, answer: answer}
	sub, err := nc.Subscribe(subject, d.serve)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sub.Unsubscribe()
		d.serving.Lock()
		d.stopped = true
		d.serving.Unlock()
	})
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return d
}

// SetTamper sets a function that changes the reference of every answer sent by reference
// from now on (nil: none), to test how producers treat a wrong one.
func (d *Daemon) SetTamper(f func(*client.ResultObject)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tamper = f
}

// Seen returns the requests received so far.
func (d *Daemon) Seen() []Request {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Request(nil), d.seen...)
}

func (d *Daemon) serve(m *nats.Msg) {
	d.serving.Lock()
	defer d.serving.Unlock()
	if d.stopped {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := Request{Key: m.Header.Get(client.HeaderKey), BodyObject: m.Header.Get(client.HeaderBodyObject), Body: m.Data}
	if req.BodyObject != "" {
		bucket, name, _ := strings.Cut(req.BodyObject, "/")
		if bucket != client.DefaultBodiesBucket || len(m.Data) != 0 {
			d.t.Errorf("request %q: body object %q with a %d-byte body", req.Key, req.BodyObject, len(m.Data))
			return
		}
		obj, err := d.js.ObjectStore(ctx, bucket)
		if err == nil {
			req.Body, err = obj.GetBytes(ctx, name)
		}
		if err != nil {
			d.t.Errorf("request %q: read %s: %v", req.Key, req.BodyObject, err)
			return
		}
	}
	d.mu.Lock()
	d.seen = append(d.seen, req)
	d.mu.Unlock()
	line, err := json.Marshal(struct {
		Key      string          `json:"key"`
		Response json.RawMessage `json:"response"`
	}{req.Key, d.answer(req.Key, req.Body)})
	if err != nil {
		d.t.Errorf("answer %q: %v", req.Key, err)
		return
	}
	reply := nats.NewMsg(m.Reply)
	reply.Header.Set(client.HeaderKey, req.Key)
	reply.Header.Set(client.HeaderStatus, "ok")
	reply.Header.Set(client.HeaderBatch, "batches/refdaemon")
	reply.Header.Set("Nats-Msg-Id", "refdaemon-"+req.Key)
	reply.Data = line
	if int64(len(line)+1024) > d.nc.MaxPayload() {
		if reply.Data, err = d.byReference(ctx, reply, line); err != nil {
			d.t.Errorf("answer %q by reference: %v", req.Key, err)
			return
		}
	}
	if err := d.nc.PublishMsg(reply); err != nil {
		d.t.Errorf("reply to %q: %v", req.Key, err)
	}
}

// byReference writes line to the results bucket under a name not guessable from the key, sets
// the reference headers on reply and returns its body.
func (d *Daemon) byReference(ctx context.Context, reply *nats.Msg, line []byte) ([]byte, error) {
	obj, err := d.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: ResultsBucket})
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte("refdaemon secret\x00" + reply.Header.Get(client.HeaderKey)))
	name := hex.EncodeToString(sum[:16])
	meta := jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: client.ChunkSize(d.nc.MaxPayload())}}
	info, err := obj.Put(ctx, meta, bytes.NewReader(line))
	if err != nil {
		return nil, err
	}
	ref := client.ResultObject{Bucket: ResultsBucket, Name: name, Size: int64(info.Size), Digest: info.Digest}
	d.mu.Lock()
	if d.tamper != nil {
		d.tamper(&ref)
	}
	d.mu.Unlock()
	reply.Header.Set(client.HeaderResultObject, ref.Bucket+"/"+ref.Name)
	reply.Header.Set(client.HeaderResultSize, strconv.FormatInt(ref.Size, 10))
	body, err := json.Marshal(struct {
		Key    string               `json:"key"`
		Object *client.ResultObject `json:"object"`
	}{reply.Header.Get(client.HeaderKey), &ref})
	if err != nil {
		return nil, fmt.Errorf("reference: %w", err)
	}
	return body, nil
}
