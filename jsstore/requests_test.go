package jsstore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/gembatch/gembatch/record"
)

// viaEncoder is how the requests were written before: a json.Encoder, a line each.
func viaEncoder(t testing.TB, reqs []record.Request) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, q := range reqs {
		q.Body = nil
		if err := enc.Encode(q); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func sameAsEncoder(t *testing.T, reqs []record.Request) {
	t.Helper()
	got, err := encodeRequests(reqs)
	if err != nil {
		t.Fatal(err)
	}
	if want := viaEncoder(t, reqs); !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("encodeRequests wrote\n%s\nencoding/json writes\n%s", got.Bytes(), want)
	}
}

func TestEncodeRequestsIsWhatEncodingJSONWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	strs := []string{"", "plain-key", "q\"uote", `back\slash`, "tab\tnew\nline", "<html>&amp;", "é ü 日本",
		"bad\xffutf8", "line\u2028sep\u2029", "\x01\x1f\x7f", "GEMBATCH-12345"}
	zones := []*time.Location{time.UTC, time.FixedZone("plus", 5*3600+1800), time.FixedZone("minus", -8*3600)}
	var reqs []record.Request
	for i := range 2000 {
		q := record.Request{
			ID: strs[rng.IntN(len(strs))], Key: strs[rng.IntN(len(strs))], Reply: strs[rng.IntN(len(strs))],
			Received: time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)*int64(rng.IntN(2))).In(zones[rng.IntN(len(zones))]),
			Size:     rng.Int64N(1 << 40), Body: json.RawMessage(`{"contents":[]}`),
			BodyObject: "left out", Images: i%2 == 0,
		}
		if rng.IntN(2) == 0 {
			q.Deadline = q.Received.Add(time.Duration(rng.Int64N(1e12)))
		}
		if rng.IntN(2) == 0 {
			q.Seq = rng.Uint64()
		}
		if rng.IntN(2) == 0 {
			q.Attempt = rng.IntN(5) - 1
		}
		reqs = append(reqs, q)
	}
	sameAsEncoder(t, reqs)
	sameAsEncoder(t, nil)
}

func TestEncodeRequestsRefusesTimesEncodingJSONRefuses(t *testing.T) {
	ok := record.Request{ID: "a", Key: "a", Received: time.Date(2026, 11, 30, 1, 2, 3, 4, time.UTC)}
	late := ok
	late.Received = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := encodeRequests([]record.Request{ok, late}); err == nil {
		t.Fatal("a request received in the year 10000 was written; encoding/json refuses it")
	}
	early := ok
	early.Deadline = time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := encodeRequests([]record.Request{early}); err == nil {
		t.Fatal("a deadline in the year -1 was written; encoding/json refuses it")
	}
	far := ok
	far.Received = ok.Received.In(time.FixedZone("far", 24*3600))
	if _, err := encodeRequests([]record.Request{far}); err == nil {
		t.Fatal("a time in a zone a day from UTC was written; encoding/json refuses it")
	}
}

func FuzzEncodeRequests(f *testing.F) {
	f.Add("id", "key", "reply", int64(1e9), int64(5), uint64(7), 1)
	f.Fuzz(func(t *testing.T, id, key, reply string, unix, size int64, seq uint64, attempt int) {
		q := record.Request{ID: id, Key: key, Reply: reply, Received: time.Unix(unix%4e11, 0).UTC(), Size: size, Seq: seq, Attempt: attempt}
		got, gotErr := encodeRequests([]record.Request{q})
		var want bytes.Buffer
		q.Body = nil
		wantErr := json.NewEncoder(&want).Encode(q)
		if (gotErr != nil) != (wantErr != nil) || (gotErr == nil && !bytes.Equal(got.Bytes(), want.Bytes())) {
			t.Fatalf("got %q (%v), want %q (%v)", fmt.Sprint(got), gotErr, want.Bytes(), wantErr)
		}
	})
}

func BenchmarkEncodeRequests(b *testing.B) {
	reqs := make([]record.Request, 10000)
	now := time.Now()
	for i := range reqs {
		reqs[i] = record.Request{ID: fmt.Sprintf("GEMBATCH-%d", i+1000000), Key: fmt.Sprintf("f3-%06d", i),
			Reply: "bench.reply.void", Received: now, Size: 1100, Seq: uint64(i + 1000000)}
	}
	var hand, std time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := encodeRequests(reqs); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		viaEncoder(b, reqs)
		hand, std = hand+t1.Sub(t0), std+time.Since(t1)
	}
	b.ReportMetric(float64(hand.Microseconds())/float64(b.N)/1000, "ms/10k")
	b.ReportMetric(float64(std.Microseconds())/float64(b.N)/1000, "ms/10k-std")
	b.ReportMetric(std.Seconds()/hand.Seconds(), "speedup-vs-std")
}
