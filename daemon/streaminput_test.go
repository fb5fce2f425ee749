package daemon_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/stacktest"
	"github.com/gembatch/gembatch/record"
)

// chunkBytes counts the bytes put into an object store's chunks from now on, as the server
// receives them: every put of the bucket goes through these subjects.
func chunkBytes(t *testing.T, nc *nats.Conn, bucket string) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	sub, err := nc.Subscribe("$O."+bucket+".C.>", func(m *nats.Msg) { n.Add(int64(len(m.Data))) })
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return &n
}

// A batch's bodies stay where intake found them: those in the request stream are read back
// from it for the create (inline and by file, one pretty-printed body compacted onto its line),
// and only the bodies that came through the bodies bucket are copied into the batch's input.
// The copy is counted on the wire into the requests bucket, not by the daemon.
func TestStreamBodiesAreReadBackNotCopied(t *testing.T) {
	cfg := bigConfig()
	cfg.BatchMaxRequests = 33
	cfg.KeepJobs = true // counted by mode below
	h := startSmall(t, cfg)
	c, err := client.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	copied := chunkBytes(t, h.nc, cfg.RequestsBucket)
	byFile := map[string][]byte{"pretty": bigBody("pretty", 8<<10, true)}
	var streamBytes, objectBytes int64
	for i := range 30 {
		byFile[fmt.Sprintf("s%d", i)] = bigBody(fmt.Sprintf("small %d", i), 8<<10, false)
	}
	for i := range 2 {
		byFile[fmt.Sprintf("big%d", i)] = bigBody(fmt.Sprintf("big %d", i), 200<<10, false)
	}
	for key, b := range byFile {
		if strings.HasPrefix(key, "big") {
			objectBytes += int64(len(b))
		} else {
			streamBytes += int64(len(b))
		}
	}
	checkAnswers(t, publishBodies(t, c, byFile), byFile, time.Minute)
	inline := map[string][]byte{}
	for i := range 5 {
		inline[fmt.Sprintf("i%d", i)] = bigBody(fmt.Sprintf("inline %d", i), 1<<10, false)
	}
	checkAnswers(t, publishBodies(t, c, inline), inline, time.Minute) // closed by time

	modes := map[string]int{} // as the service answers: a file for a file, inline for inline
	for _, op := range h.emu.Batches() {
		if out := op.Metadata.Output; out != nil && out.ResponsesFile != "" {
			modes["file"]++
		} else {
			modes["inline"]++
		}
	}
	if modes["file"] != 1 || modes["inline"] != 1 {
		t.Fatalf("batches by mode %v, want one by file and one inline", modes)
	}
	// Besides the big bodies, the bucket holds each batch's request list (key, reply
	// subject, sizes: about 200 bytes a request).
	if got, most := copied.Load(), objectBytes+int64(len(byFile)+len(inline))*400; got > most {
		t.Fatalf("%d bytes put into the requests bucket, want at most %d: the %d bytes of bodies in the stream were copied",
			got, most, streamBytes)
	}
}

// readBacks counts, as the server announces them, the ordered consumers created on a stream
// from now on: a batch's bodies are read back from the stream by one of them. An ordered
// consumer is named <id>_<n>, n counting its resets.
func readBacks(t *testing.T, nc *nats.Conn, stream, durable string) func() int {
	t.Helper()
	var mu sync.Mutex
	ids := map[string]bool{}
	sub, err := nc.Subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED."+stream+".*", func(m *nats.Msg) {
		name := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		if id, _, ordered := strings.Cut(name, "_"); ordered && name != durable {
			mu.Lock()
			ids[id] = true
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(ids)
	}
}

// A batch small enough to go inline is sent from the bodies intake took off the stream, held
// until its create: reading 10,000 bodies back for each create was a second delivery of every
// message, measured as a tenth of durable intake's CPU. A batch that grows past the inline
// limit lets them go and reads them back, and so does a replica that takes a batch over.
func TestInlineBatchIsSentFromTheBodiesTakenOffTheStream(t *testing.T) {
	cfg := bigConfig()
	cfg.BatchMaxRequests = 5
	cfg.KeepJobs = true // counted below
	h := startSmall(t, cfg)
	c, err := client.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	reads := readBacks(t, h.nc, cfg.Stream, cfg.Consumer)
	inline := map[string][]byte{}
	for i := range 5 {
		inline[fmt.Sprintf("i%d", i)] = bigBody(fmt.Sprintf("inline %d", i), 1<<10, i == 2)
	}
	checkAnswers(t, publishBodies(t, c, inline), inline, time.Minute)
	if n := reads(); n != 0 {
		t.Fatalf("%d ordered consumers read the stream back for an inline batch whose bodies intake held", n)
	}
	byFile := map[string][]byte{}
	for i := range 5 {
		byFile[fmt.Sprintf("f%d", i)] = bigBody(fmt.Sprintf("by file %d", i), 60<<10, false)
	}
	checkAnswers(t, publishBodies(t, c, byFile), byFile, time.Minute)
	if n := reads(); n != 1 {
		t.Fatalf("%d ordered consumers read the stream back for a batch by file, want 1", n)
	}
	if got := len(h.emu.Batches()); got != 2 {
		t.Fatalf("%d batches created, want 2", got)
	}
}

// A batch whose bodies the stream no longer holds (deleted, or older than the stream's MaxAge)
// is not sent: each of its requests is answered DATA_LOSS naming the message, and nothing is
// created or billed.
func TestLostStreamBodyFailsItsBatchClearly(t *testing.T) {
	for _, inlineMax := range []int{256 << 10, 1} {
		t.Run(fmt.Sprintf("inline_max=%d", inlineMax), func(t *testing.T) { lostStreamBody(t, inlineMax) })
	}
}

func lostStreamBody(t *testing.T, inlineMax int) {
	cfg := bigConfig()
	cfg.Instance, cfg.GeminiBaseURL, cfg.ShutdownGrace = "first", "http://127.0.0.1:1", time.Second
	cfg.BatchMaxRequests, cfg.InlineMaxBytes = 3, daemon.ByteSize(inlineMax) // 1: read for an upload
	s := stacktest.StartWith(t, cfg, emulator.Options{}, server.Options{MaxPayload: smallPayload})
	h := harnessOn(t, s)
	c, err := client.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bodies := map[string][]byte{}
	for i := range 3 {
		bodies[fmt.Sprintf("q%d", i)] = bigBody(fmt.Sprintf("q %d", i), 10, false)
	}
	pending := publishBodies(t, c, bodies)
	js, _ := jetstream.New(h.nc)
	waitRecord(t, js, func(r record.Record) bool { return r.State == record.Submitting && r.Count == len(bodies) })
	stream, err := js.Stream(context.Background(), cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	lost := info.State.FirstSeq
	if err := stream.DeleteMsg(context.Background(), lost); err != nil {
		t.Fatal(err)
	}
	next := cfg
	next.GeminiBaseURL = daemon.Defaults().GeminiBaseURL // the emulator
	s.Restart(next)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for key, p := range pending {
		r, err := p.Wait(ctx)
		if r == nil {
			t.Fatalf("%s: %v", key, err)
		}
		if r.Err == nil || r.Err.Code != gemini.CodeDataLoss || !strings.Contains(r.Err.Message, fmt.Sprintf("message %d of stream %s", lost, cfg.Stream)) {
			t.Fatalf("%s answered %+v, want DATA_LOSS naming message %d of stream %s", key, r.Err, lost, cfg.Stream)
		}
	}
	if n := len(h.emu.Batches()); n != 0 {
		t.Fatalf("%d batches created from a batch whose input is lost", n)
	}
	if n := len(h.emu.Ledger().Entries); n != 0 {
		t.Fatalf("%d requests billed from a batch whose input is lost", n)
	}
}

// A request without a key is keyed by its stream sequence once consumed, and its line's size
// is that key's: a batch of them sent by file uploads exactly the size it declares, its lines
// read back from the stream.
func TestKeylessStreamRequestsGoByFile(t *testing.T) {
	cfg := testConfig()
	cfg.Durable, cfg.InlineMaxBytes, cfg.BatchMaxRequests = "true", 1, 5
	h := start(t, cfg, emulator.Options{})
	keys := make([]string, 5)
	for i := range keys {
		h.send(cfg.SubjectGenerate, "", generateBody(fmt.Sprint("keyless ", i)))
		keys[i] = fmt.Sprintf("%s-%d", cfg.Stream, i+1)
	}
	for key, msgs := range h.waitReplies(keys, 30*time.Second) {
		if r := decode(t, msgs[0]); r.Error != nil {
			t.Fatalf("%s answered %+v", key, r.Error)
		}
	}
	if n := h.metric("gembatch_submitter_uploaded_bytes_total"); n == 0 {
		t.Fatal("nothing uploaded: the batch did not go by file")
	}
}

// A stream that may drop a message before its MaxAge (here a message limit, set by hand) cannot
// be trusted with the bodies: each batch's bodies are copied into its input as before.
func TestStreamThatMayDropMessagesGetsCopies(t *testing.T) {
	cfg := bigConfig()
	cfg.BatchMaxRequests = 10
	h := startSmall(t, cfg)
	js, _ := jetstream.New(h.nc)
	ctx := context.Background()
	stream, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	sc := stream.CachedInfo().Config
	sc.MaxMsgs = 1_000_000
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	h.Restart(cfg) // reads the stream's settings as it starts
	c, err := client.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	copied := chunkBytes(t, h.nc, cfg.RequestsBucket)
	bodies := map[string][]byte{}
	var streamBytes int64
	for i := range 10 {
		bodies[fmt.Sprintf("s%d", i)] = bigBody(fmt.Sprintf("small %d", i), 8<<10, false)
		streamBytes += int64(len(bodies[fmt.Sprintf("s%d", i)]))
	}
	checkAnswers(t, publishBodies(t, c, bodies), bodies, time.Minute)
	if got := copied.Load(); got < streamBytes {
		t.Fatalf("%d bytes put into the requests bucket, want the %d bytes of bodies copied", got, streamBytes)
	}
}

// The consumer filters by subject only when the stream captures more than requests: a filter of
// two subjects costs the server a match of every message against both.
func TestConsumerFiltersOnlyWhatItMust(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "true"
	h := start(t, cfg, emulator.Options{})
	js, _ := jetstream.New(h.nc)
	ctx := context.Background()
	filters := func() []string {
		t.Helper()
		c, err := js.Consumer(ctx, cfg.Stream, cfg.Consumer)
		if err != nil {
			t.Fatal(err)
		}
		return append(c.CachedInfo().Config.FilterSubjects, c.CachedInfo().Config.FilterSubject)
	}
	if f := strings.Join(filters(), ""); f != "" {
		t.Fatalf("consumer of a stream of requests alone filters %q", f)
	}
	stream, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	sc := stream.CachedInfo().Config
	sc.Subjects = append(sc.Subjects, "audit.>")
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	h.Restart(cfg)
	if _, err := js.Publish(ctx, "audit.x", []byte(`{"contents":[{"parts":[{"text":"not a request"}]}]}`)); err != nil {
		t.Fatal(err)
	}
	h.send(cfg.SubjectGenerate, "real", generateBody("a request"))
	h.waitReplies([]string{"real"}, 30*time.Second)
	if f := filters(); !slices.Contains(f, cfg.StreamSubject+".generate") || !slices.Contains(f, cfg.StreamSubject+".embed") {
		t.Fatalf("consumer of a stream that captures audit.> too filters %q", f)
	}
	if n := h.metricOf(h.Main, "gembatch_intake_requests_accepted_total"); n != 1 {
		t.Fatalf("%v requests accepted, want the one request, not the audit message", n)
	}
}
