// Package intake takes producer requests off NATS, checks each one, and hands the accepted ones
// to the accumulator. A request that cannot be accepted is answered at once with an error.
package intake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/gembatch/gembatch/gemini"
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

var modelName = regexp.MustCompile(`^models/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

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
	if key == "" {
		key = nuid.Next()
	} else if len(key) > MaxKeyLen || !printable(key) {
		return g, record.Request{}, reject(ReasonBadHeader, "", gemini.CodeInvalidArgument,
			"header %s must be 1 to %d printable characters", HeaderKey, MaxKeyLen)
	}
	body := bytes.TrimSpace(msg.Data)
	notObject := reject(ReasonInvalidJSON, key, gemini.CodeInvalidArgument,
		"body is not a JSON object: send one %s JSON object", requestType(kind))
	if len(body) == 0 || body[0] != '{' {
		return g, record.Request{}, notObject
	}
	var fields struct {
		Model    string          `json:"model"`
		Contents json.RawMessage `json:"contents"`
		Content  json.RawMessage `json:"content"`
	}
	// One pass: Unmarshal checks the whole document is valid JSON before it decodes.
	if err := json.Unmarshal(body, &fields); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			notObject.Status.Message += fmt.Sprintf(" (%v at byte %d)", err, syntax.Offset)
			return g, record.Request{}, notObject
		}
		return g, record.Request{}, reject(ReasonInvalid, key, gemini.CodeInvalidArgument, "body: %v", err)
	}
	if kind == gemini.KindGenerate && isEmpty(fields.Contents) {
		return g, record.Request{}, reject(ReasonInvalid, key, gemini.CodeInvalidArgument, "GenerateContentRequest has no contents")
	}
	if kind == gemini.KindEmbed && isEmpty(fields.Content) {
		return g, record.Request{}, reject(ReasonInvalid, key, gemini.CodeInvalidArgument, "EmbedContentRequest has no content")
	}
	model := msg.Header.Get(HeaderModel)
	if model == "" {
		model = fields.Model
	}
	if model == "" {
		model = r.DefaultModel
	}
	model = gemini.ModelName(model)
	if !modelName.MatchString(model) {
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
		ID:       nuid.Next(),
		Key:      key,
		Reply:    msg.Reply,
		Body:     json.RawMessage(body),
		Received: now,
		Deadline: deadline,
		Size:     gemini.InputLineSize(key, body),
	}
	return g, req, nil
}

// parseDeadline reads an RFC 3339 time or a Go duration from now.
func parseDeadline(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a positive Go duration", s)
	}
	return now.Add(d), nil
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

// SubjectMatches reports whether a subject matches a NATS pattern with * and > wildcards.
func SubjectMatches(pattern, subject string) bool {
	pt := strings.Split(pattern, ".")
	st := strings.Split(subject, ".")
	for i, p := range pt {
		if p == ">" {
			return len(st) > i
		}
		if i >= len(st) || (p != "*" && p != st[i]) {
			return false
		}
	}
	return len(pt) == len(st)
}

func isEmpty(raw json.RawMessage) bool {
	s := string(bytes.TrimSpace(raw))
	return s == "" || s == "null" || s == "[]" || s == "{}"
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
