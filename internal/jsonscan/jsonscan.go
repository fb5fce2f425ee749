// Package jsonscan reads JSON objects member by member in one pass that also validates the whole
// document, without allocating. It accepts exactly what encoding/json.Valid accepts (the fuzz test
// holds it to that), so a caller can read the few fields it needs and know the rest is valid JSON
// without a second pass. Values come back as sub-slices of the input, never copied or re-encoded.
package jsonscan

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"strconv"
	"unicode/utf8"
)

// maxDepth is encoding/json's nesting limit: deeper documents are invalid there, so here too.
const maxDepth = 10000

// SyntaxError is the first error in a document, at byte Offset.
type SyntaxError struct {
	Msg    string
	Offset int
}

func (e *SyntaxError) Error() string { return e.Msg }

// Scanner walks one JSON document. Use Open and More to step through an object's members, Key
// for a member's name, then Skip (or Open again) for its value, and End when done.
type Scanner struct {
	data  []byte
	pos   int
	depth int
	first bool // at the start of an object, before its first member
	err   *SyntaxError
	// Space counts the whitespace bytes outside strings seen so far; Newline says one was CR or LF.
	Space   int
	Newline bool
}

// New returns a Scanner over data.
func New(data []byte) Scanner { return Scanner{data: data} }

// Err returns the first syntax error, or nil.
func (s *Scanner) Err() error {
	if s.err == nil {
		return nil
	}
	return s.err
}

// Offset is the position reached in the input: after Peek, where the next value starts.
func (s *Scanner) Offset() int { return s.pos }

// Bytes is the input.
func (s *Scanner) Bytes() []byte { return s.data }

// Peek returns the first byte of the next value, or 0 at the end or after an error.
func (s *Scanner) Peek() byte {
	s.space()
	if s.err != nil || s.pos >= len(s.data) {
		return 0
	}
	return s.data[s.pos]
}

// Open enters the object that comes next; it is false (and Err says why) when an object does not.
func (s *Scanner) Open() bool {
	s.space()
	switch {
	case s.err != nil:
		return false
	case s.pos >= len(s.data):
		s.eof()
		return false
	case s.data[s.pos] != '{':
		s.fail("looking for beginning of object")
		return false
	}
	if !s.push() {
		return false
	}
	s.pos++
	s.first = true
	return true
}

// More moves to the next member of the object being read, past the comma. At the object's end
// it consumes the '}' and returns false, as it does after an error.
func (s *Scanner) More() bool {
	s.space()
	if s.err != nil {
		return false
	}
	if s.pos >= len(s.data) {
		s.eof()
		return false
	}
	if s.data[s.pos] == '}' {
		s.pos++
		s.depth--
		s.first = false // the enclosing object, if any, is past its first member
		return false
	}
	if !s.first {
		if s.data[s.pos] != ',' {
			s.fail("after object key:value pair")
			return false
		}
		s.pos++
		s.space()
	}
	s.first = false
	if s.pos >= len(s.data) {
		s.eof()
		return false
	}
	if s.data[s.pos] != '"' {
		s.fail("looking for beginning of object key string")
		return false
	}
	return true
}

// Key reads a member's name and its colon. It returns the name as written between the quotes,
// escapes included: compare it with KeyIs.
func (s *Scanner) Key() []byte {
	start := s.pos
	s.str()
	end := s.pos
	s.space()
	if s.err != nil {
		return nil
	}
	if s.pos >= len(s.data) {
		s.eof()
		return nil
	}
	if s.data[s.pos] != ':' {
		s.fail("after object key")
		return nil
	}
	s.pos++
	return s.data[start+1 : end-1]
}

// Skip validates the next value and returns it as written, or nil after an error.
func (s *Scanner) Skip() []byte {
	s.space()
	start := s.pos
	s.value()
	if s.err != nil {
		return nil
	}
	return s.data[start:s.pos]
}

// End checks that nothing but whitespace follows, and returns the first error in the document.
func (s *Scanner) End() error {
	s.space()
	if s.err == nil && s.pos < len(s.data) {
		s.fail("after top-level value")
	}
	return s.Err()
}

// KeyIs reports whether a key from Key names the field name, matched as encoding/json matches
// struct fields: exactly, or else case-insensitively, after unescaping.
func KeyIs(key []byte, name string) bool {
	if string(key) == name {
		return true
	}
	if bytes.IndexByte(key, '\\') < 0 {
		return bytes.EqualFold(key, []byte(name))
	}
	var k string // escaped keys are rare: decode with the standard library
	q := make([]byte, 0, len(key)+2)
	q = append(append(append(q, '"'), key...), '"')
	return json.Unmarshal(q, &k) == nil && bytes.EqualFold([]byte(k), []byte(name))
}

// String returns the contents of a string value from Skip: as written when it has no escapes
// and is UTF-8 (no copy), decoded by encoding/json otherwise, which gives each byte that is not
// UTF-8 as U+FFFD. ok is false when the value is not a string.
func String(v []byte) (s []byte, ok bool) {
	if len(v) < 2 || v[0] != '"' {
		return nil, false
	}
	in := v[1 : len(v)-1]
	if bytes.IndexByte(in, '\\') < 0 && utf8.Valid(in) {
		return in, true
	}
	var d string
	if json.Unmarshal(v, &d) != nil {
		return nil, false
	}
	return []byte(d), true
}

// Kind names a value's JSON type from its first byte, as encoding/json's errors do.
func Kind(v []byte) string {
	if len(v) == 0 {
		return "nothing"
	}
	switch v[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

// push enters the object or array whose bracket is at pos.
func (s *Scanner) push() bool {
	s.depth++
	if s.depth > maxDepth {
		s.fail("exceeded max depth")
		return false
	}
	return true
}

// value reads one value of any type.
func (s *Scanner) value() {
	if s.err != nil {
		return
	}
	if s.pos >= len(s.data) {
		s.eof()
		return
	}
	switch c := s.data[s.pos]; {
	case c == '{':
		if !s.push() {
			return
		}
		s.pos++
		s.first = true
		for s.More() {
			s.Key()
			s.space()
			s.value()
		}
	case c == '[':
		s.array()
	case c == '"':
		s.str()
	case c == '-' || (c >= '0' && c <= '9'):
		s.number()
	case c == 't':
		s.literal("true")
	case c == 'f':
		s.literal("false")
	case c == 'n':
		s.literal("null")
	default:
		s.fail("looking for beginning of value")
	}
}

func (s *Scanner) array() {
	if !s.push() {
		return
	}
	s.pos++
	s.space()
	if s.pos < len(s.data) && s.data[s.pos] == ']' {
		s.pos++
		s.depth--
		return
	}
	for s.err == nil {
		var closed bool
		if s.pos, closed = plainNumbers(s.data, s.pos); closed {
			s.depth--
			return
		}
		s.space()
		if s.pos < len(s.data) && (s.data[s.pos] == '-' || (s.data[s.pos] >= '0' && s.data[s.pos] <= '9')) {
			s.number()
		} else {
			s.value()
		}
		s.space()
		if s.err != nil {
			return
		}
		if s.pos >= len(s.data) {
			s.eof()
			return
		}
		switch s.data[s.pos] {
		case ',':
			s.pos++
		case ']':
			s.pos++
			s.depth--
			return
		default:
			s.fail("after array element")
		}
	}
}

// plainNumbers reads array elements from i while they are plain numbers (no exponent, no
// whitespace) each followed by a comma or by the array's end, which it stops at; it returns where
// it stopped: past the array's end (closed), or at the start of an element it left for the
// general reader. Arrays of such numbers
// (embeddings) are most of a result file: this loop reads them with no call per element.
func plainNumbers(d []byte, i int) (end int, closed bool) {
	for {
		start := i
		if i < len(d) && d[i] == '-' {
			i++
		}
		switch {
		case i >= len(d):
			return start, false
		case d[i] == '0':
			i++
		case d[i] >= '1' && d[i] <= '9':
			i = digits(d, i+1)
		default:
			return start, false
		}
		if i < len(d) && d[i] == '.' {
			j := digits(d, i+1)
			if j == i+1 {
				return start, false
			}
			i = j
		}
		switch {
		case i >= len(d):
			return start, false
		case d[i] == ',':
			i++
		case d[i] == ']':
			return i + 1, true
		default:
			return start, false
		}
	}
}

// plain marks the string bytes that need no attention: not a quote, a backslash or a control.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func (s *Scanner) str() {
	d, i := s.data, s.pos+1
	for {
		for i+8 <= len(d) && !special8(binary.LittleEndian.Uint64(d[i:])) {
			i += 8
		}
		for i < len(d) && plain[d[i]] {
			i++
		}
		if i >= len(d) {
			s.pos = i
			s.eof()
			return
		}
		switch d[i] {
		case '"':
			s.pos = i + 1
			return
		case '\\':
			i++
			if i >= len(d) {
				s.pos = i
				s.expected("in string escape code")
				return
			}
			switch d[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				for j := 1; j <= 4; j++ {
					if i+j >= len(d) || !isHex(d[i+j]) {
						s.pos = i + j
						s.expected("in \\u hexadecimal character escape")
						return
					}
				}
				i += 5
			default:
				s.pos = i
				s.fail("in string escape code")
				return
			}
		default:
			s.pos = i
			s.fail("in string literal")
			return
		}
	}
}

// special8 reports whether any of eight string bytes is a quote, a backslash or a control,
// eight at a time: (v-lo)&^v&hi is nonzero exactly when a byte of v is zero.
func special8(x uint64) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	q, b := x^(lo*'"'), x^(lo*'\\')
	return ((x-lo*0x20)&^x|(q-lo)&^q|(b-lo)&^b)&hi != 0
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func (s *Scanner) number() {
	d, i := s.data, s.pos
	if d[i] == '-' {
		i++
	}
	switch {
	case i >= len(d):
		s.pos = i
		s.expected("in numeric literal")
		return
	case d[i] == '0':
		i++
	case d[i] >= '1' && d[i] <= '9':
		i = digits(d, i+1)
	default:
		s.pos = i
		s.fail("in numeric literal")
		return
	}
	if i < len(d) && d[i] == '.' {
		j := digits(d, i+1)
		if j == i+1 {
			s.fracOrExp(j, "after decimal point in numeric literal")
			return
		}
		i = j
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		j := digits(d, i)
		if j == i {
			s.fracOrExp(i, "in exponent of numeric literal")
			return
		}
		i = j
	}
	s.pos = i
}

// fracOrExp fails a number whose fraction or exponent has no digit at i.
func (s *Scanner) fracOrExp(i int, context string) {
	s.pos = i
	s.expected(context)
}

// digits returns the end of the run of digits at i, eight bytes at a time where it can.
func digits(d []byte, i int) int {
	for i+8 <= len(d) {
		x := binary.LittleEndian.Uint64(d[i:])
		// A digit is 0x30-0x39: its high nibble is 3 before and after adding 6. A carry out of a
		// byte that is no digit only reaches the bytes after it, past the end of the run.
		const nibbles, threes = 0xF0F0F0F0F0F0F0F0, 0x3030303030303030
		m := (x&nibbles ^ threes) | ((x+0x0606060606060606)&nibbles ^ threes)
		if m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
		i += 8
	}
	for i < len(d) && d[i] >= '0' && d[i] <= '9' {
		i++
	}
	return i
}

func (s *Scanner) literal(word string) {
	for j := 0; j < len(word); j++ {
		if s.pos >= len(s.data) || s.data[s.pos] != word[j] {
			s.expected("in literal " + word + " (expecting " + quoteChar(word[j]) + ")")
			return
		}
		s.pos++
	}
}

// space skips whitespace, counting it. Most values follow no whitespace at all: that case is
// inlined at the caller.
func (s *Scanner) space() {
	if s.pos < len(s.data) && s.data[s.pos] > ' ' {
		return
	}
	s.spaces()
}

func (s *Scanner) spaces() {
	d, i := s.data, s.pos
	for i < len(d) {
		switch d[i] {
		case ' ', '\t':
		case '\n', '\r':
			s.Newline = true
		default:
			s.Space += i - s.pos
			s.pos = i
			return
		}
		i++
	}
	s.Space += i - s.pos
	s.pos = i
}

// expected fails a number or literal cut short at the current byte. At the end of the input
// encoding/json reports the space it feeds its scanner there, so this does too.
func (s *Scanner) expected(context string) {
	if s.err != nil {
		return
	}
	if s.pos >= len(s.data) {
		s.setErr("invalid character ' ' "+context, len(s.data))
		return
	}
	s.fail(context)
}

// fail records an invalid character at the current position, in encoding/json's words.
// Offsets count the bytes read up to and including the bad one, as encoding/json's do.
func (s *Scanner) fail(context string) {
	s.setErr("invalid character "+quoteChar(s.data[s.pos])+" "+context, s.pos+1)
}

func (s *Scanner) eof() { s.setErr("unexpected end of JSON input", len(s.data)) }

func (s *Scanner) setErr(msg string, offset int) {
	if s.err == nil {
		s.err = &SyntaxError{Msg: msg, Offset: offset}
	}
	s.pos = len(s.data)
}

func quoteChar(c byte) string {
	if c == '\'' {
		return `'\''`
	}
	if c == '"' {
		return `'"'`
	}
	q := strconv.Quote(string(rune(c)))
	return "'" + q[1:len(q)-1] + "'"
}
