package accumulator_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/accumulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/intake"
	"github.com/gembatch/gembatch/internal/stacktest"
	"github.com/gembatch/gembatch/record"
)

// maxOverhead is what core mode may hold per pending request above its body (issue 14).
const maxOverhead = 256

// TestPendingHeapPerRequest sends 100,000 requests through an in-process NATS server to a
// subscriber that parses each with intake.Parse and adds it to an accumulator whose batches
// never close, as core mode holds them, and measures the heap they take above their bodies:
// (heap in use after - before) / requests - body size. Bodies of 1 KiB, as the intake
// benchmarks send, and two sizes between the allocator's size classes.
func TestPendingHeapPerRequest(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("holds 100,000 requests: run without -short and -race")
	}
	for _, size := range []int{1024, 1100, 300} {
		t.Run(fmt.Sprint(size), func(t *testing.T) { pendingHeap(t, size) })
	}
}

func pendingHeap(t *testing.T, size int) {
	const n = 100000
	nc := stacktest.NATS(t)
	sub, err := nats.Connect(nc.ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	acc := accumulator.New(accumulator.Config{Limits: accumulator.Limits{MaxRequests: 2 * n, MaxBytes: 1 << 40, MaxWait: time.Hour}},
		func(*record.Record) {}, func(record.Group, record.Request, *gemini.Status) {}, nil)
	defer acc.Close()
	rules := &intake.Rules{DefaultModel: "gemini-2.5-flash", ReplyAllow: []string{"_INBOX.>"}}
	text := strings.Repeat("q", size-len(`{"contents":[{"role":"user","parts":[{"text":""}]}]}`))
	body := []byte(`{"contents":[{"role":"user","parts":[{"text":"` + text + `"}]}]}`)

	var added atomic.Int64
	var bodies atomic.Int64
	done := make(chan struct{})
	s, err := sub.Subscribe("gembatch.generate", func(m *nats.Msg) {
		g, req, rej := intake.Parse(rules, gemini.KindGenerate, m, time.Now())
		if rej != nil {
			t.Error(rej.Status)
			return
		}
		bodies.Add(int64(len(req.Body)))
		if err := acc.Add(g, req); err != nil {
			t.Error(err)
		}
		if added.Add(1) == n {
			close(done)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetPendingLimits(-1, -1)
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	before := heapInUse()
	inbox := nats.NewInbox()
	for i := range n {
		m := &nats.Msg{Subject: "gembatch.generate", Reply: fmt.Sprintf("%s.%d", inbox, i), Data: body, Header: nats.Header{}}
		m.Header.Set(intake.HeaderKey, fmt.Sprintf("request-%06d", i))
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("%d of %d added", added.Load(), n)
	}
	for {
		if r, _ := acc.Pending(); r == n {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	held := heapInUse() - before
	perRequest := float64(held)/n - float64(bodies.Load())/n
	t.Logf("%d pending requests of %d-byte bodies: heap %.1f MB, %.0f B per request above its body (bound %d)",
		n, len(body), float64(held)/1e6, perRequest, maxOverhead)
	if perRequest > maxOverhead {
		t.Errorf("%.0f B per pending request above its body, bound %d", perRequest, maxOverhead)
	}
	runtime.KeepAlive(acc)
}

func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
