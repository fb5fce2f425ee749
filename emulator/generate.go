package emulator

import (
	"crypto/sha256"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"

	"github.com/gembatch/gembatch/gemini"
)

// What the emulated model counts besides the text, as the service would.
const (
	// CachedContentTokens is the size of every cache a request names in cachedContent: 1,024
	// tokens, the least the service caches for Flash models. They count in promptTokenCount
	// and again in cachedContentTokenCount, as the service counts them.
	CachedContentTokens = 1024
	// ThoughtTokens is how much a request that asks for thinking thinks (capped by a smaller
	// positive thinkingBudget).
	ThoughtTokens = 256
)

// imageDirective sets the size of the image answered to one request: "[[emulator:image-bytes=N]]".
var imageDirective = regexp.MustCompile(`\[\[emulator:image-bytes=(\d+)\]\]`)

// genRequest is what the emulated model reads of a GenerateContentRequest.
type genRequest struct {
	text      string
	image     bool   // responseModalities holds IMAGE
	withText  bool   // responseModalities holds TEXT, or is empty
	mimeType  string // responseMimeType, lower case
	schema    map[string]any
	cached    bool
	thoughts  int64 // thinking tokens it spends
	summarize bool  // thinkingConfig.includeThoughts: a thought part comes first
}

type thinkingConfig struct {
	ThinkingBudget  *int64 `json:"thinkingBudget"`
	IncludeThoughts bool   `json:"includeThoughts"`
	ThinkingLevel   string `json:"thinkingLevel"`
}

// generateInput checks a GenerateContentRequest as the service does and reads what shapes the
// answer.
func generateInput(request json.RawMessage) (genRequest, error) {
	var g genRequest
	f, err := fields(request, "", generateFields...)
	if err != nil {
		return g, err
	}
	var contents []inputContent
	if err := decodeField(f, "contents", "request", &contents); err != nil {
		return g, err
	}
	if len(contents) == 0 {
		return g, errorf("* GenerateContentRequest.contents: contents is not specified")
	}
	var texts []string
	for _, c := range contents {
		for _, p := range c.Parts {
			texts = append(texts, p.Text)
		}
	}
	g.text = strings.Join(texts, "\n")
	var cached string
	if err := decodeField(f, "cachedContent", "request", &cached); err != nil {
		return g, err
	}
	g.cached = cached != ""
	g.withText = true
	if raw, ok := f["generationConfig"]; ok && string(raw) != "null" {
		err = g.readConfig(raw)
	}
	return g, err
}

// readConfig reads the generationConfig fields that shape the answer; snake_case is accepted.
func (g *genRequest) readConfig(raw json.RawMessage) error {
	const at = "request.generation_config"
	cfg, err := fields(raw, at)
	if err != nil {
		return err
	}
	var modalities []string
	if err := decodeField(cfg, "responseModalities", at, &modalities); err != nil {
		return err
	}
	if len(modalities) > 0 {
		g.withText = false
	}
	for _, m := range modalities {
		switch strings.ToUpper(m) {
		case "IMAGE":
			g.image = true
		case "TEXT":
			g.withText = true
		}
	}
	if err := decodeField(cfg, "responseMimeType", at, &g.mimeType); err != nil {
		return err
	}
	g.mimeType = strings.ToLower(g.mimeType)
	for _, name := range []string{"responseJsonSchema", "responseSchema"} {
		if g.schema == nil {
			if err := decodeField(cfg, name, at, &g.schema); err != nil {
				return err
			}
		}
	}
	var thinking *thinkingConfig
	if raw, ok := cfg["thinkingConfig"]; ok && string(raw) != "null" {
		tc, err := fields(raw, at+".thinking_config")
		if err != nil {
			return err
		}
		thinking = &thinkingConfig{}
		for name, dst := range map[string]any{"thinkingBudget": &thinking.ThinkingBudget, "includeThoughts": &thinking.IncludeThoughts, "thinkingLevel": &thinking.ThinkingLevel} {
			if err := decodeField(tc, name, at+".thinking_config", dst); err != nil {
				return err
			}
		}
	}
	g.thoughts, g.summarize = thoughts(thinking)
	return nil
}

// thoughts is how many tokens a request thinks, and whether it asks for a thought summary. The
// models' thinking by default is not emulated: only a request that asks for thinking (a
// thinkingBudget above 0 or -1 for dynamic, includeThoughts, or a thinkingLevel) thinks, and a
// budget of 0 turns it off.
func thoughts(c *thinkingConfig) (int64, bool) {
	if c == nil {
		return 0, false
	}
	switch b := c.ThinkingBudget; {
	case b != nil && *b == 0:
		return 0, false
	case b != nil && *b > 0:
		return min(*b, ThoughtTokens), c.IncludeThoughts
	case b != nil && *b == -1, c.IncludeThoughts, c.ThinkingLevel != "":
		return ThoughtTokens, c.IncludeThoughts
	}
	return 0, false
}

// generate answers a valid GenerateContentRequest: text, JSON text or an enum value as its
// responseMimeType asks, an image if its responseModalities do, and the usage counted as the
// service counts it (cached tokens inside the prompt's, thoughts apart from the candidates').
func (m model) generate(g genRequest) (generateResponse, error) {
	var (
		parts     []part
		answered  int64
		promptTok = tokens(g.text)
	)
	if g.summarize {
		parts = append(parts, part{Text: "emulated thoughts about: " + head(g.text), Thought: true})
	}
	if g.withText || !g.image {
		out, err := g.answerText()
		if err != nil {
			return generateResponse{}, err
		}
		parts = append(parts, part{Text: out})
		answered += tokens(out)
	}
	if g.image {
		parts = append(parts, part{InlineData: &blob{MimeType: "image/png", Data: ExpectedImage(g.text, m.imageSize(g.text))}})
		answered += imageTokens
	}
	usage := gemini.UsageMetadata{PromptTokenCount: promptTok, CandidatesTokenCount: answered, ThoughtsTokenCount: g.thoughts}
	if g.cached {
		usage.CachedContentTokenCount = CachedContentTokens
		usage.PromptTokenCount += CachedContentTokens
	}
	usage.TotalTokenCount = usage.PromptTokenCount + usage.CandidatesTokenCount + usage.ThoughtsTokenCount
	return generateResponse{
		Candidates:    []candidate{{Content: content{Parts: parts, Role: "model"}, FinishReason: "STOP"}},
		UsageMetadata: usage,
		ModelVersion:  strings.TrimPrefix(m.name, "models/"),
	}, nil
}

// answerText is the text part: JSON valid against the schema for application/json, one of the
// schema's enum values for text/x.enum, else the reply of ExpectedText.
func (g genRequest) answerText() (string, error) {
	seed := sha256.Sum256([]byte(g.text))
	switch {
	case g.mimeType == "text/x.enum" && g.schema != nil:
		v, err := fakeJSON(g.schema, seed)
		if err != nil {
			return "", err
		}
		if s, err := strconv.Unquote(v); err == nil {
			return s, nil
		}
		return v, nil
	case g.schema != nil:
		return fakeJSON(g.schema, seed)
	case g.mimeType == "application/json":
		b, err := json.Marshal(map[string]string{"text": reply(g.text)})
		return string(b), err
	}
	return reply(g.text), nil
}

// imageSize is the size asked by an image directive in the text, else the model's.
func (m model) imageSize(text string) int {
	if d := imageDirective.FindStringSubmatch(text); d != nil {
		if n, err := strconv.Atoi(d[1]); err == nil {
			return min(max(n, 1), MaxImageBytes)
		}
	}
	if m.imageBytes > 0 {
		return m.imageBytes
	}
	return DefaultImageBytes
}
