package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/stacktest"
	"github.com/gembatch/gembatch/record"
)

// bigConfig is durable mode where big requests go by file.
func bigConfig() daemon.Config {
	cfg := testConfig()
	cfg.Durable = "true"
	cfg.MaxRequestBytes = 1 << 20
	cfg.InlineMaxBytes = 256 << 10
	cfg.BatchMaxRequests = 6
	cfg.BatchMaxWait = 5 * time.Second // batches close by count, however slow the machine
	return cfg
}

func startSmall(t *testing.T, cfg daemon.Config) *harness {
	t.Helper()
	return harnessOn(t, stacktest.StartWith(t, cfg, emulator.Options{}, server.Options{MaxPayload: smallPayload}))
}

// bigBody is a GenerateContentRequest of about size bytes; pretty spans it over lines.
func bigBody(text string, size int, pretty bool) []byte {
	b, _ := json.Marshal(map[string]any{"contents": []any{map[string]any{"role": "user", "parts": []any{
		map[string]any{"text": text + " " + strings.Repeat("z", size)}}}}})
	if pretty {
		b, _ = json.MarshalIndent(json.RawMessage(b), "", "  ")
	}
	return b
}

// objects lists a bucket's object names.
func objects(t *testing.T, js jetstream.JetStream, bucket string) []string {
	t.Helper()
	obj, err := js.ObjectStore(context.Background(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := obj.List(context.Background())
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range infos {
		names = append(names, i.Name)
	}
	return names
}

// submitAll sends bodies through the client (which puts those above the max payload in the
// bodies bucket) and returns their pending replies by key.
func publishBodies(t *testing.T, c *client.Client, bodies map[string][]byte) map[string]*client.Pending {
	t.Helper()
	out := map[string]*client.Pending{}
	for key, body := range bodies {
		p, err := c.SubmitAsync(context.Background(), client.Request{Key: key, Body: body})
		if err != nil {
			t.Fatal(err)
		}
		out[key] = p
	}
	return out
}

// checkAnswers waits for every reply and checks it answers its own whole body.
func checkAnswers(t *testing.T, pending map[string]*client.Pending, bodies map[string][]byte, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for key, p := range pending {
		r, err := p.Wait(ctx)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if r.Err != nil {
			t.Fatalf("%s answered with error %+v", key, r.Err)
		}
		if got, want := responseText(t, r.Response), emulator.ExpectedText(bodies[key]); got != want {
			t.Fatalf("%s answered %q, want %q (the body did not reach the service whole)", key, got, want)
		}
	}
}

// Requests larger than the server's max payload go through the bodies bucket, are counted at
// their real size, reach the service whole in a batch sent by file (the pretty-printed one
// compacted onto its line), and their objects are deleted once the batch is recorded.
func TestBigRequests(t *testing.T) {
	h := startSmall(t, bigConfig())
	c, err := client.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bodies := map[string][]byte{"small": bigBody("small", 10, false), "pretty": bigBody("pretty", 100<<10, true)}
	for i := range 4 {
		bodies[fmt.Sprintf("big%d", i)] = bigBody(fmt.Sprintf("big %d", i), 200<<10, false)
	}
	checkAnswers(t, publishBodies(t, c, bodies), bodies, time.Minute)
	if n := h.metric("gembatch_submitter_batches_total", "mode", "file", "outcome", "submitted"); n < 1 {
		t.Fatal("no batch went by file")
	}
	var want int64
	for key, b := range bodies {
		want += gemini.InputLineSize(key, b)
	}
	if got := h.metric("gembatch_submitter_uploaded_bytes_total"); got != float64(want) {
		t.Fatalf("uploaded %v bytes, want the real size of every line, %d", got, want)
	}
	js, _ := jetstream.New(h.nc)
	if left := objects(t, js, client.DefaultBodiesBucket); len(left) != 0 {
		t.Fatalf("body objects left after their batch was recorded: %v", left)
	}
	for _, name := range objects(t, js, "gembatch-requests") {
		if strings.HasSuffix(name, ".bodies") {
			t.Fatalf("bodies written whole at seal: %s", name)
		}
	}
}

// A reference into any bucket but the bodies bucket is refused (gembatch's own buckets
// included, and left untouched), as are a missing object, one above MAX_REQUEST_BYTES, and a
// reference with a body of its own: each with a clear error reply.
func TestBodyObjectRefusals(t *testing.T) {
	cfg := bigConfig()
	cfg.MaxRequestBytes = 256 << 10
	h := startSmall(t, cfg)
	ctx := context.Background()
	js, _ := jetstream.New(h.nc)
	put := func(bucket, name string, body []byte) {
		t.Helper()
		obj, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: bucket})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := obj.Put(ctx, jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: smallPayload / 2}}, strings.NewReader(string(body))); err != nil {
			t.Fatal(err)
		}
	}
	valid := bigBody("x", 10, false)
	put("gembatch-requests", "someone-elses", valid)
	put("gembatch-results", "an-answer", valid)
	put("other", "obj", valid)
	put("gembatch-bodies", "huge", bigBody("huge", 300<<10, false))
	put("gembatch-bodies", "fine", valid)
	cases := []struct {
		key, ref, body string
		code           int
		says           string
	}{
		{"requests-bucket", "gembatch-requests/someone-elses", "", gemini.CodeInvalidArgument, `bucket "gembatch-requests" refused`},
		{"results-bucket", "gembatch-results/an-answer", "", gemini.CodeInvalidArgument, `bucket "gembatch-results" refused`},
		{"other-bucket", "other/obj", "", gemini.CodeInvalidArgument, `bucket "other" refused`},
		{"no-bucket", "justaname", "", gemini.CodeInvalidArgument, "is not <bucket>/<object>"},
		{"missing", "gembatch-bodies/nope", "", gemini.CodeNotFound, "gembatch-bodies/nope not found"},
		{"oversize", "gembatch-bodies/huge", "", gemini.CodeInvalidArgument, "the limit is 262144 (GEMBATCH_MAX_REQUEST_BYTES)"},
		{"with-body", "gembatch-bodies/fine", string(valid), gemini.CodeInvalidArgument, "must have an empty body"},
	}
	var keys []string
	for _, tc := range cases {
		h.send(cfg.SubjectGenerate, tc.key, tc.body, client.HeaderBodyObject, tc.ref)
		keys = append(keys, tc.key)
	}
	got := h.waitReplies(keys, 30*time.Second)
	for _, tc := range cases {
		if len(got[tc.key]) != 1 {
			t.Fatalf("%s: %d replies", tc.key, len(got[tc.key]))
		}
		r := decode(t, got[tc.key][0])
		if r.Error == nil || r.Error.Code != tc.code || !strings.Contains(r.Error.Message, tc.says) {
			t.Errorf("%s: reply %+v, want code %d saying %q", tc.key, r.Error, tc.code, tc.says)
		}
	}
	for bucket, name := range map[string]string{"gembatch-requests": "someone-elses", "gembatch-results": "an-answer", "other": "obj", "gembatch-bodies": "huge"} {
		obj, _ := js.ObjectStore(ctx, bucket)
		if _, err := obj.GetInfo(ctx, name); err != nil {
			t.Errorf("%s/%s was touched by a refused request: %v", bucket, name, err)
		}
	}
	if n := h.metric("gembatch_intake_requests_rejected_total", "reason", "body_object"); n != 6 {
		t.Errorf("%v refusals counted as body_object, want 6", n)
	}
}

// A request too big for a message that asks for an image makes its batch go by file, small as
// the batch is, though its body stays in its object until the batch's input is written.
func TestBigRequestForAnImageGoesByFile(t *testing.T) {
	cfg := bigConfig()
	cfg.BatchMaxWait = time.Second
	h := harnessOn(t, stacktest.StartWith(t, cfg, emulator.Options{ImageBytes: 100_000}, server.Options{MaxPayload: smallPayload}))
	c, err := client.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := imagePrompt("a lighthouse " + strings.Repeat("in detail ", smallPayload/5))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := c.Submit(ctx, client.Request{Key: "big-image", Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if r.Object == nil || len(pngOf(t, r.Response)) < 90_000 {
		t.Fatalf("answer %+v", r.Object)
	}
	if n := h.metric("gembatch_submitter_batches_total", "mode", "file", "outcome", "submitted"); n != 1 {
		t.Errorf("%v batches by file, want 1 (inline: %v)", n, h.metric("gembatch_submitter_batches_total", "mode", "inline", "outcome", "submitted"))
	}
}

// Core mode has no object store to read bodies from: a request naming a body object is
// refused at once with FAILED_PRECONDITION, and the requests around it are answered.
func TestBodyObjectRefusedInCoreMode(t *testing.T) {
	cfg := bigConfig()
	cfg.Durable = "false"
	h := startSmall(t, cfg)
	h.send(cfg.SubjectGenerate, "by-object", "", client.HeaderBodyObject, client.DefaultBodiesBucket+"/big-1")
	h.send(cfg.SubjectGenerate, "plain", string(bigBody("plain", 10, false)))
	got := h.waitReplies([]string{"by-object", "plain"}, 30*time.Second)
	if r := decode(t, got["by-object"][0]); r.Error == nil || r.Error.Code != gemini.CodeFailedPrecondition || !strings.Contains(r.Error.Message, "need durable mode") {
		t.Errorf("body object in core mode: %+v", r.Error)
	}
	if r := decode(t, got["plain"][0]); r.Error != nil || r.Response == nil {
		t.Errorf("plain request: %+v", r.Error)
	}
	if n := h.metric("gembatch_intake_requests_rejected_total", "reason", "body_object"); n != 1 {
		t.Errorf("%v refusals counted as body_object, want 1", n)
	}
}

// A request whose body is an object counts against the batch's byte limit at the body's size,
// not at its empty message's: three of 200 KiB under a 300 KiB limit make three batches, two
// of them closed by bytes (counted at the message's size, two would close by count).
func TestBigRequestsCountedAtTheirSize(t *testing.T) {
	cfg := bigConfig()
	cfg.BatchMaxRequests = 2
	cfg.BatchMaxBytes = 300 << 10
	cfg.BatchMaxWait = time.Second
	h := startSmall(t, cfg)
	c, err := client.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bodies := map[string][]byte{}
	for i := range 3 {
		bodies[fmt.Sprintf("big%d", i)] = bigBody(fmt.Sprintf("big %d", i), 200<<10, false)
	}
	checkAnswers(t, publishBodies(t, c, bodies), bodies, time.Minute)
	if n := h.metric("gembatch_accumulator_batches_closed_total", "reason", "bytes"); n != 2 {
		t.Errorf("%v batches closed by bytes, want 2", n)
	}
	if n := h.metric("gembatch_accumulator_batches_closed_total"); n != 3 {
		t.Errorf("%v batches, want one per request (3)", n)
	}
}

// A batch of big requests recorded by a replica that could not submit it is taken over and
// uploaded from its input chunks: the body objects are gone by then, and nothing else holds
// the bodies.
func TestTakenOverBatchUploadsFromItsChunks(t *testing.T) {
	cfg, s, h, c := unsubmittable(t, 4)
	bodies := map[string][]byte{"small": bigBody("small", 10, false)}
	for i := range 3 {
		bodies[fmt.Sprintf("big%d", i)] = bigBody(fmt.Sprintf("big %d", i), 200<<10, false)
	}
	pending := publishBodies(t, c, bodies)
	js, _ := jetstream.New(h.nc)
	rec := waitRecord(t, js, func(r record.Record) bool { return r.State == record.Submitting && r.Count == len(bodies) })
	if rec.Chunks < 1 {
		t.Fatalf("record %+v names no input chunks", rec)
	}
	next := cfg
	next.Instance = "second"
	next.GeminiBaseURL = daemon.Defaults().GeminiBaseURL // the emulator
	s.Restart(next)
	if left := objects(t, js, client.DefaultBodiesBucket); len(left) != 0 {
		t.Fatalf("body objects left after the batch was recorded: %v", left)
	}
	checkAnswers(t, pending, bodies, time.Minute)
	var want int64
	for key, b := range bodies {
		want += gemini.InputLineSize(key, b)
	}
	if got := h.metricOf(s.Main, "gembatch_submitter_uploaded_bytes_total"); got != float64(want) {
		t.Fatalf("the second replica uploaded %v bytes, want the batch's %d", got, want)
	}
}

// A takeover that cannot read the record's requests (a NATS hiccup, a slow object store) tries
// again until it can: the record it claimed has no other owner while this replica lives, so
// giving up after one try would leave its requests unanswered for good.
func TestTakeoverRetriesWhatItCouldNotRead(t *testing.T) {
	cfg, s, h, c := unsubmittable(t, 3)
	bodies := map[string][]byte{}
	for i := range 3 {
		bodies[fmt.Sprintf("q%d", i)] = bigBody(fmt.Sprintf("q %d", i), 10, false)
	}
	pending := publishBodies(t, c, bodies)
	js, _ := jetstream.New(h.nc)
	rec := waitRecord(t, js, func(r record.Record) bool { return r.State == record.Submitting && r.Count == len(bodies) })
	// The record's request lines vanish for a while, as if the object store did not answer.
	obj, err := js.ObjectStore(context.Background(), cfg.RequestsBucket)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := obj.GetBytes(context.Background(), rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := obj.Delete(context.Background(), rec.ID); err != nil {
		t.Fatal(err)
	}
	next := cfg
	next.Instance = "second"
	next.GeminiBaseURL = daemon.Defaults().GeminiBaseURL // the emulator
	s.Restart(next)
	time.Sleep(2 * time.Second) // the takeover's first tries fail
	if _, err := obj.PutBytes(context.Background(), rec.ID, lines); err != nil {
		t.Fatal(err)
	}
	checkAnswers(t, pending, bodies, time.Minute)
}

// unsubmittable starts replica "first", whose batches of batchMax requests are recorded but
// cannot be submitted (nothing listens at its API address), and a client of its NATS server
// (closed with the test), for takeover tests that restart it as "second" with the emulator.
func unsubmittable(t *testing.T, batchMax int) (daemon.Config, *stacktest.Stack, *harness, *client.Client) {
	t.Helper()
	cfg := bigConfig()
	cfg.Instance = "first"
	cfg.GeminiBaseURL = "http://127.0.0.1:1"
	cfg.ShutdownGrace = time.Second
	cfg.BatchMaxRequests = batchMax
	s := stacktest.StartWith(t, cfg, emulator.Options{}, server.Options{MaxPayload: smallPayload})
	h := harnessOn(t, s)
	c, err := client.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return cfg, s, h, c
}

// waitRecord polls the records bucket until one record satisfies ok, and returns it.
func waitRecord(t *testing.T, js jetstream.JetStream, ok func(record.Record) bool) record.Record {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), "gembatch-records")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		keys, err := kv.ListKeys(context.Background())
		if err != nil {
			continue
		}
		for k := range keys.Keys() {
			var rec record.Record
			if e, err := kv.Get(context.Background(), k); err == nil && json.Unmarshal(e.Value(), &rec) == nil && ok(rec) {
				return rec
			}
		}
	}
	t.Fatal("no record in the state waited for")
	return record.Record{}
}
