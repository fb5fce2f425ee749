// Package client is a Go producer client for gembatchd: it publishes Gemini requests over NATS
// and hands back each request's answer, which may come minutes or hours later.
//
// A Client holds one wildcard subscription (<reply prefix>.>) for all its requests, however many
// are in flight, and matches each reply to its request by the Gembatch-Key header. Requests and
// replies are plain JSON: the body is a GenerateContentRequest or EmbedContentRequest exactly as
// the REST API takes it, and a reply carries the GenerateContentResponse or EmbedContentResponse
// as raw JSON, or a typed *Error with the gRPC code.
//
// Answers and request bodies larger than the NATS server lets a message be go through the
// JetStream object store, as gembatchd's contract says: the client reads an answer sent by
// reference (Gembatch-Result-Object) into the Reply, checking its size and digest, and puts a
// body over the connection's max payload in the bodies bucket (Gembatch-Body-Object).
//
//	nc, _ := nats.Connect(nats.DefaultURL)
//	c, _ := client.New(nc, client.WithDefaultModel("gemini-2.5-flash"))
//	defer c.Close()
//	reply, err := c.Submit(ctx, client.Request{Key: "sky-1", Body: client.GenerateText("Why is the sky blue?")})
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Headers of the gembatch wire contract.
const (
	HeaderKey      = "Gembatch-Key"
	HeaderModel    = "Gembatch-Model"
	HeaderPriority = "Gembatch-Priority"
	HeaderDeadline = "Gembatch-Deadline"
	HeaderStatus   = "Gembatch-Status"
	HeaderBatch    = "Gembatch-Batch"
	// HeaderResultObject is on a reply whose answer was too large for a NATS message: the
	// answer is the object <bucket>/<object> of the JetStream object store.
	HeaderResultObject = "Gembatch-Result-Object"
	// HeaderResultSize is the size in bytes of the answer named by HeaderResultObject.
	HeaderResultSize = "Gembatch-Result-Size"
	// HeaderBodyObject is on a request whose body was too large for a NATS message: the body
	// is the object <bucket>/<object>, and the message's own body is empty.
	HeaderBodyObject = "Gembatch-Body-Object"
)

// DefaultBodiesBucket is the object store bucket of request bodies too large for a NATS
// message, as gembatchd's GEMBATCH_BODIES_BUCKET names it by default.
const DefaultBodiesBucket = "gembatch-bodies"

// Default request subjects, as gembatchd subscribes to them unless configured otherwise.
const (
	DefaultGenerateSubject = "gembatch.generate"
	DefaultEmbedSubject    = "gembatch.embed"
)

// MaxKeyLen is the longest key gembatchd accepts.
const MaxKeyLen = 256

// Errors of the client itself (a reply's error is an *Error).
var (
	// ErrDuplicateKey: a request with this key is already waiting for its reply on this client.
	ErrDuplicateKey = errors.New("client: a request with this key is already in flight")
	// ErrClosed: the client was closed before the reply came.
	ErrClosed = errors.New("client: closed")
	// ErrInvalidRequest: the request cannot be sent as it is (bad kind or key, no body).
	ErrInvalidRequest = errors.New("client: invalid request")
	// ErrResultObject: an answer sent by reference could not be read whole from the object store.
	ErrResultObject = errors.New("client: cannot read the result object")
)

// Kind is the kind of request: generate (GenerateContentRequest) or embed (EmbedContentRequest).
type Kind string

// Request kinds.
const (
	KindGenerate Kind = "generate"
	KindEmbed    Kind = "embed"
)

// Request is one request to gembatchd.
type Request struct {
	// Kind is generate (the default when empty) or embed.
	Kind Kind
	// Key identifies the request and comes back on its reply. Empty: the client makes one.
	// At most one request per key may be in flight on a client.
	Key string
	// Model, with or without "models/". Empty: the client's default model, else the body's
	// "model" field, else gembatchd's GEMBATCH_DEFAULT_MODEL.
	Model string
	// Priority of the batch the request joins; requests are batched per (kind, model, priority).
	Priority int64
	// Deadline, if set, is when the answer stops being useful: past it gembatchd answers with
	// DEADLINE_EXCEEDED rather than retry.
	Deadline time.Time
	// Body is the GenerateContentRequest or EmbedContentRequest JSON, passed through byte for byte.
	Body json.RawMessage
}

// GenerateText returns a GenerateContentRequest body with one user turn of text.
func GenerateText(text string) json.RawMessage {
	b, _ := json.Marshal(text) // a string always marshals
	return json.RawMessage(`{"contents":[{"role":"user","parts":[{"text":` + string(b) + `}]}]}`)
}

// EmbedText returns an EmbedContentRequest body for one text.
func EmbedText(text string) json.RawMessage {
	b, _ := json.Marshal(text)
	return json.RawMessage(`{"content":{"parts":[{"text":` + string(b) + `}]}}`)
}

// Reply is gembatchd's answer to one request.
type Reply struct {
	// Key is the request's key.
	Key string
	// Batch is the remote batch ("batches/...") that served the request, where one was created.
	Batch string
	// Response is the GenerateContentResponse or EmbedContentResponse JSON; nil on error.
	Response json.RawMessage
	// Err is the request's error; nil on success.
	Err *Error
	// Line is one line of the Gemini result-file format: the reply body as it came, or, for an
	// answer sent by reference and resolved, the whole line read from the object store.
	Line []byte
	// Object is where an answer too large for a NATS message was written, nil otherwise. The
	// client reads it into Response, Err and Line, unless WithResultReferences is set: then
	// Response is nil, Line is the reference and ReadResult reads the answer.
	Object *ResultObject
}

// ResultObject names an answer written to the JetStream object store because it was larger
// than a NATS message may be.
type ResultObject struct {
	Bucket string `json:"bucket"`
	Name   string `json:"name"`
	// Size is the answer's size in bytes.
	Size int64 `json:"size"`
	// Digest is "SHA-256=" and the URL-safe base64 of the answer's SHA-256, as the object
	// store writes it.
	Digest string `json:"digest"`
}

// Error is a request's error as gembatchd or the Gemini API answered it (a google.rpc.Status).
type Error struct {
	// Code is the gRPC code (3 INVALID_ARGUMENT, 1 CANCELLED, 4 DEADLINE_EXCEEDED, ...).
	Code int `json:"code"`
	// Status is the code's name, e.g. "INVALID_ARGUMENT".
	Status string `json:"status,omitempty"`
	// Message says what went wrong.
	Message string `json:"message,omitempty"`
}

func (e *Error) Error() string {
	if e.Status != "" {
		return fmt.Sprintf("gembatch: %s (%d): %s", e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("gembatch: code %d: %s", e.Code, e.Message)
}

// Option configures a Client.
type Option func(*Client)

// WithSubjects sets the request subjects (defaults gembatch.generate and gembatch.embed), as
// gembatchd's GEMBATCH_SUBJECT_GENERATE and GEMBATCH_SUBJECT_EMBED set them.
func WithSubjects(generate, embed string) Option {
	return func(c *Client) { c.generate, c.embed = generate, embed }
}

// WithReplyPrefix sets the prefix of reply subjects (default "_INBOX.<unique id>"); the client
// subscribes to <prefix>.> once. gembatchd must allow it (GEMBATCH_REPLY_ALLOW, default _INBOX.>).
func WithReplyPrefix(prefix string) Option {
	return func(c *Client) { c.prefix = prefix }
}

// WithDefaultModel sets the model of requests that name none.
func WithDefaultModel(model string) Option {
	return func(c *Client) { c.model = model }
}

// WithResultReferences keeps answers sent by reference as references: Reply.Object names the
// object, Reply.Response is nil, and ReadResult streams the answer where the caller wants it.
// Without it the client reads each such answer into the Reply before handing it over.
func WithResultReferences() Option {
	return func(c *Client) { c.keepRefs = true }
}

// WithBodiesBucket sets the object store bucket of request bodies too large for a NATS
// message (default gembatch-bodies); it must be gembatchd's GEMBATCH_BODIES_BUCKET.
func WithBodiesBucket(bucket string) Option {
	return func(c *Client) { c.bodies.bucket = bucket }
}

// Client publishes requests to gembatchd and matches the replies. It is safe for concurrent use.
type Client struct {
	nc              *nats.Conn
	js              jetstream.JetStream
	generate, embed string
	prefix          string
	model           string
	keepRefs        bool
	bodies          bodyStore
	sub             *nats.Subscription
	seq             atomic.Uint64

	// ctx ends at Close: it stops the reads of result objects still under way.
	ctx       context.Context
	cancel    context.CancelFunc
	resolving sync.WaitGroup

	mu      sync.Mutex
	waiting map[string]*waiter // by key
	closed  bool
}

// waiter is one request waiting for its reply.
type waiter struct {
	ctx  context.Context // the request's
	done func(*Reply, error)
	stop func() bool // stops the context watcher
}

// New returns a client publishing on nc, with its reply subscription in place.
func New(nc *nats.Conn, opts ...Option) (*Client, error) {
	c := &Client{nc: nc, generate: DefaultGenerateSubject, embed: DefaultEmbedSubject, waiting: make(map[string]*waiter),
		bodies: bodyStore{bucket: DefaultBodiesBucket}}
	for _, o := range opts {
		o(c)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	c.js = js
	if c.prefix == "" {
		c.prefix = nats.InboxPrefix + nuid.Next()
	}
	if c.generate == "" || c.embed == "" {
		return nil, fmt.Errorf("%w: empty request subject", ErrInvalidRequest)
	}
	if c.bodies.bucket == "" {
		return nil, fmt.Errorf("%w: empty bodies bucket", ErrInvalidRequest)
	}
	sub, err := nc.Subscribe(c.prefix+".>", c.receive)
	if err != nil {
		return nil, fmt.Errorf("client: subscribe to %s.>: %w", c.prefix, err)
	}
	// Replies come in bursts of a whole batch: never drop them as a slow consumer.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("client: %w", err)
	}
	c.sub = sub
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// ReplyPrefix returns the prefix of this client's reply subjects.
func (c *Client) ReplyPrefix() string { return c.prefix }

// InFlight returns how many requests are waiting for their reply.
func (c *Client) InFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiting)
}

// Close unsubscribes. Requests still waiting end with ErrClosed, as do answers still being
// read from the object store. The connection stays open.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	waiting := c.waiting
	c.waiting = make(map[string]*waiter)
	c.mu.Unlock()
	for _, w := range waiting {
		if w.stop != nil {
			w.stop()
		}
		w.done(nil, ErrClosed)
	}
	c.cancel()
	c.resolving.Wait()
	return c.sub.Unsubscribe()
}

// Submit publishes req and waits for its reply, which may take hours: ctx decides how long to
// wait. When the reply is an error, Submit returns the reply and its *Error as the error.
func (c *Client) Submit(ctx context.Context, req Request) (*Reply, error) {
	p, err := c.SubmitAsync(ctx, req)
	if err != nil {
		return nil, err
	}
	return p.Wait(ctx)
}

// Pending is a request published by SubmitAsync, waiting for its reply.
type Pending struct {
	// Key is the request's key (made by the client when the request had none).
	Key   string
	done  chan struct{}
	reply *Reply
	err   error
}

// Done is closed once the reply has come, or the request was given up (its context ended, or
// the client was closed).
func (p *Pending) Done() <-chan struct{} { return p.done }

// Wait returns the reply once it has come, as Submit does, or ctx's error if ctx ends first
// (the request stays pending: Wait may be called again).
func (p *Pending) Wait(ctx context.Context) (*Reply, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if p.err != nil {
		return nil, p.err
	}
	if p.reply.Err != nil {
		return p.reply, p.reply.Err
	}
	return p.reply, nil
}

// SubmitAsync publishes req and returns at once. ctx bounds the whole life of the request: when
// it ends before the reply, the request is given up and Wait returns ctx's error.
func (c *Client) SubmitAsync(ctx context.Context, req Request) (*Pending, error) {
	p := &Pending{done: make(chan struct{})}
	key, err := c.SubmitFunc(ctx, req, func(r *Reply, err error) {
		p.reply, p.err = r, err
		close(p.done)
	})
	if err != nil {
		return nil, err
	}
	p.Key = key
	return p, nil
}

// SubmitFunc publishes req and calls done exactly once: with the reply, or with ctx's error
// when ctx ends first, or ErrClosed. done runs on the client's subscription goroutine (or the
// context's, or the one reading an answer from the object store): it must not block for long.
// SubmitFunc returns the request's key. Use it to keep many thousands of requests in flight
// without a goroutine each. A body too large for a NATS message is put in the bodies bucket
// first (see WithBodiesBucket).
func (c *Client) SubmitFunc(ctx context.Context, req Request, done func(*Reply, error)) (string, error) {
	msg, err := c.message(req)
	if err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := c.offload(ctx, msg); err != nil {
		return "", err
	}
	key := msg.Header.Get(HeaderKey)
	w := &waiter{ctx: ctx, done: done}
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return "", ErrClosed
	case c.waiting[key] != nil:
		c.mu.Unlock()
		return "", fmt.Errorf("%w: %q", ErrDuplicateKey, key)
	}
	c.waiting[key] = w
	c.mu.Unlock()

	stop := context.AfterFunc(ctx, func() {
		if c.take(key, w) {
			done(nil, ctx.Err())
		}
	})
	c.mu.Lock()
	if c.waiting[key] == w {
		w.stop = stop
	} else {
		stop() // already answered (or given up)
	}
	c.mu.Unlock()

	if err := c.nc.PublishMsg(msg); err != nil {
		if c.take(key, w) {
			stop()
		}
		return "", fmt.Errorf("client: publish to %s: %w", msg.Subject, err)
	}
	return key, nil
}

// Publish publishes req without waiting for its reply: the reply goes to a subject under the
// client's reply prefix and is dropped unless someone else subscribes to it. It returns the key.
// A body too large for a NATS message is put in the bodies bucket first, within ctx.
func (c *Client) Publish(ctx context.Context, req Request) (string, error) {
	msg, err := c.message(req)
	if err != nil {
		return "", err
	}
	if err := c.offload(ctx, msg); err != nil {
		return "", err
	}
	if err := c.nc.PublishMsg(msg); err != nil {
		return "", fmt.Errorf("client: publish to %s: %w", msg.Subject, err)
	}
	return msg.Header.Get(HeaderKey), nil
}

// take removes w from the waiting requests if it is still there.
func (c *Client) take(key string, w *waiter) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiting[key] != w {
		return false
	}
	delete(c.waiting, key)
	return true
}

// message builds the NATS message of a request.
func (c *Client) message(req Request) (*nats.Msg, error) {
	var subject string
	switch req.Kind {
	case KindGenerate, "":
		subject = c.generate
	case KindEmbed:
		subject = c.embed
	default:
		return nil, fmt.Errorf("%w: kind %q is neither generate nor embed", ErrInvalidRequest, req.Kind)
	}
	if len(req.Body) == 0 {
		return nil, fmt.Errorf("%w: no body", ErrInvalidRequest)
	}
	key := req.Key
	if key == "" {
		key = nuid.Next()
	} else if err := checkKey(key); err != nil {
		return nil, err
	}
	msg := &nats.Msg{
		Subject: subject,
		Reply:   c.prefix + "." + strconv.FormatUint(c.seq.Add(1), 36),
		Data:    req.Body,
		Header:  nats.Header{},
	}
	msg.Header.Set(HeaderKey, key)
	if m := req.Model; m != "" {
		msg.Header.Set(HeaderModel, m)
	} else if c.model != "" {
		msg.Header.Set(HeaderModel, c.model)
	}
	if req.Priority != 0 {
		msg.Header.Set(HeaderPriority, strconv.FormatInt(req.Priority, 10))
	}
	if !req.Deadline.IsZero() {
		msg.Header.Set(HeaderDeadline, req.Deadline.UTC().Format(time.RFC3339Nano))
	}
	return msg, nil
}

func checkKey(key string) error {
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: key is %d bytes, the limit is %d", ErrInvalidRequest, len(key), MaxKeyLen)
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: key %q has a control character", ErrInvalidRequest, key)
		}
	}
	return nil
}

// receive is the subscription handler: it decodes a reply and hands it to its request.
func (c *Client) receive(m *nats.Msg) {
	r, err := ParseReply(m)
	if err != nil || r.Key == "" {
		return // not a gembatch reply: nothing can be matched
	}
	resolve := r.Object != nil && !c.keepRefs
	c.mu.Lock()
	w := c.waiting[r.Key]
	if w != nil {
		delete(c.waiting, r.Key)
		if resolve {
			c.resolving.Add(1) // under the lock: Close waits for it
		}
	}
	c.mu.Unlock()
	if w == nil {
		return // given up, or a repeated reply
	}
	if w.stop != nil {
		w.stop()
	}
	if !resolve {
		w.done(r, nil)
		return
	}
	// Reading a big answer takes a while: not on the goroutine every reply comes in on.
	go func() {
		defer c.resolving.Done()
		ctx, cancel := context.WithCancel(w.ctx)
		defer cancel()
		defer context.AfterFunc(c.ctx, cancel)()
		whole, err := c.resolve(ctx, r)
		if err != nil && c.ctx.Err() != nil {
			err = ErrClosed
		}
		w.done(whole, err)
	}()
}

// ParseReply decodes a gembatchd reply message. An answer sent by reference comes back with
// Object set and Response nil (Client.ReadResult reads it).
func ParseReply(m *nats.Msg) (*Reply, error) {
	var body struct {
		Key      string          `json:"key"`
		Response json.RawMessage `json:"response"`
		Error    *Error          `json:"error"`
		Object   *ResultObject   `json:"object"`
	}
	if err := json.Unmarshal(m.Data, &body); err != nil {
		return nil, fmt.Errorf("client: reply is not a result line: %w", err)
	}
	if m.Header.Get(HeaderResultObject) != "" {
		if body.Object == nil || body.Object.Bucket == "" || body.Object.Name == "" {
			return nil, fmt.Errorf("client: reply has %s but no object in its body", HeaderResultObject)
		}
	} else {
		body.Object = nil
	}
	r := &Reply{Key: m.Header.Get(HeaderKey), Response: body.Response, Err: body.Error, Line: m.Data, Object: body.Object}
	if r.Key == "" {
		r.Key = body.Key
	}
	r.Batch = m.Header.Get(HeaderBatch)
	if r.Err == nil && m.Header.Get(HeaderStatus) == "error" {
		r.Err = &Error{Code: 2, Status: "UNKNOWN", Message: "reply marked as an error without a status"}
	}
	return r, nil
}
