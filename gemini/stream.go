package gemini

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gembatch/gembatch/internal/jsonscan"
)

// errHandedOver marks a failure after StreamBatch handed answers over: not retried, since a
// second try would hand them over again.
var errHandedOver = errors.New("answers already handed over")

// StreamBatch gets the job named "batches/x" like GetBatch, without ever holding its inline
// answers together: each is decoded on its own, handed to each in order, and dropped, so that a
// job of a thousand image answers is read one answer at a time. A Result's Response and Usage
// are good until each returns: they point into the reader's buffer, as ResultReader's do. each
// may be nil, to learn the job's state alone. The Operation returned holds no inline answers; its Output's
// InlinedResponses is set (and empty) when the job answered inline. An error from each stops
// the read and is returned as it is. handedAll, if set, is called once the last inline answer
// has been handed over, while the rest of the job (the service's mirror of the answers, up to
// as large again) is still to be read: a caller that gathers answers can let the last ones go.
// The call is retried like GetBatch only until the first answer is handed over.
func (c *Client) StreamBatch(ctx context.Context, name string, each func(Result) error, handedAll func()) (*Operation, error) {
	const op = "batches.get"
	p, err := resourcePath(op, "batches", name)
	if err != nil {
		return nil, err
	}
	u := call{op: op, method: http.MethodGet, path: p}.url(c.base)
	var out *Operation
	handed := false
	var stop error // each's own error
	err = c.withRetry(ctx, op, c.retry.MaxAttempts, func(ctx context.Context) error {
		body, err := c.openGet(ctx, op, u)
		if err != nil {
			return err
		}
		defer drain(body)
		o, err := decodeOperation(body, func(r Result) error {
			handed = true
			if each == nil {
				return nil
			}
			if err := each(r); err != nil {
				stop = err
				return err
			}
			return nil
		}, handedAll)
		switch {
		case stop != nil:
			return errHandedOver // never retried; the caller gets stop itself
		case err != nil && handed:
			return fmt.Errorf("gemini: %s: %w (%w)", op, err, errHandedOver)
		case err != nil:
			if _, ok := errors.AsType[*transportError](err); ok {
				return err
			}
			return fmt.Errorf("gemini: %s: response does not parse: %w", op, err)
		}
		out = o
		return nil
	})
	if stop != nil {
		return nil, stop
	}
	return out, err
}

// openGet makes one GET of u and returns its 200 body, under the per-attempt deadline until
// the answer starts and under ctx alone while it is read.
func (c *Client) openGet(ctx context.Context, op, u string) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	deadline := time.AfterFunc(c.callTimeout, func() { cancel(errAttemptTimeout) })
	req, err := c.newRequest(ctx, op, http.MethodGet, u, nil, "")
	if err != nil {
		cancel(nil)
		return nil, err
	}
	resp, err := c.send(op, req)
	if !deadline.Stop() && err == nil {
		resp.Body.Close()
		err = &transportError{op: op, msg: "answer came at the per-attempt deadline", err: errAttemptTimeout}
	}
	if err != nil {
		cancel(nil)
		return nil, err
	}
	return &getStream{c: c, ctx: ctx, op: op, cancel: cancel, rc: resp.Body}, nil
}

// getStream classifies read errors as the transport's.
type getStream struct {
	c      *Client
	ctx    context.Context
	op     string
	cancel context.CancelCauseFunc
	rc     io.ReadCloser
}

func (g *getStream) Read(p []byte) (int, error) {
	n, err := g.rc.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = g.c.transportErr(g.ctx, g.op, err)
	}
	return n, err
}

func (g *getStream) Close() error {
	err := g.rc.Close()
	g.cancel(nil)
	return err
}

// opDecoder reads an Operation a value at a time. The first inline answers array it meets
// (metadata.output or the response mirror, whichever comes first) is handed over item by item;
// any other is skipped without being held.
type opDecoder struct {
	js        *jsonStream
	each      func(Result) error
	handedAll func() // nil: nobody asked
	seen      bool   // an inline answers array was handed over
	handed    int
	usage     UsageMetadata // the usage of the answer being handed over
}

// decodeOperation reads an Operation from r, handing each inline answer to each, then calling
// handedAll (if set) when the last one is handed over.
func decodeOperation(r io.Reader, each func(Result) error, handedAll func()) (*Operation, error) {
	d := &opDecoder{js: newJSONStream(r), each: each, handedAll: handedAll}
	var o Operation
	var md BatchMetadata
	var resp OperationResponse
	_, err := d.object(&o, map[string]func() error{
		"metadata": func() error {
			present, err := d.object(&md, map[string]func() error{
				"output": func() (err error) { md.Output, err = d.output(); return err },
				// The inline requests, up to 20 MB, which nothing here reads.
				"inputConfig": d.js.skip,
			})
			if present {
				o.Metadata = &md
			}
			return err
		},
		"response": func() error {
			present, err := d.object(&resp, map[string]func() error{
				"inlinedResponses": func() (err error) { resp.InlinedResponses, err = d.inlined(); return err },
			})
			if present {
				o.Response = &resp
			}
			return err
		},
	})
	if err == nil {
		err = d.js.end()
	}
	if err != nil {
		return nil, err
	}
	return &o, nil
}

// object reads the object that comes next into v: the members named in special by their
// function, the others (small) gathered and decoded into v at the end. present is false for a
// null, which leaves v as it is.
func (d *opDecoder) object(v any, special map[string]func() error) (present bool, err error) {
	if open, err := d.js.enter('{'); err != nil || !open {
		return false, err
	}
	rest := map[string]json.RawMessage{}
	for {
		more, err := d.js.more('}')
		if err != nil || !more {
			if err != nil {
				return true, err
			}
			break
		}
		key, err := d.js.key()
		if err != nil {
			return true, err
		}
		if f := memberOf(special, key); f != nil {
			err = f()
		} else {
			rest[key], err = d.js.value()
		}
		if err != nil {
			return true, err
		}
	}
	b, err := json.Marshal(rest)
	if err != nil {
		return true, err
	}
	return true, json.Unmarshal(b, v)
}

// memberOf returns the function special has for a member's name, matched as encoding/json
// matches names to fields: exactly, or else without regard to case.
func memberOf(special map[string]func() error, name string) func() error {
	if f, ok := special[name]; ok {
		return f
	}
	for k, f := range special {
		if strings.EqualFold(k, name) {
			return f
		}
	}
	return nil
}

// output reads an Output; nil for a null.
func (d *opDecoder) output() (*Output, error) {
	var out Output
	present, err := d.object(&out, map[string]func() error{
		"inlinedResponses": func() (err error) { out.InlinedResponses, err = d.inlined(); return err },
	})
	if !present {
		return nil, err
	}
	return &out, err
}

// inlined reads the inlinedResponses wrapper, handing its items over (the first time) or
// skipping them; what it returns is set and empty.
func (d *opDecoder) inlined() (*InlinedResponses, error) {
	if open, err := d.js.enter('{'); err != nil || !open {
		return nil, err
	}
	for {
		more, err := d.js.more('}')
		if err != nil {
			return nil, err
		}
		if !more {
			return &InlinedResponses{}, nil
		}
		key, err := d.js.key()
		if err != nil {
			return nil, err
		}
		if strings.EqualFold(key, "inlinedResponses") && !d.seen {
			d.seen = true
			if err = d.items(); err == nil && d.handedAll != nil {
				d.handedAll()
			}
		} else {
			err = d.js.skip()
		}
		if err != nil {
			return nil, err
		}
	}
}

// items hands over each item of the array that comes next. An item that lies whole in the
// reader's buffer, as answers of a few KiB mostly do, is read where it lies, in one pass that
// also validates it; any other (cut by the buffer's end, larger than it, or not valid) is read
// as the stream reads any value, copied out, then decoded. Either way each gets the same Result.
func (d *opDecoder) items() error {
	if open, err := d.js.enter('['); err != nil || !open {
		return err
	}
	for {
		more, err := d.js.more(']')
		if err != nil || !more {
			return err
		}
		d.handed++
		r, ok := d.bufferedItem()
		if !ok {
			item, err := d.js.value()
			if err != nil {
				return err
			}
			if r, err = inlineItem(d.handed, item, &d.usage); err != nil {
				return err
			}
		}
		if err := d.each(r); err != nil {
			return err
		}
	}
}

// bufferedItem reads the next item where it lies in the reader's buffer, if it lies there whole
// and is valid, and moves past it. Its Result points into the buffer, good until the next read.
func (d *opDecoder) bufferedItem() (Result, bool) {
	s := jsonscan.New(d.js.buffered())
	it := readItem(&s, &d.usage)
	if s.Err() != nil {
		return Result{}, false
	}
	r, err := it.result(d.handed)
	if err != nil {
		return Result{}, false
	}
	d.js.discard(s.Offset())
	return r, true
}

// inlineItem is the keyed result of the n-th inline answer (from 1), read in one pass: its
// response as written, with its usage (read into usage); its error; its metadata's key.
func inlineItem(n int, item []byte, usage *UsageMetadata) (Result, error) {
	s := jsonscan.New(item)
	it := readItem(&s, usage)
	if err := s.End(); err != nil {
		return Result{}, fmt.Errorf("inline response %d: %w", n, err)
	}
	return it.result(n)
}

// item is an inline answer's members, as written, and its response's usage.
type item struct {
	response, errValue, metadata []byte
	usage                        *UsageMetadata // nil when the response has none
}

// readItem reads the inline answer that comes next in s, an object, with its response's usage
// into usage; s.Err says whether it was one.
func readItem(s *jsonscan.Scanner, usage *UsageMetadata) item {
	var it item
	hasUsage := false
	for s.Open(); s.More(); {
		k := s.Key()
		switch {
		case jsonscan.KeyIs(k, "response"):
			it.response, hasUsage = responseWithUsage(s, usage)
		case jsonscan.KeyIs(k, "error"):
			it.errValue = s.Skip()
		case jsonscan.KeyIs(k, "metadata"):
			it.metadata = s.Skip()
		default:
			s.Skip()
		}
	}
	if hasUsage {
		it.usage = usage
	}
	return it
}

// result is the n-th answer's Result.
func (it item) result(n int) (Result, error) {
	var ir InlinedResponse
	if it.errValue != nil {
		if err := json.Unmarshal(it.errValue, &ir.Error); err != nil {
			return Result{}, fmt.Errorf("inline response %d: error: %w", n, err)
		}
	}
	var err error
	if ir.Metadata, err = responseMetadata(it.metadata); err != nil {
		return Result{}, fmt.Errorf("inline response %d: metadata: %w", n, err)
	}
	ir.Response = it.response
	return inlineResult(n, ir, it.usage), nil
}

// responseMetadata reads an answer's metadata, already validated, as encoding/json would read
// it into a ResponseMetadata, without its reflection: a third of the time of an answer's
// decoding went there.
func responseMetadata(v []byte) (*ResponseMetadata, error) {
	if v == nil || string(v) == "null" {
		return nil, nil
	}
	if v[0] != '{' {
		return nil, fmt.Errorf("json: cannot unmarshal %s into Go value of type gemini.ResponseMetadata", jsonscan.Kind(v))
	}
	md := &ResponseMetadata{}
	s := jsonscan.New(v)
	for s.Open(); s.More(); {
		if !jsonscan.KeyIs(s.Key(), "key") {
			s.Skip()
			continue
		}
		val := s.Skip()
		if string(val) == "null" {
			continue
		}
		key, ok := jsonscan.String(val)
		if !ok {
			return nil, fmt.Errorf("json: cannot unmarshal %s into Go struct field ResponseMetadata.key of type string", jsonscan.Kind(val))
		}
		md.Key = string(key)
	}
	return md, s.End()
}
