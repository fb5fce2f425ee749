package gemini

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// inlineOperation is a finished inline job of n text answers of about size bytes each, with
// their usage, in metadata.output and again in the response mirror, as the service sends it.
func inlineOperation(n, size int) []byte {
	var items bytes.Buffer
	for i := range n {
		if i > 0 {
			items.WriteByte(',')
		}
		fmt.Fprintf(&items, `{"response":{"candidates":[{"content":{"parts":[{"text":"%s \"quoted\" \u00e9"}],"role":"model"},"finishReason":"STOP"}],`+
			`"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":87,"totalTokenCount":96},"modelVersion":"gemini-2.5-flash"},"metadata":{"key":"request-%06d"}}`,
			strings.Repeat("lorem ipsum ", size/12), i)
	}
	return fmt.Appendf(nil, `{"name":"batches/b","metadata":{"@type":"type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",`+
		`"model":"models/gemini-2.5-flash","displayName":"gembatch-x","state":"BATCH_STATE_SUCCEEDED","output":{"inlinedResponses":{"inlinedResponses":[%s]}},`+
		`"batchStats":{"requestCount":"%d","successfulRequestCount":"%d"}},"done":true,"response":{"@type":"type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",`+
		`"inlinedResponses":{"inlinedResponses":[%s]}}}`, items.Bytes(), n, n, items.Bytes())
}

// BenchmarkInlineOperation reads a finished inline job of 10,000 answers of 1 KiB (both copies
// the service sends: 24 MB) as StreamBatch does, handing each answer over with its usage, and
// reports MB/s and answers/s, and the time to hand each answer over (until the last, before
// the mirror is read), next to a whole encoding/json decode of the same operation (what
// GetBatch did before answers were streamed), timed interleaved in the same run.
func BenchmarkInlineOperation(b *testing.B) {
	const n = 10000
	op := inlineOperation(n, 1024)
	var stream, answers, whole time.Duration
	for b.Loop() {
		t0 := time.Now()
		got := 0
		if _, err := decodeOperation(bytes.NewReader(op), func(r Result) error {
			if r.Usage == nil || r.Usage.TotalTokenCount != 96 {
				return fmt.Errorf("answer %s without its usage", r.Key)
			}
			got++
			return nil
		}, func() { answers += time.Since(t0) }); err != nil || got != n {
			b.Fatalf("%d of %d answers: %v", got, n, err)
		}
		t1 := time.Now()
		var o Operation
		if err := json.NewDecoder(bytes.NewReader(op)).Decode(&o); err != nil {
			b.Fatal(err)
		}
		stream, whole = stream+t1.Sub(t0), whole+time.Since(t1)
	}
	mb := float64(b.N) * float64(len(op)) / 1e6
	b.ReportMetric(mb/stream.Seconds(), "MB/s")
	b.ReportMetric(float64(b.N*n)/stream.Seconds(), "answers/s")
	b.ReportMetric(float64(answers.Microseconds())/float64(b.N*n)*1e3, "ns/answer-handed")
	b.ReportMetric(mb/whole.Seconds(), "MB/s-std-whole")
	b.ReportMetric(whole.Seconds()/stream.Seconds(), "speedup-vs-std")
}
