package publisher_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/stacktest"
	"github.com/gembatch/gembatch/publisher"
	"github.com/gembatch/gembatch/record"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, stacktest.LeakOptions()...) }

func TestBody(t *testing.T) {
	for _, tt := range []struct {
		key  string
		resp string
		st   *gemini.Status
		want string
	}{
		{"k1", `{"candidates":[]}`, nil, `{"key":"k1","response":{"candidates":[]}}`},
		{`q"uote`, "", gemini.NewStatus(3, "bad"), `{"key":"q\"uote","error":{"code":3,"message":"bad","status":"INVALID_ARGUMENT"}}`},
	} {
		if got := string(publisher.Body(tt.key, json.RawMessage(tt.resp), tt.st)); got != tt.want {
			t.Errorf("Body = %s, want %s", got, tt.want)
		}
	}
}

// fakeAPI serves one result file and records deletions.
type fakeAPI struct {
	results     string
	inline      []gemini.Result // answered inline, handed over by StreamBatch, when set
	streams     int
	fail        error
	deleted     []string
	deletedJobs []string
	downloads   int
}

var _ publisher.API = (*fakeAPI)(nil)

func (f *fakeAPI) StreamBatch(_ context.Context, _ string, each func(gemini.Result) error, handedAll func()) (*gemini.Operation, error) {
	f.streams++
	if f.inline == nil {
		return &gemini.Operation{Metadata: &gemini.BatchMetadata{State: gemini.StateSucceeded, Output: &gemini.Output{ResponsesFile: "files/batch-x"}}}, nil
	}
	for _, r := range f.inline {
		if err := each(r); err != nil {
			return nil, err
		}
	}
	handedAll()
	return &gemini.Operation{Metadata: &gemini.BatchMetadata{State: gemini.StateSucceeded, Output: &gemini.Output{InlinedResponses: &gemini.InlinedResponses{}}}}, nil
}
func (f *fakeAPI) Download(context.Context, string) (io.ReadCloser, error) {
	f.downloads++
	if f.fail != nil {
		return nil, f.fail
	}
	return io.NopCloser(strings.NewReader(f.results)), nil
}
func (f *fakeAPI) DeleteBatch(_ context.Context, name string) error {
	f.deletedJobs = append(f.deletedJobs, name)
	return nil
}
func (f *fakeAPI) DeleteFile(_ context.Context, name string) error {
	f.deleted = append(f.deleted, name)
	return nil
}

type natsEnv struct {
	nc      *nats.Conn
	mu      sync.Mutex
	replies map[string][]*nats.Msg
}

func natsUp(t *testing.T) *natsEnv {
	t.Helper()
	e := &natsEnv{nc: stacktest.NATS(t), replies: map[string][]*nats.Msg{}}
	if _, err := e.nc.Subscribe("r.>", func(m *nats.Msg) {
		e.mu.Lock()
		e.replies[m.Header.Get("Gembatch-Key")] = append(e.replies[m.Header.Get("Gembatch-Key")], m)
		e.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *natsEnv) settle(t *testing.T) map[string][]*nats.Msg {
	t.Helper()
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.replies
}

func finished(keys ...string) *record.Record {
	rec := &record.Record{ID: "rec", State: record.Finished, RemoteName: "batches/b1", RemoteState: gemini.StateSucceeded, InputFile: "files/in1"}
	for _, k := range keys {
		rec.Requests = append(rec.Requests, record.Request{ID: "id-" + k, Key: k, Reply: "r." + k, Received: time.Now()})
	}
	return rec
}

// TestAnswerFromBrokenResultFile: good lines, a line that does not parse but names its key, a
// line with no key at all, a result for a key not in the batch, a duplicate, and a missing key.
func TestAnswerFromBrokenResultFile(t *testing.T) {
	e := natsUp(t)
	api := &fakeAPI{results: strings.Join([]string{
		`{"key":"a","response":{"candidates":[{"content":{"parts":[{"text":"A"}]}}]}}`,
		`{"key":"b","response":{"candidates":[{"cont`,
		`this is not json at all`,
		`{"key":"zzz","response":{}}`,
		`{"key":"c","status":{"code":13,"message":"internal"}}`,
		`{"key":"a","response":{"again":true}}`,
	}, "\n") + "\n"}
	store := record.NewMemStore()
	rec := finished("a", "b", "c", "d")
	if err := store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	b := publisher.NewBatches(publisher.New(e.nc, nil), store, api, zerolog.New(zerolog.NewTestWriter(t)))
	if err := b.Answer(context.Background(), rec, nil); err != nil {
		t.Fatal(err)
	}
	got := e.settle(t)
	want := map[string]string{"a": "ok", "b": "error", "c": "error", "d": "error"}
	for k, status := range want {
		if len(got[k]) != 1 {
			t.Fatalf("key %s: %d replies, want 1", k, len(got[k]))
		}
		m := got[k][0]
		if m.Header.Get("Gembatch-Status") != status || m.Header.Get("Nats-Msg-Id") != "id-"+k || m.Header.Get("Gembatch-Batch") != "batches/b1" {
			t.Fatalf("key %s: headers %v", k, m.Header)
		}
	}
	if string(got["c"][0].Data) != `{"key":"c","error":{"code":13,"message":"internal","status":"INTERNAL"}}` {
		t.Fatalf("per-item error reply: %s", got["c"][0].Data)
	}
	if !strings.Contains(string(got["d"][0].Data), "returned no result for this key") {
		t.Fatalf("missing key reply: %s", got["d"][0].Data)
	}
	if len(got["zzz"]) != 0 {
		t.Fatal("a reply went out for a key not in the batch")
	}
	if _, err := store.Get(context.Background(), "rec"); !errors.Is(err, record.ErrNotFound) {
		t.Fatalf("record not cleaned up: %v", err)
	}
	if len(api.deleted) != 1 || api.deleted[0] != "files/in1" {
		t.Fatalf("deleted %v, want the input file", api.deleted)
	}
}

func TestTokensCountedOncePerBatch(t *testing.T) {
	e := natsUp(t)
	api := &fakeAPI{results: `{"key":"a","response":{"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5,"thoughtsTokenCount":2}}}
{"key":"b","response":{"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":3,"cachedContentTokenCount":4}}}
`}
	store := record.NewMemStore()
	rec := finished("a", "b")
	rec.Group.Model = "models/m"
	rec.Replied = 1 // resumed: the first result was published before a restart, its tokens still count
	_ = store.Create(context.Background(), rec)
	reg := prometheus.NewRegistry()
	b := publisher.NewBatches(publisher.New(e.nc, publisher.NewMetrics(reg)), store, api, zerolog.Nop())
	if err := b.Answer(context.Background(), rec, nil); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP gembatch_publisher_tokens_total Tokens of answered batches from their responses' usageMetadata, by model and type (prompt, candidates, cached, thoughts; prompt_estimated for responses without usage, such as embeddings); counted once per batch.
# TYPE gembatch_publisher_tokens_total counter
gembatch_publisher_tokens_total{model="models/m",type="cached"} 4
gembatch_publisher_tokens_total{model="models/m",type="candidates"} 8
gembatch_publisher_tokens_total{model="models/m",type="prompt"} 17
gembatch_publisher_tokens_total{model="models/m",type="prompt_estimated"} 0
gembatch_publisher_tokens_total{model="models/m",type="thoughts"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "gembatch_publisher_tokens_total"); err != nil {
		t.Fatal(err)
	}
}

func TestAnswerResumesAfterCheckpoint(t *testing.T) {
	e := natsUp(t)
	var lines []string
	var keys []string
	for i := range 10 {
		k := fmt.Sprintf("k%d", i)
		keys = append(keys, k)
		lines = append(lines, `{"key":"`+k+`","response":{"n":`+fmt.Sprint(i)+`}}`)
	}
	api := &fakeAPI{results: strings.Join(lines, "\n")}
	store := record.NewMemStore()
	rec := finished(keys...)
	rec.Replied = 6 // an earlier run published the first six results
	if err := store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	b := publisher.NewBatches(publisher.New(e.nc, nil), store, api, zerolog.Nop())
	if err := b.Answer(context.Background(), rec, nil); err != nil {
		t.Fatal(err)
	}
	got := e.settle(t)
	for i, k := range keys {
		if want := map[bool]int{true: 0, false: 1}[i < 6]; len(got[k]) != want {
			t.Fatalf("key %s: %d replies, want %d", k, len(got[k]), want)
		}
	}
}

// breaking reads its text, then fails as a download cut off would.
type breaking struct{ r io.Reader }

func (b *breaking) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

// cutAPI serves a result file that breaks off after its first line.
type cutAPI struct{ fakeAPI }

func (c *cutAPI) Download(context.Context, string) (io.ReadCloser, error) {
	return io.NopCloser(&breaking{strings.NewReader(c.results)}), nil
}

func TestSalvageAnswersWhatCannotBeRead(t *testing.T) {
	e := natsUp(t)
	api := &cutAPI{fakeAPI{results: `{"key":"a","response":{"n":1}}` + "\n"}}
	store := record.NewMemStore()
	rec := finished("a", "b", "c")
	_ = store.Create(context.Background(), rec)
	b := publisher.NewBatches(publisher.New(e.nc, nil), store, api, zerolog.Nop())
	if err := b.Answer(context.Background(), rec, nil); err == nil {
		t.Fatal("Answer succeeded on a truncated download")
	}
	if err := b.Salvage(context.Background(), rec, nil); err != nil {
		t.Fatal(err)
	}
	got := e.settle(t)
	if len(got["a"]) == 0 || got["a"][len(got["a"])-1].Header.Get("Gembatch-Status") != "ok" {
		t.Fatalf("the result that was read is not published: %v", got["a"])
	}
	for _, k := range []string{"b", "c"} {
		if len(got[k]) != 1 || !strings.Contains(string(got[k][0].Data), "could not be read") {
			t.Fatalf("key %s: %d replies; want one saying the results could not be read", k, len(got[k]))
		}
	}
	if _, err := store.Get(context.Background(), "rec"); !errors.Is(err, record.ErrNotFound) {
		t.Fatalf("salvaged record not cleaned up: %v", err)
	}

	// A download that cannot even start: every request gets the error.
	rec2 := finished("x", "y")
	rec2.ID = "rec2"
	_ = store.Create(context.Background(), rec2)
	failing := publisher.NewBatches(publisher.New(e.nc, nil), store, &fakeAPI{fail: errors.New("HTTP 500: <html>oops</html>")}, zerolog.Nop())
	if err := failing.Salvage(context.Background(), rec2, nil); err != nil {
		t.Fatal(err)
	}
	got = e.settle(t)
	for _, k := range []string{"x", "y"} {
		if len(got[k]) != 1 || got[k][0].Header.Get("Gembatch-Status") != "error" {
			t.Fatalf("key %s: %d replies; want one error", k, len(got[k]))
		}
	}
}

func TestDownloadErrorLeavesBatchToRetry(t *testing.T) {
	e := natsUp(t)
	api := &fakeAPI{fail: &gemini.APIError{Op: "files.download", HTTPStatus: 503}}
	store := record.NewMemStore()
	rec := finished("a")
	_ = store.Create(context.Background(), rec)
	b := publisher.NewBatches(publisher.New(e.nc, nil), store, api, zerolog.Nop())
	if err := b.Answer(context.Background(), rec, nil); err == nil {
		t.Fatal("Answer succeeded though the results could not be read")
	}
	if got := e.settle(t); len(got["a"]) != 0 {
		t.Fatal("a reply went out though the results could not be read")
	}
	if r, err := store.Get(context.Background(), "rec"); err != nil || r.State != record.Finished {
		t.Fatalf("record %+v, %v; want it kept Finished for a retry", r, err)
	}
}

// TestPublishAllocatesNoMoreThanRaw: publishing a reply allocates no more than publishing the
// same message, built beforehand, straight on the connection (nats.go encodes headers anew for
// every message): no header maps, no body copies of our own.
func TestPublishAllocatesNoMoreThanRaw(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items: run without -race")
	}
	nc := stacktest.NATS(t)
	pub := publisher.New(nc, nil)
	r := publisher.Reply{Subject: "allocs.x", Key: "k-000001", MsgID: "ID1", Batch: "batches/x", Response: json.RawMessage(`{"candidates":[]}`)}
	raw := &nats.Msg{Subject: r.Subject, Data: publisher.Body(r.Key, r.Response, nil), Header: nats.Header{}}
	raw.Header.Set(publisher.HeaderKey, r.Key)
	raw.Header.Set(publisher.HeaderStatus, "ok")
	raw.Header.Set(publisher.HeaderBatch, r.Batch)
	raw.Header.Set(publisher.HeaderMsgID, r.MsgID)
	rawAllocs := testing.AllocsPerRun(200, func() { _ = nc.PublishMsg(raw) })
	ours := testing.AllocsPerRun(200, func() { _ = pub.Publish(r) })
	if ours > rawAllocs {
		t.Errorf("Publish makes %v allocations per reply, a raw publish of the same message %v", ours, rawAllocs)
	}
}
