package publisher_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/publisher"
	"github.com/gembatch/gembatch/record"
)

// bigEnv answers batches whose replies above 1 KiB go by reference to a results bucket.
type bigEnv struct {
	*natsEnv
	js     jetstream.JetStream
	bucket jetstream.ObjectStore
	pub    *publisher.Publisher
}

func bigUp(t *testing.T) *bigEnv {
	t.Helper()
	e := &bigEnv{natsEnv: natsUp(t)}
	var err error
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	e.pub = publisher.New(e.nc, nil)
	e.pub.MaxReplyBytes = 1 << 10
	if e.pub.Results, err = publisher.OpenResults(context.Background(), e.js, publisher.ResultsConfig{
		Bucket: "results", TTL: time.Hour, Replicas: 1, Storage: jetstream.FileStorage, MaxPayload: e.nc.MaxPayload(),
	}); err != nil {
		t.Fatal(err)
	}
	if e.bucket, err = e.js.ObjectStore(context.Background(), "results"); err != nil {
		t.Fatal(err)
	}
	return e
}

// answer answers a fresh copy of a finished record with the given result file.
func (e *bigEnv) answer(t *testing.T, results string, keys ...string) {
	t.Helper()
	store := record.NewMemStore()
	rec := finished(keys...)
	if err := store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	b := publisher.NewBatches(e.pub, store, &fakeAPI{results: results}, zerolog.New(zerolog.NewTestWriter(t)))
	if err := b.Answer(context.Background(), rec, nil); err != nil {
		t.Fatal(err)
	}
}

func textLine(key, text string) string {
	return `{"key":"` + key + `","response":{"candidates":[{"content":{"parts":[{"text":"` + text + `"}]}}]}}` + "\n"
}

// reference decodes a reply by reference.
func reference(t *testing.T, m *nats.Msg) client.ResultObject {
	t.Helper()
	r, err := client.ParseReply(m)
	if err != nil || r.Object == nil {
		t.Fatalf("not a reply by reference (%v): %s", err, m.Data)
	}
	return *r.Object
}

// TestBigAnswerWrittenOnce: a batch answered again (a crash before its record said replied)
// names the same object, which is not written again; an answer with other content under that
// name (never expected) goes under another, leaving the first to its readers.
func TestBigAnswerWrittenOnce(t *testing.T) {
	e := bigUp(t)
	big := strings.Repeat("x", 5000)
	e.answer(t, textLine("a", big)+textLine("b", "small"), "a", "b")
	first := e.settle(t)["a"]
	ref := reference(t, first[0])
	info, err := e.bucket.GetInfo(context.Background(), ref.Name)
	if err != nil {
		t.Fatal(err)
	}
	if ref.Size != int64(info.Size) || ref.Digest != info.Digest || ref.Bucket != "results" {
		t.Fatalf("reference %+v, object %+v", ref, info)
	}
	if got, _ := e.bucket.GetBytes(context.Background(), ref.Name); string(got) != strings.TrimSuffix(textLine("a", big), "\n") {
		t.Fatalf("object holds %.80s", got)
	}
	if len(e.settle(t)["b"][0].Header.Get(publisher.HeaderResultObject)) != 0 {
		t.Fatal("a small answer went by reference")
	}

	e.answer(t, textLine("a", big)+textLine("b", "small"), "a", "b")
	again := e.settle(t)["a"]
	if len(again) != 2 || reference(t, again[1]) != ref || again[1].Header.Get("Nats-Msg-Id") != first[0].Header.Get("Nats-Msg-Id") {
		t.Fatalf("repeated reply: %d replies, %s", len(again), again[len(again)-1].Data)
	}
	if info2, err := e.bucket.GetInfo(context.Background(), ref.Name); err != nil || info2.NUID != info.NUID {
		t.Fatalf("object rewritten: %+v -> %+v (%v)", info, info2, err)
	}

	e.answer(t, textLine("a", strings.Repeat("y", 5000)), "a")
	other := reference(t, e.settle(t)["a"][2])
	if other.Name == ref.Name || !strings.HasPrefix(other.Name, ref.Name+"-") || other.Digest == ref.Digest {
		t.Fatalf("other content: %+v, first %+v", other, ref)
	}
	if info3, err := e.bucket.GetInfo(context.Background(), ref.Name); err != nil || info3.NUID != info.NUID {
		t.Fatalf("first object rewritten: %v", err)
	}
}

// TestBigAnswerWhenTheBucketCannotBeWritten: the answer becomes an error reply for its key,
// naming its size and the limit; the batch is answered in one try.
func TestBigAnswerWhenTheBucketCannotBeWritten(t *testing.T) {
	e := bigUp(t)
	if err := e.js.DeleteObjectStore(context.Background(), "results"); err != nil {
		t.Fatal(err)
	}
	e.answer(t, textLine("a", strings.Repeat("x", 5000))+textLine("b", "small"), "a", "b")
	got := e.settle(t)
	st := errorReply(t, got["a"])
	if st.Code != gemini.CodeResourceExhausted || !strings.Contains(st.Message, "more than the 1024 bytes") ||
		!strings.Contains(st.Message, "could not be written to the results object store") {
		t.Fatalf("error reply: %+v", st)
	}
	if len(got["b"]) != 1 || got["b"][0].Header.Get("Gembatch-Status") != "ok" {
		t.Fatalf("small answer: %v", got["b"])
	}
}

// TestBigDeadLetterByReference: a dead letter too large for a NATS message (the request is in
// it) goes by reference like an answer, request included.
func TestBigDeadLetterByReference(t *testing.T) {
	e := bigUp(t)
	letters := make(chan *nats.Msg, 1)
	if _, err := e.nc.ChanSubscribe("dead", letters); err != nil {
		t.Fatal(err)
	}
	store := record.NewMemStore()
	rec := finished("a")
	rec.Requests[0].Body = json.RawMessage(`{"contents":[{"parts":[{"text":"` + strings.Repeat("p", 3000) + `"}]}]}`)
	if err := store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	b := publisher.NewBatches(e.pub, store, &fakeAPI{results: `{"key":"a","error":{"code":3,"message":"bad"}}` + "\n"}, zerolog.Nop())
	b.Policy.DeadLetter = "dead"
	if err := b.Answer(context.Background(), rec, nil); err != nil {
		t.Fatal(err)
	}
	var m *nats.Msg
	select {
	case m = <-letters:
	case <-time.After(5 * time.Second):
		t.Fatal("no dead letter")
	}
	ref := reference(t, m)
	data, err := e.bucket.GetBytes(context.Background(), ref.Name)
	if err != nil {
		t.Fatal(err)
	}
	var dl publisher.DeadLetter
	if err := json.Unmarshal(data, &dl); err != nil || dl.Key != "a" || !strings.Contains(string(dl.Request), strings.Repeat("p", 3000)) {
		t.Fatalf("dead letter object (%v): %.100s", err, data)
	}
}

// TestInlineAnswersReadAsTheyCome: the poller's operation holds no inline answers; the batch
// is answered from the job fetched again, one answer at a time, big ones by reference.
func TestInlineAnswersReadAsTheyCome(t *testing.T) {
	e := bigUp(t)
	api := &fakeAPI{inline: []gemini.Result{
		{Key: "a", Response: json.RawMessage(`{"text":"` + strings.Repeat("x", 5000) + `"}`)},
		{Key: "b", Response: json.RawMessage(`{"text":"small"}`)},
	}}
	store := record.NewMemStore()
	rec := finished("a", "b")
	rec.InputFile = ""
	if err := store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	polled := &gemini.Operation{Metadata: &gemini.BatchMetadata{State: gemini.StateSucceeded,
		Output: &gemini.Output{InlinedResponses: &gemini.InlinedResponses{}}}}
	b := publisher.NewBatches(e.pub, store, api, zerolog.Nop())
	if err := b.Answer(context.Background(), rec, polled); err != nil {
		t.Fatal(err)
	}
	got := e.settle(t)
	if api.streams != 1 || len(got["a"]) != 1 || len(got["b"]) != 1 {
		t.Fatalf("%d streams, replies %v", api.streams, got)
	}
	if ref := reference(t, got["a"][0]); ref.Size < 5000 {
		t.Fatalf("big inline answer: %+v", ref)
	}
	if string(got["b"][0].Data) != `{"key":"b","response":{"text":"small"}}` {
		t.Fatalf("small inline answer: %s", got["b"][0].Data)
	}
}

// TestObjectNameNeedsTheRecordID: an answer's object name is the same for the same record and
// request (a reply repeated after a crash), and cannot be had from what a producer knows: the
// request's id is a stream sequence in durable mode, so the name must change with gembatchd's
// own record id and show neither.
func TestObjectNameNeedsTheRecordID(t *testing.T) {
	a := publisher.ObjectName("rec1dGwzbo8Nf6J2D1ijc2U", "17")
	if a != publisher.ObjectName("rec1dGwzbo8Nf6J2D1ijc2U", "17") {
		t.Fatal("the name of one answer changes")
	}
	for _, other := range []string{publisher.ObjectName("rec2Hs0uAq1zXf7Lk3m9pQR", "17"), publisher.ObjectName("rec1dGwzbo8Nf6J2D1ijc2U", "18")} {
		if other == a {
			t.Fatalf("two answers share the name %s", a)
		}
	}
	if strings.Contains(a, "rec1dGwzbo8Nf6J2D1ijc2U") || len(a) < 32 {
		t.Fatalf("name %q shows the record id, or is short enough to guess", a)
	}
}
