package emulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gembatch/gembatch/gemini"
)

// oldParseCreate is parseCreate as it was before it read the body in one pass: a
// json.Unmarshal into a map at every level, each re-validating the whole subtree. It is the
// oracle the one-pass parser is held to, and the baseline of BenchmarkParseCreate.
func oldParseCreate(body []byte) (createSpec, error) {
	var spec createSpec
	top, err := oldFields(body, "", "batch")
	if err != nil {
		return spec, err
	}
	if top["batch"] == nil {
		return spec, errorf("* batch: batch is not specified")
	}
	b, err := oldFields(top["batch"], "batch", batchFields...)
	if err != nil {
		return spec, err
	}
	var prio gemini.Int64
	if err := oldDecodeField(b, "displayName", "batch", &spec.displayName); err != nil {
		return spec, err
	}
	if err := oldDecodeField(b, "priority", "batch", &prio); err != nil {
		return spec, err
	}
	spec.priority = int64(prio)
	if b["inputConfig"] == nil {
		return spec, errorf("* batch.input_config: input_config is not specified")
	}
	in, err := oldFields(b["inputConfig"], "batch.input_config", "fileName", "requests")
	if err != nil {
		return spec, err
	}
	if err := oldDecodeField(in, "fileName", "batch.input_config", &spec.fileName); err != nil {
		return spec, err
	}
	if (spec.fileName == "") == (in["requests"] == nil) {
		return spec, errorf("* batch.input_config: exactly one of file_name and requests must be set")
	}
	if spec.fileName != "" {
		return spec, nil
	}
	reqs, err := oldFields(in["requests"], "batch.input_config.requests", "requests")
	if err != nil {
		return spec, err
	}
	var items []json.RawMessage
	if err := oldDecodeField(reqs, "requests", "batch.input_config.requests", &items); err != nil {
		return spec, err
	}
	if len(items) == 0 {
		return spec, errorf("* batch.input_config.requests.requests: requests is not specified")
	}
	for i, raw := range items {
		at := fmt.Sprintf("batch.input_config.requests.requests[%d]", i)
		item, err := oldFields(raw, at, "request", "metadata")
		if err != nil {
			return spec, err
		}
		var md map[string]any
		if err := oldDecodeField(item, "metadata", at, &md); err != nil {
			return spec, err
		}
		req := gemini.InlinedRequest{Request: item["request"]}
		if md != nil {
			key, _ := md["key"].(string)
			req.Metadata = &gemini.RequestMetadata{Key: key}
		}
		spec.requests = append(spec.requests, req)
	}
	return spec, nil
}

func oldFields(raw json.RawMessage, at string, allowed ...string) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, errorf("Invalid JSON payload received%s: %v", where(at), err)
	}
	out := make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		k = camel(k)
		if len(allowed) > 0 && !slices.Contains(allowed, k) {
			return nil, errorf("Invalid JSON payload received. Unknown name %q%s: Cannot find field.", k, where(at))
		}
		out[k] = v
	}
	return out, nil
}

func oldDecodeField(m map[string]json.RawMessage, key, at string, dst any) error {
	raw, ok := m[key]
	if !ok || string(raw) == "null" {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return errorf("Invalid value at '%s.%s': %v", at, key, err)
	}
	return nil
}

// create wraps items (the inside of requests.requests) in a create body.
func create(items string) string {
	return `{"batch":{"inputConfig":{"requests":{"requests":[` + items + `]}}}}`
}

// deep is the nesting inside an item's request that brings a create body to encoding/json's
// limit of 10,000 levels.
const deep = 9994

// nest is n arrays, one inside the other.
func nest(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }

// refusals are bodies parseCreate refuses, with the service's words for each, as the parser
// that decoded the body level by level worded them.
var refusals = []struct{ body, err string }{
	{``, `Invalid JSON payload received: unexpected end of JSON input`},
	{`{"batch":`, `Invalid JSON payload received: unexpected end of JSON input`},
	{`{"batch":{}} x`, `Invalid JSON payload received: invalid character 'x' after top-level value`},
	{`{"bogus":1,"batch":{"inputConfig":{"fileName":"f"}}`, `Invalid JSON payload received: unexpected end of JSON input`},
	{create(`{"request":{"a":[1,]}}`), `Invalid JSON payload received: invalid character ']' looking for beginning of value`},
	{create("{\"request\":\"\xff\\u12g4\"}"), `Invalid JSON payload received: invalid character 'g' in \u hexadecimal character escape`},
	{create(`{"request":` + nest(deep+1) + `}`), `Invalid JSON payload received: invalid character '[' exceeded max depth`},
	{`{"batch":{"inputConfig":{"requests":{"requests":[{}]}},"webhookConfig":` + nest(9999) + `}}`, `Invalid JSON payload received: invalid character '[' exceeded max depth`},
	{`{"batch":{"inputConfig":{"requests":{"requests":[{}] x}}}}`, `Invalid JSON payload received: invalid character 'x' after object key:value pair`},
	{create(`{} {}`), `Invalid JSON payload received: invalid character '{' after array element`},
	{create(`{},`), `Invalid JSON payload received: invalid character ']' looking for beginning of value`},
	{`{"batch":{"inputConfig":{"requests":{"requests":[{}`, `Invalid JSON payload received: unexpected end of JSON input`},
	{`[]`, `Invalid JSON payload received: json: cannot unmarshal array into Go value of type map[string]json.RawMessage`},
	{`"x"`, `Invalid JSON payload received: json: cannot unmarshal string into Go value of type map[string]json.RawMessage`},
	{`null`, `* batch: batch is not specified`},
	{`{}`, `* batch: batch is not specified`},
	{`{"bogus":1}`, `Invalid JSON payload received. Unknown name "bogus": Cannot find field.`},
	{`{"batch":{"inputConfig":{"fileName":"f"}},"the_thing":1}`, `Invalid JSON payload received. Unknown name "theThing": Cannot find field.`},
	{`{"batch":5}`, `Invalid JSON payload received at 'batch': json: cannot unmarshal number into Go value of type map[string]json.RawMessage`},
	{`{"batch":[{"inputConfig":{}}]}`, `Invalid JSON payload received at 'batch': json: cannot unmarshal array into Go value of type map[string]json.RawMessage`},
	{`{"batch":null}`, `* batch.input_config: input_config is not specified`},
	{`{"batch":{"displayName":"x"}}`, `* batch.input_config: input_config is not specified`},
	{`{"batch":{"foo_bar":1,"inputConfig":{"fileName":"f"}}}`, `Invalid JSON payload received. Unknown name "fooBar" at 'batch': Cannot find field.`},
	{`{"batch":{"Model":"m","inputConfig":{"fileName":"f"}}}`, `Invalid JSON payload received. Unknown name "Model" at 'batch': Cannot find field.`},
	{`{"batch":{"b\u00e9":1,"inputConfig":{"fileName":"f"}}}`, `Invalid JSON payload received. Unknown name "bé" at 'batch': Cannot find field.`},
	{"{\"batch\":{\"b\xff\":1,\"inputConfig\":{\"fileName\":\"f\"}}}", "Invalid JSON payload received. Unknown name \"b\ufffd\" at 'batch': Cannot find field."},
	{`{"batch":{"displayName":5,"inputConfig":{"fileName":"f"}}}`, `Invalid value at 'batch.displayName': json: cannot unmarshal number into Go value of type string`},
	{`{"batch":{"inputConfig":{"fileName":"f"},"displayName":5,"frob":1}}`, `Invalid JSON payload received. Unknown name "frob" at 'batch': Cannot find field.`},
	{`{"batch":{"priority":"high","inputConfig":{"fileName":"f"}}}`, `Invalid value at 'batch.priority': gemini: int64 value "high": strconv.ParseInt: parsing "high": invalid syntax`},
	{`{"batch":{"priority":1.5,"displayName":[]}}`, `Invalid value at 'batch.displayName': json: cannot unmarshal array into Go value of type string`},
	{`{"batch":{"priority":{},"inputConfig":{"fileName":"f"}}}`, `Invalid value at 'batch.priority': gemini: int64 value "{}": strconv.ParseInt: parsing "{}": invalid syntax`},
	{`{"batch":{"priority":"1e3"}}`, `Invalid value at 'batch.priority': gemini: int64 value "1e3": strconv.ParseInt: parsing "1e3": invalid syntax`},
	{`{"batch":{"inputConfig":null}}`, `* batch.input_config: exactly one of file_name and requests must be set`},
	{`{"batch":{"inputConfig":{}}}`, `* batch.input_config: exactly one of file_name and requests must be set`},
	{`{"batch":{"inputConfig":{"fileName":""}}}`, `* batch.input_config: exactly one of file_name and requests must be set`},
	{`{"batch":{"inputConfig":{"fileName":null}}}`, `* batch.input_config: exactly one of file_name and requests must be set`},
	{`{"batch":{"inputConfig":{"fileName":"f","requests":null}}}`, `* batch.input_config: exactly one of file_name and requests must be set`},
	{`{"batch":{"inputConfig":{"file_name":"f","requests":{"requests":[{}]}}}}`, `* batch.input_config: exactly one of file_name and requests must be set`},
	{`{"batch":{"inputConfig":[]}}`, `Invalid JSON payload received at 'batch.input_config': json: cannot unmarshal array into Go value of type map[string]json.RawMessage`},
	{`{"batch":{"inputConfig":{"gcsUri":"gs://x"}}}`, `Invalid JSON payload received. Unknown name "gcsUri" at 'batch.input_config': Cannot find field.`},
	{`{"batch":{"inputConfig":{"fileName":5}}}`, `Invalid value at 'batch.input_config.fileName': json: cannot unmarshal number into Go value of type string`},
	{`{"batch":{"inputConfig":{"requests":{"requests":[5]},"x":1}}}`, `Invalid JSON payload received. Unknown name "x" at 'batch.input_config': Cannot find field.`},
	{`{"batch":{"inputConfig":{"requests":5}}}`, `Invalid JSON payload received at 'batch.input_config.requests': json: cannot unmarshal number into Go value of type map[string]json.RawMessage`},
	{`{"batch":{"inputConfig":{"requests":null}}}`, `* batch.input_config.requests.requests: requests is not specified`},
	{`{"batch":{"inputConfig":{"requests":{}}}}`, `* batch.input_config.requests.requests: requests is not specified`},
	{`{"batch":{"inputConfig":{"requests":{"requests":null}}}}`, `* batch.input_config.requests.requests: requests is not specified`},
	{create(``), `* batch.input_config.requests.requests: requests is not specified`},
	{`{"batch":{"inputConfig":{"requests":{"requests":{}}}}}`, `Invalid value at 'batch.input_config.requests.requests': json: cannot unmarshal object into Go value of type []json.RawMessage`},
	{`{"batch":{"inputConfig":{"requests":{"requests":"x"}}}}`, `Invalid value at 'batch.input_config.requests.requests': json: cannot unmarshal string into Go value of type []json.RawMessage`},
	{`{"batch":{"inputConfig":{"requests":{"requests":[5],"other":1}}}}`, `Invalid JSON payload received. Unknown name "other" at 'batch.input_config.requests': Cannot find field.`},
	{create(`{"request":{}},5`), `Invalid JSON payload received at 'batch.input_config.requests.requests[1]': json: cannot unmarshal number into Go value of type map[string]json.RawMessage`},
	{create(`[],{"x":1}`), `Invalid JSON payload received at 'batch.input_config.requests.requests[0]': json: cannot unmarshal array into Go value of type map[string]json.RawMessage`},
	{create(`{"request":{},"x":1}`), `Invalid JSON payload received. Unknown name "x" at 'batch.input_config.requests.requests[0]': Cannot find field.`},
	{create(`{"request":{},"Metadata":{}}`), `Invalid JSON payload received. Unknown name "Metadata" at 'batch.input_config.requests.requests[0]': Cannot find field.`},
	{create(`{"request":{},"metadata":"k"}`), `Invalid value at 'batch.input_config.requests.requests[0].metadata': json: cannot unmarshal string into Go value of type map[string]interface {}`},
	{create(`{},{},{"metadata":[]}`), `Invalid value at 'batch.input_config.requests.requests[2].metadata': json: cannot unmarshal array into Go value of type map[string]interface {}`},
	{create(`{"metadata":{"key":"a","n":1e400}}`), `Invalid value at 'batch.input_config.requests.requests[0].metadata': json: cannot unmarshal number 1e400 into Go value of type float64`},
	{create(`{"metadata":{"key":"a","n":{"m":[-1e999]}}}`), `Invalid value at 'batch.input_config.requests.requests[0].metadata': json: cannot unmarshal number -1e999 into Go value of type float64`},
	{create(`{"metadata":{"key":"a"},"x":1},{"y":1}`), `Invalid JSON payload received. Unknown name "x" at 'batch.input_config.requests.requests[0]': Cannot find field.`},
}

// acceptances are bodies parseCreate reads, with what it reads from each.
var acceptances = []struct {
	body string
	want createSpec
}{
	{`{"batch":{"displayName":"d","priority":"7","inputConfig":{"fileName":"files/abc"}}}`,
		createSpec{displayName: "d", priority: 7, fileName: "files/abc"}},
	{`{"batch":{"display_name":"d\u00e9\n","priority":-3,"input_config":{"file_name":"files/abc"}}}`,
		createSpec{displayName: "dé\n", priority: -3, fileName: "files/abc"}},
	{"{\"batch\":{\"displayName\":\"a\xffb\",\"priority\":\"\",\"inputConfig\":{\"fileName\":\"f\"}}}",
		createSpec{displayName: "a\ufffdb", fileName: "f"}},
	{`{"batch":{"displayName":null,"priority":null,"inputConfig":{"fileName":"f"},"name":"batches/x","model":"m",` +
		`"state":"BATCH_STATE_RUNNING","batchStats":{"requestCount":"3"},"output":{},"createTime":1,"endTime":null,` +
		`"updateTime":[],"webhookConfig":{"uris":[]}}}`,
		createSpec{fileName: "f"}},
	{`{"batch":{"displayName":"first","display_name":"x","inputConfig":{"fileName":"f"}},"batch":{"inputConfig":{"fileName":"g"}}}`,
		createSpec{fileName: "g"}},
	{` { "batch" : { "inputConfig" : { "requests" : { "requests" : [ { "request" : { "a" : [ 1 , 2 ] } , "metadata" : { "key" : "k1" } } , null ] } } } } `,
		createSpec{requests: []gemini.InlinedRequest{
			{Request: json.RawMessage(`{ "a" : [ 1 , 2 ] }`), Metadata: &gemini.RequestMetadata{Key: "k1"}},
			{},
		}}},
	{`{"batch":{"inputConfig":{"requests":{"requests":[{"request":1}],"requests":[{"request":2} , {"request":3}]},"fileName":null},"displayName":"after"}}`,
		createSpec{displayName: "after", requests: []gemini.InlinedRequest{{Request: json.RawMessage(`2`)}, {Request: json.RawMessage(`3`)}}}},
	{`{"batch":{"inputConfig":{"requests":{"requests":[5],"requests":[{}]}}}}`, createSpec{requests: []gemini.InlinedRequest{{}}}},
	{create(`{"request":null,"metadata":null},{"request":5},{"metadata":{}},{"metadata":{"key":5}},{"metadata":{"key":null}}`),
		createSpec{requests: []gemini.InlinedRequest{
			{Request: json.RawMessage(`null`)},
			{Request: json.RawMessage(`5`)},
			{Metadata: &gemini.RequestMetadata{}},
			{Metadata: &gemini.RequestMetadata{}},
			{Metadata: &gemini.RequestMetadata{}},
		}}},
	{create(`{"metadata":{"key":"a","key":"b"},"request":"r1","request":"r2"},{"metadata":{"k\u0065y":"\u00e9\"","x":true}},` +
		`{"metadata":{"key":"a","n":1.5,"o":{"p":[1,{}]}}},{"metadata":{"key":"a"},"metadata":{"key":"b\ud800"}},` +
		"{\"metadata\":{\"key\":\"\xf0\x9f\x98\x80 \xff\"}},{\"req\\u0075est\":[],\"metadata\":{\"Key\":\"no\"}}"),
		createSpec{requests: []gemini.InlinedRequest{
			{Request: json.RawMessage(`"r2"`), Metadata: &gemini.RequestMetadata{Key: "b"}},
			{Metadata: &gemini.RequestMetadata{Key: `é"`}},
			{Metadata: &gemini.RequestMetadata{Key: "a"}},
			{Metadata: &gemini.RequestMetadata{Key: "b\ufffd"}},
			{Metadata: &gemini.RequestMetadata{Key: "😀 \ufffd"}},
			{Request: json.RawMessage(`[]`), Metadata: &gemini.RequestMetadata{}},
		}}},
	{create(`{"request":` + nest(deep) + `,"metadata":{"key":"k"}}`),
		createSpec{requests: []gemini.InlinedRequest{
			{Request: json.RawMessage(nest(deep)), Metadata: &gemini.RequestMetadata{Key: "k"}},
		}}},
	{`{"batch":{"inputConfig":{"requests":{"requests":[{}]}},"webhookConfig":` + nest(9998) + `}}`,
		createSpec{requests: []gemini.InlinedRequest{{}}}},
}

func TestParseCreateRefuses(t *testing.T) {
	for _, tc := range refusals {
		if _, err := parseCreate([]byte(tc.body)); err == nil || err.Error() != tc.err {
			t.Errorf("%.200s:\n got %v\nwant %s", tc.body, err, tc.err)
		}
	}
}

func TestParseCreateReads(t *testing.T) {
	for _, tc := range acceptances {
		got, err := parseCreate([]byte(tc.body))
		if err != nil {
			t.Errorf("%.200s: %v", tc.body, err)
			continue
		}
		if d := specDiff(got, tc.want); d != "" {
			t.Errorf("%.200s: %s", tc.body, d)
		}
	}
}

// specDiff describes how two parsed creates differ, or is empty if they are the same.
func specDiff(got, want createSpec) string {
	if got.displayName != want.displayName || got.priority != want.priority || got.fileName != want.fileName {
		return fmt.Sprintf("displayName %q priority %d fileName %q, want %q %d %q",
			got.displayName, got.priority, got.fileName, want.displayName, want.priority, want.fileName)
	}
	if len(got.requests) != len(want.requests) {
		return fmt.Sprintf("%d requests, want %d", len(got.requests), len(want.requests))
	}
	for i, g := range got.requests {
		w := want.requests[i]
		if !bytes.Equal(g.Request, w.Request) || (g.Request == nil) != (w.Request == nil) {
			return fmt.Sprintf("request %d is %q, want %q", i, g.Request, w.Request)
		}
		if (g.Metadata == nil) != (w.Metadata == nil) || (g.Metadata != nil && *g.Metadata != *w.Metadata) {
			return fmt.Sprintf("request %d metadata %+v, want %+v", i, g.Metadata, w.Metadata)
		}
	}
	return ""
}

// sameAsOld holds parseCreate to oldParseCreate on body: both accept it and read the same
// spec, or both refuse it in the same words. Where the old parser's answer depended on the
// order it ranged over a map (two unknown names in one object, or a name sent both in
// camelCase and in snake_case), the new one must give one of the answers the old one gives.
func sameAsOld(t *testing.T, body []byte) {
	t.Helper()
	got, gotErr := parseCreate(body)
	var diff string
	for range 50 {
		want, wantErr := oldParseCreate(body)
		switch {
		case (gotErr == nil) != (wantErr == nil):
			diff = fmt.Sprintf("error %v, the old parser's %v", gotErr, wantErr)
		case gotErr != nil && gotErr.Error() != wantErr.Error():
			diff = fmt.Sprintf("error %q, the old parser's %q", gotErr, wantErr)
		case gotErr == nil:
			diff = specDiff(got, want)
		default:
			diff = ""
		}
		if diff == "" {
			return
		}
	}
	t.Fatalf("%.300q: %s", body, diff)
}

func TestParseCreateAgreesWithOld(t *testing.T) {
	for _, tc := range refusals {
		sameAsOld(t, []byte(tc.body))
	}
	for _, tc := range acceptances {
		sameAsOld(t, []byte(tc.body))
	}
	sameAsOld(t, inlineCreate(100, 1024))
}

func FuzzParseCreate(f *testing.F) {
	for _, tc := range refusals {
		if len(tc.body) < 1000 {
			f.Add([]byte(tc.body))
		}
	}
	for _, tc := range acceptances {
		if len(tc.body) < 1000 {
			f.Add([]byte(tc.body))
		}
	}
	f.Add(inlineCreate(3, 40))
	f.Fuzz(sameAsOld)
}

// inlineCreate is an inline create of n requests of about size bytes each, keyed, as gembatch
// sends it.
func inlineCreate(n, size int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"batch":{"displayName":"gembatch-bench","inputConfig":{"requests":{"requests":[`)
	text := strings.Repeat("lorem ipsum ", size/12)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"request":{"contents":[{"parts":[{"text":"%s \"quoted\" \u00e9"}],"role":"user"}],`+
			`"generationConfig":{"temperature":0.2}},"metadata":{"key":"request-%06d"}}`, text, i)
	}
	b.WriteString(`]}}}}`)
	return b.Bytes()
}

// BenchmarkParseCreate reads a 10,000-request inline create of 1 KiB requests (10 MB, as
// gembatch sends a full batch) and reports MB/s next to oldParseCreate's on the same body,
// timed interleaved in the same run.
func BenchmarkParseCreate(b *testing.B) {
	const n = 10000
	body := inlineCreate(n, 1024)
	var parse, old time.Duration
	for b.Loop() {
		t0 := time.Now()
		spec, err := parseCreate(body)
		if err != nil || len(spec.requests) != n {
			b.Fatalf("%d requests: %v", len(spec.requests), err)
		}
		t1 := time.Now()
		if spec, err = oldParseCreate(body); err != nil || len(spec.requests) != n {
			b.Fatalf("old: %d requests: %v", len(spec.requests), err)
		}
		parse, old = parse+t1.Sub(t0), old+time.Since(t1)
	}
	mb := float64(b.N) * float64(len(body)) / 1e6
	b.ReportMetric(mb/parse.Seconds(), "MB/s")
	b.ReportMetric(mb/old.Seconds(), "MB/s-old")
	b.ReportMetric(old.Seconds()/parse.Seconds(), "speedup-vs-old")
}
