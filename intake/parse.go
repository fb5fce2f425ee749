// Package intake takes producer requests off NATS, checks each one, and hands the accepted ones
// to the accumulator. A request that cannot be accepted is answered at once with an error.
package intake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/jsonscan"
	"github.com/gembatch/gembatch/record"
)

// Request headers, as the contract names them.
const (
	HeaderKey      = "Gembatch-Key"
	HeaderModel    = "Gembatch-Model"
	HeaderPriority = "Gembatch-Priority"
	HeaderDeadline = "Gembatch-Deadline"
)

// Rejection reasons, as counted in metrics.
const (
	ReasonNoReply     = "no_reply"
	ReasonReplyDenied = "reply_denied"
	ReasonTooLarge    = "too_large"
	ReasonInvalidJSON = "invalid_json"
	ReasonInvalid     = "invalid_request"
	ReasonBadHeader   = "invalid_header"
	ReasonDuplicate   = "duplicate_key"
	ReasonOverloaded  = "overloaded"
	ReasonShutdown    = "shutting_down"
	ReasonUnstored    = "unstored"
)

// MaxKeyLen bounds a producer key; keys travel in headers and result files.
const MaxKeyLen = 256

// Rules are what Parse checks a message against.
type Rules struct {
	DefaultModel    string
	MaxRequestBytes int
	// ReplyAllow lists the subject patterns (NATS wildcards) replies may go to.
	ReplyAllow []string
	// ReplyDeny lists patterns never allowed, whatever ReplyAllow says: $SYS and our own subjects.
	ReplyDeny []string
}

// Rejection says why a message was not accepted, and what its error reply says.
type Rejection struct {
	Reason string
	Key    string
	Status *gemini.Status
}

func reject(reason, key string, code int, format string, args ...any) *Rejection {
	return &Rejection{Reason: reason, Key: key, Status: gemini.NewStatus(code, format, args...)}
}

// Parse checks one message of the given kind and returns the request it carries. It reads only
// the headers and the body's model, contents and content fields; the body is kept byte-exact.
func Parse(r *Rules, kind gemini.Kind, msg *nats.Msg, now time.Time) (record.Group, record.Request, *Rejection) {
	var g record.Group
	key := msg.Header.Get(HeaderKey)
	if msg.Reply == "" {
		return g, record.Request{}, reject(ReasonNoReply, key, gemini.CodeInvalidArgument, "message has no reply subject: publish it as a request")
	}
	if !r.replyAllowed(msg.Reply) {
		return g, record.Request{}, reject(ReasonReplyDenied, key, gemini.CodePermissionDenied,
			"reply subject %q is not allowed (GEMBATCH_REPLY_ALLOW)", msg.Reply)
	}
	if r.MaxRequestBytes > 0 && len(msg.Data) > r.MaxRequestBytes {
		return g, record.Request{}, reject(ReasonTooLarge, key, gemini.CodeInvalidArgument,
			"request is %d bytes; the limit is %d (GEMBATCH_MAX_REQUEST_BYTES)", len(msg.Data), r.MaxRequestBytes)
	}
	if key != "" && (len(key) > MaxKeyLen || !printable(key)) {
		return g, record.Request{}, reject(ReasonBadHeader, "", gemini.CodeInvalidArgument,
			"header %s must be 1 to %d printable characters", HeaderKey, MaxKeyLen)
	}
	id := nuid.Next()
	if key == "" {
		key = id // unique as well, and one allocation instead of two
	}
	body := bytes.TrimSpace(msg.Data)
	fields, rej := readBody(kind, key, body)
	if rej != nil {
		return g, record.Request{}, rej
	}
	model, ok := modelNames.resolve(msg.Header.Get(HeaderModel), fields.model, r.DefaultModel)
	if !ok {
		return g, record.Request{}, reject(ReasonBadHeader, key, gemini.CodeInvalidArgument, "model %q is not a model name like models/gemini-2.5-flash", model)
	}
	var priority int64
	if p := msg.Header.Get(HeaderPriority); p != "" {
		var err error
		if priority, err = strconv.ParseInt(p, 10, 64); err != nil {
			return g, record.Request{}, reject(ReasonBadHeader, key, gemini.CodeInvalidArgument, "header %s %q is not an integer", HeaderPriority, p)
		}
	}
	var deadline time.Time
	if d := msg.Header.Get(HeaderDeadline); d != "" {
		var err error
		if deadline, err = parseDeadline(d, now); err != nil {
			return g, record.Request{}, reject(ReasonBadHeader, key, gemini.CodeInvalidArgument, "header %s: %v", HeaderDeadline, err)
		}
	}
	g = record.Group{Kind: kind, Model: model, Priority: priority}
	req := record.Request{
		ID:       id,
		Key:      key,
		Reply:    msg.Reply,
		Body:     json.RawMessage(body),
		Received: now,
		Deadline: deadline,
		Size:     gemini.InputLineLen(key, fields.compactLen),
		// Read here, where every body is at hand: the accumulator may write it away, and a
		// body too large for a message is left in its object.
		Images: kind == gemini.KindGenerate && record.AsksForImages(body),
	}
	return g, req, nil
}

// bodyFields is what Parse reads of a request body.
type bodyFields struct {
	model      []byte // the body's model as written, escapes decoded; nil when absent
	compactLen int    // the body's length as the input file carries it: compacted if it spans lines
}

// readBody validates the body and reads its fields in one pass over it, allocating nothing
// for a valid body. key is for the rejection.
func readBody(kind gemini.Kind, key string, body []byte) (bodyFields, *Rejection) {
	var f bodyFields
	if len(body) == 0 || body[0] != '{' {
		return f, notObject(kind, key, "")
	}
	payload, name := "contents", "GenerateContentRequest has no contents"
	if kind == gemini.KindEmbed {
		payload, name = "content", "EmbedContentRequest has no content"
	}
	var notString, value []byte
	s := jsonscan.New(body)
	for s.Open(); s.More(); {
		k := s.Key()
		v := s.Skip()
		switch {
		case v == nil: // a syntax error, reported below
		case jsonscan.KeyIs(k, "model"):
			if m, ok := jsonscan.String(v); ok {
				f.model = m
			} else if v[0] != 'n' && notString == nil { // null leaves the model as it was
				notString = v
			}
		case jsonscan.KeyIs(k, payload):
			value = v // the last one wins, as with encoding/json
		}
	}
	if err := s.End(); err != nil {
		var syn *jsonscan.SyntaxError
		errors.As(err, &syn)
		return f, notObject(kind, key, fmt.Sprintf(" (%v at byte %d)", err, syn.Offset))
	}
	if notString != nil {
		return f, reject(ReasonInvalid, key, gemini.CodeInvalidArgument, "body: model is a JSON %s, not a string", jsonscan.Kind(notString))
	}
	if isEmpty(value) {
		return f, reject(ReasonInvalid, key, gemini.CodeInvalidArgument, "%s", name)
	}
	f.compactLen = len(body)
	if s.Newline {
		f.compactLen -= s.Space // the input writer compacts a body that spans lines
	}
	return f, nil
}

func notObject(kind gemini.Kind, key, detail string) *Rejection {
	return reject(ReasonInvalidJSON, key, gemini.CodeInvalidArgument,
		"body is not a JSON object: send one %s JSON object%s", requestType(kind), detail)
}

// parseDeadline reads an RFC 3339 time or a Go duration from now. It tries only the form the
// value has (a date has '-' at [4], a valid duration never): a failed parse allocates its error.
func parseDeadline(s string, now time.Time) (time.Time, error) {
	if len(s) > 4 && s[4] == '-' {
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			return t, nil
		}
	} else if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(d), nil
	}
	return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a positive Go duration", s)
}

func (r *Rules) replyAllowed(subject string) bool {
	for _, p := range r.ReplyDeny {
		if SubjectMatches(p, subject) {
			return false
		}
	}
	for _, p := range r.ReplyAllow {
		if SubjectMatches(p, subject) {
			return true
		}
	}
	return false
}

// SubjectMatches reports whether a subject matches a NATS pattern with * and > wildcards. It
// runs for every request, against every reply pattern: the usual patterns (a literal subject,
// or a literal prefix and a final >) are settled by one comparison, the rest by a token walk.
func SubjectMatches(pattern, subject string) bool {
	// Most checks are of a reply inbox against patterns whose first token differs from its first
	// byte on: $SYS.> and the request subjects, denied, for every request.
	if pattern != "" && subject != "" && pattern[0] != subject[0] && pattern[0] != '*' && pattern[0] != '>' {
		return false
	}
	if strings.IndexByte(pattern, '*') < 0 {
		switch gt := strings.IndexByte(pattern, '>'); {
		case gt < 0:
			return pattern == subject
		case gt == len(pattern)-1 && (gt == 0 || pattern[gt-1] == '.'):
			return strings.HasPrefix(subject, pattern[:gt])
		}
	}
	return matchTokens(pattern, subject)
}

// matchTokens is SubjectMatches for any pattern: it walks both token by token instead of
// splitting them.
func matchTokens(pattern, subject string) bool {
	subjectLeft := true // a subject, even empty, has at least one token
	for {
		p, pRest, pMore := strings.Cut(pattern, ".")
		if p == ">" {
			return subjectLeft
		}
		if !subjectLeft {
			return false
		}
		s, sRest, sMore := strings.Cut(subject, ".")
		if p != "*" && p != s {
			return false
		}
		if !pMore {
			return !sMore
		}
		pattern, subject, subjectLeft = pRest, sRest, sMore
	}
}

// isEmpty is whether a contents or content value is missing or holds nothing.
func isEmpty(v []byte) bool {
	return len(v) == 0 || string(v) == "null" || string(v) == "[]" || string(v) == "{}"
}

func printable(s string) bool {
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

func requestType(k gemini.Kind) string {
	if k == gemini.KindEmbed {
		return "EmbedContentRequest"
	}
	return "GenerateContentRequest"
}
