package gemini

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// errHandedOver marks a failure after StreamBatch handed answers over: not retried, since a
// second try would hand them over again.
var errHandedOver = errors.New("answers already handed over")

// StreamBatch gets the job named "batches/x" like GetBatch, without ever holding its inline
// answers together: each is decoded on its own, handed to each in order, and dropped, so that a
// job of a thousand image answers is read one answer at a time. each may be nil, to learn the
// job's state alone. The Operation returned holds no inline answers; its Output's
// InlinedResponses is set (and empty) when the job answered inline. An error from each stops
// the read and is returned as it is. The call is retried like GetBatch only until the first
// answer is handed over.
func (c *Client) StreamBatch(ctx context.Context, name string, each func(Result) error) (*Operation, error) {
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
		})
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

// opDecoder reads an Operation token by token. The first inline answers array it meets
// (metadata.output or the response mirror, whichever comes first) is handed over item by item;
// any other is skipped a token at a time.
type opDecoder struct {
	dec    *json.Decoder
	each   func(Result) error
	seen   bool // an inline answers array was handed over
	handed int
}

// decodeOperation reads an Operation from r, handing each inline answer to each.
func decodeOperation(r io.Reader, each func(Result) error) (*Operation, error) {
	d := &opDecoder{dec: json.NewDecoder(r), each: each}
	var o Operation
	var md BatchMetadata
	var resp OperationResponse
	_, err := d.object(&o, map[string]func() error{
		"metadata": func() error {
			present, err := d.object(&md, map[string]func() error{
				"output": func() (err error) { md.Output, err = d.output(); return err },
				// The inline requests, up to 20 MB, which nothing here reads.
				"inputConfig": d.skip,
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
	if err != nil {
		return nil, err
	}
	if _, err := d.dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("data after the operation")
	}
	return &o, nil
}

// object reads the object that comes next into v: the members named in special by their
// function, the others (small) gathered and decoded into v at the end. present is false for a
// null, which leaves v as it is.
func (d *opDecoder) object(v any, special map[string]func() error) (present bool, err error) {
	if open, err := d.open('{'); err != nil || !open {
		return false, err
	}
	rest := map[string]json.RawMessage{}
	for d.dec.More() {
		t, err := d.dec.Token()
		if err != nil {
			return true, err
		}
		key, _ := t.(string)
		if f, ok := special[key]; ok {
			err = f()
		} else {
			var raw json.RawMessage
			err = d.dec.Decode(&raw)
			rest[key] = raw
		}
		if err != nil {
			return true, err
		}
	}
	if _, err := d.dec.Token(); err != nil { // the closing brace
		return true, err
	}
	b, err := json.Marshal(rest)
	if err != nil {
		return true, err
	}
	return true, json.Unmarshal(b, v)
}

// open reads the opening delimiter of the value that comes next; false for a null.
func (d *opDecoder) open(delim json.Delim) (bool, error) {
	t, err := d.dec.Token()
	switch {
	case err != nil:
		return false, err
	case t == nil:
		return false, nil
	case t != delim:
		return false, fmt.Errorf("got %v where %v should open", t, delim)
	}
	return true, nil
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
	if open, err := d.open('{'); err != nil || !open {
		return nil, err
	}
	for d.dec.More() {
		t, err := d.dec.Token()
		if err != nil {
			return nil, err
		}
		if t == "inlinedResponses" && !d.seen {
			d.seen = true
			err = d.items()
		} else {
			err = d.skip()
		}
		if err != nil {
			return nil, err
		}
	}
	if _, err := d.dec.Token(); err != nil {
		return nil, err
	}
	return &InlinedResponses{}, nil
}

// items hands over each item of the array that comes next.
func (d *opDecoder) items() error {
	if open, err := d.open('['); err != nil || !open {
		return err
	}
	for d.dec.More() {
		var ir InlinedResponse
		if err := d.dec.Decode(&ir); err != nil {
			return err
		}
		d.handed++
		if err := d.each(inlineResult(d.handed, ir)); err != nil {
			return err
		}
	}
	_, err := d.dec.Token()
	return err
}

// skip reads past the value that comes next a token at a time: however large, it holds one
// token in memory.
func (d *opDecoder) skip() error {
	depth := 0
	for {
		t, err := d.dec.Token()
		if err != nil {
			return err
		}
		switch t {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}
