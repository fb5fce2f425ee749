package gemini

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// createBody encodes a batches.create body as encodeJSON does, but writes each inline request as
// it is held instead of through encoding/json, which validates and compacts every RawMessage it
// writes: a second scan of bodies intake has already validated, and the larger part of encoding
// a 10 MB inline batch.
func createBody(b Batch) []byte {
	size := 128 + len(b.Model) + len(b.DisplayName) + len(b.InputConfig.FileName)
	if r := b.InputConfig.Requests; r != nil {
		for _, q := range r.Requests {
			size += len(q.Request) + 48
			if q.Metadata != nil {
				size += len(q.Metadata.Key)
			}
		}
	}
	out := append(make([]byte, 0, size), `{"batch":{`...)
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
	out = appendInputConfig(append(out, '{'), b.InputConfig)
	return append(out, "}}\n"...)
}

// appendInputConfig writes an InputConfig's members and closes its object.
func appendInputConfig(out []byte, in InputConfig) []byte {
	if in.FileName != "" {
		out = appendJSONString(append(out, `"fileName":`...), in.FileName)
		if in.Requests != nil {
			out = append(out, ',')
		}
	}
	if in.Requests != nil {
		out = append(out, `"requests":{"requests":`...)
		if in.Requests.Requests == nil {
			out = append(out, "null"...)
		} else {
			out = appendInlined(out, in.Requests.Requests)
		}
		out = append(out, '}')
	}
	return append(out, '}')
}

// appendInlined writes the inline requests as a JSON array, each body as it is held.
func appendInlined(out []byte, reqs []InlinedRequest) []byte {
	out = append(out, '[')
	for i, q := range reqs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"request":`...)
		if len(q.Request) == 0 {
			out = append(out, "null"...)
		} else {
			out = append(out, q.Request...)
		}
		if q.Metadata != nil {
			out = appendJSONString(append(out, `,"metadata":{"key":`...), q.Metadata.Key)
			out = append(out, '}')
		}
		out = append(out, '}')
	}
	return append(out, ']')
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
