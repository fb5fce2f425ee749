package intake

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/gemini"
)

// HeaderBodyObject is on a request whose body is too large for a NATS message: the producer
// put it in the bodies bucket as <bucket>/<object>, and the message's own body is empty.
const HeaderBodyObject = "Gembatch-Body-Object"

// ReasonBodyObject: the body object named by HeaderBodyObject is refused, missing or unreadable.
const ReasonBodyObject = "body_object"

// BodyObjects is the bucket of request bodies too large for a NATS message.
type BodyObjects interface {
	GetInfo(ctx context.Context, name string, opts ...jetstream.GetObjectInfoOpt) (*jetstream.ObjectInfo, error)
	GetBytes(ctx context.Context, name string, opts ...jetstream.GetObjectOpt) ([]byte, error)
}

// bodyObjectTimeout bounds reading one body object.
const bodyObjectTimeout = 30 * time.Second

// bodyObject reads the body a message names by HeaderBodyObject, checked as a message body
// would be: only from the bodies bucket (a reference into any other bucket, gembatch's own
// included, could read what the producer may not), within MAX_REQUEST_BYTES by the object's
// size before it is read. It returns the object's name and body; the caller parses the body
// and lets it go (durable mode: the batch's input reads it again when it is written).
func (in *Intake) bodyObject(msg *nats.Msg, ref string) (string, []byte, *Rejection) {
	key := msg.Header.Get(HeaderKey)
	if in.cfg.Bodies == nil {
		return "", nil, reject(ReasonBodyObject, key, gemini.CodeFailedPrecondition,
			"header %s: request bodies by object need durable mode (GEMBATCH_DURABLE, JetStream)", HeaderBodyObject)
	}
	bucket, name, ok := strings.Cut(ref, "/")
	switch {
	case !ok || bucket == "" || name == "":
		return "", nil, reject(ReasonBodyObject, key, gemini.CodeInvalidArgument, "header %s %q is not <bucket>/<object>", HeaderBodyObject, ref)
	case bucket != in.cfg.BodiesBucket:
		return "", nil, reject(ReasonBodyObject, key, gemini.CodeInvalidArgument,
			"header %s: bucket %q refused: request bodies are read only from the bodies bucket %q (GEMBATCH_BODIES_BUCKET)", HeaderBodyObject, bucket, in.cfg.BodiesBucket)
	case len(bytes.TrimSpace(msg.Data)) > 0:
		return "", nil, reject(ReasonBodyObject, key, gemini.CodeInvalidArgument,
			"a request with header %s must have an empty body; it has %d bytes", HeaderBodyObject, len(msg.Data))
	}
	ctx, cancel := context.WithTimeout(context.Background(), bodyObjectTimeout)
	defer cancel()
	info, err := in.cfg.Bodies.GetInfo(ctx, name)
	if err == nil && in.cfg.MaxRequestBytes > 0 && info.Size > uint64(in.cfg.MaxRequestBytes) {
		return "", nil, reject(ReasonTooLarge, key, gemini.CodeInvalidArgument,
			"request body object %s is %d bytes; the limit is %d (GEMBATCH_MAX_REQUEST_BYTES)", ref, info.Size, in.cfg.MaxRequestBytes)
	}
	var body []byte
	if err == nil {
		body, err = in.cfg.Bodies.GetBytes(ctx, name)
	}
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return "", nil, reject(ReasonBodyObject, key, gemini.CodeNotFound, "request body object %s not found", ref)
	case err != nil:
		return "", nil, reject(ReasonBodyObject, key, gemini.CodeUnavailable, "read request body object %s: %v; retry later", ref, err)
	}
	return name, body, nil
}
