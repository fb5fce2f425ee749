package publisher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/internal/backoff"
)

// Headers of a reply whose answer was written to the object store, as the contract names them.
const (
	HeaderResultObject = "Gembatch-Result-Object" // <bucket>/<object>
	HeaderResultSize   = "Gembatch-Result-Size"   // the answer's size in bytes
)

// ResultObject names an answer written to the object store; a reference reply's body holds it.
type ResultObject struct {
	Bucket string `json:"bucket"`
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	// Digest is the object store's own: "SHA-256=" and the URL-safe base64 of the SHA-256.
	Digest string `json:"digest"`
}

// ResultsConfig describes the object store bucket of answers too large for a NATS message.
type ResultsConfig struct {
	Bucket string
	// TTL is how long an answer stays readable; the bucket's own TTL.
	TTL      time.Duration
	Replicas int
	Storage  jetstream.StorageType
	// MaxPayload is the connection's max payload; chunks are kept well below it.
	MaxPayload int64
}

// Results keeps answers too large for a NATS message in a JetStream object store bucket that
// producers read them from (durable mode).
type Results struct {
	obj    jetstream.ObjectStore
	bucket string
	chunk  uint32
	// tries is how many times a put is tried before the answer is given up as undeliverable.
	tries int
	retry backoff.Policy
}

// OpenResults creates the bucket, or updates its settings, and returns it.
func OpenResults(ctx context.Context, js jetstream.JetStream, cfg ResultsConfig) (*Results, error) {
	obj, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: cfg.Bucket, Description: "gembatch answers too large for a NATS message",
		TTL: cfg.TTL, Replicas: cfg.Replicas, Storage: cfg.Storage,
	})
	if err != nil {
		return nil, fmt.Errorf("results bucket %s: %w", cfg.Bucket, err)
	}
	return &Results{obj: obj, bucket: cfg.Bucket, chunk: chunkSize(cfg.MaxPayload), tries: 3,
		retry: backoff.Policy{Initial: 200 * time.Millisecond, Max: time.Second}}, nil
}

// chunkSize is the object store's default 128 KiB chunk, or half the max payload when smaller:
// each chunk is one message.
func chunkSize(maxPayload int64) uint32 {
	if maxPayload <= 0 {
		return 128 << 10
	}
	return uint32(min(128<<10, maxPayload/2))
}

// ObjectName is the name the answer to request reqID of record recID is written under. It is
// stable, so that a reply repeated after a crash names the object written before it, and it
// cannot be guessed by the producers who share the bucket: the record's id is a NUID that only
// gembatchd holds (request ids alone are stream sequences in durable mode), and the hash keeps
// the record's id from whoever reads the name, who could otherwise derive the names of the
// other answers of the same batch.
func ObjectName(recID, reqID string) string {
	sum := sha256.Sum256([]byte(recID + "\x00" + reqID))
	return hex.EncodeToString(sum[:16])
}

// put writes parts, in order, as one object named name, streaming them from where they are
// (the answer is never assembled a second time). An object of that name with the same content
// is left as it is and named again: a reply repeated after a crash. One with other content is
// never rewritten under its readers: the answer goes under the name with its digest appended.
func (r *Results) put(ctx context.Context, name string, parts ...[]byte) (ResultObject, error) {
	h := sha256.New()
	var size int64
	for _, p := range parts {
		h.Write(p)
		size += int64(len(p))
	}
	ref := ResultObject{Bucket: r.bucket, Name: name, Size: size, Digest: jetstream.GetObjectDigestValue(h)}
	var err error
	for attempt := range r.tries {
		if attempt > 0 && !backoff.Sleep(ctx, r.retry.Delay(attempt-1)) {
			return ref, ctx.Err()
		}
		if err = r.write(ctx, &ref, h.Sum(nil), parts); err == nil || ctx.Err() != nil {
			return ref, err
		}
	}
	return ref, err
}

// write puts the object ref names unless its content is there already.
func (r *Results) write(ctx context.Context, ref *ResultObject, sum []byte, parts [][]byte) error {
	for range 2 {
		info, err := r.obj.GetInfo(ctx, ref.Name)
		switch {
		case errors.Is(err, jetstream.ErrObjectNotFound):
		case err != nil:
			return fmt.Errorf("look for object %s/%s: %w", r.bucket, ref.Name, err)
		case info.Digest == ref.Digest && int64(info.Size) == ref.Size:
			return nil // written before a crash
		default:
			ref.Name += "-" + hex.EncodeToString(sum[:8])
			continue
		}
		readers := make([]io.Reader, len(parts))
		for i, p := range parts {
			readers[i] = bytes.NewReader(p)
		}
		meta := jetstream.ObjectMeta{Name: ref.Name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: r.chunk}}
		if _, err := r.obj.Put(ctx, meta, io.MultiReader(readers...)); err != nil {
			return fmt.Errorf("put object %s/%s (%d bytes): %w", r.bucket, ref.Name, ref.Size, err)
		}
		return nil
	}
	return fmt.Errorf("objects %s/%s and its digest-named twin both hold other content", r.bucket, ref.Name)
}
