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

// The top-level fields of the two request kinds; the service refuses any other. The generate
// fields are those the official SDKs send to the Gemini API (go-genai, @google/genai 3.x).
var (
	generateFields = []string{"model", "contents", "tools", "toolConfig", "safetySettings", "systemInstruction",
		"generationConfig", "cachedContent", "serviceTier", "labels", "store", "continuationToken"}
	embedFields = []string{"model", "content", "taskType", "title", "outputDimensionality"}
)

// inputContent is a Content of a request; only its text is read.
type inputContent struct {
	Parts []struct {
		Text string `json:"text"`
	} `json:"parts"`
}

type part struct {
	Text       string `json:"text,omitempty"`
	InlineData *blob  `json:"inlineData,omitempty"`
	Thought    bool   `json:"thought,omitempty"`
}

// blob is inline data; Data encodes as standard base64, as the service sends it.
type blob struct {
	MimeType string `json:"mimeType"`
	Data     []byte `json:"data"`
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

// ExpectedText is the text the emulator answers for a GenerateContentRequest that asks for
// plain text: "emulated: ", the first 64 characters of the request's text parts (joined by
// newlines), " #" and 8 hex digits of the SHA-256 of the whole text. Requests for JSON or
// images are answered as emulator/README.md says.
func ExpectedText(request json.RawMessage) string {
	g, _ := generateInput(request) // an invalid request is answered with an error, not a text
	return reply(g.text)
}

// ExpectedEmbedding is the vector the emulator answers for an EmbedContentRequest: unit length,
// outputDimensionality values long (16 if unset), seeded by the SHA-256 of the text parts.
func ExpectedEmbedding(request json.RawMessage) []float32 {
	text, dims, _ := embedInput(request)
	return vector(text, dims)
}

// model is what the emulated model needs besides the request: the batch's model, the size of
// its images, and the count of directed failures.
type model struct {
	name       string
	imageBytes int
	// directed counts an answer to a text whose directive fails only a number of times, and
	// reports whether this one fails.
	directed func(text string, times int) bool
}

// answer is the emulated model's answer to one request of a batch: a response, or the per-item
// error the service would give.
func (m model) answer(kind gemini.Kind, request json.RawMessage, fail bool) (json.RawMessage, *gemini.Status) {
	var (
		g    genRequest
		dims int
		err  error
	)
	switch {
	case len(request) == 0:
		err = errorf("* request: request is not specified")
	case kind == gemini.KindEmbed:
		g.text, dims, err = embedInput(request)
	default:
		g, err = generateInput(request)
	}
	if err != nil {
		return nil, &gemini.Status{Code: gemini.CodeInvalidArgument, Message: err.Error()}
	}
	if d := directive.FindStringSubmatch(g.text); d != nil {
		if code, err := strconv.Atoi(d[1]); err == nil && code > 0 && code <= gemini.CodeUnauthenticated && directedNow(g.text, d[2], m.directed) {
			return nil, &gemini.Status{Code: code, Message: fmt.Sprintf("%s: failed as the request asked (%s).", gemini.CodeName(code), d[0])}
		}
	}
	if fail {
		return nil, &gemini.Status{Code: gemini.CodeInternal, Message: "INTERNAL: emulated item failure (item error rate)."}
	}
	var resp any
	if kind == gemini.KindEmbed {
		var e embedResponse
		e.Embedding.Values = vector(g.text, dims)
		resp = e
	} else if resp, err = m.generate(g); err != nil {
		return nil, &gemini.Status{Code: gemini.CodeInvalidArgument, Message: err.Error()}
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
	return "emulated: " + head(text) + " #" + hex.EncodeToString(sum[:4])
}

// head is the first replyHeadRunes characters of text.
func head(text string) string {
	n := 0
	for i := range text {
		if n == replyHeadRunes {
			return text[:i]
		}
		n++
	}
	return text
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
