package gemini

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// UploadFile uploads r as a file with the resumable protocol, in chunks of the client's chunk
// size, holding one chunk in memory. size is the length of r, or -1 when unknown; when known,
// an input of another length fails before the upload is finalized. After a failed chunk the
// client asks the server how much it holds and resends from there.
func (c *Client) UploadFile(ctx context.Context, r io.Reader, size int64, displayName, mimeType string) (*File, error) {
	up, err := c.startUpload(ctx, size, displayName, mimeType)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, c.chunkSize)
	var offset int64
	for {
		// A short read means the input is over. A full one may be followed by nothing, in which
		// case an empty chunk finalizes the upload, as the SDKs do.
		n, err := io.ReadFull(r, buf)
		last := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !last {
			return nil, fmt.Errorf("gemini: files.upload: read input at byte %d: %w", offset+int64(n), err)
		}
		end := offset + int64(n)
		switch {
		case size >= 0 && end > size:
			return nil, fmt.Errorf("gemini: files.upload: input is longer than the declared %d bytes", size)
		case size >= 0 && last && end != size:
			return nil, fmt.Errorf("gemini: files.upload: input has %d bytes, declared %d", end, size)
		}
		f, err := up.chunk(ctx, buf[:n], offset, last)
		if err != nil {
			return nil, err
		}
		if last {
			return f, nil
		}
		offset = end
	}
}

// upload is one resumable upload session.
type upload struct {
	c     *Client
	url   string
	keyed bool // the session URL is on the API host, so it may see the key
}

// startUpload opens a session and returns its URL, resolved against the base URL.
func (c *Client) startUpload(ctx context.Context, size int64, displayName, mimeType string) (*upload, error) {
	const op = "files.upload.start"
	var meta struct {
		File struct {
			DisplayName string `json:"displayName,omitempty"`
		} `json:"file"`
	}
	meta.File.DisplayName = displayName
	body, err := encodeJSON(meta)
	if err != nil {
		return nil, fmt.Errorf("gemini: %s: encode request: %w", op, err)
	}
	base, err := url.Parse(c.base)
	if err != nil {
		return nil, fmt.Errorf("gemini: %s: %s", op, c.redact(err.Error()))
	}
	var loc string
	err = c.withRetry(ctx, op, c.retry.MaxAttempts, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeoutCause(ctx, c.callTimeout, errAttemptTimeout)
		defer cancel()
		req, err := c.newRequest(ctx, op, http.MethodPost, c.base+"/upload/v1beta/files", body, "application/json")
		if err != nil {
			return err
		}
		req.Header.Set("X-Goog-Upload-Protocol", "resumable")
		req.Header.Set("X-Goog-Upload-Command", "start")
		if mimeType != "" {
			req.Header.Set("X-Goog-Upload-Header-Content-Type", mimeType)
		}
		if size >= 0 {
			req.Header.Set("X-Goog-Upload-Header-Content-Length", strconv.FormatInt(size, 10))
		}
		resp, err := c.send(op, req)
		if err != nil {
			return err
		}
		loc = resp.Header.Get("X-Goog-Upload-URL")
		drain(resp.Body)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if loc == "" {
		return nil, fmt.Errorf("gemini: %s: answer has no X-Goog-Upload-URL", op)
	}
	ref, err := url.Parse(loc)
	if err != nil {
		return nil, fmt.Errorf("gemini: %s: bad upload URL: %s", op, c.redact(err.Error()))
	}
	u := base.ResolveReference(ref)
	return &upload{c: c, url: u.String(), keyed: u.Host == base.Host}, nil
}

// chunk sends data, which starts at offset, finalizing the upload when last. It returns the
// file when last. A retryable failure makes the next try query the received size first.
func (up *upload) chunk(ctx context.Context, data []byte, offset int64, last bool) (*File, error) {
	const op = "files.upload.chunk"
	end := offset + int64(len(data))
	from := offset // first byte the server does not hold
	lost := false
	var file *File
	err := up.c.withRetry(ctx, op, up.c.retry.MaxAttempts, func(ctx context.Context) error {
		if lost {
			held, f, err := up.query(ctx)
			if err != nil {
				return err
			}
			if f != nil { // the upload is final: our last chunk landed and its answer was lost
				if !last {
					return fmt.Errorf("gemini: %s: server finalized the upload at %d bytes, before the end of the input", op, held)
				}
				file = f
				return nil
			}
			if held < offset || held > end {
				return fmt.Errorf("gemini: %s: server holds %d bytes, outside the buffered chunk [%d, %d]", op, held, offset, end)
			}
			from = held
			if from == end && !last {
				return nil
			}
		}
		lost = true
		f, err := up.send(ctx, op, data[from-offset:], from, last)
		if err != nil {
			return err
		}
		file = f
		return nil
	})
	if err != nil {
		return nil, err
	}
	up.c.metrics.uploadBytes.Add(float64(len(data)))
	return file, nil
}

// send makes one upload (or "upload, finalize") request; it decodes the file when last.
func (up *upload) send(ctx context.Context, op string, data []byte, offset int64, last bool) (*File, error) {
	cmd := "upload"
	if last {
		cmd = "upload, finalize"
	}
	resp, cancel, err := up.do(ctx, op, cmd, offset, data)
	if err != nil {
		return nil, err
	}
	defer cancel()
	if last {
		return up.final(ctx, op, resp)
	}
	drain(resp.Body)
	if resp.Header.Get("X-Goog-Upload-Status") == "final" {
		return nil, fmt.Errorf("gemini: %s: server finalized the upload at byte %d, before the end of the input", op, offset)
	}
	return nil, nil
}

// query asks how many bytes the server holds; when the upload is already final it returns the file.
func (up *upload) query(ctx context.Context) (int64, *File, error) {
	const op = "files.upload.query"
	resp, cancel, err := up.do(ctx, op, "query", -1, nil)
	if err != nil {
		return 0, nil, err
	}
	defer cancel()
	held, perr := strconv.ParseInt(resp.Header.Get("X-Goog-Upload-Size-Received"), 10, 64)
	if resp.Header.Get("X-Goog-Upload-Status") == "final" {
		f, err := up.final(ctx, op, resp)
		return held, f, err
	}
	drain(resp.Body)
	if perr != nil || held < 0 {
		return 0, nil, fmt.Errorf("gemini: %s: bad X-Goog-Upload-Size-Received %q", op, resp.Header.Get("X-Goog-Upload-Size-Received"))
	}
	return held, nil, nil
}

// final decodes the {"file":{...}} answer that ends an upload.
func (up *upload) final(ctx context.Context, op string, resp *http.Response) (*File, error) {
	var env struct {
		File *File `json:"file"`
	}
	if err := up.c.decode(ctx, op, resp, &env, true); err != nil {
		return nil, err
	}
	if env.File == nil || env.File.Name == "" {
		return nil, fmt.Errorf("gemini: %s: final answer names no file", op)
	}
	return env.File, nil
}

// do sends one request to the session URL under the per-attempt deadline. The caller reads
// the 200 answer, then calls cancel.
func (up *upload) do(ctx context.Context, op, cmd string, offset int64, data []byte) (*http.Response, context.CancelFunc, error) {
	c := up.c
	ctx, cancel := context.WithTimeoutCause(ctx, c.callTimeout, errAttemptTimeout)
	req, err := c.newRequest(ctx, op, http.MethodPost, up.url, data, "")
	if err != nil {
		cancel()
		return nil, nil, err
	}
	if !up.keyed {
		req.Header.Del(apiKeyHeader)
	}
	req.Header.Set("X-Goog-Upload-Command", cmd)
	if offset >= 0 {
		req.Header.Set("X-Goog-Upload-Offset", strconv.FormatInt(offset, 10))
	}
	resp, err := c.send(op, req)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return resp, cancel, nil
}

// Download streams the content of a file (a batch's result file). Only a 200 answer yields
// content; anything else is an error. Retries cover getting the answer, not reading the
// stream: a read that fails midway returns an error that IsRetryable judges, and the caller
// starts over. The per-attempt deadline bounds the wait for headers; the stream lives as long
// as ctx. Close the stream when done.
func (c *Client) Download(ctx context.Context, name string) (io.ReadCloser, error) {
	const op = "files.download"
	p, err := resourcePath(op, "files", name)
	if err != nil {
		return nil, err
	}
	u := c.base + "/download" + p + ":download?alt=media"
	var body io.ReadCloser
	err = c.withRetry(ctx, op, c.retry.MaxAttempts, func(ctx context.Context) error {
		ctx, cancel := context.WithCancelCause(ctx)
		deadline := time.AfterFunc(c.callTimeout, func() { cancel(errAttemptTimeout) })
		req, err := c.newRequest(ctx, op, http.MethodGet, u, nil, "")
		if err != nil {
			cancel(nil)
			return err
		}
		resp, err := c.send(op, req)
		if !deadline.Stop() && err == nil {
			// The deadline fired as the headers arrived: the stream is already cut.
			resp.Body.Close()
			err = &transportError{op: op, msg: "answer came at the per-attempt deadline", err: errAttemptTimeout}
		}
		if err != nil {
			cancel(nil)
			return err
		}
		body = &downloadStream{c: c, ctx: ctx, cancel: cancel, rc: resp.Body}
		return nil
	})
	return body, err
}

// downloadStream counts the bytes read and classifies read errors.
type downloadStream struct {
	c      *Client
	ctx    context.Context
	cancel context.CancelCauseFunc
	rc     io.ReadCloser
}

func (d *downloadStream) Read(p []byte) (int, error) {
	n, err := d.rc.Read(p)
	if n > 0 {
		d.c.metrics.downloadBytes.Add(float64(n))
	}
	if err != nil && !errors.Is(err, io.EOF) {
		err = d.c.transportErr(d.ctx, "files.download", err)
	}
	return n, err
}

func (d *downloadStream) Close() error {
	err := d.rc.Close()
	d.cancel(nil)
	return err
}

// GetFile returns the file named "files/x" (or "x"). The service refuses result-file names
// longer than 40 characters: use Download for those.
func (c *Client) GetFile(ctx context.Context, name string) (*File, error) {
	const op = "files.get"
	p, err := resourcePath(op, "files", name)
	if err != nil {
		return nil, err
	}
	return doJSON[File](ctx, c, call{op: op, method: http.MethodGet, path: p})
}

// ListFiles yields every file, fetching pages of pageSize (0: the server's default).
// It stops at the first error, which it yields.
func (c *Client) ListFiles(ctx context.Context, pageSize int) iter.Seq2[*File, error] {
	return func(yield func(*File, error) bool) {
		err := paginate(ctx, c, "files.list", "/v1beta/files", pageSize,
			func(p *ListFilesResponse) (string, bool) {
				for i := range p.Files {
					if !yield(&p.Files[i], nil) {
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

// DeleteFile deletes the file named "files/x" (or "x").
func (c *Client) DeleteFile(ctx context.Context, name string) error {
	const op = "files.delete"
	p, err := resourcePath(op, "files", name)
	if err != nil {
		return err
	}
	_, err = doJSON[struct{}](ctx, c, call{op: op, method: http.MethodDelete, path: p})
	return err
}
