package gemini

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
)

// opReader produces an operation of n inline answers of size bytes each, in metadata.output and
// again in the response mirror, a piece at a time: the whole never exists in memory.
type opReader struct {
	n, size int
	part    int // 0: head, 1..n: metadata items, then the middle, then mirror items, then the tail
	buf     bytes.Reader
}

func (o *opReader) Read(p []byte) (int, error) {
	for o.buf.Len() == 0 {
		var s string
		switch k := o.part; {
		case k == 0:
			s = `{"name":"batches/big","metadata":{"state":"BATCH_STATE_SUCCEEDED","output":{"inlinedResponses":{"inlinedResponses":[`
		case k <= o.n || (k > o.n+1 && k <= 2*o.n+1):
			i := (k - 1) % (o.n + 1)
			s = fmt.Sprintf(`{"response":{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"%s"}}]}}]},"metadata":{"key":"k%d"}}`,
				strings.Repeat("A", o.size), i)
			if k != o.n && k != 2*o.n+1 {
				s += ","
			}
		case k == o.n+1:
			s = `]}}},"done":true,"response":{"@type":"x","inlinedResponses":{"inlinedResponses":[`
		case k == 2*o.n+2:
			s = `]}}}`
		default:
			return 0, io.EOF
		}
		o.part++
		o.buf.Reset([]byte(s))
	}
	return o.buf.Read(p)
}

// TestInlineAnswersOneAtATime: an operation of 24 answers of 1 MB, twice over (the response
// mirror), is read holding about one answer: the live heap stays far below the 48 MB read.
func TestInlineAnswersOneAtATime(t *testing.T) {
	const n, size = 24, 1 << 20
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapAlloc, uint64(0)
	count := 0
	op, err := decodeOperation(&opReader{n: n, size: size}, func(r Result) error {
		count++
		if len(r.Response) < size {
			t.Fatalf("answer %s of %d bytes", r.Key, len(r.Response))
		}
		runtime.GC()
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapAlloc-min(base, ms.HeapAlloc))
		return nil
	})
	if err != nil || count != n || op.State() != StateSucceeded || op.Response == nil || op.Response.InlinedResponses == nil {
		t.Fatalf("%d answers, op %+v, err %v", count, op, err)
	}
	t.Logf("live heap above the start, at most: %.1f MB while reading %d MB", float64(peak)/(1<<20), 2*n*size>>20)
	if peak > 16<<20 {
		t.Fatalf("live heap grew by %d MB: answers are held together", peak>>20)
	}
}
