package gemini

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/gembatch/gembatch/internal/liveheap"
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

// TestInlineAnswersOneAtATime: an operation of 12 answers of 1 MB, twice over (the response
// mirror), is read holding about one answer: the live heap stays far below the 24 MB read and
// below a quarter of what decoding it whole holds.
func TestInlineAnswersOneAtATime(t *testing.T) {
	const n, size = 12, 1 << 20
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
	}, nil)
	if err != nil || count != n || op.State() != StateSucceeded || op.Response == nil || op.Response.InlinedResponses == nil {
		t.Fatalf("%d answers, op %+v, err %v", count, op, err)
	}
	// The whole decode GetBatch does, for comparison in the same run.
	base = liveheap.Bytes()
	var op2 Operation
	if err := json.NewDecoder(&opReader{n: n, size: size}).Decode(&op2); err != nil {
		t.Fatal(err)
	}
	whole := liveheap.Bytes() - min(base, liveheap.Bytes())
	runtime.KeepAlive(&op2)
	t.Logf("live heap above the start: streamed at most %.1f MB, decoded whole %.1f MB (ratio %.3f), reading %d MB",
		float64(peak)/(1<<20), float64(whole)/(1<<20), float64(peak)/float64(whole), 2*n*size>>20)
	if peak > 16<<20 || peak > whole/4 {
		t.Fatalf("live heap grew by %d MB (whole decode: %d MB): answers are held together", peak>>20, whole>>20)
	}
}

// FuzzStreamOperation: any input is read without panicking; what a whole decode accepts, the
// streaming one accepts too, with every answer handed over keeping the Result contract.
func FuzzStreamOperation(f *testing.F) {
	f.Add([]byte(`{"name":"batches/x","metadata":{"state":"BATCH_STATE_SUCCEEDED","output":{"inlinedResponses":{"inlinedResponses":[{"response":{"a":1},"metadata":{"key":"a"}},{"error":{"code":3},"metadata":{"key":"b"}}]}}},"done":true}`))
	f.Add([]byte(`{"response":{"@type":"t","inlinedResponses":{"inlinedResponses":[{"metadata":{"key":"c"}}]}},"metadata":{"inputConfig":{"requests":{}},"output":null}}`))
	f.Add([]byte(`{"metadata":{"output":{"responsesFile":"files/r","inlinedResponses":null}}} `))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var handed []Result
		op, err := decodeOperation(bytes.NewReader(data), func(r Result) error {
			if (r.Error == nil) == (r.Response == nil) || (r.Response != nil && !json.Valid(r.Response)) {
				t.Errorf("result breaks the contract: %+v", r)
			}
			handed = append(handed, keptResult(r))
			return nil
		}, nil)
		var whole Operation
		wholeErr := json.Unmarshal(data, &whole)
		if wholeErr == nil && err != nil {
			t.Fatalf("a whole decode accepts %q, the stream says %v", data, err)
		}
		// With the mirror absent, the answers are those of the whole decode's output, each
		// with the same key, response, error and usage.
		if wholeErr == nil && (whole.Response == nil || whole.Response.InlinedResponses == nil) {
			if want := InlineResults(whole.Output()); !reflect.DeepEqual(fmt.Sprint(handed), fmt.Sprint(want)) && len(want)+len(handed) > 0 {
				t.Fatalf("%q: streamed %+v, whole decode %+v", data, handed, want)
			}
		}
		if err == nil {
			_ = op.State()
			_ = op.Output()
		}
	})
}

// Strings with escapes read alike whatever the chunks the reader hands over: a backslash that
// ends a chunk, an escaped quote right after, many escapes before one quote. Each reading is
// checked against a whole decode of the same operation.
func TestStringsAcrossChunks(t *testing.T) {
	texts := []string{`plain`, `a \"quoted\" word`, `\\`, `ends with \\`, `\\\"`, strings.Repeat(`line\n`, 300), `\"` + strings.Repeat("x", 70) + `\\\\\"`, `\u00e9\/`}
	var items []string
	for i, s := range texts {
		items = append(items, fmt.Sprintf(`{"response":{"candidates":[{"content":{"parts":[{"text":"%s"}]}}],"note":"}]\"{["},"metadata":{"key":"k%d \"q\""}}`, s, i))
	}
	data := []byte(`{"name":"batches/x","metadata":{"displayName":"a\"b\\","state":"BATCH_STATE_SUCCEEDED","output":{"inlinedResponses":{"inlinedResponses":[` +
		strings.Join(items, ",") + `]}}},"done":true}`)
	var whole Operation
	if err := json.Unmarshal(data, &whole); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint(InlineResults(whole.Output()))
	for _, rd := range map[string]func() io.Reader{
		"whole":    func() io.Reader { return bytes.NewReader(data) },
		"one byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) },
		"halves":   func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) },
	} {
		var got []Result
		op, err := decodeOperation(rd(), func(r Result) error {
			got = append(got, keptResult(r))
			return nil
		}, nil)
		if err != nil || op.Metadata == nil || op.Metadata.DisplayName != `a"b\` {
			t.Fatalf("decode: %v, op %+v", err, op)
		}
		if fmt.Sprint(got) != want {
			t.Fatalf("streamed %s\nwhole    %s", fmt.Sprint(got), want)
		}
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// handedAll is called once, after the last answer and before the rest of the job (here a 1 MB
// mirror of the answers) is read.
func TestHandedAllComesBeforeTheMirrorIsRead(t *testing.T) {
	answers := `{"inlinedResponses":[{"response":{"a":1},"metadata":{"key":"a"}},{"error":{"code":3},"metadata":{"key":"b"}}]}`
	mirror := `{"inlinedResponses":[` + strings.Repeat(`{"response":{"a":1},"metadata":{"key":"a"}},`, 1<<20/44) + `{"metadata":{"key":"z"}}]}`
	data := `{"name":"batches/x","metadata":{"state":"BATCH_STATE_SUCCEEDED","output":{"inlinedResponses":` + answers +
		`}},"done":true,"response":{"inlinedResponses":` + mirror + `}}`
	r := &countingReader{r: strings.NewReader(data)}
	handed, calls, readThen := 0, 0, 0
	op, err := decodeOperation(r, func(Result) error { handed++; return nil }, func() {
		calls++
		readThen = r.n
		if handed != 2 {
			t.Errorf("handedAll after %d answers, want 2", handed)
		}
	})
	if err != nil || op.Response == nil {
		t.Fatalf("decode: %v, response %v; want the whole job read", err, op)
	}
	if calls != 1 || handed != 2 {
		t.Fatalf("handedAll called %d times, %d answers handed; want once, 2", calls, handed)
	}
	if readThen >= len(data)/2 {
		t.Errorf("%d of %d bytes read when handedAll was called; want the mirror still unread", readThen, len(data))
	}
}

// keptResult copies what a Result points to in the reader's buffer, for a test that keeps it
// past the callback it was handed to.
func keptResult(r Result) Result {
	r.Response = bytes.Clone(r.Response)
	if r.Usage != nil {
		u := *r.Usage
		r.Usage = &u
	}
	return r
}

// KeptResult is keptResult, for the package's external tests.
var KeptResult = keptResult

// TestBufferedAnswersAreNotCopied: answers that lie whole in the reader's buffer are handed
// over from there, in order and whole. Reading 2,000 answers of 4 KiB (8.2 MB) allocates less
// than a quarter of one copy of them: 0.96 MB (1.16 MB under -race), most of it the copies of
// the answers cut by the buffer's end. Reading each as a value of its own allocated 10.1 MB.
func TestBufferedAnswersAreNotCopied(t *testing.T) {
	const n, size = 2000, 4 << 10
	op := inlineOperation(n, size)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	got := 0
	if _, err := decodeOperation(bytes.NewReader(op), func(r Result) error {
		// In order and whole, whether read in place or, cut by the buffer's end, the old way.
		if want := fmt.Sprintf("request-%06d", got); r.Key != want || len(r.Response) < size || !json.Valid(r.Response) || r.Usage == nil {
			return fmt.Errorf("answer %q (want %q) of %d bytes, usage %v", r.Key, want, len(r.Response), r.Usage)
		}
		got++
		return nil
	}, nil); err != nil || got != n {
		t.Fatalf("%d of %d answers: %v", got, n, err)
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d answers of %d bytes: %d bytes allocated", n, size, alloc)
	if alloc > n*size/4 {
		t.Fatalf("reading %d answers of %d bytes allocated %d bytes: answers are copied", n, size, alloc)
	}
}
