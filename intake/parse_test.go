package intake

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/gemini"
)

var rules = Rules{
	DefaultModel:    "gemini-2.5-flash",
	MaxRequestBytes: 512,
	ReplyAllow:      []string{"_INBOX.>", "svc.*.replies"},
	ReplyDeny:       []string{"$SYS.>", "gembatch.generate"},
}

const okBody = `{"contents":[{"parts":[{"text":"hi"}]}]}`

func msg(reply, body string, hdr ...string) *nats.Msg {
	m := &nats.Msg{Subject: "gembatch.generate", Reply: reply, Data: []byte(body), Header: nats.Header{}}
	for i := 0; i+1 < len(hdr); i += 2 {
		m.Header.Set(hdr[i], hdr[i+1])
	}
	return m
}

func TestParseRejections(t *testing.T) {
	tests := []struct {
		name   string
		kind   gemini.Kind
		msg    *nats.Msg
		reason string
		inMsg  string
	}{
		{"no reply", gemini.KindGenerate, msg("", okBody), ReasonNoReply, "no reply subject"},
		{"reply not allowed", gemini.KindGenerate, msg("elsewhere.x", okBody), ReasonReplyDenied, `"elsewhere.x"`},
		{"reply to $SYS", gemini.KindGenerate, msg("$SYS.REQ.X", okBody), ReasonReplyDenied, "not allowed"},
		{"reply to own subject", gemini.KindGenerate, msg("gembatch.generate", okBody), ReasonReplyDenied, "not allowed"},
		{"too large", gemini.KindGenerate, msg("_INBOX.a", `{"contents":"`+strings.Repeat("x", 600)+`"}`), ReasonTooLarge, "limit is 512"},
		{"not json", gemini.KindGenerate, msg("_INBOX.a", `{"contents":`), ReasonInvalidJSON, "not a JSON object"},
		{"array", gemini.KindGenerate, msg("_INBOX.a", `[]`), ReasonInvalidJSON, "GenerateContentRequest"},
		{"empty", gemini.KindGenerate, msg("_INBOX.a", ``), ReasonInvalidJSON, "not a JSON object"},
		{"trailing garbage", gemini.KindGenerate, msg("_INBOX.a", okBody+`}`), ReasonInvalidJSON, "not a JSON object"},
		{"model not a string", gemini.KindGenerate, msg("_INBOX.a", `{"model":5,"contents":[1]}`), ReasonInvalid, "body:"},
		{"no contents", gemini.KindGenerate, msg("_INBOX.a", `{"contents":[]}`), ReasonInvalid, "no contents"},
		{"embed without content", gemini.KindEmbed, msg("_INBOX.a", okBody), ReasonInvalid, "no content"},
		{"bad priority", gemini.KindGenerate, msg("_INBOX.a", okBody, HeaderPriority, "1.5"), ReasonBadHeader, "Gembatch-Priority"},
		{"bad deadline", gemini.KindGenerate, msg("_INBOX.a", okBody, HeaderDeadline, "-5m"), ReasonBadHeader, "Gembatch-Deadline"},
		{"bad model", gemini.KindGenerate, msg("_INBOX.a", okBody, HeaderModel, "../../etc"), ReasonBadHeader, "not a model name"},
		{"key with newline", gemini.KindGenerate, msg("_INBOX.a", okBody, HeaderKey, "a\x01b"), ReasonBadHeader, "printable"},
		{"key too long", gemini.KindGenerate, msg("_INBOX.a", okBody, HeaderKey, strings.Repeat("k", MaxKeyLen+1)), ReasonBadHeader, "Gembatch-Key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, rej := Parse(&rules, tt.kind, tt.msg, time.Now())
			if rej == nil {
				t.Fatal("accepted")
			}
			if rej.Reason != tt.reason || !strings.Contains(rej.Status.Message, tt.inMsg) {
				t.Fatalf("rejected %s: %q; want %s containing %q", rej.Reason, rej.Status.Message, tt.reason, tt.inMsg)
			}
			if rej.Status.Status == "" || rej.Status.Code == 0 {
				t.Fatalf("status %+v has no code or name", rej.Status)
			}
			// Past the key check, a request without a key is answered with the one generated.
			if k := tt.msg.Header.Get(HeaderKey); k == "" && tt.reason != ReasonNoReply && tt.reason != ReasonReplyDenied && tt.reason != ReasonTooLarge && rej.Key == "" {
				t.Fatal("rejection without the generated key")
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	body := "  " + `{"model":"models/gemini-2.5-pro","contents":[{"parts":[{"text":"hi"}]}],"tools":[{"x":1}]}` + "\n"
	g, req, rej := Parse(&rules, gemini.KindGenerate, msg("svc.a.replies", body, HeaderKey, "k-1", HeaderPriority, "-7", HeaderDeadline, "90m"), now)
	if rej != nil {
		t.Fatalf("rejected: %+v", rej.Status)
	}
	if g.Model != "models/gemini-2.5-pro" || g.Priority != -7 || g.Kind != gemini.KindGenerate {
		t.Fatalf("group %+v", g)
	}
	if req.Key != "k-1" || req.Reply != "svc.a.replies" || !req.Deadline.Equal(now.Add(90*time.Minute)) || req.ID == "" {
		t.Fatalf("request %+v", req)
	}
	if string(req.Body) != strings.TrimSpace(body) {
		t.Fatalf("body changed: %s", req.Body)
	}
	if req.Size != gemini.InputLineSize("k-1", req.Body) {
		t.Fatalf("size %d, want the JSONL line size", req.Size)
	}

	// Header model wins over the body's; default model and generated key otherwise.
	g, _, _ = Parse(&rules, gemini.KindGenerate, msg("_INBOX.x", body, HeaderModel, "gemini-2.0-flash"), now)
	if g.Model != "models/gemini-2.0-flash" {
		t.Fatalf("header model: %s", g.Model)
	}
	g, req, _ = Parse(&rules, gemini.KindEmbed, msg("_INBOX.x", `{"content":{"parts":[{"text":"x"}]}}`, HeaderDeadline, "2026-05-02T00:00:00Z"), now)
	if g.Model != "models/gemini-2.5-flash" || req.Key == "" || req.Deadline.IsZero() {
		t.Fatalf("defaults: group %+v request %+v", g, req)
	}
}

func TestSubjectMatches(t *testing.T) {
	for _, tt := range []struct {
		pattern, subject string
		want             bool
	}{
		{"_INBOX.>", "_INBOX.abc.def", true},
		{"_INBOX.>", "_INBOX", false},
		{"a.*.c", "a.b.c", true},
		{"a.*.c", "a.b.d", false},
		{"a.*", "a.b.c", false},
		{"a.b", "a.b", true},
		{"a.b", "a.b.c", false},
		{">", "anything.at.all", true},
		{"$SYS.>", "$SYS.REQ", true},
		{">", "", true},
		{"*", "", true},
		{"a.>", "a.", true},
		{"a.*", "a.", true},
		{"a.*", "a", false},
		{"a.b.c", "a.b", false},
		{"", "", true},
		{"", "a", false},
		// The first byte differs: no match unless the pattern starts with a wildcard.
		{"$SYS.>", "_INBOX.abc", false},
		{"gembatch.generate", "_INBOX.abc", false},
		{"*.b", "a.b", true},
		{">", "a", true},
		{"*x.b", "ax.b", false}, // "*x" is a literal token, not a wildcard
		{".a", "a", false},
		{"a", ".a", false},
		{".a", ".a", true},
		// A literal prefix and a final >: settled by one comparison.
		{"n.reply.>", "n.reply.void", true},
		{"n.reply.>", "n.reply", false},
		{"n.reply.>", "n.replyx.void", false},
		{"a>.>", "a>.b", true}, // "a>" is a literal token
		{"a.b>", "a.b", false},
	} {
		if got := SubjectMatches(tt.pattern, tt.subject); got != tt.want {
			t.Errorf("SubjectMatches(%q, %q) = %v", tt.pattern, tt.subject, got)
		}
	}
}

// FuzzSubjectMatches holds the one-comparison paths of SubjectMatches to the token walk.
func FuzzSubjectMatches(f *testing.F) {
	for _, s := range [][2]string{{"_INBOX.>", "_INBOX.a"}, {"a.*.c", "a.b.c"}, {"a.>", "a."}, {">", ""}, {"a>.>", "a>.b"}, {"$SYS.>", "$SYS"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, subject string) {
		if got, want := SubjectMatches(pattern, subject), matchTokens(pattern, subject); got != want {
			t.Fatalf("SubjectMatches(%q, %q) = %v; the token walk says %v", pattern, subject, got, want)
		}
	})
}

// stdVerdict is how Parse judged a body when it decoded it with encoding/json: the reference
// the one-pass reader is held to. It returns the rejection reason ("" when accepted) and the
// body's model.
func stdVerdict(kind gemini.Kind, data string) (reason, model string) {
	body := bytes.TrimSpace([]byte(data))
	if len(body) == 0 || body[0] != '{' {
		return ReasonInvalidJSON, ""
	}
	var fields struct {
		Model    string          `json:"model"`
		Contents json.RawMessage `json:"contents"`
		Content  json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(body, &fields); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			return ReasonInvalidJSON, ""
		}
		return ReasonInvalid, ""
	}
	payload := fields.Contents
	if kind == gemini.KindEmbed {
		payload = fields.Content
	}
	if s := string(bytes.TrimSpace(payload)); s == "" || s == "null" || s == "[]" || s == "{}" {
		return ReasonInvalid, ""
	}
	return "", fields.Model
}

// FuzzParse feeds arbitrary bodies and headers: Parse must never panic, must judge each body as
// encoding/json did, and what it accepts must be the body byte for byte with a sane key, model
// and the exact input line size.
func FuzzParse(f *testing.F) {
	f.Add(okBody, "k", "gemini-2.5-flash", "0", "1h")
	f.Add(`{"contents":[{"parts":[{"text":"\u0000"}]}],"model":"models/x"}`, "", "", "", "")
	f.Add(`{"content":{}}`, "key\n", "models/", "9223372036854775808", "2026-01-01T00:00:00Z")
	f.Add(`{"contents":[1],"contents":null}`, "🙂", "a/b", "-1", "0s")
	f.Add("{\"Contents\" :\r\n [1], \"MODEL\":\"m<&>\", \"model\":null}\n", "<k>", "", "", "")
	f.Add(`{"model":5,"content":[1],"contents":{"a":1}}`, "k", "", "", "")
	f.Add(`{"mod\u0065l":"gemini-x","con\u0074ents":[ ]}`, "", "", "", "")
	f.Fuzz(func(t *testing.T, body, key, model, priority, deadline string) {
		for _, kind := range []gemini.Kind{gemini.KindGenerate, gemini.KindEmbed} {
			m := msg("_INBOX.f", body, HeaderKey, key, HeaderModel, model, HeaderPriority, priority, HeaderDeadline, deadline)
			g, req, rej := Parse(&rules, kind, m, time.Now())
			stdReason, stdModel := stdVerdict(kind, body)
			if rej != nil {
				if rej.Status == nil || rej.Status.Message == "" || rej.Reason == "" {
					t.Fatalf("rejection without reason or message: %+v", rej)
				}
				if (rej.Reason == ReasonInvalidJSON || rej.Reason == ReasonInvalid) && rej.Reason != stdReason {
					t.Fatalf("body %q rejected as %s, encoding/json said %q", body, rej.Reason, stdReason)
				}
				continue
			}
			if stdReason != "" {
				t.Fatalf("body %q accepted, encoding/json said %s", body, stdReason)
			}
			if req.Key == "" || len(req.Key) > MaxKeyLen || !modelName.MatchString(g.Model) || len(req.Body) == 0 || req.Body[0] != '{' {
				t.Fatalf("accepted a bad request: group %+v request %+v", g, req)
			}
			if string(req.Body) != string(bytes.TrimSpace([]byte(body))) {
				t.Fatalf("body not kept byte-exact")
			}
			if model == "" && stdModel != "" && g.Model != gemini.ModelName(stdModel) {
				t.Fatalf("model %q, encoding/json read %q", g.Model, stdModel)
			}
			if want := gemini.InputLineSize(req.Key, req.Body); req.Size != want {
				t.Fatalf("size %d, the input line is %d", req.Size, want)
			}
		}
	})
}

// TestParseAllocations: a valid request costs one allocation, its id (a generated key is the
// id); nothing is decoded into new memory and no rejection is built for it.
// A generate request that asks for images is marked so, where its body is at hand: the batch
// it joins goes by file though its body is written away or left in its object.
func TestParseMarksImageRequests(t *testing.T) {
	for _, tc := range []struct {
		kind gemini.Kind
		body string
		want bool
	}{
		{gemini.KindGenerate, `{"contents":[{"parts":[{"text":"a cat"}]}],"generationConfig":{"responseModalities":["TEXT","IMAGE"]}}`, true},
		{gemini.KindGenerate, `{"contents":[{"parts":[{"text":"a cat"}]}],"generationConfig":{"responseModalities":["TEXT"]}}`, false},
		{gemini.KindGenerate, `{"contents":[{"parts":[{"text":"a cat"}]}]}`, false},
		{gemini.KindEmbed, `{"content":{"parts":[{"text":"IMAGE"}]}}`, false},
	} {
		_, req, rej := Parse(&rules, tc.kind, msg("svc.a.replies", tc.body), time.Now())
		if rej != nil || req.Images != tc.want {
			t.Errorf("%s %s: images %v (%v), want %v", tc.kind, tc.body, req.Images, rej, tc.want)
		}
	}
}

func TestParseAllocations(t *testing.T) {
	now := time.Now()
	for _, hdr := range [][]string{
		{HeaderKey, "k-1", HeaderModel, "gemini-2.5-flash"},
		{HeaderPriority, "3", HeaderDeadline, "10m"},
		nil,
	} {
		m := msg("_INBOX.a", `{"model":"gemini-2.5-pro","contents":[{"parts":[{"text":"hi"}]}]}`, hdr...)
		allocs := testing.AllocsPerRun(100, func() {
			if _, _, rej := Parse(&rules, gemini.KindGenerate, m, now); rej != nil {
				t.Fatal(rej.Status)
			}
		})
		if allocs > 1 {
			t.Errorf("headers %q: %v allocations per valid request, want 1 (the id)", hdr, allocs)
		}
	}
}
