// Package publisher sends each request's one final reply to its reply subject, in the Gemini
// result-line format with the contract's headers, and answers whole batches from their results.
package publisher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/failpoint"
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
	// Record is the id of the batch record the reply answers: an answer too large for a NATS
	// message is written under ObjectName(Record, MsgID), named only then (a SHA-256 a reply);
	// without a record, such an answer is undeliverable.
	Record string
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

// bodyParts is the reply line in pieces, the response as it is held: an answer too large for a
// NATS message is streamed from them into the object store, never assembled in memory.
func bodyParts(key string, response json.RawMessage, st *gemini.Status) [][]byte {
	if st != nil {
		return [][]byte{appendBody(nil, key, nil, st)}
	}
	head := appendString(append(make([]byte, 0, len(key)+len(`{"key":"","response":`)), `{"key":`...), key)
	return [][]byte{append(head, `,"response":`...), response, []byte("}")}
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
	// Results, when set, takes the answers too large for a NATS message (durable mode); without
	// it each such answer is undeliverable.
	Results *Results
	// MaxReplyBytes, when above zero, is the largest reply body published as it is, if lower
	// than what the connection allows.
	MaxReplyBytes int
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

// Publish sends one reply. It does not wait for the server; Flush does.
func (p *Publisher) Publish(r Reply) error { return p.PublishContext(context.Background(), r) }

// PublishContext is Publish under ctx, which bounds the writing of an answer too large for a
// NATS message to the object store. A reply that fits allocates, beyond its bytes, only the
// header encoding nats.go makes for any message with headers.
func (p *Publisher) PublishContext(ctx context.Context, r Reply) error {
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
	o.set(HeaderKey, &o.key, r.Key)
	o.set(HeaderStatus, &o.status, status)
	o.set(HeaderBatch, &o.batch, r.Batch)
	o.set(HeaderMsgID, &o.msgID, r.MsgID)
	var err error
	if limit := p.limit(&o.msg); r.Error == nil && limit > 0 && len(r.Response)+len(r.Key)+32 > limit {
		err = p.send(ctx, copyMsg(&o.msg), r.Key, r.object(), bodyParts(r.Key, r.Response, r.Error)...)
	} else {
		o.msg.Data = appendBody(o.msg.Data[:0], r.Key, r.Response, r.Error)
		err = p.publish(&o.msg, r.Key)
	}
	if err != nil {
		return err
	}
	counter.Inc()
	return nil
}

// object is the name r's answer is written under in the results bucket, or "" when it has none.
func (r *Reply) object() string {
	if r.Record == "" {
		return ""
	}
	return ObjectName(r.Record, r.MsgID)
}

// copyMsg copies a pooled message's subject and headers, for a reply sent the slow way.
func copyMsg(pooled *nats.Msg) *nats.Msg {
	msg := &nats.Msg{Subject: pooled.Subject, Header: make(nats.Header, len(pooled.Header)+2)}
	for k, v := range pooled.Header {
		msg.Header[k] = append([]string(nil), v...)
	}
	return msg
}

// send publishes msg with the body parts make. A body larger than a reply may be is written to
// the results bucket under the name object, and msg carries a reference to it instead; without
// a bucket or a name, it is undeliverable.
func (p *Publisher) send(ctx context.Context, msg *nats.Msg, key, object string, parts ...[]byte) error {
	size := 0
	for _, b := range parts {
		size += len(b)
	}
	limit := p.limit(msg)
	if limit <= 0 || size <= limit {
		msg.Data = bytes.Join(parts, nil)
		return p.publish(msg, key)
	}
	if p.Results == nil || object == "" {
		return &UndeliverableError{Size: size, Limit: limit,
			Err: fmt.Errorf("reply for key %q to %s is %d bytes, more than %d: %w", key, msg.Subject, size, limit, nats.ErrMaxPayload)}
	}
	ref, err := p.Results.put(ctx, object, parts...)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		p.m.resultObjects.WithLabelValues("failed").Inc()
		return &UndeliverableError{Size: size, Limit: limit, Stored: true,
			Err: fmt.Errorf("reply for key %q is %d bytes, more than %d: %w", key, size, limit, err)}
	}
	p.m.resultObjects.WithLabelValues("written").Inc()
	failpoint.Hit(failpoint.AfterResultObjectBeforeReply)
	msg.Header.Set(HeaderResultObject, ref.Bucket+"/"+ref.Name)
	msg.Header.Set(HeaderResultSize, strconv.FormatInt(ref.Size, 10))
	msg.Data, _ = json.Marshal(struct {
		Key    string       `json:"key"`
		Object ResultObject `json:"object"`
	}{key, ref})
	return p.publish(msg, key)
}

// publish sends msg as it is.
func (p *Publisher) publish(msg *nats.Msg, key string) error {
	if err := p.nc.PublishMsg(msg); err != nil {
		p.m.errors.Inc()
		err = fmt.Errorf("publish reply for key %q to %s (%d bytes): %w", key, msg.Subject, len(msg.Data), err)
		if undeliverable(err) {
			return &UndeliverableError{Size: len(msg.Data), Limit: p.limit(msg), Err: err}
		}
		return err
	}
	return nil
}

// UndeliverableError is a reply that can never be published as it is, whatever the retries: too
// large for the connection (and, if Stored, for the object store too), or to a subject NATS
// refuses. It concerns that reply alone.
type UndeliverableError struct {
	Size, Limit int
	Stored      bool // writing it to the results bucket was tried and failed
	Err         error
}

func (e *UndeliverableError) Error() string { return e.Err.Error() }
func (e *UndeliverableError) Unwrap() error { return e.Err }

// undeliverable reports whether a publish error is tied to the message rather than the connection.
func undeliverable(err error) bool {
	return errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject) || errors.Is(err, nats.ErrHeadersNotSupported)
}

// limit is the largest body msg may have with its headers as they are: what the connection
// may publish, or MaxReplyBytes if lower; 0 if neither is known.
func (p *Publisher) limit(msg *nats.Msg) int {
	n := 0
	if c, ok := p.nc.(interface{ MaxPayload() int64 }); ok && c.MaxPayload() > 0 {
		n = max(1, int(c.MaxPayload())-headerSize(msg))
	}
	if p.MaxReplyBytes > 0 && (n == 0 || p.MaxReplyBytes < n) {
		n = p.MaxReplyBytes
	}
	return n
}

// headerSize is the size of msg's headers on the wire, as nats.go counts them against the
// server's max payload.
func headerSize(msg *nats.Msg) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range msg.Header {
		for _, v := range vs {
			n += len(k) + len(v) + len(": \r\n")
		}
	}
	return n
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
