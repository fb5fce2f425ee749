// Package publisher sends each request's one final reply to its reply subject, in the Gemini
// result-line format with the contract's headers, and answers whole batches from their results.
package publisher

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

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
	k, _ := json.Marshal(key)
	b := make([]byte, 0, len(k)+len(response)+32)
	b = append(b, `{"key":`...)
	b = append(b, k...)
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

// Publisher publishes replies on a NATS connection.
type Publisher struct {
	nc           Conn
	m            *Metrics
	flushTimeout time.Duration
}

// New returns a Publisher. m may be nil.
func New(nc Conn, m *Metrics) *Publisher {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Publisher{nc: nc, m: m, flushTimeout: 10 * time.Second}
}

// Publish sends one reply. It does not wait for the server; Flush does.
func (p *Publisher) Publish(r Reply) error {
	status := "ok"
	if r.Error != nil {
		status = "error"
		if r.Error.Status == "" {
			// google.rpc.Status on the wire has no name; the contract's replies carry it.
			st := *r.Error
			st.Status = gemini.CodeName(st.Code)
			r.Error = &st
		}
	} else if len(r.Response) == 0 {
		r.Error = gemini.NewStatus(gemini.CodeInternal, "empty response for key %q", r.Key)
		status = "error"
	}
	msg := &nats.Msg{Subject: r.Subject, Data: Body(r.Key, r.Response, r.Error), Header: nats.Header{}}
	msg.Header.Set(HeaderKey, r.Key)
	msg.Header.Set(HeaderStatus, status)
	if r.Batch != "" {
		msg.Header.Set(HeaderBatch, r.Batch)
	}
	if r.MsgID != "" {
		msg.Header.Set(HeaderMsgID, r.MsgID)
	}
	if err := p.nc.PublishMsg(msg); err != nil {
		p.m.errors.Inc()
		err = fmt.Errorf("publish reply for key %q to %s (%d bytes): %w", r.Key, r.Subject, len(msg.Data), err)
		if undeliverable(err) {
			return &UndeliverableError{Size: len(msg.Data), Limit: p.maxPayload(), Err: err}
		}
		return err
	}
	p.m.published.WithLabelValues(status).Inc()
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
