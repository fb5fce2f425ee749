package daemon_test

import (
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
)

// modes runs a test in durable mode (JetStream) and in core mode.
func modes(t *testing.T, f func(t *testing.T, durable string)) {
	for _, durable := range []string{"true", "false"} {
		t.Run("durable="+durable, func(t *testing.T) { f(t, durable) })
	}
}

// TestTenThousandRequests sends 10,000 requests across two models and both kinds, some in
// batches small enough to go inline and some large enough to go by file, and checks that each
// is answered exactly once, with its own key and the emulator's content.
func TestTenThousandRequests(t *testing.T) { modes(t, tenThousandRequests) }

func tenThousandRequests(t *testing.T, durable string) {
	cfg := testConfig()
	cfg.Durable = durable
	cfg.BatchMaxRequests = 1000
	cfg.BatchMaxWait = 3 * time.Second // full batches close by count, however slow the machine
	cfg.InlineMaxBytes = 200 << 10
	h := start(t, cfg, emulator.Options{})

	type sent struct{ kind, body string }
	want := map[string]sent{}
	var keys []string
	pad := strings.Repeat("x", 250) // makes a 1,000-request pro batch ~300 KB: over the inline limit
	for i := range 10000 {
		key := fmt.Sprintf("k%05d", i)
		var s sent
		switch i % 5 {
		case 0, 1:
			s = sent{"generate", generateBody("flash question " + key)}
			h.send("gembatch.generate", key, s.body)
		case 2, 3:
			s = sent{"generate", generateBody("pro question " + key + pad)}
			h.send("gembatch.generate", key, s.body, "Gembatch-Model", "gemini-2.5-pro")
		case 4:
			s = sent{"embed", embedBody("document "+key, 8)}
			h.send("gembatch.embed", key, s.body, "Gembatch-Model", "models/gemini-embedding-001")
		}
		want[key] = s
		keys = append(keys, key)
	}
	got := h.waitReplies(keys, 2*time.Minute)

	msgIDs := map[string]bool{}
	for _, key := range keys {
		msgs := got[key]
		if len(msgs) != 1 {
			t.Fatalf("key %s: %d replies, want exactly 1", key, len(msgs))
		}
		m := msgs[0]
		r := decode(t, m)
		if r.Key != key || r.Error != nil || m.Header.Get("Gembatch-Status") != "ok" {
			t.Fatalf("key %s: reply %s with status %q", key, m.Data, m.Header.Get("Gembatch-Status"))
		}
		if !strings.HasPrefix(m.Header.Get("Gembatch-Batch"), "batches/") {
			t.Fatalf("key %s: Gembatch-Batch = %q", key, m.Header.Get("Gembatch-Batch"))
		}
		id := m.Header.Get("Nats-Msg-Id")
		if id == "" || msgIDs[id] {
			t.Fatalf("key %s: Nats-Msg-Id %q empty or reused", key, id)
		}
		msgIDs[id] = true
		if want[key].kind == "generate" {
			if text, exp := responseText(t, r.Response), emulator.ExpectedText(json.RawMessage(want[key].body)); text != exp {
				t.Fatalf("key %s: text %q, want %q", key, text, exp)
			}
		} else {
			var e struct {
				Embedding struct {
					Values []float32 `json:"values"`
				} `json:"embedding"`
			}
			if err := json.Unmarshal(r.Response, &e); err != nil || !slices.Equal(e.Embedding.Values, emulator.ExpectedEmbedding(json.RawMessage(want[key].body))) {
				t.Fatalf("key %s: embedding %s is not the expected one", key, r.Response)
			}
		}
	}
	if len(got) != len(keys) {
		t.Fatalf("replies for %d keys, want %d", len(got), len(keys))
	}
	inline := h.metric("gembatch_submitter_batches_total", "mode", "inline", "outcome", "submitted")
	file := h.metric("gembatch_submitter_batches_total", "mode", "file", "outcome", "submitted")
	if inline == 0 || file == 0 {
		t.Fatalf("batches: %v inline, %v file; want both modes used", inline, file)
	}
	for name, n := range h.emu.CreateCounts() {
		if n != 1 {
			t.Fatalf("batch %s created %d times", name, n)
		}
	}
	t.Logf("10,000 requests answered once each: %v inline batches, %v file batches", inline, file)
}

// TestCloseReasons shows each bound closing a batch: count, bytes and wait.
func TestCloseReasons(t *testing.T) {
	cfg := testConfig()
	cfg.BatchMaxRequests = 5
	cfg.BatchMaxBytes = 2048
	cfg.MaxRequestBytes = 2048
	cfg.BatchMaxWait = 300 * time.Millisecond
	h := start(t, cfg, emulator.Options{})
	var keys []string
	for i := range 5 { // five small: count
		k := fmt.Sprintf("count%d", i)
		keys = append(keys, k)
		h.send("gembatch.generate", k, generateBody(k), "Gembatch-Model", "count-model")
	}
	for i := range 3 { // three of ~900 bytes: the third does not fit 2 KiB
		k := fmt.Sprintf("bytes%d", i)
		keys = append(keys, k)
		h.send("gembatch.generate", k, generateBody(k+strings.Repeat("b", 800)), "Gembatch-Model", "bytes-model")
	}
	keys = append(keys, "wait0")
	h.send("gembatch.generate", "wait0", generateBody("alone"), "Gembatch-Model", "wait-model")
	got := h.waitReplies(keys, 30*time.Second)
	for _, k := range keys {
		if len(got[k]) != 1 || decode(t, got[k][0]).Error != nil {
			t.Fatalf("key %s: %d replies, want one success", k, len(got[k]))
		}
	}
	for _, reason := range []string{"count", "bytes", "wait"} {
		if n := h.metric("gembatch_accumulator_batches_closed_total", "reason", reason); n < 1 {
			t.Errorf("no batch closed by %s", reason)
		}
	}
}

// TestJobsThatEndBadly checks the error replies of FAILED, EXPIRED and CANCELLED jobs and of
// per-item errors, next to successes.
func TestJobsThatEndBadly(t *testing.T) {
	tests := []struct {
		name     string
		faults   emulator.Faults
		cancel   bool
		wantCode int
	}{
		{"failed", emulator.Faults{FailJobs: true}, false, gemini.CodeInternal},
		{"expired", emulator.Faults{StuckPending: true, ExpireAfter: 300 * time.Millisecond}, false, gemini.CodeDeadlineExceeded},
		{"cancelled", emulator.Faults{StuckPending: true}, true, gemini.CodeCancelled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, testConfig(), emulator.Options{Faults: tt.faults})
			keys := []string{"a", "b", "c"}
			for _, k := range keys {
				h.send("gembatch.generate", k, generateBody(k))
			}
			if tt.cancel {
				cancelAll(t, h)
			}
			got := h.waitReplies(keys, 30*time.Second)
			for _, k := range keys {
				if len(got[k]) != 1 {
					t.Fatalf("key %s: %d replies", k, len(got[k]))
				}
				r := decode(t, got[k][0])
				if r.Error == nil || r.Error.Code != tt.wantCode || got[k][0].Header.Get("Gembatch-Status") != "error" {
					t.Fatalf("key %s: reply %s, want error code %d", k, got[k][0].Data, tt.wantCode)
				}
				if !strings.Contains(r.Error.Message, "batches/") {
					t.Errorf("error %q does not name the batch", r.Error.Message)
				}
			}
		})
	}
	t.Run("per-item errors", func(t *testing.T) {
		h := start(t, testConfig(), emulator.Options{})
		h.send("gembatch.generate", "good", generateBody("fine"))
		h.send("gembatch.generate", "bad", generateBody("please fail [[emulator:error=3]]"))
		h.send("gembatch.generate", "unknown-field", `{"contents":[{"parts":[{"text":"x"}]}],"notAField":1}`)
		got := h.waitReplies([]string{"good", "bad", "unknown-field"}, 30*time.Second)
		if r := decode(t, got["good"][0]); r.Error != nil {
			t.Fatalf("good request failed: %s", got["good"][0].Data)
		}
		for _, k := range []string{"bad", "unknown-field"} {
			if r := decode(t, got[k][0]); r.Error == nil || r.Error.Code != gemini.CodeInvalidArgument || r.Error.Status != "INVALID_ARGUMENT" {
				t.Fatalf("%s: reply %s, want INVALID_ARGUMENT", k, got[k][0].Data)
			}
		}
	})
}

// cancelAll cancels every batch on the emulator as soon as one exists.
func cancelAll(t *testing.T, h *harness) {
	t.Helper()
	c := gemini.New("test-key", gemini.WithBaseURL(h.http.URL))
	deadline := time.Now().Add(10 * time.Second)
	for len(h.emu.Batches()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no batch created within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, op := range h.emu.Batches() {
		if err := c.CancelBatch(t.Context(), op.Name); err != nil {
			t.Fatalf("cancel %s: %v", op.Name, err)
		}
	}
}

// TestInvalidMessages sends every kind of bad message between good ones: each bad one gets an
// error reply where it can, and the good ones are answered as usual.
func TestInvalidMessages(t *testing.T) {
	cfg := testConfig()
	cfg.MaxRequestBytes = 1024
	cfg.BatchMaxWait = 500 * time.Millisecond
	h := start(t, cfg, emulator.Options{})
	bad := []struct {
		key, subject, body, reason string
		hdr                        []string
		code                       int
	}{
		{"notjson", "gembatch.generate", `{"contents": [`, "invalid_json", nil, gemini.CodeInvalidArgument},
		{"array", "gembatch.generate", `[1,2]`, "invalid_json", nil, gemini.CodeInvalidArgument},
		{"large", "gembatch.generate", generateBody(strings.Repeat("L", 2000)), "too_large", nil, gemini.CodeInvalidArgument},
		{"nocontents", "gembatch.generate", `{"generationConfig":{}}`, "invalid_request", nil, gemini.CodeInvalidArgument},
		{"nocontent", "gembatch.embed", `{"taskType":"X"}`, "invalid_request", nil, gemini.CodeInvalidArgument},
		{"priority", "gembatch.generate", generateBody("p"), "invalid_header", []string{"Gembatch-Priority", "high"}, gemini.CodeInvalidArgument},
		{"deadline", "gembatch.generate", generateBody("d"), "invalid_header", []string{"Gembatch-Deadline", "tomorrow"}, gemini.CodeInvalidArgument},
		{"model", "gembatch.generate", generateBody("m"), "invalid_header", []string{"Gembatch-Model", "no spaces please"}, gemini.CodeInvalidArgument},
	}
	var goodKeys, allKeys []string
	for i, b := range bad {
		good := fmt.Sprintf("good%d", i)
		h.send("gembatch.generate", good, generateBody(good))
		h.send(b.subject, b.key, b.body, b.hdr...)
		goodKeys = append(goodKeys, good)
		allKeys = append(allKeys, good, b.key)
	}
	// A duplicate key in the same open batch.
	h.send("gembatch.generate", "dup", generateBody("first"))
	h.send("gembatch.generate", "dup", generateBody("second"))
	// No reply subject, and a reply subject that is not allowed: counted, not answered.
	if err := h.nc.Publish("gembatch.generate", []byte(generateBody("noreply"))); err != nil {
		t.Fatal(err)
	}
	if err := h.nc.PublishRequest("gembatch.generate", "$SYS.REQ.SERVER.PING", []byte(generateBody("sys"))); err != nil {
		t.Fatal(err)
	}
	got := h.waitReplies(append(allKeys, "dup"), 30*time.Second)
	for _, b := range bad {
		msgs := got[b.key]
		if len(msgs) != 1 {
			t.Fatalf("%s: %d replies, want 1", b.key, len(msgs))
		}
		r := decode(t, msgs[0])
		if r.Error == nil || r.Error.Code != b.code || r.Error.Message == "" {
			t.Errorf("%s: reply %s, want error code %d", b.key, msgs[0].Data, b.code)
		}
	}
	for _, k := range goodKeys {
		if len(got[k]) != 1 || decode(t, got[k][0]).Error != nil {
			t.Errorf("good request %s: %d replies or an error", k, len(got[k]))
		}
	}
	if n := len(got["dup"]); n != 2 {
		t.Fatalf("duplicate key: %d replies, want 2 (one answer, one error)", n)
	}
	var errs int
	for _, m := range got["dup"] {
		if r := decode(t, m); r.Error != nil && r.Error.Code == gemini.CodeAlreadyExists {
			errs++
		}
	}
	if errs != 1 {
		t.Fatalf("duplicate key: %d ALREADY_EXISTS replies, want 1", errs)
	}
	for reason, want := range map[string]float64{"invalid_json": 2, "too_large": 1, "invalid_request": 2, "invalid_header": 3, "duplicate_key": 1, "no_reply": 1, "reply_denied": 1} {
		if n := h.metric("gembatch_intake_requests_rejected_total", "reason", reason); n != want {
			t.Errorf("rejected{reason=%s} = %v, want %v", reason, n, want)
		}
	}
}

// TestShutdownSubmitsOpenBatches stops the daemon with batches still open: every accepted
// request must be in a created batch, each batch created once.
func TestShutdownSubmitsOpenBatches(t *testing.T) { modes(t, shutdownSubmitsOpenBatches) }

func shutdownSubmitsOpenBatches(t *testing.T, durable string) {
	cfg := testConfig()
	cfg.Durable = durable
	cfg.BatchMaxWait = time.Hour
	h := start(t, cfg, emulator.Options{})
	for i := range 50 {
		h.send("gembatch.generate", fmt.Sprintf("s%d", i), generateBody("shutdown"), "Gembatch-Model", []string{"m1", "m2"}[i%2])
	}
	if err := h.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.metric("gembatch_intake_requests_accepted_total") < 50 {
		if time.Now().After(deadline) {
			t.Fatal("requests not accepted within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := h.shutdown(); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	var total int64
	for _, op := range h.emu.Batches() {
		total += int64(op.Metadata.BatchStats.RequestCount)
	}
	if total != 50 {
		t.Fatalf("created batches hold %d requests, want 50", total)
	}
	if n := h.metric("gembatch_accumulator_batches_closed_total", "reason", "shutdown"); n != 2 {
		t.Fatalf("%v batches closed by shutdown, want 2", n)
	}
	for name, n := range h.emu.CreateCounts() {
		if n != 1 {
			t.Fatalf("%s created %d times", name, n)
		}
	}
}

// TestFloodWithTheAPIDown floods a daemon whose Gemini API cannot be reached: sealed batches
// cannot leave, and what the daemon holds in memory must stay within GEMBATCH_MAX_PENDING (core
// mode refuses the rest with RESOURCE_EXHAUSTED; durable mode leaves it in the stream).
func TestFloodWithTheAPIDown(t *testing.T) { modes(t, floodWithTheAPIDown) }

func floodWithTheAPIDown(t *testing.T, durable string) {
	const sent, limit = 10000, 1000
	cfg := testConfig()
	cfg.Durable = durable
	cfg.GeminiBaseURL = "http://127.0.0.1:1"
	cfg.LogLevel = "error"
	cfg.MaxPending = limit
	cfg.BatchMaxRequests = 200
	cfg.BatchMaxWait = 50 * time.Millisecond
	h := start(t, cfg, emulator.Options{})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range sent {
		// Distinct bodies: identical keyless requests to one reply subject are one request in
		// durable mode (the stream's duplicate window keeps one of what the replicas forward).
		body := []byte(generateBody(fmt.Sprintf("%05d %s", i, strings.Repeat("f", 1000))))
		if err := h.nc.PublishRequest("gembatch.generate", "test.reply.flood", body); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for h.metric("gembatch_intake_requests_received_total") < sent {
		if time.Now().After(deadline) {
			t.Fatalf("received %v of %d", h.metric("gembatch_intake_requests_received_total"), sent)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Nothing leaves while the API is down: once intake has met the limit (core: refused the
	// rest; durable: left the rest in the stream) and every batch is sealed, the submitter holds
	// every request accepted. Not the accumulator's gauge plus the submitter's while batches are
	// still moving: a batch is in both for a moment as it passes (never in neither), so two
	// reads of them can count it twice.
	settled := func() bool {
		accepted := h.metric("gembatch_intake_requests_accepted_total")
		if h.metric("gembatch_accumulator_pending_requests") != 0 || h.metric("gembatch_submitter_held_requests") != accepted {
			return false
		}
		if durable == "false" {
			return accepted+h.metric("gembatch_intake_requests_rejected_total", "reason", "overloaded") == sent
		}
		return h.metric("gembatch_intake_deferred_total") > 0
	}
	for deadline := time.Now().Add(20 * time.Second); !settled() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	accepted := h.metric("gembatch_intake_requests_accepted_total")
	t.Logf("durable=%s: %d sent, %v accepted and held (limit %d), heap in use %.1f MB (was %.1f MB)",
		durable, sent, accepted, limit, float64(after.HeapInuse)/1e6, float64(before.HeapInuse)/1e6)
	pending, held := h.metric("gembatch_accumulator_pending_requests"), h.metric("gembatch_submitter_held_requests")
	if accepted == 0 || accepted > limit || pending != 0 || held != accepted {
		t.Fatalf("%v accepted, %v still in the accumulator, %v held by the submitter; want every one accepted held, at most %d",
			accepted, pending, held, limit)
	}
	if durable == "false" {
		if n := h.metric("gembatch_intake_requests_rejected_total", "reason", "overloaded"); n == 0 || accepted+n != sent {
			t.Fatalf("%v accepted + %v refused as overloaded; want %d in all, some refused", accepted, n, sent)
		}
	} else if h.metric("gembatch_intake_deferred_total") == 0 {
		t.Fatalf("%v accepted, %v deferred; want the rest left in the stream", accepted, h.metric("gembatch_intake_deferred_total"))
	}
}
