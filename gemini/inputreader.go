package gemini

import (
	"bytes"
	"fmt"
	"io"
	"math"

	"github.com/gembatch/gembatch/internal/jsonscan"
)

// InputReader reads back a batch input JSONL file as InputWriter wrote it, one line at a time,
// each line validated and split into key and request in one pass.
type InputReader struct {
	lineReader
	n int // lines read, for messages
}

// NewInputReader reads input lines from r.
func NewInputReader(r io.Reader) *InputReader {
	in := &InputReader{lineReader: newLineReader(r)}
	in.maxLine = math.MaxInt // each line is a request gembatchd accepted: read whole, never cut
	return in
}

// Next returns the next line's key and request, or io.EOF at the end. The request is the
// caller's to keep. A line that is not an input line is an error naming it: the input is the
// batch, and a batch is never sent with a line missing.
func (r *InputReader) Next() (key string, request []byte, err error) {
	for {
		line, _, err := r.readLine()
		if err != nil {
			return "", nil, err
		}
		r.n++
		if line = bytes.TrimSpace(line); len(line) == 0 {
			continue
		}
		return r.parse(line)
	}
}

// parse splits one line into its key and a copy of its request.
func (r *InputReader) parse(line []byte) (string, []byte, error) {
	var key, request []byte
	s := jsonscan.New(line)
	for s.Open(); s.More(); {
		name := s.Key()
		v := s.Skip()
		switch {
		case jsonscan.KeyIs(name, "key"):
			key = v
		case jsonscan.KeyIs(name, "request"):
			request = v
		}
	}
	if err := s.End(); err != nil {
		return "", nil, fmt.Errorf("gemini: input line %d: %w", r.n, err)
	}
	k, ok := jsonscan.String(key)
	if !ok || len(k) == 0 || request == nil {
		return "", nil, fmt.Errorf("gemini: input line %d: not a {\"key\":..., \"request\":...} line", r.n)
	}
	return string(k), bytes.Clone(request), nil
}
