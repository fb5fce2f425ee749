package gemini

import (
	"bytes"
	"encoding/json"
	"io"
	"strconv"
	"unicode/utf8"
)

// createBody is a batches.create body, written as it is read: the same bytes encodeJSON would
// write, but each inline request is copied from where it is held straight to the wire. Joining
// them first held a second copy of every body (up to 20 MB) for as long as the upload took, and
// encoding/json validates and compacts every RawMessage it writes: a second scan of bodies intake
// has already validated. A createBody is read once; newCreateBody makes another.
type createBody struct {
	head, tail []byte           // before the first inline request and after the last
	reqs       []InlinedRequest // the inline requests, if any
	size       int64            // the whole body's length, for Content-Length
	part       int              // the next part: 0 the head, 1+3i+j part j of request i, then the tail
	cur        []byte           // what is left of the part being read
	scratch    []byte           // a request's framing, reused
}

// newCreateBody lays out the create body of b.
func newCreateBody(b Batch) *createBody {
	out := append(make([]byte, 0, 256), `{"batch":{`...)
	comma := false
	member := func(name string) {
		if comma {
			out = append(out, ',')
		}
		comma = true
		out = append(append(append(out, '"'), name...), `":`...)
	}
	if b.Model != "" {
		member("model")
		out = appendJSONString(out, b.Model)
	}
	if b.DisplayName != "" {
		member("displayName")
		out = appendJSONString(out, b.DisplayName)
	}
	if b.Priority != 0 {
		member("priority")
		out = strconv.AppendInt(append(out, '"'), int64(b.Priority), 10)
		out = append(out, '"')
	}
	member("inputConfig")
	c := &createBody{tail: []byte("}}}\n")} // closes inputConfig, batch and the body
	c.head = c.appendInputConfig(append(out, '{'), b.InputConfig)
	c.size = int64(len(c.head) + len(c.tail))
	for i := range c.reqs {
		for j := range 3 {
			c.size += int64(len(c.requestPart(i, j)))
		}
	}
	return c
}

// appendInputConfig writes an InputConfig's members up to its first inline request, and sets
// the tail that closes them.
func (c *createBody) appendInputConfig(out []byte, in InputConfig) []byte {
	if in.FileName != "" {
		out = appendJSONString(append(out, `"fileName":`...), in.FileName)
		if in.Requests != nil {
			out = append(out, ',')
		}
	}
	if in.Requests == nil {
		return out
	}
	out = append(out, `"requests":{"requests":`...)
	if in.Requests.Requests == nil {
		c.tail = append([]byte("}"), c.tail...)
		return append(out, "null"...)
	}
	c.reqs = in.Requests.Requests
	c.tail = append([]byte("]}"), c.tail...)
	return append(out, '[')
}

// requestPart is part j of inline request i: its opening, its body as held, its closing.
func (c *createBody) requestPart(i, j int) []byte {
	q := c.reqs[i]
	switch j {
	case 0:
		c.scratch = c.scratch[:0]
		if i > 0 {
			c.scratch = append(c.scratch, ',')
		}
		c.scratch = append(c.scratch, `{"request":`...)
		return c.scratch
	case 1:
		if len(q.Request) == 0 {
			return []byte("null")
		}
		return q.Request
	default:
		c.scratch = c.scratch[:0]
		if q.Metadata != nil {
			c.scratch = appendJSONString(append(c.scratch, `,"metadata":{"key":`...), q.Metadata.Key)
			c.scratch = append(c.scratch, '}')
		}
		c.scratch = append(c.scratch, '}')
		return c.scratch
	}
}

// Read implements io.Reader.
func (c *createBody) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(c.cur) == 0 && !c.next() {
			if n == 0 {
				return 0, io.EOF
			}
			break
		}
		k := copy(p[n:], c.cur)
		c.cur, n = c.cur[k:], n+k
	}
	return n, nil
}

// next moves to the next part; false when there is none.
func (c *createBody) next() bool {
	last := 1 + 3*len(c.reqs)
	switch p := c.part; {
	case p == 0:
		c.cur = c.head
	case p < last:
		c.cur = c.requestPart((p-1)/3, (p-1)%3)
	case p == last:
		c.cur = c.tail
	default:
		return false
	}
	c.part++
	return true
}

// appendJSONString appends s as encodeJSON writes it (no HTML escaping): as is between quotes
// when nothing in it needs escaping, through encoding/json otherwise.
func appendJSONString(out []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' {
			var b bytes.Buffer
			enc := json.NewEncoder(&b)
			enc.SetEscapeHTML(false)
			_ = enc.Encode(s) // a string always encodes
			return append(out, bytes.TrimSuffix(b.Bytes(), []byte("\n"))...)
		}
	}
	return append(append(append(out, '"'), s...), '"')
}
