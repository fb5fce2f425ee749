package gemini

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// CreateBatch starts a batch job of kind on model ("gemini-2.5-flash" or "models/...").
// It makes exactly one attempt: creating is not idempotent, and a second try can make and
// bill a second job. When the job may exist despite the error (no answer came back, the
// answer did not parse, or the server failed with a 5xx midway), the error wraps
// ErrOutcomeUnknown, and IsRetryable is false for it. A 4xx, 429 included, or a failure to
// connect means no job was made.
func (c *Client) CreateBatch(ctx context.Context, kind Kind, model string, b Batch) (*Operation, error) {
	const op = "batches.create"
	var method string
	switch kind {
	case KindGenerate:
		method = ":batchGenerateContent"
	case KindEmbed:
		method = ":asyncBatchEmbedContent"
	default:
		return nil, fmt.Errorf("gemini: %s: unknown batch kind %q", op, kind)
	}
	name := strings.TrimPrefix(ModelName(model), "models/")
	if name == "" {
		return nil, fmt.Errorf("gemini: %s: empty model", op)
	}
	k := call{op: op, method: http.MethodPost, path: "/v1beta/models/" + url.PathEscape(name) + method, create: &b}
	// Catch a bad base URL here, so that every failure past this point happened on the wire.
	if _, err := url.Parse(k.url(c.base)); err != nil {
		return nil, fmt.Errorf("gemini: %s: %s", op, c.redact(err.Error()))
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("gemini: %s: %w", op, err)
	}
	var out Operation
	if err := c.attemptJSON(ctx, k, &out); err != nil {
		if mayExist(err) {
			err = fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
		}
		return nil, err
	}
	return &out, nil
}

// mayExist reports whether a failed create may still have made its job: anything but a
// refusal in the 4xx range or a connection that was never made.
func mayExist(err error) bool {
	if ae, ok := errors.AsType[*APIError](err); ok {
		return ae.HTTPStatus >= 500
	}
	oe, ok := errors.AsType[*net.OpError](err)
	return !ok || (oe.Op != "dial" && oe.Op != "proxyconnect")
}

// GetBatch returns the job named "batches/x" (or "x").
func (c *Client) GetBatch(ctx context.Context, name string) (*Operation, error) {
	const op = "batches.get"
	p, err := resourcePath(op, "batches", name)
	if err != nil {
		return nil, err
	}
	return doJSON[Operation](ctx, c, call{op: op, method: http.MethodGet, path: p})
}

// ListBatches yields every job, fetching pages of pageSize (0: the server's default) as it
// goes. It stops at the first error, which it yields.
func (c *Client) ListBatches(ctx context.Context, pageSize int) iter.Seq2[*Operation, error] {
	return func(yield func(*Operation, error) bool) {
		err := paginate(ctx, c, "batches.list", "/v1beta/batches", pageSize,
			func(p *ListBatchesResponse) (string, bool) {
				for i := range p.Operations {
					if !yield(&p.Operations[i], nil) {
						return "", false
					}
				}
				return p.NextPageToken, true
			})
		if err != nil {
			yield(nil, err)
		}
	}
}

// paginate fetches pages of a list call, handing each to visit, which returns the next page
// token and whether to go on.
func paginate[P any](ctx context.Context, c *Client, op, path string, pageSize int, visit func(*P) (string, bool)) error {
	token := ""
	for {
		q := url.Values{}
		if pageSize > 0 {
			q.Set("pageSize", strconv.Itoa(pageSize))
		}
		if token != "" {
			q.Set("pageToken", token)
		}
		page, err := doJSON[P](ctx, c, call{op: op, method: http.MethodGet, path: path, query: q})
		if err != nil {
			return err
		}
		next, more := visit(page)
		if !more || next == "" {
			return nil
		}
		if next == token {
			return fmt.Errorf("gemini: %s: server repeated page token", op)
		}
		token = next
	}
}

// CancelBatch asks the service to stop a job. A job already running may still end SUCCEEDED,
// with the unserved items as per-item errors.
func (c *Client) CancelBatch(ctx context.Context, name string) error {
	const op = "batches.cancel"
	p, err := resourcePath(op, "batches", name)
	if err != nil {
		return err
	}
	_, err = doJSON[struct{}](ctx, c, call{op: op, method: http.MethodPost, path: p + ":cancel", body: []byte("{}")})
	return err
}

// DeleteBatch stops a job and removes it from the list. A retry after a lost answer may
// report not found for a job the first try deleted: see IsNotFound.
func (c *Client) DeleteBatch(ctx context.Context, name string) error {
	const op = "batches.delete"
	p, err := resourcePath(op, "batches", name)
	if err != nil {
		return err
	}
	_, err = doJSON[struct{}](ctx, c, call{op: op, method: http.MethodDelete, path: p})
	return err
}

// UpdateBatch changes a generate batch's display name and/or priority (nil leaves a field as
// is) and returns the batch resource as updated.
func (c *Client) UpdateBatch(ctx context.Context, name string, displayName *string, priority *int64) (*BatchMetadata, error) {
	const op = "batches.update"
	p, err := resourcePath(op, "batches", name)
	if err != nil {
		return nil, err
	}
	var body struct {
		DisplayName *string `json:"displayName,omitempty"`
		Priority    *Int64  `json:"priority,omitempty"`
	}
	var mask []string
	if displayName != nil {
		body.DisplayName = displayName
		mask = append(mask, "displayName")
	}
	if priority != nil {
		body.Priority = (*Int64)(priority)
		mask = append(mask, "priority")
	}
	if len(mask) == 0 {
		return nil, fmt.Errorf("gemini: %s: nothing to update", op)
	}
	b, err := encodeJSON(body)
	if err != nil {
		return nil, fmt.Errorf("gemini: %s: encode request: %w", op, err)
	}
	return doJSON[BatchMetadata](ctx, c, call{
		op: op, method: http.MethodPatch, path: p + ":updateGenerateContentBatch",
		query: url.Values{"updateMask": {strings.Join(mask, ",")}}, body: b,
	})
}

// Ping checks that the service answers and accepts the key, with one cheap call and no retry.
// It is left out of the metrics (a health probe is not traffic) but sets LastAnswer.
func (c *Client) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("gemini: ping: %w", err)
	}
	q := url.Values{"pageSize": {"1"}}
	return c.attemptJSON(ctx, call{op: "ping", method: http.MethodGet, path: "/v1beta/batches", query: q, unmetered: true}, &ListBatchesResponse{})
}
