package jsonscan

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// benchDocs are the shapes the scanner reads most: a request of plain prose (intake's 1 KiB
// requests), one whose text has an escape every line (code, poems), one large prompt, and a
// vector of numbers (an embedding's result line).
var benchDocs = []struct {
	name string
	doc  []byte
}{
	{"prose-1KiB", request(strings.Repeat("lorem ipsum ", 82))},
	{"escapes-1KiB", request(strings.Repeat(`for i in x:\n    print(\"a\")\n`, 24))},
	{"prose-256KiB", request(strings.Repeat("lorem ipsum dolor sit amet ", 9709))},
	{"numbers-3072", []byte(`{"embedding":{"values":[` + strings.TrimSuffix(strings.Repeat("-0.012345678,", 3072), ",") + `]}}`)},
}

func request(text string) []byte {
	return []byte(`{"contents":[{"role":"user","parts":[{"text":"` + text + `"}]}],"generationConfig":{"temperature":0.2}}`)
}

// BenchmarkScan validates each document with the scanner and with encoding/json.Valid,
// interleaved in the same run, and reports both and the ratio.
func BenchmarkScan(b *testing.B) {
	for _, d := range benchDocs {
		if !json.Valid(d.doc) {
			b.Fatalf("%s is not valid JSON", d.name)
		}
		b.Run(d.name, func(b *testing.B) {
			const n = 100
			var scan, std time.Duration
			for b.Loop() {
				t0 := time.Now()
				for range n {
					if _, err := validate(d.doc); err != nil {
						b.Fatal(err)
					}
				}
				t1 := time.Now()
				for range n {
					json.Valid(d.doc)
				}
				scan, std = scan+t1.Sub(t0), std+time.Since(t1)
			}
			b.ReportMetric(float64(b.N*n*len(d.doc))/scan.Seconds()/1e6, "MB/s-scan")
			b.ReportMetric(float64(b.N*n*len(d.doc))/std.Seconds()/1e6, "MB/s-std-valid")
			b.ReportMetric(float64(std)/float64(scan), "speedup-vs-std")
		})
	}
}
