package gemini

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// maxResultLine bounds the memory one result line may take. Real lines reach tens of MB (image
// outputs); a file with no newlines at all must not be read whole.
const maxResultLine = 256 << 20

// ResultReader reads a batch result file one line at a time.
type ResultReader struct {
	br        *bufio.Reader
	line      []byte // a line longer than br's buffer, assembled; reused
	maxLine   int
	n         int // lines read, blank ones included, for messages
	malformed int
	err       error // sticky: io.EOF or the reader's error
}

// NewResultReader reads results from r.
func NewResultReader(r io.Reader) *ResultReader {
	return &ResultReader{br: bufio.NewReaderSize(r, 64<<10), maxLine: maxResultLine}
}

// Malformed counts the lines skipped because they did not parse and had no key to report against.
func (r *ResultReader) Malformed() int { return r.malformed }

// Next returns the next result, or io.EOF at the end. One bad line never ends the stream:
// a line that does not parse becomes an INTERNAL error result for its key when the key can be
// recovered, and is counted in Malformed and skipped when not. Only a read error from the
// underlying reader ends the stream early, and it is returned as is.
func (r *ResultReader) Next() (Result, error) {
	for {
		line, cut, err := r.readLine()
		if err != nil {
			return Result{}, err
		}
		r.n++
		line = bytes.TrimSpace(line)
		if len(line) == 0 && !cut {
			continue
		}
		if res, ok := r.parse(line, cut); ok {
			return res, nil
		}
		r.malformed++
	}
}

// resultLine is an output line. The docs call the error "a status object": accept both names.
type resultLine struct {
	Key      string          `json:"key"`
	Response json.RawMessage `json:"response"`
	Error    *Status         `json:"error"`
	Status   *Status         `json:"status"`
}

// parse turns a line into a result; ok is false when no key can be found.
func (r *ResultReader) parse(line []byte, cut bool) (Result, bool) {
	var why string
	if cut {
		why = fmt.Sprintf("is longer than %d bytes", r.maxLine)
	} else {
		var l resultLine
		err := json.Unmarshal(line, &l)
		if err == nil {
			if l.Key == "" {
				return Result{}, false
			}
			st := l.Error
			if st == nil {
				st = l.Status
			}
			res, ok := toResult(l.Key, l.Response, st)
			if !ok {
				res.Error = NewStatus(CodeInternal, "result line %d has neither response nor error", r.n)
			}
			return res, true
		}
		why = "does not parse: " + err.Error()
	}
	key := recoverKey(line)
	if key == "" {
		return Result{}, false
	}
	return Result{Key: key, Error: NewStatus(CodeInternal, "result line %d %s", r.n, why)}, true
}

// readLine returns the next line, valid until the next call. A line longer than maxLine is
// cut there (cut is true) and its rest skipped, so memory stays bounded.
func (r *ResultReader) readLine() (line []byte, cut bool, err error) {
	if r.err != nil {
		return nil, false, r.err
	}
	r.line = r.line[:0]
	for {
		frag, err := r.br.ReadSlice('\n')
		if err == nil && len(r.line) == 0 && len(frag) <= r.maxLine {
			return frag, false, nil // the common case: the line fits in br's buffer, no copy
		}
		if room := r.maxLine - len(r.line); len(frag) > room {
			frag, cut = frag[:room], true
		}
		r.line = append(r.line, frag...)
		switch err {
		case nil:
			return r.line, cut, nil
		case bufio.ErrBufferFull:
		case io.EOF:
			r.err = io.EOF
			if len(r.line) == 0 {
				return nil, false, io.EOF
			}
			return r.line, cut, nil
		default:
			r.err = err
			return nil, false, err
		}
	}
}

// recoverKey finds the top-level "key" of a line that does not parse as a whole, by reading
// tokens up to the damage. Results put the key first, so it usually comes before the damage.
func recoverKey(line []byte) string {
	dec := json.NewDecoder(bytes.NewReader(line))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return ""
		}
		if t == "key" {
			v, _ := dec.Token()
			s, _ := v.(string) // nil on error
			return s
		}
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return ""
		}
	}
	return ""
}

// toResult makes a keyed result; an error wins over a response, and an error that claims
// code 0 (OK) is still an error. ok is false when there is neither.
func toResult(key string, resp json.RawMessage, st *Status) (res Result, ok bool) {
	if st != nil {
		e := *st
		if e.Code == CodeOK {
			e.Code = CodeUnknown
		}
		return Result{Key: key, Error: &e}, true
	}
	if len(resp) == 0 || string(resp) == "null" {
		return Result{Key: key}, false
	}
	return Result{Key: key, Response: resp}, true
}

// InlineResults returns the keyed results of an inline output, in its order. A response that
// lost its metadata comes back with an empty Key, for the caller to count as malformed.
func InlineResults(out *Output) []Result {
	if out == nil || out.InlinedResponses == nil {
		return nil
	}
	irs := out.InlinedResponses.InlinedResponses
	rs := make([]Result, 0, len(irs))
	for i, ir := range irs {
		rs = append(rs, inlineResult(i+1, ir))
	}
	return rs
}

// inlineResult is the keyed result of the n-th inline response (from 1).
func inlineResult(n int, ir InlinedResponse) Result {
	var key string
	if ir.Metadata != nil {
		key = ir.Metadata.Key
	}
	res, ok := toResult(key, ir.Response, ir.Error)
	if !ok {
		res.Error = NewStatus(CodeInternal, "inline response %d has neither response nor error", n)
	}
	return res
}

// InputWriter writes a batch input JSONL file, one whole line per Write to the underlying writer.
type InputWriter struct {
	w   io.Writer
	buf []byte
	n   int64
}

// NewInputWriter writes input lines to w.
func NewInputWriter(w io.Writer) *InputWriter { return &InputWriter{w: w} }

// Bytes is the number of bytes written so far.
func (w *InputWriter) Bytes() int64 { return w.n }

var errEmptyKey = errors.New("gemini: input line: empty key")

// Write writes {"key":key,"request":request} and a newline. The request goes through byte-exact
// unless it spans lines, in which case it is compacted. An empty key or a request that is not
// valid JSON is refused before anything is written: one bad line would fail the whole batch.
func (w *InputWriter) Write(key string, request json.RawMessage) error {
	if key == "" {
		return errEmptyKey
	}
	line := append(w.buf[:0], `{"key":`...)
	line = append(line, jsonString(key)...)
	line = append(line, `,"request":`...)
	if bytes.ContainsAny(request, "\r\n") {
		// Inside valid JSON a raw line break can only be whitespace: Compact drops it and
		// changes nothing else.
		b := bytes.NewBuffer(line)
		if err := json.Compact(b, request); err != nil {
			return fmt.Errorf("gemini: input line %q: request is not valid JSON: %w", key, err)
		}
		line = b.Bytes()
	} else {
		if !json.Valid(request) {
			return fmt.Errorf("gemini: input line %q: request is not valid JSON", key)
		}
		line = append(line, request...)
	}
	line = append(line, "}\n"...)
	w.buf = line
	n, err := w.w.Write(line)
	w.n += int64(n)
	if err != nil {
		return fmt.Errorf("gemini: input line %q: %w", key, err)
	}
	return nil
}

// InputLineSize is the exact size of the line Write makes for key and request, newline
// included, for sizing batches before writing them. It assumes the request is valid JSON.
func InputLineSize(key string, request json.RawMessage) int64 {
	n := len(request)
	if bytes.ContainsAny(request, "\r\n") {
		var b bytes.Buffer
		if json.Compact(&b, request) == nil {
			n = b.Len()
		}
	}
	return int64(len(`{"key":`) + len(jsonString(key)) + len(`,"request":`) + n + len("}\n"))
}

// jsonString encodes s as a JSON string.
func jsonString(s string) []byte {
	b, _ := json.Marshal(s) // a string always encodes
	return b
}
