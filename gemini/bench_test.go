package gemini_test

import (
	"io"
	"runtime"
	"testing"
	"time"
)

// Memory bounds for moving a large file. A client that copies each byte once on the heap (a
// chunk read with io.ReadAll, a body buffered whole) allocates at least 1 MB per MB moved.
// Holding one reused 8 MiB chunk costs 8 MiB / 256 MiB = 0.03 MB per MB for the upload, and
// a streamed download needs no per-byte allocation at all; the rest is per-request overhead
// (client and in-process server) of some KB per 8 MiB. 0.1 MB per MB leaves room for that
// overhead and for the race detector, and is 10x below the "one copy" failure.
const (
	bigFile       = 256 << 20
	maxAllocPerMB = 0.1
)

// allocPerMB runs fn and returns the heap bytes allocated per MB of n bytes moved.
func allocPerMB(n int64, fn func()) float64 {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return float64(after.TotalAlloc-before.TotalAlloc) / float64(n)
}

func TestUploadMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 256 MB")
	}
	fs := &fakeFiles{}
	srv := serve(t, fs.ServeHTTP)
	c, _ := newClient(srv.URL)
	start := time.Now()
	var err error
	perMB := allocPerMB(bigFile, func() {
		_, err = c.UploadFile(t.Context(), &patternReader{n: bigFile}, -1, "big", "application/jsonl")
	})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if fs.received != bigFile || fs.crc != patternCRC(bigFile) {
		t.Fatalf("server holds %d bytes, content differs: %v", fs.received, fs.crc != patternCRC(bigFile))
	}
	t.Logf("upload of 256 MB: %.4f MB allocated per MB, %.0f MB/s", perMB, bigFile/float64(1<<20)/elapsed.Seconds())
	if perMB > maxAllocPerMB {
		t.Errorf("allocated %.3f MB per MB uploaded, bound %.2f", perMB, maxAllocPerMB)
	}
}

func TestDownloadMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 256 MB")
	}
	fs := &fakeFiles{downloadSize: bigFile}
	srv := serve(t, fs.ServeHTTP)
	c, _ := newClient(srv.URL)
	start := time.Now()
	var n int64
	var err error
	perMB := allocPerMB(bigFile, func() {
		var rc io.ReadCloser
		if rc, err = c.Download(t.Context(), "files/batch-big"); err != nil {
			return
		}
		defer rc.Close()
		var crc uint32
		n, err = io.Copy(crcWriter{&crc}, rc)
		if crc != patternCRC(bigFile) {
			t.Error("content differs")
		}
	})
	if err != nil || n != bigFile {
		t.Fatalf("read %d: %v", n, err)
	}
	elapsed := time.Since(start)
	t.Logf("download of 256 MB: %.4f MB allocated per MB, %.0f MB/s", perMB, bigFile/float64(1<<20)/elapsed.Seconds())
	if perMB > maxAllocPerMB {
		t.Errorf("allocated %.3f MB per MB downloaded, bound %.2f", perMB, maxAllocPerMB)
	}
}

func BenchmarkUpload(b *testing.B) {
	const size = 64 << 20
	fs := &fakeFiles{}
	srv := serve(b, fs.ServeHTTP)
	c, _ := newClient(srv.URL)
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		fs.mu.Lock()
		fs.received, fs.final, fs.crc = 0, false, 0
		fs.mu.Unlock()
		if _, err := c.UploadFile(b.Context(), &patternReader{n: size}, size, "bench", "application/jsonl"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDownload(b *testing.B) {
	const size = 64 << 20
	fs := &fakeFiles{downloadSize: size}
	srv := serve(b, fs.ServeHTTP)
	c, _ := newClient(srv.URL)
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		rc, err := c.Download(b.Context(), "files/batch-bench")
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, rc); err != nil || n != size {
			b.Fatalf("read %d: %v", n, err)
		}
		rc.Close()
	}
}
