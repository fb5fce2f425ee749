package emulator

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gembatch/gembatch/gemini"
)

// writeJSON answers 200 with v: every success of the real API is a 200 with a JSON body.
func writeJSON(w http.ResponseWriter, v any) {
	b, err := marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, gemini.CodeInternal, "Encoding the answer failed: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	_, _ = w.Write(b)
}

// marshal encodes v followed by a newline, leaving <, > and & as they are, as the service does.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	err := enc.Encode(v)
	return buf.Bytes(), err
}

// errorBody is the envelope of every error answer: {"error":{"code":HTTP,"message","status"}}.
type errorBody struct {
	Error *gemini.Status `json:"error"`
}

// writeError answers httpCode with a google.rpc.Status named after the gRPC code.
func writeError(w http.ResponseWriter, httpCode, code int, format string, args ...any) {
	writeStatus(w, httpCode, &gemini.Status{Code: httpCode, Message: fmt.Sprintf(format, args...), Status: gemini.CodeName(code)})
}

func writeStatus(w http.ResponseWriter, httpCode int, st *gemini.Status) {
	b, _ := json.Marshal(errorBody{Error: st}) // a Status always encodes
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(httpCode)
	_, _ = w.Write(append(b, '\n'))
}

func invalid(w http.ResponseWriter, format string, args ...any) {
	writeError(w, http.StatusBadRequest, gemini.CodeInvalidArgument, format, args...)
}

func notFound(w http.ResponseWriter, format string, args ...any) {
	writeError(w, http.StatusNotFound, gemini.CodeNotFound, format, args...)
}

// apiError is an error whose message goes on the wire as it is, worded as the service words it.
type apiError string

func (e apiError) Error() string { return string(e) }

func errorf(format string, args ...any) error { return apiError(fmt.Sprintf(format, args...)) }

// readBody reads at most limit bytes, so an oversized body costs no more than the limit.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, errorf("Request payload size exceeds the limit: %d bytes.", limit)
	}
	// Sized from Content-Length when given: io.ReadAll grows a 10 MB create body step by step,
	// copying it at each (0.17 s of the CPU of five of the bench's durable rounds).
	buf := bytes.NewBuffer(make([]byte, 0, max(0, min(r.ContentLength, limit))+bytes.MinRead)) // ReadFrom wants MinRead free to read EOF
	_, err := buf.ReadFrom(io.LimitReader(r.Body, limit+1))
	b := buf.Bytes()
	if err != nil {
		return nil, errorf("Reading the request body failed: %v", err)
	}
	if int64(len(b)) > limit {
		return nil, errorf("Request payload size exceeds the limit: %d bytes.", limit)
	}
	return b, nil
}

// fields decodes one JSON object and renames snake_case keys to camelCase, since proto-JSON
// parsers accept both and the SDKs send both. If allowed is not empty, any other key is refused
// in the words of the service. at names the object in messages ("batch.input_config").
func fields(raw json.RawMessage, at string, allowed ...string) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, errorf("Invalid JSON payload received%s: %v", where(at), err)
	}
	out := make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		k = camel(k)
		if len(allowed) > 0 && !slices.Contains(allowed, k) {
			return nil, unknownName(k, at)
		}
		out[k] = v
	}
	return out, nil
}

// unknownName refuses a member the object at at does not have, in the words of the service.
func unknownName(name, at string) error {
	return errorf("Invalid JSON payload received. Unknown name %q%s: Cannot find field.", name, where(at))
}

func where(at string) string {
	if at == "" {
		return ""
	}
	return " at '" + at + "'"
}

// decodeField decodes m[key] into dst if present; an absent or null field leaves dst alone.
func decodeField(m map[string]json.RawMessage, key, at string, dst any) error {
	return decodeValue(m[key], key, at, dst)
}

// decodeValue decodes raw, the value of member key of the object at at, into dst; an absent
// (nil) or null value leaves dst alone.
func decodeValue(raw []byte, key, at string, dst any) error {
	if raw == nil || string(raw) == "null" {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return errorf("Invalid value at '%s.%s': %v", at, key, err)
	}
	return nil
}

// camel turns "input_config" into "inputConfig"; a camelCase name is left as it is.
func camel(s string) string {
	if !strings.Contains(s, "_") {
		return s
	}
	parts := strings.Split(s, "_")
	for i := 1; i < len(parts); i++ {
		if p := parts[i]; p != "" {
			parts[i] = strings.ToUpper(p[:1]) + p[1:]
		}
	}
	return strings.Join(parts, "")
}

// protoDuration formats d as google.protobuf.Duration JSON: "1s", "1.500s".
func protoDuration(d time.Duration) string {
	secs, nanos := int64(d/time.Second), int64(d%time.Second)
	switch {
	case nanos == 0:
		return fmt.Sprintf("%ds", secs)
	case nanos%1e6 == 0:
		return fmt.Sprintf("%d.%03ds", secs, nanos/1e6)
	case nanos%1e3 == 0:
		return fmt.Sprintf("%d.%06ds", secs, nanos/1e3)
	}
	return fmt.Sprintf("%d.%09ds", secs, nanos)
}

// page reads pageSize and pageToken. Tokens are opaque to clients: a creation sequence number,
// so that pages stay stable while new resources are added.
func page(r *http.Request, def, most int) (size int, after int64, err error) {
	q := r.URL.Query()
	size = def
	if v := q.Get("pageSize"); v != "" {
		if size, err = strconv.Atoi(v); err != nil || size < 0 {
			return 0, 0, errorf("Invalid value at 'page_size' (TYPE_INT32), %q", v)
		}
		if size == 0 {
			size = def
		}
		size = min(size, most)
	}
	if t := q.Get("pageToken"); t != "" {
		b, err := base64.RawURLEncoding.DecodeString(t)
		if err == nil {
			after, err = strconv.ParseInt(string(b), 10, 64)
		}
		if err != nil || after <= 0 {
			return 0, 0, errorf("Invalid page token %q.", t)
		}
	}
	return size, after, nil
}

func pageToken(seq int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(seq, 10)))
}

// randomID returns n characters of [a-z0-9], the alphabet of batch and file ids.
func randomID(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[rand.IntN(len(alphabet))]
	}
	return string(b)
}
