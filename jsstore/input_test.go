package jsstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/jsstore"
	"github.com/gembatch/gembatch/record"
)

// request is a checked request of about size bytes whose body intake would accept.
func request(key string, size int) record.Request {
	body := json.RawMessage(fmt.Sprintf(`{"contents":[{"parts":[{"text":%q}]}]}`, bytes.Repeat([]byte("x"), size)))
	return record.Request{ID: key, Key: key, Reply: "r." + key, Body: body, Size: gemini.InputLineSize(key, body)}
}

// wantInput is the JSONL input gemini.InputWriter makes of reqs.
func wantInput(t testing.TB, reqs []record.Request) []byte {
	t.Helper()
	var b bytes.Buffer
	w := gemini.NewInputWriter(&b)
	for _, q := range reqs {
		if err := w.Write(q.Key, q.Body); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func objectNames(t *testing.T, js jetstream.JetStream, bucket string) map[string]bool {
	t.Helper()
	obj, err := js.ObjectStore(context.Background(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := obj.List(context.Background())
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return map[string]bool{}
	}
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, i := range infos {
		out[i.Name] = true
	}
	return out
}

// An open batch's bodies go to chunks as they arrive; the record names how many, its requests
// carry no body, and the chunks read back are exactly the Batch API's JSONL input.
func TestInputChunksAreTheUploadFile(t *testing.T) {
	s, js := openJS(t)
	ctx := context.Background()
	in := s.OpenInput("b1", false)
	var reqs []record.Request
	var bytesTotal int64
	for i := range 40 { // 40 × 512 KiB: three chunks
		q := request(fmt.Sprintf("k%d", i), 512<<10)
		if i == 9 { // a key encoding/json escapes
			q = request("k9 <&> \"é\"\\", 512<<10)
		}
		if i == 7 {
			q.Body = json.RawMessage("{\n  \"contents\": [{\"parts\": [{\"text\": \"spans lines\"}]}]\n}")
			q.Size = gemini.InputLineSize(q.Key, q.Body)
		}
		if _, err := in.Append(q); err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, q)
		bytesTotal += q.Size
	}
	var sealedIn record.Record
	if err := in.Seal(&sealedIn); err != nil {
		t.Fatal(err)
	}
	if chunks := sealedIn.Chunks; chunks != 3 {
		t.Fatalf("%d chunks for 20 MiB of input, want 3 of at least %d bytes", chunks, jsstore.ChunkSize)
	}
	rec := sealed("b1")
	for _, q := range reqs {
		q.Body = nil
		rec.Requests = append(rec.Requests, q)
	}
	rec.Count, rec.Bytes, rec.Chunks = len(reqs), bytesTotal, sealedIn.Chunks
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	rd, err := s.Input(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rd)
	_ = rd.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want := wantInput(t, reqs); !bytes.Equal(got, want) || int64(len(got)) != bytesTotal {
		t.Fatalf("input read back: %d bytes, want %d (sizes say %d), equal=%v", len(got), len(want), bytesTotal, bytes.Equal(got, want))
	}
	bodies, err := s.Bodies(ctx, "b1")
	if err != nil || len(bodies) != 40 || string(bodies["k3"]) != string(reqs[3].Body) || bodies[reqs[9].Key] == nil {
		t.Fatalf("bodies read back: %d, %v", len(bodies), err)
	}
	if err := s.Delete(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	if left := objectNames(t, js, "requests"); len(left) != 0 {
		t.Fatalf("objects left after Delete: %v", left)
	}
}

// A record made with its bodies in hand (a resubmission) gets its input written at Create.
func TestCreateWritesTheInputOfARecordWithBodies(t *testing.T) {
	s, js := openJS(t)
	ctx := context.Background()
	r := sealed("r1", 1, 2)
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	if r.Chunks != 1 || !objectNames(t, js, "requests")["r1.input.0"] {
		t.Fatalf("chunks = %d, objects %v", r.Chunks, objectNames(t, js, "requests"))
	}
	rd, err := s.Input(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rd)
	_ = rd.Close()
	if want := wantInput(t, r.Requests); !bytes.Equal(got, want) {
		t.Fatalf("input %q, want %q", got, want)
	}
}

// A big request's body is read from the bodies bucket into the input; a missing or changed
// object is that request's error alone, and the input stays whole.
func TestInputReadsBodyObjects(t *testing.T) {
	s, js := openJS(t)
	ctx := context.Background()
	bodies, err := js.ObjectStore(ctx, "bodies")
	if err != nil {
		t.Fatal(err)
	}
	big := request("big", 300<<10)
	if _, err := bodies.PutBytes(ctx, "obj1", append([]byte(big.Body), '\n')); err != nil { // a file's trailing newline
		t.Fatal(err)
	}
	changed := request("changed", 10)
	if _, err := bodies.PutBytes(ctx, "obj2", []byte(`{"contents":"not what was accepted"}`)); err != nil {
		t.Fatal(err)
	}
	small := request("small", 10)
	in := s.OpenInput("b1", false)
	ref := big
	ref.Body, ref.BodyObject = nil, "obj1"
	if _, err := in.Append(ref); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, object string
		code         int
	}{{"missing", "nope", gemini.CodeNotFound}, {"changed", "obj2", gemini.CodeFailedPrecondition}} {
		q := changed
		q.Body, q.BodyObject = nil, tc.object
		var be *jsstore.BodyError
		if _, err := in.Append(q); !errors.As(err, &be) || be.RequestStatus().Code != tc.code {
			t.Fatalf("%s object: err = %v, want a BodyError with code %d", tc.name, err, tc.code)
		}
	}
	if _, err := in.Append(small); err != nil {
		t.Fatal(err)
	}
	rec := &record.Record{ID: "b1"}
	if err := in.Seal(rec); err != nil {
		t.Fatal(err)
	}
	rd, err := s.Input(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rd)
	_ = rd.Close()
	if want := wantInput(t, []record.Request{big, small}); !bytes.Equal(got, want) {
		t.Fatalf("input is %d bytes, want %d", len(got), len(want))
	}
	s.DeleteBodyObjects(ctx, []record.Request{ref, small})
	if left := objectNames(t, js, "bodies"); left["obj1"] || !left["obj2"] {
		t.Fatalf("bodies left after the batch was recorded: %v", left)
	}
}

// The sweep deletes chunks no record names once they are old enough, and keeps the objects of
// live records and young chunks (an open batch's).
func TestSweepRemovesOrphansAndKeepsLiveObjects(t *testing.T) {
	s, js := openJS(t)
	ctx := context.Background()
	live := sealed("live", 1)
	if err := s.Create(ctx, live); err != nil {
		t.Fatal(err)
	}
	orphan := s.OpenInput("crashed", false)
	if _, err := orphan.Append(request("k", 10)); err != nil {
		t.Fatal(err)
	}
	if err := orphan.Seal(&record.Record{}); err != nil {
		t.Fatal(err)
	}
	cleaned := sealed("cleaned", 2)
	if err := s.Create(ctx, cleaned); err != nil {
		t.Fatal(err)
	}
	cleaned.State = record.Cleaned // its delete never ran: a crash
	if err := s.Update(ctx, cleaned); err != nil {
		t.Fatal(err)
	}
	before := objectNames(t, js, "requests")
	if n, err := s.Sweep(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("sweep of young objects deleted %d (%v)", n, err)
	}
	n, err := s.Sweep(ctx, time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	left := objectNames(t, js, "requests")
	if n != 3 || !left["live"] || !left["live.input.0"] || len(left) != 2 {
		t.Fatalf("sweep deleted %d of %v, left %v", n, before, left)
	}
}
