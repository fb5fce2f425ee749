package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// bodyStore is the object store bucket of request bodies too large for a NATS message, opened
// (or created) on first use.
type bodyStore struct {
	bucket string
	mu     sync.Mutex
	obj    jetstream.ObjectStore
}

// open returns the bucket, creating it when gembatchd has not yet done so.
func (b *bodyStore) open(ctx context.Context, js jetstream.JetStream) (jetstream.ObjectStore, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.obj != nil {
		return b.obj, nil
	}
	obj, err := js.ObjectStore(ctx, b.bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		obj, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket: b.bucket, Description: "gembatch request bodies too large for a NATS message",
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // created meanwhile by gembatchd or another client
			obj, err = js.ObjectStore(ctx, b.bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("client: bodies bucket %s: %w", b.bucket, err)
	}
	b.obj = obj
	return obj, nil
}

// headerSize is the size of msg's headers on the wire, as nats.go counts them against the
// server's max_payload.
func headerSize(msg *nats.Msg) int {
	n := len("NATS/1.0\r\n") + len("\r\n")
	for k, vs := range msg.Header {
		for _, v := range vs {
			n += len(k) + len(v) + len(": \r\n")
		}
	}
	return n
}

// offload moves msg's body to the bodies bucket when the message would be larger than the
// connection may publish, leaving an empty body and a Gembatch-Body-Object header.
func (c *Client) offload(ctx context.Context, msg *nats.Msg) error {
	if int64(len(msg.Data)+headerSize(msg)) <= c.nc.MaxPayload() {
		return nil
	}
	obj, err := c.bodies.open(ctx, c.js)
	if err != nil {
		return err
	}
	name := nuid.Next()
	meta := jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: ChunkSize(c.nc.MaxPayload())}}
	if _, err := obj.Put(ctx, meta, bytes.NewReader(msg.Data)); err != nil {
		return fmt.Errorf("client: put the %d-byte body of %q in %s: %w", len(msg.Data), msg.Header.Get(HeaderKey), c.bodies.bucket, err)
	}
	msg.Header.Set(HeaderBodyObject, c.bodies.bucket+"/"+name)
	msg.Data = nil
	return nil
}

// ChunkSize is the object store chunk size that fits a connection's max payload: the object
// store's default 128 KiB, or half the max payload when that is smaller.
func ChunkSize(maxPayload int64) uint32 {
	return uint32(min(128<<10, maxPayload/2))
}

// ReadResult copies the answer ref names from the object store to w, without holding it in
// memory, and checks its size and digest. The copy is whole only when it returns nil: on an
// error w may have received part of it. Errors wrap ErrResultObject.
func (c *Client) ReadResult(ctx context.Context, ref *ResultObject, w io.Writer) error {
	where := ref.Bucket + "/" + ref.Name
	obj, err := c.js.ObjectStore(ctx, ref.Bucket)
	if err != nil {
		return fmt.Errorf("%w %s: %w", ErrResultObject, where, err)
	}
	rd, err := obj.Get(ctx, ref.Name)
	if err != nil {
		return fmt.Errorf("%w %s: %w", ErrResultObject, where, err)
	}
	defer rd.Close()
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, sum), rd)
	switch {
	case err != nil:
		return fmt.Errorf("%w %s: %w", ErrResultObject, where, err)
	case n != ref.Size:
		return fmt.Errorf("%w %s: %d bytes, the reply says %d", ErrResultObject, where, n, ref.Size)
	case jetstream.GetObjectDigestValue(sum) != ref.Digest:
		return fmt.Errorf("%w %s: digest %s, the reply says %s", ErrResultObject, where, jetstream.GetObjectDigestValue(sum), ref.Digest)
	}
	return nil
}

// resolve reads the answer r refers to and returns the reply with it in place.
func (c *Client) resolve(ctx context.Context, r *Reply) (*Reply, error) {
	var buf bytes.Buffer
	buf.Grow(int(min(r.Object.Size, 1<<30)))
	if err := c.ReadResult(ctx, r.Object, &buf); err != nil {
		return nil, err
	}
	line := bytes.TrimRight(buf.Bytes(), "\r\n")
	var body struct {
		Key      string          `json:"key"`
		Response json.RawMessage `json:"response"`
		Error    *Error          `json:"error"`
	}
	if err := json.Unmarshal(line, &body); err != nil {
		return nil, fmt.Errorf("%w %s/%s: not a result line: %w", ErrResultObject, r.Object.Bucket, r.Object.Name, err)
	}
	if body.Key != "" && body.Key != r.Key {
		return nil, fmt.Errorf("%w %s/%s: holds key %q, the reply is for %q", ErrResultObject, r.Object.Bucket, r.Object.Name, body.Key, r.Key)
	}
	whole := *r
	whole.Response, whole.Err, whole.Line = body.Response, body.Error, line
	if whole.Err == nil && r.Err != nil { // Gembatch-Status: error, with no status in the line
		whole.Err = r.Err
	}
	return &whole, nil
}
