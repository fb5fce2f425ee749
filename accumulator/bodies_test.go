package accumulator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

// bodyStore is a BodyStore that keeps each batch's bodies, refusing the keys in refuse (that
// request only) and failing the batch at the key in fail.
type bodyStore struct {
	mu      sync.Mutex
	opened  []string
	written map[string][]string // batch → keys whose bodies it holds
	refuse  string
	fail    string
	inPlace string // a key prefix whose bodies are left in place, not written
}

var _ BodyStore = (*bodyStore)(nil)

type bodySink struct {
	s  *bodyStore
	id string
}

type refused struct{ st *gemini.Status }

func (r refused) Error() string                 { return r.st.Message }
func (r refused) RequestStatus() *gemini.Status { return r.st }

func (s *bodyStore) OpenBodies(id string) BodySink {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opened = append(s.opened, id)
	return &bodySink{s: s, id: id}
}

func (b *bodySink) Append(q record.Request) (bool, error) {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	switch {
	case q.Body == nil:
		return false, errors.New("no body")
	case q.Key == b.s.refuse:
		return false, fmt.Errorf("wrapped: %w", refused{gemini.NewStatus(gemini.CodeNotFound, "body object gone")})
	case q.Key == b.s.fail:
		return false, errors.New("object store down")
	case b.s.inPlace != "" && strings.HasPrefix(q.Key, b.s.inPlace):
		return true, nil
	}
	b.s.written[b.id] = append(b.s.written[b.id], q.Key)
	return false, nil
}

func (b *bodySink) Seal(rec *record.Record) error { rec.Chunks = 1; return nil }

// heldMsg is a stream message that counts its Naks.
type heldMsg struct{ naks *int }

func (h heldMsg) InProgress() error                   { return nil }
func (h heldMsg) Nak() error                          { *h.naks++; return nil }
func (h heldMsg) DoubleAck(ctx context.Context) error { return nil }

func withBody(key string) record.Request {
	q := req(key, 10)
	q.Body = []byte(`{"contents":[1]}`)
	return q
}

// In durable mode the batch's id is known when it opens, its bodies go to the sink as they
// arrive, and the sealed batch holds none.
func TestBodiesGoToTheSinkAsTheyArrive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s sink
		store := &bodyStore{written: map[string][]string{}, refuse: "gone"}
		a := New(Config{Limits: Limits{MaxRequests: 3, MaxBytes: 1 << 20, MaxWait: time.Hour}, Bodies: store}, s.seal, s.reject, nil)
		for _, k := range []string{"a", "gone", "b", "c"} {
			_ = a.Add(gen, withBody(k))
		}
		a.Close()
		sealed, rejected := s.snapshot()
		if len(rejected) != 1 || rejected[0].Code != gemini.CodeNotFound {
			t.Fatalf("rejected %v, want the request whose body object is gone", rejected)
		}
		if len(sealed) != 1 || len(store.opened) != 1 || sealed[0].ID != store.opened[0] || sealed[0].Chunks != 1 {
			t.Fatalf("sealed %d batches; bodies opened for %v", len(sealed), store.opened)
		}
		if got := store.written[sealed[0].ID]; fmt.Sprint(got) != "[a b c]" {
			t.Fatalf("bodies written %v, want [a b c]", got)
		}
		for _, q := range sealed[0].Requests {
			if q.Body != nil {
				t.Fatalf("sealed request %q still holds its body", q.Key)
			}
		}
		if p, b := a.Pending(); p != 0 || b != 0 {
			t.Fatalf("pending after close = %d, %d", p, b)
		}
	})
}

// A batch whose bodies the sink leaves in place keeps them while they fit in HoldBodies, so
// that it is sent from memory; one that grows past it, or gets a body the sink wrote, lets go
// of every one.
func TestBatchHoldsTheBodiesLeftInPlaceWhileSmall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		body := withBody("").Body
		for _, tc := range []struct {
			name string
			keys []string
			hold int64
			want string // bodies held, by request
		}{
			{"small", []string{"s1", "s2", "s3"}, 3 * int64(len(body)), "[true true true]"},
			{"grows past", []string{"s1", "s2", "s3"}, 2 * int64(len(body)), "[false false false]"},
			{"one written", []string{"s1", "w2", "s3"}, 1 << 20, "[false false false]"},
			{"holds none", []string{"s1", "s2", "s3"}, 0, "[false false false]"},
		} {
			var s sink
			store := &bodyStore{written: map[string][]string{}, inPlace: "s"}
			a := New(Config{Limits: Limits{MaxRequests: 3, MaxBytes: 1 << 20, MaxWait: time.Hour}, Bodies: store, HoldBodies: tc.hold}, s.seal, s.reject, nil)
			for _, k := range tc.keys {
				_ = a.Add(gen, withBody(k))
			}
			a.Close()
			sealed, _ := s.snapshot()
			if len(sealed) != 1 {
				t.Fatalf("%s: %d batches sealed, want 1", tc.name, len(sealed))
			}
			var held []bool
			for _, q := range sealed[0].Requests {
				held = append(held, q.Body != nil)
				if q.Body != nil && string(q.Body) != string(body) {
					t.Fatalf("%s: %s held %q, want %q", tc.name, q.Key, q.Body, body)
				}
			}
			if fmt.Sprint(held) != tc.want {
				t.Fatalf("%s: bodies held %v, want %s", tc.name, held, tc.want)
			}
		}
	})
}

// A batch with a request that asks for images (as intake marked it) is marked so when sealed,
// though the sink took every body away (the submitter sends it by file); a batch without one
// is not.
func TestBatchAskingForImagesIsMarked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s sink
		store := &bodyStore{written: map[string][]string{}}
		a := New(Config{Limits: Limits{MaxRequests: 2, MaxBytes: 1 << 20, MaxWait: time.Hour}, Bodies: store}, s.seal, s.reject, nil)
		image := req("img", 10)
		image.Body = []byte(`{"contents":[1],"generationConfig":{"responseModalities":["TEXT","IMAGE"]}}`)
		image.Images = true
		for _, q := range []record.Request{withBody("a"), image, withBody("b"), withBody("c")} {
			_ = a.Add(gen, q)
		}
		a.Close()
		sealed, _ := s.snapshot()
		var images []bool
		for _, r := range sealed {
			images = append(images, r.Images)
		}
		if fmt.Sprint(images) != "[true false]" {
			t.Fatalf("batches asking for images: %v, want [true false]", images)
		}
	})
}

// A batch whose bodies cannot be written is lost whole: its requests go back to the stream,
// and the next request opens a new batch under a new id.
func TestBatchWithUnwritableBodiesIsHandedBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s sink
		var naks int
		store := &bodyStore{written: map[string][]string{}, fail: "bad"}
		var lost []string
		a := New(Config{Limits: Limits{MaxRequests: 10, MaxBytes: 1 << 20, MaxWait: time.Hour}, Bodies: store,
			Lost: func(id string, n int, err error) { lost = append(lost, fmt.Sprintf("%s:%d", id, n)) }}, s.seal, s.reject, nil)
		for _, k := range []string{"a", "b", "bad", "c"} {
			q := withBody(k)
			q.Msg = heldMsg{&naks}
			_ = a.Add(gen, q)
		}
		a.Close()
		sealed, _ := s.snapshot()
		if naks != 3 || len(lost) != 1 || lost[0] != store.opened[0]+":2" {
			t.Fatalf("%d naks, lost %v; want a, b and bad handed back from batch %s of 2", naks, lost, store.opened[0])
		}
		if len(sealed) != 1 || len(sealed[0].Requests) != 1 || sealed[0].ID != store.opened[1] || sealed[0].ID == store.opened[0] {
			t.Fatalf("sealed %d batches (%v); want [c] under a new id", len(sealed), store.opened)
		}
		if p, b := a.Pending(); p != 0 || b != 0 {
			t.Fatalf("pending after close = %d, %d", p, b)
		}
	})
}
