package gemini

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/gembatch/gembatch/internal/jsonscan"
)

// maxResultLine bounds the memory one result line may take. Real lines reach tens of MB (image
// outputs); a file with no newlines at all must not be read whole.
const maxResultLine = 256 << 20

// ResultReader reads a batch result file one line at a time.
type ResultReader struct {
	lineReader
	n         int // lines read, blank ones included, for messages
	malformed int
	usage     UsageMetadata
	hasUsage  bool
}

// NewResultReader reads results from r.
func NewResultReader(r io.Reader) *ResultReader {
	return &ResultReader{lineReader: newLineReader(r)}
}

// Malformed counts the lines skipped because they did not parse and had no key to report against.
func (r *ResultReader) Malformed() int { return r.malformed }

// Next returns the next result, or io.EOF at the end. The result's Response and Usage are
// valid until the next call: they point into the reader's buffer, not copied. One bad line never ends the stream:
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

// parse turns a line into a result in one pass over it: key, response (as written), error or
// status, and the response's usage metadata; ok is false when no key can be found. A line that
// does not parse, or was cut, becomes an INTERNAL error for its key if the key came before the
// damage. The docs call the error "a status object": both names are accepted.
func (r *ResultReader) parse(line []byte, cut bool) (Result, bool) {
	var key, response, errValue, statusValue []byte
	r.usage, r.hasUsage = UsageMetadata{}, false
	s := jsonscan.New(line)
	for s.Open(); s.More(); {
		k := s.Key()
		switch {
		case jsonscan.KeyIs(k, "key"):
			key, _ = jsonscan.String(s.Skip()) // a key that is not a string is no key
		case jsonscan.KeyIs(k, "response"):
			response = r.response(&s)
		case jsonscan.KeyIs(k, "error"):
			errValue = s.Skip()
		case jsonscan.KeyIs(k, "status"):
			statusValue = s.Skip()
		default:
			s.Skip()
		}
	}
	err := s.End()
	if len(key) == 0 {
		return Result{}, false
	}
	res := Result{Key: string(key)}
	var why string
	switch {
	case cut:
		why = fmt.Sprintf("is longer than %d bytes", r.maxLine)
	case err != nil:
		why = "does not parse: " + err.Error()
	default:
		st, err := decodeStatus(errValue, statusValue)
		if err != nil {
			why = "does not parse: " + err.Error()
			break
		}
		res, ok := toResult(res.Key, response, st)
		if !ok {
			res.Error = NewStatus(CodeInternal, "result line %d has neither response nor error", r.n)
		} else if res.Error == nil && r.hasUsage {
			res.Usage = &r.usage
		}
		return res, true
	}
	res.Error = NewStatus(CodeInternal, "result line %d %s", r.n, why)
	return res, true
}

// response reads a response value, noting its usage metadata on the way, and returns it as
// written.
func (r *ResultReader) response(s *jsonscan.Scanner) []byte {
	var response []byte
	response, r.hasUsage = responseWithUsage(s, &r.usage)
	return response
}

// responseWithUsage reads a response value and returns it as written, with its usage metadata
// read into u on the way; has says whether it had any.
func responseWithUsage(s *jsonscan.Scanner, u *UsageMetadata) (response []byte, has bool) {
	*u = UsageMetadata{}
	if s.Peek() != '{' {
		return s.Skip(), false
	}
	start := s.Offset()
	for s.Open(); s.More(); {
		if !jsonscan.KeyIs(s.Key(), "usageMetadata") {
			s.Skip()
			continue
		}
		switch s.Peek() {
		case '{':
			readUsage(s, u)
			has = true
		case 'n': // null clears an earlier usageMetadata, as with encoding/json
			s.Skip()
			*u, has = UsageMetadata{}, false
		default:
			s.Skip()
		}
	}
	if s.Err() != nil {
		return nil, false
	}
	return s.Bytes()[start:s.Offset()], has
}

// readUsage reads a usageMetadata object into u. A count that is not an integer is left as it
// was, as encoding/json leaves a field it cannot decode.
func readUsage(s *jsonscan.Scanner, u *UsageMetadata) {
	for s.Open(); s.More(); {
		k := s.Key()
		n, ok := integer(s.Skip())
		switch {
		case !ok:
		case jsonscan.KeyIs(k, "promptTokenCount"):
			u.PromptTokenCount = n
		case jsonscan.KeyIs(k, "candidatesTokenCount"):
			u.CandidatesTokenCount = n
		case jsonscan.KeyIs(k, "cachedContentTokenCount"):
			u.CachedContentTokenCount = n
		case jsonscan.KeyIs(k, "thoughtsTokenCount"):
			u.ThoughtsTokenCount = n
		case jsonscan.KeyIs(k, "totalTokenCount"):
			u.TotalTokenCount = n
		}
	}
}

// ResponseUsage returns the usage metadata of a response, or nil when it has none.
func ResponseUsage(response []byte) *UsageMetadata {
	s := jsonscan.New(response)
	for s.Open(); s.More(); {
		if jsonscan.KeyIs(s.Key(), "usageMetadata") && s.Peek() == '{' {
			u := new(UsageMetadata)
			readUsage(&s, u)
			return u
		}
		s.Skip()
	}
	return nil
}

// integer reads a JSON number that is a whole int64, without allocating; ok is false for
// anything else, which encoding/json would refuse to put in an int64.
func integer(v []byte) (int64, bool) {
	neg := len(v) > 0 && v[0] == '-'
	if neg {
		v = v[1:]
	}
	if len(v) == 0 || len(v) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0') // 19 digits fit in a uint64
	}
	switch {
	case neg && n <= 1<<63:
		return int64(-n), true
	case !neg && n < 1<<63:
		return int64(n), true
	}
	return 0, false
}

// decodeStatus decodes a line's error, or else its status; nil when neither is set.
func decodeStatus(errValue, statusValue []byte) (*Status, error) {
	for _, v := range [][]byte{errValue, statusValue} {
		if v == nil || string(v) == "null" {
			continue
		}
		var st Status
		if err := json.Unmarshal(v, &st); err != nil {
			return nil, err
		}
		return &st, nil
	}
	return nil, nil
}

// lineReader reads a JSONL file a line at a time, a line of any length up to maxLine.
type lineReader struct {
	br      *bufio.Reader
	line    []byte // a line longer than br's buffer, assembled; reused
	maxLine int
	err     error // sticky: io.EOF or the reader's error
}

func newLineReader(r io.Reader) lineReader {
	return lineReader{br: bufio.NewReaderSize(r, 64<<10), maxLine: maxResultLine}
}

// readLine returns the next line, valid until the next call. A line longer than maxLine is
// cut there (cut is true) and its rest skipped, so memory stays bounded.
func (r *lineReader) readLine() (line []byte, cut bool, err error) {
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
		rs = append(rs, inlineResult(i+1, ir, ResponseUsage(ir.Response)))
	}
	return rs
}

// inlineResult is the keyed result of the n-th inline response (from 1), whose response has
// usage.
func inlineResult(n int, ir InlinedResponse, usage *UsageMetadata) Result {
	var key string
	if ir.Metadata != nil {
		key = ir.Metadata.Key
	}
	res, ok := toResult(key, ir.Response, ir.Error)
	if !ok {
		res.Error = NewStatus(CodeInternal, "inline response %d has neither response nor error", n)
	} else if res.Error == nil {
		res.Usage = usage
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
		if !valid(request) {
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

// valid is json.Valid in a quarter of the time: every request of a batch passes here.
func valid(b []byte) bool {
	s := jsonscan.New(b)
	s.Skip()
	return s.End() == nil
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
	return InputLineLen(key, n)
}

// InputLineLen is InputLineSize for a request whose form as Write sends it (compacted when it
// spans lines) is requestLen bytes long: for callers that already know that length.
func InputLineLen(key string, requestLen int) int64 {
	return int64(len(`{"key":`) + quotedLen(key) + len(`,"request":`) + requestLen + len("}\n"))
}

// jsonString encodes s as a JSON string.
func jsonString(s string) []byte {
	b, _ := json.Marshal(s) // a string always encodes
	return b
}

// quotedLen is len(jsonString(s)) without encoding it: encoding/json escapes quote, backslash
// and the controls with a short form in two bytes; other controls, <, > and & (HTML-safe),
// invalid UTF-8 (as \ufffd) and U+2028/U+2029 in six; everything else is copied.
func quotedLen(s string) int {
	n := 2
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t':
				n += 2
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				n += 6
			default:
				n++
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || r == '\u2028' || r == '\u2029' {
			n += 6
		} else {
			n += size
		}
		i += size
	}
	return n
}
