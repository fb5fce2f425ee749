package gemini

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/gembatch/gembatch/internal/jsonscan"
)

// jsonStream reads one JSON document from a reader a value at a time, working on the reader's
// buffer a chunk at a time rather than a token at a time (encoding/json's Decoder.Token made
// reading an inline job slower than decoding it whole). It checks the document's structure:
// brackets that match, strings that end, members in name:value form; the values it hands out
// whole (value) are checked in full by whoever decodes them, and those it skips are checked for
// structure only. An error of the underlying reader is returned as it is.
type jsonStream struct {
	br    *bufio.Reader
	err   error  // the first error; every later call returns it
	open  []byte // the closing brackets of the values being skipped, innermost last
	first bool   // the container just opened has had no member yet
}

func newJSONStream(r io.Reader) *jsonStream {
	return &jsonStream{br: bufio.NewReaderSize(r, 64<<10)}
}

// fail records the first error and returns the one in force.
func (s *jsonStream) fail(err error) error {
	if s.err == nil {
		s.err = err
	}
	return s.err
}

// syntax records a syntax error.
func (s *jsonStream) syntax(format string, args ...any) error {
	return s.fail(fmt.Errorf("invalid JSON: "+format, args...))
}

// peek returns the next byte that is not white space, without reading it; 0 at the end (Err
// then says whether the document was cut).
func (s *jsonStream) peek() byte {
	for s.err == nil {
		c, err := s.br.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0
			}
			s.fail(err)
			return 0
		}
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			_ = s.br.UnreadByte()
			return c
		}
	}
	return 0
}

// expect reads the next byte, which must be c.
func (s *jsonStream) expect(c byte) error {
	switch got := s.peek(); {
	case s.err != nil:
		return s.err
	case got == 0:
		return s.fail(io.ErrUnexpectedEOF)
	case got != c:
		return s.syntax("%q where %q should be", got, c)
	}
	_, _ = s.br.ReadByte()
	return nil
}

// enter opens the object or array (delim '{' or '[') that comes next; false for a null.
func (s *jsonStream) enter(delim byte) (bool, error) {
	if s.peek() == 'n' {
		v, err := s.value()
		if err == nil && string(v) != "null" {
			err = s.syntax("%q where %q should open", v, delim)
		}
		return false, err
	}
	if err := s.expect(delim); err != nil {
		return false, err
	}
	s.first = true
	return true, nil
}

// more moves to the next member or element of the container being read (closed by close),
// past its comma; at the container's end it reads the closing bracket and is false.
func (s *jsonStream) more(close byte) (bool, error) {
	c := s.peek()
	switch {
	case s.err != nil:
		return false, s.err
	case c == close:
		_, _ = s.br.ReadByte()
		s.first = false
		return false, nil
	case !s.first:
		if err := s.expect(','); err != nil {
			return false, err
		}
	}
	s.first = false
	return true, nil
}

// key reads a member's name and its colon.
func (s *jsonStream) key() (string, error) {
	if s.peek() != '"' {
		return "", s.syntax("an object member does not start with its name")
	}
	raw, err := s.value()
	if err != nil {
		return "", err
	}
	name, ok := jsonscan.String(raw)
	if !ok {
		return "", s.syntax("bad member name %s", raw)
	}
	return string(name), s.expect(':')
}

// value reads the value that comes next and returns it as written, in a new slice.
func (s *jsonStream) value() ([]byte, error) {
	var out []byte
	err := s.scan(func(chunk []byte) { out = append(out, chunk...) })
	return out, err
}

// buffered returns what the reader holds that has not been read yet, without reading more: good
// until the next read.
func (s *jsonStream) buffered() []byte {
	if s.err != nil {
		return nil
	}
	b, _ := s.br.Peek(s.br.Buffered())
	return b
}

// discard reads past n bytes of what buffered returned.
func (s *jsonStream) discard(n int) { _, _ = s.br.Discard(n) }

// skip reads past the value that comes next, holding a buffer of it at a time.
func (s *jsonStream) skip() error { return s.scan(nil) }

// scan reads the value that comes next, handing its bytes to keep (when set) a chunk at a time.
func (s *jsonStream) scan(keep func([]byte)) error {
	first := s.peek()
	if s.err != nil {
		return s.err
	}
	if first == 0 {
		return s.fail(io.ErrUnexpectedEOF)
	}
	s.open = s.open[:0]
	inString, escaped, started := false, false, false
	for {
		buf, err := s.br.Peek(max(1, s.br.Buffered()))
		if len(buf) == 0 {
			if err == nil || errors.Is(err, io.EOF) {
				if started && !inString && len(s.open) == 0 { // a number or literal at the very end
					return nil
				}
				err = io.ErrUnexpectedEOF
			}
			return s.fail(err)
		}
		n, done, err := s.walk(buf, &inString, &escaped, &started)
		if keep != nil {
			keep(buf[:n])
		}
		_, _ = s.br.Discard(n)
		if err != nil || done {
			return err
		}
	}
}

// walk reads buf as far as the end of the value, and says how far it read and whether the value
// ended there. The state carries across chunks.
func (s *jsonStream) walk(buf []byte, inString, escaped, started *bool) (n int, done bool, err error) {
	for i := 0; i < len(buf); i++ {
		c := buf[i]
		if *inString {
			j := closingQuote(buf[i:], escaped)
			if j < 0 {
				return len(buf), false, nil
			}
			i += j
			*inString = false
			if len(s.open) == 0 {
				return i + 1, true, nil
			}
			continue
		}
		switch c {
		case '"':
			if *started && len(s.open) == 0 {
				return i, true, nil // a scalar ended right before
			}
			*inString = true
		case '{', '[':
			if *started && len(s.open) == 0 {
				return i, true, nil // a scalar ended right before
			}
			s.open = append(s.open, c+2) // '{'+2 is '}', '['+2 is ']'

		case '}', ']':
			if len(s.open) == 0 {
				return i, *started, s.endOrSyntax(*started, c)
			}
			if s.open[len(s.open)-1] != c {
				return i, false, s.syntax("%q closes a %q", c, s.open[len(s.open)-1])
			}
			s.open = s.open[:len(s.open)-1]
			if len(s.open) == 0 {
				return i + 1, true, nil
			}
		case ',', ' ', '\t', '\n', '\r', ':':
			if len(s.open) == 0 {
				return i, true, s.endOrSyntax(*started, c)
			}
		}
		*started = true
	}
	return len(buf), false, nil
}

// closingQuote finds the quote that ends the string whose contents buf begins in, or -1 when
// the string goes on past buf; escaped carries a backslash that ended the previous chunk. It
// looks for quotes and backslashes with bytes.IndexByte, which reads many bytes at a time
// (bytes.IndexAny with both read one byte at a time, a quarter of an inline answer's decoding),
// and reads each byte of the string at most twice, however many escapes it has.
func closingQuote(buf []byte, escaped *bool) int {
	i := 0
	if *escaped {
		if len(buf) == 0 {
			return -1
		}
		*escaped, i = false, 1
	}
	for {
		end := len(buf)
		if q := bytes.IndexByte(buf[i:], '"'); q >= 0 {
			end = i + q
		}
		for {
			b := bytes.IndexByte(buf[i:end], '\\')
			if b < 0 {
				break
			}
			i += b + 2 // past the backslash and the byte it escapes
			if i > len(buf) {
				*escaped = true // the escaped byte is in the next chunk
				return -1
			}
			if i > end {
				break // the quote found was escaped
			}
		}
		switch {
		case i > end:
			continue // look for the next quote past the escaped one
		case end == len(buf):
			return -1
		default:
			return end
		}
	}
}

// endOrSyntax is nil where a scalar ended at c, and a syntax error where no value began.
func (s *jsonStream) endOrSyntax(started bool, c byte) error {
	if started {
		return nil
	}
	return s.syntax("%q where a value should be", c)
}

// end checks that nothing but white space follows the document.
func (s *jsonStream) end() error {
	if c := s.peek(); s.err == nil && c != 0 {
		return s.syntax("data after the operation")
	}
	return s.err
}
