package jsstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/backoff"
	"github.com/gembatch/gembatch/record"
)

// ChunkSize is how much of a batch's JSONL input is put as one object: an open batch holds at
// most this much of its input (plus one request) in memory, whatever its size.
const ChunkSize = 8 << 20

// inputObject names chunk n of a record's JSONL input.
func inputObject(id string, n int) string { return id + ".input." + strconv.Itoa(n) }

// callTimeout bounds one object store call.
const callTimeout = 30 * time.Second

// BodyError is an input error that concerns one request alone: nothing of it was written and
// the batch's input is intact. The request is answered with the status.
type BodyError struct{ Status *gemini.Status }

func (e *BodyError) Error() string { return e.Status.Message }

// RequestStatus is the error reply the request gets.
func (e *BodyError) RequestStatus() *gemini.Status { return e.Status }

// Input is an open batch's JSONL input, exactly as the Batch API takes it
// (`{"key":"...","request":{...}}` a line), put in the requests bucket chunk by chunk as it
// grows: the batch itself keeps only what it needs to know about each request. With inStream,
// the bodies the request stream holds stay there, to be read back by sequence (streamInput):
// only those that came through the bodies bucket are written.
type Input struct {
	s        *Store
	id       string
	inStream bool
	buf      []byte
	puts     int
}

// OpenInput starts the input of the batch that will be recorded as id. inStream leaves the
// bodies of requests read from the stream there: set it only for a stream that keeps every
// message until its MaxAge, acknowledged or not.
func (s *Store) OpenInput(id string, inStream bool) *Input {
	return &Input{s: s, id: id, inStream: inStream}
}

// Append writes req's input line: its body, or the object of the bodies bucket it names; or,
// inPlace, nothing, when its stream message is its body. A BodyError leaves the input as it
// was; any other error leaves it unusable.
func (in *Input) Append(req record.Request) (inPlace bool, err error) {
	if in.inStream && req.Seq != 0 && req.BodyObject == "" {
		return true, nil
	}
	return false, in.appendLine(req)
}

// appendLine writes req's input line.
func (in *Input) appendLine(req record.Request) error {
	body := []byte(req.Body)
	if req.BodyObject != "" {
		var err error
		if body, err = in.s.readBody(req); err != nil {
			return err
		}
	}
	if len(body) == 0 { // a line without its request would fail the whole batch
		return &BodyError{Status: gemini.NewStatus(gemini.CodeInternal, "request %q: its body is no longer held", req.Key)}
	}
	start := len(in.buf)
	in.grow(len(body) + len(req.Key) + 64)
	var err error
	if in.buf, err = appendLine(in.buf, req.Key, body); err != nil {
		in.buf = in.buf[:start]
		return &BodyError{Status: gemini.NewStatus(gemini.CodeInvalidArgument, "request %q: %v", req.Key, err)}
	}
	if len(in.buf) >= ChunkSize {
		return in.put()
	}
	return nil
}

// Seal puts what remains of the input and says in rec where it is.
func (in *Input) Seal(rec *record.Record) error {
	if len(in.buf) > 0 {
		if err := in.put(); err != nil {
			return err
		}
	}
	if cap(in.buf) >= ChunkSize {
		b := in.buf[:0]
		buffers.Put(&b)
	}
	in.buf = nil
	rec.Chunks, rec.InStream = in.puts, in.inStream
	return nil
}

// buffers keeps chunk buffers between batches: a busy group's next batch reuses its last one's.
var buffers sync.Pool

// grow makes room for n more bytes: a buffer from the pool, or twice the room (up to a chunk
// and a line), so that filling a chunk copies it about once.
func (in *Input) grow(n int) {
	if cap(in.buf)-len(in.buf) >= n {
		return
	}
	if in.buf == nil {
		if b, ok := buffers.Get().(*[]byte); ok && cap(*b) >= n {
			in.buf = (*b)[:0]
			return
		}
	}
	c := max(2*cap(in.buf), 64<<10, len(in.buf)+n)
	c = min(c, max(ChunkSize+ChunkSize/8, len(in.buf)+n))
	grown := make([]byte, len(in.buf), c)
	copy(grown, in.buf)
	in.buf = grown
}

// put writes the buffer as the next chunk, trying a few times: a lost chunk loses the batch.
func (in *Input) put() error {
	name := inputObject(in.id, in.puts)
	retry := backoff.Policy{Initial: 100 * time.Millisecond, Max: 2 * time.Second}
	var err error
	for attempt := range 4 {
		if attempt > 0 {
			time.Sleep(retry.Delay(attempt - 1))
		}
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		_, err = in.s.obj.Put(ctx, in.s.meta(name), bytes.NewReader(in.buf))
		cancel()
		if err == nil {
			in.puts++
			in.buf = in.buf[:0]
			return nil
		}
	}
	return fmt.Errorf("put input chunk %s (%d bytes): %w", name, len(in.buf), err)
}

// readBody reads a big request's body from the bodies bucket, whole: one body at a time is
// in memory. It must be the body intake accepted: same line size, valid JSON.
func (s *Store) readBody(req record.Request) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	raw, err := s.bodies.GetBytes(ctx, req.BodyObject)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, &BodyError{Status: gemini.NewStatus(gemini.CodeNotFound,
			"request %q: body object %s/%s was deleted before its batch was written", req.Key, s.cfg.BodiesBucket, req.BodyObject)}
	}
	if err != nil {
		return nil, fmt.Errorf("read body object %s/%s: %w", s.cfg.BodiesBucket, req.BodyObject, err)
	}
	body := bytes.TrimSpace(raw)
	if gemini.InputLineSize(req.Key, body) != req.Size || !json.Valid(body) {
		return nil, &BodyError{Status: gemini.NewStatus(gemini.CodeFailedPrecondition,
			"request %q: body object %s/%s changed after the request was accepted", req.Key, s.cfg.BodiesBucket, req.BodyObject)}
	}
	return body, nil
}

// appendLine appends the input line of a body intake has checked: byte-exact, or compacted
// when it spans lines (as gemini.InputWriter writes it, and gemini.InputLineSize counts it).
func appendLine(dst []byte, key string, body []byte) ([]byte, error) {
	dst = append(dst, `{"key":`...)
	dst = appendKey(dst, key)
	dst = append(dst, `,"request":`...)
	if bytes.IndexByte(body, '\n') >= 0 || bytes.IndexByte(body, '\r') >= 0 { // faster than ContainsAny
		b := bytes.NewBuffer(dst)
		if err := json.Compact(b, body); err != nil {
			return dst, fmt.Errorf("request is not valid JSON: %w", err)
		}
		dst = b.Bytes()
	} else {
		dst = append(dst, body...)
	}
	return append(dst, "}\n"...), nil
}

// appendKey appends key as encoding/json encodes it (so that gemini.InputLineSize counts it),
// without an allocation for the usual key that needs no escaping.
func appendKey(dst []byte, key string) []byte {
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			k, _ := json.Marshal(key) // a string always encodes
			return append(dst, k...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, key...)
	return append(dst, '"')
}

// Input reads a record's JSONL input: from its chunks, in order, one chunk at a time, and then,
// for a record InStream, the lines of the bodies the stream holds.
func (s *Store) Input(ctx context.Context, rec *record.Record) (io.ReadCloser, error) {
	if rec.InStream {
		return s.streamInput(ctx, rec)
	}
	if rec.Chunks == 0 {
		return nil, fmt.Errorf("record %s has no input chunks", rec.ID)
	}
	return s.chunks(ctx, rec), nil
}

// chunks reads a record's input chunks as one stream.
func (s *Store) chunks(ctx context.Context, rec *record.Record) io.ReadCloser {
	return &chunkReader{ctx: ctx, obj: s.obj, id: rec.ID, n: rec.Chunks}
}

// chunkReader reads chunks 0 to n-1 of a record's input as one stream.
type chunkReader struct {
	ctx  context.Context
	obj  jetstream.ObjectStore
	id   string
	n, i int
	cur  jetstream.ObjectResult
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for {
		if r.cur == nil {
			if r.i == r.n {
				return 0, io.EOF
			}
			var err error
			if r.cur, err = r.obj.Get(r.ctx, inputObject(r.id, r.i)); err != nil {
				return 0, fmt.Errorf("read input chunk %s: %w", inputObject(r.id, r.i), err)
			}
			r.i++
		}
		n, err := r.cur.Read(p)
		if errors.Is(err, io.EOF) {
			_ = r.cur.Close()
			r.cur = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (r *chunkReader) Close() error {
	if r.cur != nil {
		return r.cur.Close()
	}
	return nil
}

// EachInput calls f with every line of a record's input, in order: for inline creates and for
// reading bodies back. f may keep request.
func (s *Store) EachInput(ctx context.Context, rec *record.Record, f func(key string, request json.RawMessage) error) error {
	rd, err := s.Input(ctx, rec)
	if err != nil {
		return err
	}
	defer rd.Close()
	in := gemini.NewInputReader(rd)
	for {
		key, request, err := in.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read input of record %s: %w", rec.ID, err)
		}
		if err := f(key, request); err != nil {
			return err
		}
	}
}
