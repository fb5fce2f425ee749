package gemini

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrOutcomeUnknown marks a CreateBatch whose request may have reached the service although no
// answer came back (timeout, connection reset, cancellation). The job may exist and be billed:
// look for it by display name instead of creating it again. IsRetryable is false for it.
var ErrOutcomeUnknown = errors.New("gemini: outcome unknown: the request may have been applied")

// APIError is a non-200 answer from the service.
type APIError struct {
	Op         string        // operation, e.g. "batches.get"
	HTTPStatus int           // HTTP status code
	Status     Status        // google.rpc.Status from the body, or the start of a non-JSON body
	RetryAfter time.Duration // the server's hint (Retry-After or RetryInfo), zero if none
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "gemini: %s: HTTP %d", e.Op, e.HTTPStatus)
	if e.Status.Status != "" {
		b.WriteString(": " + e.Status.Status)
	}
	if e.Status.Message != "" {
		b.WriteString(": " + e.Status.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	return b.String()
}

// Retryable reports whether the status is one the service asks to retry.
func (e *APIError) Retryable() bool {
	switch e.HTTPStatus {
	case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// transportError is a failed exchange (connection refused or reset, per-attempt timeout,
// truncated body) while the caller's context was still live. Its text is redacted when built.
type transportError struct {
	op  string
	msg string
	err error
}

func (e *transportError) Error() string { return "gemini: " + e.op + ": " + e.msg }
func (e *transportError) Unwrap() error { return e.err }

// IsRetryable reports whether err is worth another try: a retryable APIError, or a transport
// failure that was not the caller's context ending.
func IsRetryable(err error) bool {
	if err == nil || errors.Is(err, ErrOutcomeUnknown) || errors.Is(err, errHandedOver) {
		return false
	}
	if ae, ok := errors.AsType[*APIError](err); ok {
		return ae.Retryable()
	}
	if _, ok := errors.AsType[*transportError](err); ok {
		return true
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if _, ok := errors.AsType[net.Error](err); ok {
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF)
}

// IsNotFound reports whether err is the service saying the resource does not exist.
func IsNotFound(err error) bool {
	ae, ok := errors.AsType[*APIError](err)
	return ok && (ae.HTTPStatus == http.StatusNotFound || ae.Status.Status == "NOT_FOUND")
}

// maxErrorBody bounds how much of an error body is read; error bodies are small JSON.
const maxErrorBody = 64 << 10

// maxPlainMessage bounds the message kept from a non-JSON error body (an HTML page, say).
const maxPlainMessage = 256

// newAPIError reads resp's body (bounded) into an APIError. It does not close the body.
func (c *Client) newAPIError(op string, resp *http.Response) *APIError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &APIError{Op: op, HTTPStatus: resp.StatusCode}
	var env struct {
		Error *Status `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && env.Error != nil && (env.Error.Code != 0 || env.Error.Message != "") {
		e.Status = *env.Error
	} else {
		e.Status = Status{Code: resp.StatusCode, Message: plainMessage(body)}
	}
	e.Status.Message = c.redact(e.Status.Message)
	e.RetryAfter = retryAfterHeader(resp.Header.Get("Retry-After"))
	if d, ok := e.Status.RetryDelay(); ok && d > e.RetryAfter {
		e.RetryAfter = d
	}
	return e
}

// plainMessage turns the start of a non-JSON body into a one-line message.
func plainMessage(body []byte) string {
	s := strings.Join(strings.Fields(strings.ToValidUTF8(string(body), "?")), " ")
	if len(s) <= maxPlainMessage {
		return s
	}
	cut := maxPlainMessage
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// retryAfterHeader parses Retry-After as delay-seconds or an HTTP date.
func retryAfterHeader(v string) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// redact removes the API key from text that came from outside (a server's message, a URL),
// in case a proxy or an upload URL echoes it.
func (c *Client) redact(s string) string {
	if c.apiKey == "" {
		return s
	}
	return strings.ReplaceAll(s, c.apiKey, "REDACTED")
}

// transportErr classifies a failed exchange made under ctx: the caller's context ending is
// returned as such, anything else (the per-attempt deadline included) becomes a retryable
// transportError.
func (c *Client) transportErr(ctx context.Context, op string, err error) error {
	msg := c.redact(err.Error())
	if ctx.Err() != nil {
		if context.Cause(ctx) != errAttemptTimeout {
			return fmt.Errorf("gemini: %s: %w", op, ctx.Err())
		}
		msg += fmt.Sprintf(" (per-attempt deadline %s)", c.callTimeout)
	}
	return &transportError{op: op, msg: msg, err: err}
}
