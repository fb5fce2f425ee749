package sdktest

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"image/png"
	"math"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"google.golang.org/genai"

	"github.com/gembatch/gembatch/emulator"
)

const (
	model      = "gemini-2.5-flash"
	imageBytes = 200_000
)

// newClient starts an emulator in-process and returns the official client pointed at it,
// changing nothing but the base URL (apiVersion "" keeps the SDK's default, v1beta).
func newClient(t *testing.T, opts emulator.Options, apiVersion string) (*genai.Client, *emulator.Server) {
	t.Helper()
	emu := emulator.New(opts)
	srv := httptest.NewServer(emu)
	t.Cleanup(func() {
		srv.Close()
		emu.Close()
	})
	c, err := genai.NewClient(context.Background(), &genai.ClientConfig{
		APIKey:      "emulator-key",
		Backend:     genai.BackendGeminiAPI,
		HTTPClient:  srv.Client(),
		HTTPOptions: genai.HTTPOptions{BaseURL: srv.URL, APIVersion: apiVersion},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c, emu
}

// wait polls a job until it has ended, failing after a bounded time.
func wait(t *testing.T, c *genai.Client, name string) *genai.BatchJob {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		job, err := c.Batches.Get(context.Background(), name, nil)
		if err != nil {
			t.Fatalf("get %s: %v", name, err)
		}
		switch job.State {
		case genai.JobStateSucceeded, genai.JobStateFailed, genai.JobStateCancelled, genai.JobStateExpired:
			return job
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still %s", name, job.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func prompt(text string) []*genai.Content { return genai.Text(text) }

// textOf is an answer's text without its thoughts.
func textOf(t *testing.T, r *genai.GenerateContentResponse) string {
	t.Helper()
	if r == nil || len(r.Candidates) == 0 || r.Candidates[0].Content == nil {
		t.Fatalf("response without a candidate: %+v", r)
	}
	var b strings.Builder
	for _, p := range r.Candidates[0].Content.Parts {
		if !p.Thought {
			b.WriteString(p.Text)
		}
	}
	return b.String()
}

func byKey(t *testing.T, job *genai.BatchJob) map[string]*genai.InlinedResponse {
	t.Helper()
	if job.Dest == nil {
		t.Fatalf("job %s has no dest", job.Name)
	}
	out := make(map[string]*genai.InlinedResponse)
	for _, r := range job.Dest.InlinedResponses {
		if r.Error != nil {
			t.Errorf("item %v failed: %+v", r.Metadata, r.Error)
		}
		out[r.Metadata["key"]] = r
	}
	return out
}

func i64(v int64) *int64 { return &v }

func f64(v float64) *float64 { return &v }

// TestInlineJSONAndThinking: an inline batch whose JSON answers a JSON-schema validator accepts,
// for an OpenAPI responseSchema and a JSON Schema responseJsonSchema, and thinking counted apart.
func TestInlineJSONAndThinking(t *testing.T) {
	c, _ := newClient(t, emulator.Options{JobDelay: 200 * time.Millisecond}, "")
	review := &genai.Schema{
		Type: genai.TypeObject,
		Properties: map[string]*genai.Schema{
			"title":  {Type: genai.TypeString},
			"rating": {Type: genai.TypeInteger, Minimum: f64(1), Maximum: f64(5)},
			"genre":  {Type: genai.TypeString, Enum: []string{"drama", "comedy"}},
			"tags":   {Type: genai.TypeArray, MinItems: i64(3), Items: &genai.Schema{Type: genai.TypeString}},
			"author": {Type: genai.TypeObject, Required: []string{"name"}, Properties: map[string]*genai.Schema{
				"name": {Type: genai.TypeString}, "alive": {Type: genai.TypeBoolean},
			}},
		},
		Required: []string{"title", "rating", "genre", "tags", "author"},
	}
	plan := map[string]any{
		"$defs": map[string]any{"step": map[string]any{
			"type": "object", "additionalProperties": false,
			"properties": map[string]any{
				"n":    map[string]any{"type": "integer", "exclusiveMinimum": 0},
				"kind": map[string]any{"enum": []any{"read", "write"}},
			},
			"required": []any{"n", "kind"},
		}},
		"type":       "object",
		"properties": map[string]any{"steps": map[string]any{"type": "array", "minItems": 2, "items": map[string]any{"$ref": "#/$defs/step"}}},
		"required":   []any{"steps"},
	}
	budget := int32(100)
	job, err := c.Batches.Create(context.Background(), model, &genai.BatchJobSource{InlinedRequests: []*genai.InlinedRequest{
		{Contents: prompt("hello"), Metadata: map[string]string{"key": "text"}},
		{Contents: prompt("review"), Metadata: map[string]string{"key": "review"},
			Config: &genai.GenerateContentConfig{ResponseMIMEType: "application/json", ResponseSchema: review}},
		{Contents: prompt("plan"), Metadata: map[string]string{"key": "plan"},
			Config: &genai.GenerateContentConfig{ResponseMIMEType: "application/json", ResponseJsonSchema: plan}},
		{Contents: prompt("think"), Metadata: map[string]string{"key": "think"},
			Config: &genai.GenerateContentConfig{ServiceTier: genai.ServiceTierFlex,
				ThinkingConfig: &genai.ThinkingConfig{ThinkingBudget: &budget, IncludeThoughts: true}}},
	}}, &genai.CreateBatchJobConfig{DisplayName: "go-inline"})
	if err != nil {
		t.Fatal(err)
	}
	job = wait(t, c, job.Name)
	if job.State != genai.JobStateSucceeded {
		t.Fatalf("job ended %s", job.State)
	}
	got := byKey(t, job)
	if text := textOf(t, got["text"].Response); !strings.HasPrefix(text, "emulated: hello #") {
		t.Errorf("text answer %q", text)
	}
	validate(t, openAPISchema(t, review), textOf(t, got["review"].Response))
	validate(t, plan, textOf(t, got["plan"].Response))

	u := got["think"].Response.UsageMetadata
	if u.ThoughtsTokenCount != 100 || u.TotalTokenCount != u.PromptTokenCount+u.CandidatesTokenCount+u.ThoughtsTokenCount {
		t.Errorf("thinking usage %+v", u)
	}
	if parts := got["think"].Response.Candidates[0].Content.Parts; !parts[0].Thought {
		t.Errorf("includeThoughts gave no thought part first: %+v", parts[0])
	}
}

// validate checks JSON text against a JSON Schema (decoded JSON) with a JSON-schema validator.
func validate(t *testing.T, schema any, text string) {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(mustJSON(t, schema)))
	if err != nil {
		t.Fatal(err)
	}
	comp := jsonschema.NewCompiler()
	if err := comp.AddResource("schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := comp.Compile("schema.json")
	if err != nil {
		t.Fatalf("compile %s: %v", mustJSON(t, schema), err)
	}
	v, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
	if err != nil {
		t.Fatalf("answer %q is not JSON: %v", text, err)
	}
	if err := sch.Validate(v); err != nil {
		t.Errorf("answer %s breaks its schema: %v", text, err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// openAPISchema turns a genai.Schema (OpenAPI subset, upper-case types) into JSON Schema.
func openAPISchema(t *testing.T, s *genai.Schema) any {
	t.Helper()
	var m any
	if err := json.Unmarshal([]byte(mustJSON(t, s)), &m); err != nil {
		t.Fatal(err)
	}
	var conv func(v any) any
	conv = func(v any) any {
		obj, ok := v.(map[string]any)
		if !ok {
			return v
		}
		out := make(map[string]any)
		for k, x := range obj {
			switch k {
			case "type":
				out[k] = strings.ToLower(x.(string))
			case "properties":
				props := make(map[string]any)
				for name, p := range x.(map[string]any) {
					props[name] = conv(p)
				}
				out[k] = props
			case "items":
				out[k] = conv(x)
			case "minItems", "maxItems", "minLength", "maxLength": // int64 travel as strings
				out[k] = number(t, x)
			case "propertyOrdering", "nullable":
			default:
				out[k] = x
			}
		}
		return out
	}
	return conv(m)
}

func number(t *testing.T, v any) float64 {
	t.Helper()
	switch n := v.(type) {
	case float64:
		return n
	case string:
		var f float64
		if err := json.Unmarshal([]byte(n), &f); err != nil {
			t.Fatalf("count %q: %v", n, err)
		}
		return f
	}
	t.Fatalf("count %v is no number", v)
	return 0
}

// TestFileBatch: upload a JSONL file, create a batch from it, download its result file.
func TestFileBatch(t *testing.T) {
	c, _ := newClient(t, emulator.Options{JobDelay: 200 * time.Millisecond}, "")
	ctx := context.Background()
	var in bytes.Buffer
	for _, key := range []string{"one", "two", "three"} {
		in.WriteString(`{"key":"` + key + `","request":{"contents":[{"parts":[{"text":"` + key + `"}]}],"cachedContent":"cachedContents/c","serviceTier":"flex"}}` + "\n")
	}
	size := in.Len()
	f, err := c.Files.Upload(ctx, &in, &genai.UploadFileConfig{MIMEType: "jsonl", DisplayName: "go-input"})
	if err != nil {
		t.Fatal(err)
	}
	if f.SizeBytes == nil || *f.SizeBytes != int64(size) {
		t.Errorf("uploaded file %+v, want %d bytes", f, size)
	}
	job, err := c.Batches.Create(ctx, model, &genai.BatchJobSource{FileName: f.Name}, &genai.CreateBatchJobConfig{DisplayName: "go-file"})
	if err != nil {
		t.Fatal(err)
	}
	job = wait(t, c, job.Name)
	if job.State != genai.JobStateSucceeded || job.Dest == nil || !strings.HasPrefix(job.Dest.FileName, "files/batch-") {
		t.Fatalf("file job ended %s with dest %+v", job.State, job.Dest)
	}
	data, err := c.Files.Download(ctx, genai.NewDownloadURIFromFile(&genai.File{DownloadURI: job.Dest.FileName}), nil)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var r struct {
			Key      string
			Response genai.GenerateContentResponse
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("result line %q: %v", line, err)
		}
		keys = append(keys, r.Key)
		if u := r.Response.UsageMetadata; u == nil || u.CachedContentTokenCount != emulator.CachedContentTokens {
			t.Errorf("%s: usage %+v, want %d cached tokens", r.Key, u, emulator.CachedContentTokens)
		}
	}
	if !slices.Equal(keys, []string{"one", "two", "three"}) {
		t.Errorf("result keys %v", keys)
	}
}

// TestEmbeddingsBatch: an inline embeddings batch answers unit vectors of the size asked.
func TestEmbeddingsBatch(t *testing.T) {
	c, _ := newClient(t, emulator.Options{JobDelay: 200 * time.Millisecond}, "")
	dims := int32(8)
	embedModel := "gemini-embedding-001"
	job, err := c.Batches.CreateEmbeddings(context.Background(), &embedModel, &genai.EmbeddingsBatchJobSource{
		InlinedRequests: &genai.EmbedContentBatch{
			Contents: []*genai.Content{genai.NewContentFromText("alpha", genai.RoleUser), genai.NewContentFromText("beta", genai.RoleUser)},
			Config:   &genai.EmbedContentConfig{OutputDimensionality: &dims},
		},
	}, &genai.CreateEmbeddingsBatchJobConfig{DisplayName: "go-embed"})
	if err != nil {
		t.Fatal(err)
	}
	job = wait(t, c, job.Name)
	if job.State != genai.JobStateSucceeded || job.Dest == nil {
		t.Fatalf("embed job ended %s", job.State)
	}
	answers := job.Dest.InlinedEmbedContentResponses
	if len(answers) != 2 {
		t.Fatalf("%d embeddings, want 2: %+v", len(answers), job.Dest)
	}
	for _, a := range answers {
		v := a.Response.Embedding.Values
		var norm float64
		for _, x := range v {
			norm += float64(x) * float64(x)
		}
		if len(v) != 8 || math.Abs(norm-1) > 1e-4 {
			t.Errorf("embedding of %d values, norm² %v", len(v), norm)
		}
	}
}

// TestImageBatch: an image batch's answer is a PNG that decodes to the emulator's size.
func TestImageBatch(t *testing.T) {
	c, _ := newClient(t, emulator.Options{JobDelay: 200 * time.Millisecond, ImageBytes: imageBytes}, "")
	job, err := c.Batches.Create(context.Background(), "gemini-2.5-flash-image", &genai.BatchJobSource{InlinedRequests: []*genai.InlinedRequest{
		{Contents: prompt("a lighthouse at dawn"), Metadata: map[string]string{"key": "img"},
			Config: &genai.GenerateContentConfig{ResponseModalities: []string{"TEXT", "IMAGE"}}},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	job = wait(t, c, job.Name)
	resp := byKey(t, job)["img"].Response
	var img []byte
	for _, p := range resp.Candidates[0].Content.Parts {
		if p.InlineData != nil && p.InlineData.MIMEType == "image/png" {
			img = p.InlineData.Data
		}
	}
	if textOf(t, resp) == "" || img == nil {
		t.Fatalf("want a text part and a PNG part: %+v", resp.Candidates[0].Content.Parts)
	}
	if !bytes.HasPrefix(img, []byte("\x89PNG\r\n\x1a\n")) || string(img[12:16]) != "IHDR" {
		t.Fatalf("no PNG signature and IHDR: % x", img[:16])
	}
	side := emulator.ImageSide(imageBytes)
	if w, h := binary.BigEndian.Uint32(img[16:20]), binary.BigEndian.Uint32(img[20:24]); int(w) != side || int(h) != side {
		t.Errorf("IHDR %dx%d, want %dx%d", w, h, side, side)
	}
	decoded, err := png.Decode(bytes.NewReader(img))
	if err != nil || decoded.Bounds().Dx() != side {
		t.Fatalf("decode: %v", err)
	}
}

// TestListCancelDelete: list pages newest first; cancel ends a job CANCELLED; delete removes it
// from get and from the list.
func TestListCancelDelete(t *testing.T) {
	c, _ := newClient(t, emulator.Options{JobDelay: time.Hour}, "")
	ctx := context.Background()
	var made []string
	for i := range 5 {
		job, err := c.Batches.Create(ctx, model, &genai.BatchJobSource{InlinedRequests: []*genai.InlinedRequest{
			{Contents: prompt("list " + string(rune('a'+i)))}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, job.Name)
	}
	listed := listAll(t, c, 2)
	if want := slices.Clone(made); !slices.Equal(listed, reversed(want)) {
		t.Errorf("listed %v, want newest first %v", listed, reversed(want))
	}

	victim := made[2]
	if err := c.Batches.Cancel(ctx, victim, nil); err != nil {
		t.Fatal(err)
	}
	if job, err := c.Batches.Get(ctx, victim, nil); err != nil || job.State != genai.JobStateCancelled {
		t.Fatalf("after cancel: %v %v", job, err)
	}
	if _, err := c.Batches.Delete(ctx, victim, nil); err != nil {
		t.Fatal(err)
	}
	var apiErr genai.APIError
	if _, err := c.Batches.Get(ctx, victim, nil); !errors.As(err, &apiErr) || apiErr.Code != 404 {
		t.Errorf("get after delete: %v, want a 404", err)
	}
	if after := listAll(t, c, 3); slices.Contains(after, victim) || len(after) != 4 {
		t.Errorf("list after delete %v", after)
	}
}

func listAll(t *testing.T, c *genai.Client, pageSize int32) []string {
	t.Helper()
	ctx := context.Background()
	page, err := c.Batches.List(ctx, &genai.ListBatchJobsConfig{PageSize: pageSize})
	var names []string
	for pages := 0; err == nil; pages++ {
		if len(page.Items) > int(pageSize) || pages > 10 {
			t.Fatalf("page of %d (page %d)", len(page.Items), pages)
		}
		for _, job := range page.Items {
			names = append(names, job.Name)
		}
		page, err = page.Next(ctx)
	}
	if !errors.Is(err, genai.ErrPageDone) {
		t.Fatal(err)
	}
	return names
}

func reversed(s []string) []string {
	slices.Reverse(s)
	return s
}

// TestAPIVersions: the same client calls work with the SDK told to use v1 or v1alpha.
func TestAPIVersions(t *testing.T) {
	for _, v := range []string{"v1", "v1alpha"} {
		t.Run(v, func(t *testing.T) {
			c, _ := newClient(t, emulator.Options{}, v)
			job, err := c.Batches.Create(context.Background(), model, &genai.BatchJobSource{InlinedRequests: []*genai.InlinedRequest{
				{Contents: prompt("hi"), Metadata: map[string]string{"key": "k"}}}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if job = wait(t, c, job.Name); job.State != genai.JobStateSucceeded || len(byKey(t, job)) != 1 {
				t.Errorf("job under %s ended %s", v, job.State)
			}
			if names := listAll(t, c, 10); !slices.Equal(names, []string{job.Name}) {
				t.Errorf("list under %s: %v", v, names)
			}
		})
	}
}
