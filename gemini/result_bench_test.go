package gemini_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gembatch/gembatch/gemini"
)

// embeddingResults is a result file of n embedding answers of dims values each, written as the
// service writes them: one compact line per answer, values with their full float32 precision.
func embeddingResults(n, dims int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	for i := range n {
		fmt.Fprintf(&b, `{"key":"request-%06d","response":{"embedding":{"values":[`, i)
		for d := range dims {
			if d > 0 {
				b.WriteByte(',')
			}
			b.Write(strconv.AppendFloat(nil, (rng.Float64()-0.5)/8, 'g', -1, 32))
		}
		b.WriteString("]}}}\n")
	}
	return b.Bytes()
}

// decodeTwice is how results were read before: each line decoded into its fields by
// encoding/json, then the response decoded again for its usage. It is the baseline.
func decodeTwice(file []byte) (replies int, err error) {
	br := bufio.NewReaderSize(bytes.NewReader(file), 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err == io.EOF {
			return replies, nil
		}
		if err != nil {
			return replies, err
		}
		var l struct {
			Key      string          `json:"key"`
			Response json.RawMessage `json:"response"`
			Error    *gemini.Status  `json:"error"`
			Status   *gemini.Status  `json:"status"`
		}
		if err := json.Unmarshal(line, &l); err != nil {
			return replies, err
		}
		var u struct {
			UsageMetadata *gemini.UsageMetadata `json:"usageMetadata"`
		}
		_ = json.Unmarshal(l.Response, &u)
		replies++
	}
}

// readResults reads a result file with ResultReader, as the publisher does.
func readResults(file []byte) (replies int, err error) {
	rr := gemini.NewResultReader(bytes.NewReader(file))
	for {
		r, err := rr.Next()
		if err == io.EOF {
			return replies, nil
		}
		if err != nil {
			return replies, err
		}
		if r.Response == nil {
			return replies, fmt.Errorf("result %s has no response", r.Key)
		}
		replies++
	}
}

// cpuTime is the CPU time the process has used: on a shared machine, MB per CPU second says
// what the code costs when wall-clock MB/s also says how busy the machine was.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkResultReader reads a file of 3072-dimension embedding results (about 30 MB) and
// reports MB/s and replies/s next to the old way of reading it (encoding/json, twice per line),
// measured interleaved in the same run, and their ratio.
func BenchmarkResultReader(b *testing.B) {
	const n, dims = 256, 3072
	file := embeddingResults(n, dims)
	var reader, readerCPU, baseline time.Duration
	for b.Loop() {
		t0, cpu0 := time.Now(), cpuTime()
		if got, err := readResults(file); err != nil || got != n {
			b.Fatalf("read %d of %d: %v", got, n, err)
		}
		t1 := time.Now()
		readerCPU += cpuTime() - cpu0
		if got, err := decodeTwice(file); err != nil || got != n {
			b.Fatalf("baseline read %d of %d: %v", got, n, err)
		}
		reader, baseline = reader+t1.Sub(t0), baseline+time.Since(t1)
	}
	mb := float64(b.N) * float64(len(file)) / 1e6
	b.ReportMetric(mb/reader.Seconds(), "MB/s")
	b.ReportMetric(float64(b.N*n)/reader.Seconds(), "replies/s")
	b.ReportMetric(mb/readerCPU.Seconds(), "MB/cpu-s")
	b.ReportMetric(mb/baseline.Seconds(), "MB/s-std-twice")
	b.ReportMetric(baseline.Seconds()/reader.Seconds(), "speedup-vs-std")
}
