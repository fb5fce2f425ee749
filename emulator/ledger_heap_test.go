package emulator

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/metrics"
	"testing"
)

// TestLedgerIsNotScannedByTheCollector: the ledger grows by one entry for every request ever
// billed, and lives as long as its process (a long fault campaign bills millions; gembatch
// bench runs the emulator in the daemon's own process). The collector must not have to mark it:
// billing 100,000 requests leaves the scannable heap (/gc/scan/heap:bytes) within 1 MB of
// where it was, and every one of them is in the ledger.
func TestLedgerIsNotScannedByTheCollector(t *testing.T) {
	const n = 100_000
	response := json.RawMessage(`{"candidates":[],"usageMetadata":{"totalTokenCount":7}}`)
	requests := make([]json.RawMessage, n)
	for i := range requests {
		requests[i] = json.RawMessage(fmt.Sprintf(`{"contents":[{"parts":[{"text":"q%d"}]}]}`, i%1000))
	}
	var b billing
	before := scannableHeap()
	for i, req := range requests {
		b.bill(fmt.Sprintf("key-%d", i), req, response, nil)
	}
	grew := scannableHeap() - before
	runtime.KeepAlive(requests)

	entries := b.snapshot()
	if len(entries) != n {
		t.Fatalf("ledger has %d entries, want %d", len(entries), n)
	}
	for _, e := range entries {
		if e.Billed != 1 || e.Tokens != 7 || len(e.Digest) != 64 {
			t.Fatalf("entry %+v, want billed once, 7 tokens and a hex SHA-256 digest", e)
		}
	}
	t.Logf("scannable heap grew %d bytes for %d entries", grew, n)
	if grew > 1<<20 {
		t.Errorf("billing %d requests grew the scannable heap by %d bytes (%.0f B an entry), want under 1 MB", n, grew, float64(grew)/n)
	}
}

// scannableHeap is the heap the collector marks through, after a collection.
func scannableHeap() int64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/scan/heap:bytes"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}
