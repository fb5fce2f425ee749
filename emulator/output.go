package emulator

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"

	"github.com/gembatch/gembatch/gemini"
)

// The emulated model: answers are a pure function of the request, so tests can predict them.
const (
	defaultDimensions = 16   // embedding size when the request sets no outputDimensionality
	maxDimensions     = 3072 // the largest the real embedding models give
	replyHeadRunes    = 64   // how much of the prompt a reply repeats
)

// directive makes an item fail with a chosen gRPC code: "[[emulator:error=13]]" every time, or
// "[[emulator:error=13,times=2]]" the first two times a request with this text is answered.
var directive = regexp.MustCompile(`\[\[emulator:error=(\d+)(?:,times=(\d+))?\]\]`)

// The top-level fields of the two request kinds; the service refuses any other.
var (
	generateFields = []string{"model", "contents", "tools", "toolConfig", "safetySettings", "systemInstruction", "generationConfig", "cachedContent"}
	embedFields    = []string{"model", "content", "taskType", "title", "outputDimensionality"}
)

type part struct {
	Text string `json:"text,omitempty"`
}

type content struct {
	Parts []part `json:"parts"`
	Role  string `json:"role,omitempty"`
}

type candidate struct {
	Content      content `json:"content"`
	FinishReason string  `json:"finishReason"`
	Index        int     `json:"index"`
}

type generateResponse struct {
	Candidates    []candidate          `json:"candidates"`
	UsageMetadata gemini.UsageMetadata `json:"usageMetadata"`
	ModelVersion  string               `json:"modelVersion"`
}

type embedResponse struct {
	Embedding struct {
		Values []float32 `json:"values"`
	} `json:"embedding"`
}

// ExpectedText is the text the emulator answers for a GenerateContentRequest: "emulated: ",
// the first 64 characters of the request's text parts (joined by newlines), " #" and 8 hex
// digits of the SHA-256 of the whole text.
func ExpectedText(request json.RawMessage) string {
	text, _ := generateInput(request) // an invalid request is answered with an error, not a text
	return reply(text)
}

// ExpectedEmbedding is the vector the emulator answers for an EmbedContentRequest: unit length,
// outputDimensionality values long (16 if unset), seeded by the SHA-256 of the text parts.
func ExpectedEmbedding(request json.RawMessage) []float32 {
	text, dims, _ := embedInput(request)
	return vector(text, dims)
}

// answer is the emulated model's answer to one request of a batch: a response, or the per-item
// error the service would give. directed counts an answer to a text whose directive fails only
// a number of times, and reports whether this one fails.
func answer(kind gemini.Kind, model string, request json.RawMessage, fail bool, directed func(text string, times int) bool) (json.RawMessage, *gemini.Status) {
	var (
		text string
		dims int
		err  error
	)
	switch {
	case len(request) == 0:
		err = errorf("* request: request is not specified")
	case kind == gemini.KindEmbed:
		text, dims, err = embedInput(request)
	default:
		text, err = generateInput(request)
	}
	if err != nil {
		return nil, &gemini.Status{Code: gemini.CodeInvalidArgument, Message: err.Error()}
	}
	if m := directive.FindStringSubmatch(text); m != nil {
		if code, err := strconv.Atoi(m[1]); err == nil && code > 0 && code <= gemini.CodeUnauthenticated && directedNow(text, m[2], directed) {
			return nil, &gemini.Status{Code: code, Message: fmt.Sprintf("%s: failed as the request asked (%s).", gemini.CodeName(code), m[0])}
		}
	}
	if fail {
		return nil, &gemini.Status{Code: gemini.CodeInternal, Message: "INTERNAL: emulated item failure (item error rate)."}
	}
	var resp any
	if kind == gemini.KindEmbed {
		var e embedResponse
		e.Embedding.Values = vector(text, dims)
		resp = e
	} else {
		out := reply(text)
		prompt, answered := tokens(text), tokens(out)
		resp = generateResponse{
			Candidates: []candidate{{Content: content{Parts: []part{{Text: out}}, Role: "model"}, FinishReason: "STOP"}},
			UsageMetadata: gemini.UsageMetadata{
				PromptTokenCount: prompt, CandidatesTokenCount: answered, TotalTokenCount: prompt + answered,
			},
			ModelVersion: strings.TrimPrefix(model, "models/"),
		}
	}
	b, err := marshal(resp)
	if err != nil { // not reached: the response types always encode
		return nil, &gemini.Status{Code: gemini.CodeInternal, Message: err.Error()}
	}
	return b, nil
}

// directedNow reports whether a valid directive fails this time: always without a count, else
// as directed says. A count too large for an int fails always.
func directedNow(text, times string, directed func(text string, times int) bool) bool {
	if times == "" {
		return true
	}
	k, err := strconv.Atoi(times)
	return err != nil || directed(text, k)
}

// generateInput checks a GenerateContentRequest as the service does and returns its text.
func generateInput(request json.RawMessage) (string, error) {
	f, err := fields(request, "", generateFields...)
	if err != nil {
		return "", err
	}
	var contents []content
	if err := decodeField(f, "contents", "request", &contents); err != nil {
		return "", err
	}
	if len(contents) == 0 {
		return "", errorf("* GenerateContentRequest.contents: contents is not specified")
	}
	var texts []string
	for _, c := range contents {
		for _, p := range c.Parts {
			texts = append(texts, p.Text)
		}
	}
	return strings.Join(texts, "\n"), nil
}

// embedInput checks an EmbedContentRequest as the service does and returns its text and the
// embedding size asked for.
func embedInput(request json.RawMessage) (text string, dims int, err error) {
	f, err := fields(request, "", embedFields...)
	if err != nil {
		return "", 0, err
	}
	var c *content
	if err := decodeField(f, "content", "request", &c); err != nil {
		return "", 0, err
	}
	if c == nil {
		return "", 0, errorf("* EmbedContentRequest.content: content is not specified")
	}
	texts := make([]string, len(c.Parts))
	for i, p := range c.Parts {
		texts[i] = p.Text
	}
	if err := decodeField(f, "outputDimensionality", "request", &dims); err != nil {
		return "", 0, err
	}
	if dims < 0 || dims > maxDimensions {
		return "", 0, errorf("* EmbedContentRequest.output_dimensionality: must be between 1 and %d", maxDimensions)
	}
	return strings.Join(texts, "\n"), dims, nil
}

func reply(text string) string {
	sum := sha256.Sum256([]byte(text))
	head, n := text, 0
	for i := range text {
		if n == replyHeadRunes {
			head = text[:i]
			break
		}
		n++
	}
	return "emulated: " + head + " #" + hex.EncodeToString(sum[:4])
}

// tokens estimates a token count the way a rule of thumb does: four bytes a token.
func tokens(s string) int64 {
	return max(1, (int64(len(s))+3)/4)
}

func vector(text string, dims int) []float32 {
	if dims <= 0 {
		dims = defaultDimensions
	}
	rng := rand.New(rand.NewChaCha8(sha256.Sum256([]byte(text))))
	raw := make([]float64, dims)
	var norm float64
	for i := range raw {
		raw[i] = rng.Float64()*2 - 1
		norm += raw[i] * raw[i]
	}
	norm = math.Sqrt(norm)
	v := make([]float32, dims)
	for i, x := range raw {
		v[i] = float32(x / norm)
	}
	return v
}
