package gemini

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/internal/backoff"
)

// DefaultBaseURL is the Gemini API endpoint.
const DefaultBaseURL = "https://generativelanguage.googleapis.com"

// DefaultChunkSize is the upload chunk the service advertises as its granularity (8 MiB).
const DefaultChunkSize = 8 << 20

// DefaultCallTimeout is the per-attempt deadline of a Client built without WithCallTimeout.
const DefaultCallTimeout = 60 * time.Second

const apiKeyHeader = "x-goog-api-key"

// RetryPolicy bounds retries of idempotent calls: capped exponential backoff with jitter.
// MaxAttempts counts every try, the first included.
type RetryPolicy struct {
	MaxAttempts int
	Initial     time.Duration
	Max         time.Duration
}

// DefaultRetryPolicy is the policy of a Client built without WithRetry.
var DefaultRetryPolicy = RetryPolicy{MaxAttempts: 6, Initial: 500 * time.Millisecond, Max: 30 * time.Second}

// Client calls the Gemini Batch API and File API. It is safe for concurrent use.
type Client struct {
	apiKey      string
	base        string
	hc          *http.Client
	retry       RetryPolicy
	callTimeout time.Duration
	chunkSize   int
	metrics     *Metrics
	log         zerolog.Logger
	// lastAnswer is when a call last got a 2xx answer (Unix nanoseconds; 0: never).
	lastAnswer atomic.Int64
}

// Option configures a Client.
type Option func(*Client)

// WithBaseURL points the client at another endpoint, such as the emulator.
func WithBaseURL(u string) Option {
	return func(c *Client) { c.base = strings.TrimRight(u, "/") }
}

// WithHTTPClient sets the HTTP client. The Client uses a copy whose redirect policy drops the
// API key when a redirect leaves the original host.
func WithHTTPClient(h *http.Client) Option {
	return func(c *Client) { c.hc = h }
}

// WithRetry sets the retry policy of idempotent calls.
func WithRetry(p RetryPolicy) Option {
	return func(c *Client) { c.retry = p }
}

// WithCallTimeout sets the deadline of each attempt of a non-streaming call (default 60s).
// It bounds each upload chunk too, so it must cover sending one chunk on the slowest link.
// For Download it bounds the wait for the response headers only.
func WithCallTimeout(d time.Duration) Option {
	return func(c *Client) { c.callTimeout = d }
}

// WithChunkSize sets the upload chunk size (default 8 MiB). One chunk is held in memory per upload.
func WithChunkSize(n int) Option {
	return func(c *Client) { c.chunkSize = n }
}

// WithMetrics sets where the client records its calls.
func WithMetrics(m *Metrics) Option {
	return func(c *Client) { c.metrics = m }
}

// WithLogger sets the logger; the client logs one debug line per retry.
func WithLogger(l zerolog.Logger) Option {
	return func(c *Client) { c.log = l }
}

// New returns a client that authenticates with apiKey.
func New(apiKey string, opts ...Option) *Client {
	c := &Client{
		apiKey:      apiKey,
		base:        DefaultBaseURL,
		hc:          http.DefaultClient,
		retry:       DefaultRetryPolicy,
		callTimeout: DefaultCallTimeout,
		chunkSize:   DefaultChunkSize,
		log:         zerolog.Nop(),
	}
	for _, o := range opts {
		o(c)
	}
	if c.metrics == nil {
		c.metrics = NewMetrics(nil)
	}
	if c.hc == nil {
		c.hc = http.DefaultClient
	}
	if c.chunkSize <= 0 {
		c.chunkSize = DefaultChunkSize
	}
	if c.callTimeout <= 0 {
		c.callTimeout = DefaultCallTimeout
	}
	c.retry.MaxAttempts = max(c.retry.MaxAttempts, 1)
	c.retry.Max = max(c.retry.Max, c.retry.Initial)

	// Go forwards custom headers on redirect, even to another host: keep the key at home.
	hc := *c.hc
	next := hc.CheckRedirect
	hc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.URL.Host != via[0].URL.Host {
			req.Header.Del(apiKeyHeader)
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	c.hc = &hc
	return c
}

// errAttemptTimeout is the cause of a context ended by the per-attempt deadline, which is
// retryable, unlike the end of the caller's context.
var errAttemptTimeout = errors.New("attempt deadline exceeded")

// call describes one JSON exchange.
type call struct {
	op        string // metric label and error prefix
	method    string
	path      string // below the base URL, escaped
	query     url.Values
	body      []byte // JSON, or nil
	create    *Batch // a batches.create, whose body is written as it is sent (instead of body)
	unmetered bool   // left out of the metrics (health pings)
}

func (k call) url(base string) string {
	u := base + k.path
	if len(k.query) > 0 {
		u += "?" + k.query.Encode()
	}
	return u
}

// doJSON runs k with retries and decodes the 200 answer into a new T. T = struct{} accepts
// an empty body, as `{}` answers may come back empty.
func doJSON[T any](ctx context.Context, c *Client, k call) (*T, error) {
	var out *T
	err := c.withRetry(ctx, k.op, c.retry.MaxAttempts, func(ctx context.Context) error {
		v := new(T) // fresh per attempt: a truncated answer must not leave fields behind
		if err := c.attemptJSON(ctx, k, v); err != nil {
			return err
		}
		out = v
		return nil
	})
	return out, err
}

// attemptJSON makes one try of k under the per-attempt deadline.
func (c *Client) attemptJSON(ctx context.Context, k call, out any) error {
	ctx, cancel := context.WithTimeoutCause(ctx, c.callTimeout, errAttemptTimeout)
	defer cancel()
	req, err := c.newRequest(ctx, k.op, k.method, k.url(c.base), k.body, "application/json")
	if err != nil {
		return err
	}
	if k.create != nil {
		setCreateBody(req, *k.create)
	}
	m := c.metrics
	if k.unmetered {
		m = unmetered
	}
	resp, err := c.sendWith(m, k.op, req)
	if err != nil {
		return err
	}
	_, allowEmpty := out.(*struct{})
	return c.decode(ctx, k.op, resp, out, allowEmpty)
}

// withRetry runs fn up to attempts times while its error is retryable, waiting the larger of
// the jittered backoff and the server's hint between tries.
func (c *Client) withRetry(ctx context.Context, op string, attempts int, fn func(context.Context) error) error {
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("gemini: %s: %w", op, err)
		}
		err := fn(ctx)
		if err == nil || attempt >= attempts || !IsRetryable(err) {
			return err
		}
		delay := backoff.Policy{Initial: c.retry.Initial, Max: c.retry.Max}.Delay(attempt - 1)
		if ae, ok := errors.AsType[*APIError](err); ok {
			delay = max(delay, ae.RetryAfter)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
			return err // waiting would outlive the caller: hand back the real reason now
		}
		c.metrics.retries.WithLabelValues(op).Inc()
		c.log.Debug().Str("op", op).Int("attempt", attempt).Float64("delay_seconds", delay.Seconds()).Err(err).Msg("gemini: retrying")
		if !backoff.Sleep(ctx, delay) {
			return fmt.Errorf("gemini: %s: %w (last error: %v)", op, ctx.Err(), err)
		}
	}
}

// newRequest builds an authenticated request; a non-nil body is sent as contentType.
// Errors are redacted: the URL may come from a server.
func (c *Client) newRequest(ctx context.Context, op, method, u string, body []byte, contentType string) (*http.Request, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, r)
	if err != nil {
		return nil, fmt.Errorf("gemini: %s: %s", op, c.redact(err.Error()))
	}
	req.Header.Set(apiKeyHeader, c.apiKey)
	if body != nil && contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return req, nil
}

// setCreateBody makes b's create body the request's, written as it is sent. GetBody makes
// another, so that the transport may still resend a create it could not write a byte of.
func setCreateBody(req *http.Request, b Batch) {
	body := newCreateBody(b)
	req.Body, req.ContentLength = io.NopCloser(body), body.size
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(newCreateBody(b)), nil }
	req.Header.Set("Content-Type", "application/json")
}

// unmetered receives the metrics of calls kept out of the registered ones.
var unmetered = NewMetrics(nil)

// LastAnswer is when a call, of any kind, last got a successful answer from the API (zero if
// none has): the API is reachable and takes the key.
func (c *Client) LastAnswer() time.Time {
	if n := c.lastAnswer.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// send performs one HTTP exchange and records it. A 200 comes back open; any other status
// becomes an *APIError with the body read and closed.
func (c *Client) send(op string, req *http.Request) (*http.Response, error) {
	return c.sendWith(c.metrics, op, req)
}

// sendWith is send recording into m.
func (c *Client) sendWith(m *Metrics, op string, req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := c.hc.Do(req)
	m.duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil {
		m.requests.WithLabelValues(op, "error").Inc()
		return nil, c.transportErr(req.Context(), op, err)
	}
	m.requests.WithLabelValues(op, strconv.Itoa(resp.StatusCode)).Inc()
	if resp.StatusCode/100 == 2 {
		c.lastAnswer.Store(time.Now().UnixNano())
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, c.newAPIError(op, resp)
	}
	return resp, nil
}

// decode reads a 200 answer into out and closes the body. A body that stops short because
// the connection failed is a transport error; one that arrives whole but does not parse is not.
func (c *Client) decode(ctx context.Context, op string, resp *http.Response, out any, allowEmpty bool) error {
	defer drain(resp.Body)
	rec := &readErrRecorder{r: resp.Body}
	err := json.NewDecoder(rec).Decode(out)
	if rec.err != nil {
		return c.transportErr(ctx, op, rec.err)
	}
	if err != nil && !(allowEmpty && err == io.EOF) {
		return fmt.Errorf("gemini: %s: response does not parse: %w", op, err)
	}
	return nil
}

// drain reads what is left of a small answer, so its connection can be reused, and closes it.
func drain(rc io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rc, 4<<10))
	rc.Close()
}

// readErrRecorder remembers the first read error other than io.EOF.
type readErrRecorder struct {
	r   io.Reader
	err error
}

func (r *readErrRecorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// encodeJSON encodes a request body without HTML escaping, so inline requests keep their size
// (escaping '<' as \u003c could push a batch past the inline limit it was sized against).
func encodeJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// resourcePath turns "batches/x" or "x" into "/v1beta/batches/x" with the id escaped, colons
// included, so an id can never reach a custom method such as ":cancel".
func resourcePath(op, collection, name string) (string, error) {
	id := strings.TrimPrefix(name, collection+"/")
	if id == "" {
		return "", fmt.Errorf("gemini: %s: empty %s name", op, collection)
	}
	return "/v1beta/" + collection + "/" + strings.ReplaceAll(url.PathEscape(id), ":", "%3A"), nil
}
