package intake

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/gemini"
)

// benchBody is a 1 KiB GenerateContentRequest, the size the daemon's intake benchmarks send.
var benchBody = func() []byte {
	const shape = `{"contents":[{"role":"user","parts":[{"text":""}]}],"generationConfig":{"temperature":0.2}}`
	return []byte(shape[:len(shape)-len(`"}]}],"generationConfig":{"temperature":0.2}}`)] +
		strings.Repeat("lorem ipsum ", (1024-len(shape))/12) +
		`"}]}],"generationConfig":{"temperature":0.2}}`)
}()

// stdFields is what Parse used to decode with encoding/json: the baseline.
func stdFields(body []byte) error {
	var fields struct {
		Model    string          `json:"model"`
		Contents json.RawMessage `json:"contents"`
		Content  json.RawMessage `json:"content"`
	}
	return json.Unmarshal(body, &fields)
}

// BenchmarkParse parses a 1 KiB request with its headers, and reports the time next to that
// of only decoding its three fields with encoding/json, measured interleaved in the same run.
func BenchmarkParse(b *testing.B) {
	r := Rules{DefaultModel: "gemini-2.5-flash", MaxRequestBytes: 1 << 20, ReplyAllow: []string{"_INBOX.>"},
		ReplyDeny: []string{"$SYS.>", "gembatch.generate", "gembatch.embed", "gembatch.stream.>"}} // as the daemon sets them
	m := &nats.Msg{Subject: "gembatch.generate", Reply: "_INBOX.abcdefghijklmnopqrstuv.1", Data: benchBody, Header: nats.Header{}}
	m.Header.Set(HeaderKey, "request-000001")
	m.Header.Set(HeaderModel, "gemini-2.5-flash")
	now := time.Now()
	const n = 1000
	var parse, std time.Duration
	for b.Loop() {
		t0 := time.Now()
		for range n {
			if _, _, rej := Parse(&r, gemini.KindGenerate, m, now); rej != nil {
				b.Fatal(rej.Status)
			}
		}
		t1 := time.Now()
		for range n {
			if err := stdFields(benchBody); err != nil {
				b.Fatal(err)
			}
		}
		parse, std = parse+t1.Sub(t0), std+time.Since(t1)
	}
	allocs := testing.AllocsPerRun(100, func() { Parse(&r, gemini.KindGenerate, m, now) })
	b.ReportMetric(allocs, "allocs/parse")
	b.ReportMetric(float64(b.N*n*len(benchBody))/parse.Seconds()/1e6, "MB/s-parse")
	b.ReportMetric(float64(parse.Nanoseconds())/float64(b.N*n), "ns/parse")
	b.ReportMetric(float64(std.Nanoseconds())/float64(b.N*n), "ns/std-decode")
	b.ReportMetric(std.Seconds()/parse.Seconds(), "speedup-vs-std")
}
