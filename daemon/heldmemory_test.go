package daemon_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/liveheap"
)

// An open batch holds neither the bodies of its requests nor their stream messages: 100 MB of
// requests waiting in one open batch grow the heap (this test's: gembatchd and the in-process
// NATS server) by far less than the 100 MB. A held request kept its whole jetstream.Msg until
// its batch was recorded, body included: the accumulator's copy went to the batch's input
// chunks, the message's stayed (132 MB of a 128 MiB batch's peak heap, by a heap profile of
// gembatch bench's rss measure; this test saw 140 MiB before, 33 MiB after).
func TestOpenBatchHoldsNoMessages(t *testing.T) {
	const n, size = 800, 128 << 10
	cfg := testConfig()
	cfg.Durable = "true"
	cfg.BatchMaxWait, cfg.AckWait = time.Minute, 2*time.Minute
	cfg.BatchMaxRequests, cfg.BatchMaxBytes, cfg.MaxPendingBytes = 10*n, 1<<30, 1<<30
	h := start(t, cfg, emulator.Options{})
	base := liveheap.Bytes()
	body := generateBody(strings.Repeat("x", size))
	for i := range n {
		h.send("gembatch.generate", fmt.Sprintf("big%d", i), body)
	}
	for start := time.Now(); h.metric("gembatch_intake_requests_accepted_total") < n; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			t.Fatalf("%.0f of %d requests accepted within a minute", h.metric("gembatch_intake_requests_accepted_total"), n)
		}
	}
	// The NATS server's caches of the blocks just written expire after a few seconds.
	time.Sleep(3 * time.Second)
	grew := int64(liveheap.Bytes()) - int64(base)
	t.Logf("heap grew %d MiB holding %d MiB of requests in an open batch", grew>>20, n*size>>20)
	if grew > n*size/2 {
		t.Fatalf("heap grew %d MiB holding %d MiB of requests: the open batch holds what it was sent", grew>>20, n*size>>20)
	}
}
