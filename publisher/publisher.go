// Package publisher sends each request's one final reply to its reply subject, in the Gemini
// result-line format with the contract's headers, and answers whole batches from their results.
package publisher

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gembatch/gembatch/gemini"
)

// Reply headers, as the contract names them.
const (
	HeaderKey    = "Gembatch-Key"
	HeaderStatus = "Gembatch-Status"
	HeaderBatch  = "Gembatch-Batch"
	HeaderMsgID  = nats.MsgIdHdr
)

// Conn is the part of a NATS connection the publisher uses; *nats.Conn has it.
type Conn interface {
	PublishMsg(*nats.Msg) error
	FlushTimeout(time.Duration) error
}

var _ Conn = (*nats.Conn)(nil)

// Reply is one final answer to one request.
type Reply struct {
	Subject string
	Key     string
	// MsgID is stable per request, so a JetStream-captured reply subject drops repeats.
	MsgID string
	// Batch is the remote batch name, when one was created.
	Batch    string
	Response json.RawMessage
	Error    *gemini.Status
}

// Body encodes a reply as one line of the Gemini result-file format.
func Body(key string, response json.RawMessage, st *gemini.Status) []byte {
	return appendBody(make([]byte, 0, len(key)+len(response)+32), key, response, st)
}

func appendBody(b []byte, key string, response json.RawMessage, st *gemini.Status) []byte {
	b = append(b, `{"key":`...)
	b = appendString(b, key)
	if st != nil {
		e, _ := json.Marshal(st)
		b = append(b, `,"error":`...)
		b = append(b, e...)
	} else {
		b = append(b, `,"response":`...)
		b = append(b, response...)
	}
	return append(b, '}')
}

// appendString appends s as encoding/json writes it: as is between quotes when nothing in it
// needs escaping (keys almost never do), through json.Marshal otherwise.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// Publisher publishes replies on a NATS connection.
type Publisher struct {
	nc           Conn
	m            *Metrics
	ok, failed   prometheus.Counter // m.published by status, looked up once
	flushTimeout time.Duration
	out          sync.Pool // of *outgoing
}

// outgoing is a reply message and its parts, reused: PublishMsg copies the message into the
// connection's buffer before it returns, so nothing is kept past it. Each header value is a
// one-element slice of its own array, so setting it allocates nothing.
type outgoing struct {
	msg                       nats.Msg
	key, status, batch, msgID [1]string
}

func newOutgoing() any {
	o := &outgoing{msg: nats.Msg{Header: make(nats.Header, 4)}}
	return o
}

// set puts a header value, or removes the header when the value is empty.
func (o *outgoing) set(name string, slot *[1]string, value string) {
	if value == "" {
		delete(o.msg.Header, name)
		return
	}
	slot[0] = value
	o.msg.Header[name] = slot[:]
}

// New returns a Publisher. m may be nil.
func New(nc Conn, m *Metrics) *Publisher {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Publisher{nc: nc, m: m, ok: m.published.WithLabelValues("ok"), failed: m.published.WithLabelValues("error"),
		flushTimeout: 10 * time.Second, out: sync.Pool{New: newOutgoing}}
}

// Publish sends one reply. It does not wait for the server; Flush does. Beyond the reply's
// bytes it allocates only the header encoding nats.go makes for any message with headers.
func (p *Publisher) Publish(r Reply) error {
	status, counter := "ok", p.ok
	if r.Error != nil {
		status, counter = "error", p.failed
		if r.Error.Status == "" {
			// google.rpc.Status on the wire has no name; the contract's replies carry it.
			st := *r.Error
			st.Status = gemini.CodeName(st.Code)
			r.Error = &st
		}
	} else if len(r.Response) == 0 {
		r.Error = gemini.NewStatus(gemini.CodeInternal, "empty response for key %q", r.Key)
		status, counter = "error", p.failed
	}
	o := p.out.Get().(*outgoing)
	defer p.out.Put(o)
	o.msg.Subject = r.Subject
	o.msg.Data = appendBody(o.msg.Data[:0], r.Key, r.Response, r.Error)
	o.set(HeaderKey, &o.key, r.Key)
	o.set(HeaderStatus, &o.status, status)
	o.set(HeaderBatch, &o.batch, r.Batch)
	o.set(HeaderMsgID, &o.msgID, r.MsgID)
	if err := p.nc.PublishMsg(&o.msg); err != nil {
		p.m.errors.Inc()
		err = fmt.Errorf("publish reply for key %q to %s (%d bytes): %w", r.Key, r.Subject, len(o.msg.Data), err)
		if undeliverable(err) {
			return &UndeliverableError{Size: len(o.msg.Data), Limit: p.maxPayload(), Err: err}
		}
		return err
	}
	counter.Inc()
	return nil
}

// UndeliverableError is a reply that can never be published as it is, whatever the retries: too
// large for the connection, or to a subject NATS refuses. It concerns that reply alone.
type UndeliverableError struct {
	Size, Limit int
	Err         error
}

func (e *UndeliverableError) Error() string { return e.Err.Error() }
func (e *UndeliverableError) Unwrap() error { return e.Err }

// undeliverable reports whether a publish error is tied to the message rather than the connection.
func undeliverable(err error) bool {
	return errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject) || errors.Is(err, nats.ErrHeadersNotSupported)
}

// maxPayload is what the connection may publish, if it says.
func (p *Publisher) maxPayload() int {
	if c, ok := p.nc.(interface{ MaxPayload() int64 }); ok {
		return int(c.MaxPayload())
	}
	return 0
}

// Flush waits until the server has every reply published so far.
func (p *Publisher) Flush() error {
	if err := p.nc.FlushTimeout(p.flushTimeout); err != nil {
		p.m.errors.Inc()
		return fmt.Errorf("flush replies: %w", err)
	}
	return nil
}

// Reject answers a request that was not accepted, at once.
func (p *Publisher) Reject(subject, key, msgID string, st *gemini.Status) error {
	return p.Publish(Reply{Subject: subject, Key: key, MsgID: msgID, Error: st})
}
