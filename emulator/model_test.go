package emulator_test

import (
	"bytes"
	"encoding/json"
	"image/png"
	"slices"
	"strings"
	"testing"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
)

// modelResponse is a GenerateContentResponse as the emulator writes it.
type modelResponse struct {
	Candidates []struct {
		Content struct {
			Parts []struct {
				Text       *string
				Thought    bool
				InlineData *struct {
					MimeType string
					Data     []byte // standard base64 on the wire
				}
			}
		}
	}
	UsageMetadata gemini.UsageMetadata
}

// itemWith is an inline item whose request carries extra top-level fields.
func itemWith(key, text string, extra map[string]any) map[string]any {
	it := item(key, text)
	for k, v := range extra {
		it["request"].(map[string]any)[k] = v
	}
	return it
}

// answers creates an inline batch of items, waits for it and returns each item's response.
func (a *api) answers(items ...map[string]any) []modelResponse {
	a.t.Helper()
	op := a.create("model", items...)
	_, op, _ = a.wait(op.Name, gemini.StateSucceeded)
	var out []modelResponse
	for _, r := range op.Output().InlinedResponses.InlinedResponses {
		if r.Error != nil {
			a.t.Fatalf("item %s failed: %+v", r.Metadata.Key, r.Error)
		}
		out = append(out, decode[modelResponse](a.t, reply{body: r.Response}))
	}
	return out
}

func checkTotal(t *testing.T, u gemini.UsageMetadata) {
	t.Helper()
	if u.TotalTokenCount != u.PromptTokenCount+u.CandidatesTokenCount+u.ThoughtsTokenCount {
		t.Errorf("usage %+v: total is not prompt + candidates + thoughts", u)
	}
}

// TestImageAnswer: a request for IMAGE gets a PNG that decodes, of the size asked (by flag or
// directive), with a text part only when TEXT is asked too; the same prompt, the same picture.
func TestImageAnswer(t *testing.T) {
	const optionSize = 300_000
	a := start(t, emulator.Options{ImageBytes: optionSize})
	both := map[string]any{"generationConfig": map[string]any{"responseModalities": []string{"TEXT", "IMAGE"}}}
	only := map[string]any{"generation_config": map[string]any{"response_modalities": []string{"image"}}}
	rs := a.answers(
		itemWith("both", "a red fox", both),
		itemWith("only", "a blue whale [[emulator:image-bytes=120000]]", only),
		itemWith("again", "a red fox", both),
	)
	for i, tc := range []struct {
		key      string
		size     int
		withText bool
	}{{"both", optionSize, true}, {"only", 120_000, false}, {"again", optionSize, true}} {
		parts := rs[i].Candidates[0].Content.Parts
		var img []byte
		texts := 0
		for _, p := range parts {
			if p.InlineData != nil {
				if p.InlineData.MimeType != "image/png" {
					t.Errorf("%s: mimeType %q", tc.key, p.InlineData.MimeType)
				}
				img = p.InlineData.Data
			}
			if p.Text != nil {
				texts++
			}
		}
		if img == nil || (texts == 1) != tc.withText || texts > 1 {
			t.Fatalf("%s: %d text parts and image %v, want text %v and an image", tc.key, texts, img != nil, tc.withText)
		}
		cfg, err := png.DecodeConfig(bytes.NewReader(img))
		if err != nil {
			t.Fatalf("%s: the image is no PNG: %v", tc.key, err)
		}
		if _, err := png.Decode(bytes.NewReader(img)); err != nil {
			t.Fatalf("%s: the PNG does not decode: %v", tc.key, err)
		}
		side := emulator.ImageSide(tc.size)
		if cfg.Width != side || cfg.Height != side {
			t.Errorf("%s: %dx%d, want %dx%d", tc.key, cfg.Width, cfg.Height, side, side)
		}
		if d := float64(len(img)-tc.size) / float64(tc.size); d < -0.01 || d > 0.01 {
			t.Errorf("%s: %d bytes, want %d within 1%%", tc.key, len(img), tc.size)
		}
		u := rs[i].UsageMetadata
		if u.CandidatesTokenCount < 1290 {
			t.Errorf("%s: candidates %d tokens, an image alone counts 1290", tc.key, u.CandidatesTokenCount)
		}
		checkTotal(t, u)
	}
	if !bytes.Equal(rs[0].Candidates[0].Content.Parts[1].InlineData.Data, rs[2].Candidates[0].Content.Parts[1].InlineData.Data) {
		t.Error("the same prompt got two different images")
	}
	if !bytes.Equal(rs[0].Candidates[0].Content.Parts[1].InlineData.Data, emulator.ExpectedImage("a red fox", optionSize)) {
		t.Error("the image is not ExpectedImage")
	}
}

// TestImageDefaultSize: without a setting, an image answer is about 1.5 MB, as real ones are.
func TestImageDefaultSize(t *testing.T) {
	img := emulator.ExpectedImage("x", emulator.DefaultImageBytes)
	if len(img) < 1_485_000 || len(img) > 1_515_000 {
		t.Errorf("default image of %d bytes, want about 1.5 MB", len(img))
	}
}

// TestJSONAnswer: responseSchema (OpenAPI subset, upper-case types) and responseJsonSchema
// (JSON Schema with $ref, type lists, bounds) are answered with JSON valid against them.
func TestJSONAnswer(t *testing.T) {
	a := start(t, emulator.Options{})
	openapi := map[string]any{
		"type": "OBJECT",
		"properties": map[string]any{
			"title":  map[string]any{"type": "STRING"},
			"rating": map[string]any{"type": "INTEGER", "minimum": 1, "maximum": 5},
			"genre":  map[string]any{"type": "STRING", "enum": []string{"drama", "comedy"}},
			"tags":   map[string]any{"type": "ARRAY", "minItems": 3, "items": map[string]any{"type": "STRING"}},
			"author": map[string]any{"type": "OBJECT", "properties": map[string]any{
				"name": map[string]any{"type": "STRING"}, "born": map[string]any{"type": "STRING", "format": "date-time"},
			}, "required": []string{"name"}},
			"score": map[string]any{"type": "NUMBER"},
			"free":  map[string]any{"type": "BOOLEAN"},
		},
		"required":         []string{"title", "rating", "genre", "tags", "author"},
		"propertyOrdering": []string{"title", "rating"},
	}
	jsonSchema := map[string]any{
		"$defs": map[string]any{"step": map[string]any{
			"type": "object", "additionalProperties": false,
			"properties": map[string]any{"n": map[string]any{"type": "integer", "exclusiveMinimum": 10}, "note": map[string]any{"type": []string{"string", "null"}, "maxLength": 5}},
			"required":   []string{"n", "note"},
		}},
		"type":       "object",
		"properties": map[string]any{"steps": map[string]any{"type": "array", "minItems": 4, "maxItems": 4, "items": map[string]any{"$ref": "#/$defs/step"}}},
		"required":   []string{"steps"},
	}
	rs := a.answers(
		itemWith("openapi", "review a book", map[string]any{"generationConfig": map[string]any{"responseMimeType": "application/json", "responseSchema": openapi}}),
		itemWith("json", "plan", map[string]any{"generationConfig": map[string]any{"responseMimeType": "application/json", "responseJsonSchema": jsonSchema}}),
		itemWith("enum", "pick", map[string]any{"generationConfig": map[string]any{"responseMimeType": "text/x.enum", "responseSchema": map[string]any{"type": "STRING", "enum": []string{"yes", "no"}}}}),
		itemWith("plain", "hello", map[string]any{"generationConfig": map[string]any{"responseMimeType": "application/json"}}),
	)
	text := func(i int) string { return *rs[i].Candidates[0].Content.Parts[0].Text }

	var review struct {
		Title  string
		Rating int
		Genre  string
		Tags   []string
		Author struct{ Name, Born string }
		Score  float64
		Free   bool
	}
	dec := json.NewDecoder(strings.NewReader(text(0)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&review); err != nil {
		t.Fatalf("openapi answer %s: %v", text(0), err)
	}
	if review.Title == "" || review.Rating < 1 || review.Rating > 5 || !slices.Contains([]string{"drama", "comedy"}, review.Genre) ||
		len(review.Tags) < 3 || review.Author.Name == "" {
		t.Errorf("openapi answer breaks its schema: %s", text(0))
	}
	if !strings.HasPrefix(text(0), `{"title":`) || !strings.Contains(text(0), `"rating":`) {
		t.Errorf("propertyOrdering not kept: %s", text(0))
	}

	var plan struct {
		Steps []map[string]any
	}
	if err := json.Unmarshal([]byte(text(1)), &plan); err != nil {
		t.Fatalf("json schema answer %s: %v", text(1), err)
	}
	if len(plan.Steps) != 4 {
		t.Fatalf("%d steps, want 4: %s", len(plan.Steps), text(1))
	}
	for _, s := range plan.Steps {
		n, _ := s["n"].(float64)
		note, _ := s["note"].(string)
		if len(s) != 2 || n <= 10 || n != float64(int(n)) || len([]rune(note)) > 5 {
			t.Errorf("step %v breaks its schema", s)
		}
	}
	if got := text(2); got != "yes" && got != "no" {
		t.Errorf("enum answer %q", got)
	}
	if !json.Valid([]byte(text(3))) {
		t.Errorf("application/json without a schema answered %q", text(3))
	}
}

// TestUsageCounts: a cachedContent counts cached tokens inside the prompt's; a thinking config
// counts thoughts apart; the total is prompt + candidates + thoughts.
func TestUsageCounts(t *testing.T) {
	a := start(t, emulator.Options{})
	thinking := func(cfg map[string]any) map[string]any {
		return map[string]any{"generationConfig": map[string]any{"thinkingConfig": cfg}}
	}
	rs := a.answers(
		item("plain", "hello"),
		itemWith("cached", "hello", map[string]any{"cachedContent": "cachedContents/abc"}),
		itemWith("budget", "hello", thinking(map[string]any{"thinkingBudget": 100})),
		itemWith("dynamic", "hello", thinking(map[string]any{"thinking_budget": -1})),
		itemWith("off", "hello", thinking(map[string]any{"thinkingBudget": 0})),
		itemWith("summary", "hello", thinking(map[string]any{"includeThoughts": true})),
	)
	plain := rs[0].UsageMetadata
	for i, tc := range []struct {
		key              string
		cached, thoughts int64
	}{{"plain", 0, 0}, {"cached", emulator.CachedContentTokens, 0}, {"budget", 0, 100}, {"dynamic", 0, emulator.ThoughtTokens}, {"off", 0, 0}, {"summary", 0, emulator.ThoughtTokens}} {
		u := rs[i].UsageMetadata
		if u.CachedContentTokenCount != tc.cached || u.PromptTokenCount != plain.PromptTokenCount+tc.cached ||
			u.ThoughtsTokenCount != tc.thoughts || u.CandidatesTokenCount != plain.CandidatesTokenCount {
			t.Errorf("%s: usage %+v, want %d cached (in the prompt) and %d thoughts", tc.key, u, tc.cached, tc.thoughts)
		}
		checkTotal(t, u)
	}
	parts := rs[5].Candidates[0].Content.Parts
	if len(parts) != 2 || !parts[0].Thought || parts[1].Thought || *parts[1].Text != emulator.ExpectedText(json.RawMessage(`{"contents":[{"parts":[{"text":"hello"}]}]}`)) {
		t.Errorf("includeThoughts: parts %+v, want a thought then the answer", parts)
	}
}

// TestRequestFields: every top-level GenerateContentRequest field the SDKs send is accepted
// (serviceTier among them); any other is a per-item INVALID_ARGUMENT.
func TestRequestFields(t *testing.T) {
	a := start(t, emulator.Options{})
	all := map[string]any{
		"model": "models/gemini-2.5-flash", "tools": []any{}, "toolConfig": map[string]any{}, "safetySettings": []any{},
		"systemInstruction": map[string]any{"parts": []any{map[string]any{"text": "brief"}}}, "generationConfig": map[string]any{},
		"cachedContent": "cachedContents/c", "serviceTier": "flex", "labels": map[string]any{"team": "a"}, "store": false,
		"continuationToken": "t",
	}
	op := a.create("fields", itemWith("all", "hi", all), itemWith("snake", "hi", map[string]any{"service_tier": "standard"}),
		itemWith("unknown", "hi", map[string]any{"serviceTeir": "flex"}))
	_, op, _ = a.wait(op.Name, gemini.StateSucceeded)
	rs := op.Output().InlinedResponses.InlinedResponses
	if got := []string{errCode(rs[0]), errCode(rs[1]), errCode(rs[2])}; !slices.Equal(got, []string{"ok", "ok", "3"}) {
		t.Errorf("answers %v, want ok ok 3: %+v", got, rs)
	}
}
