package accumulator

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sink collects what the accumulator seals and rejects.
type sink struct {
	mu       sync.Mutex
	sealed   []*record.Record
	rejected []*gemini.Status
}

func (s *sink) seal(r *record.Record) { s.mu.Lock(); s.sealed = append(s.sealed, r); s.mu.Unlock() }
func (s *sink) reject(_ record.Group, _ record.Request, st *gemini.Status) {
	s.mu.Lock()
	s.rejected = append(s.rejected, st)
	s.mu.Unlock()
}
func (s *sink) snapshot() ([]*record.Record, []*gemini.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*record.Record(nil), s.sealed...), append([]*gemini.Status(nil), s.rejected...)
}

var gen = record.Group{Kind: gemini.KindGenerate, Model: "models/m", Priority: 0}

var ids atomic.Int64

func req(key string, size int64) record.Request {
	return record.Request{ID: fmt.Sprint(ids.Add(1)), Key: key, Reply: "r." + key, Size: size}
}

func TestCloseReasons(t *testing.T) {
	tests := []struct {
		name    string
		limits  Limits
		sizes   []int64
		advance time.Duration
		want    []string // close reason per sealed batch
		counts  []int
	}{
		{"count", Limits{MaxRequests: 2, MaxBytes: 1 << 20, MaxWait: time.Hour}, []int64{1, 1, 1, 1}, 0, []string{"count", "count"}, []int{2, 2}},
		{"bytes reached", Limits{MaxRequests: 100, MaxBytes: 10, MaxWait: time.Hour}, []int64{5, 5, 5}, 0, []string{"bytes"}, []int{2}},
		{"bytes would pass", Limits{MaxRequests: 100, MaxBytes: 10, MaxWait: time.Hour}, []int64{6, 6}, 0, []string{"bytes"}, []int{1}},
		{"wait", Limits{MaxRequests: 100, MaxBytes: 1 << 20, MaxWait: time.Minute}, []int64{1, 1, 1}, time.Minute, []string{"wait"}, []int{3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var s sink
				a := New(Config{Limits: tt.limits}, s.seal, s.reject, nil)
				for i, size := range tt.sizes {
					if err := a.Add(gen, req(fmt.Sprint(i), size)); err != nil {
						t.Fatal(err)
					}
				}
				synctest.Wait()
				time.Sleep(tt.advance)
				synctest.Wait()
				sealed, _ := s.snapshot()
				if len(sealed) != len(tt.want) {
					t.Fatalf("sealed %d batches, want %d", len(sealed), len(tt.want))
				}
				for i, r := range sealed {
					if r.CloseReason != tt.want[i] || len(r.Requests) != tt.counts[i] || r.State != record.Sealed {
						t.Errorf("batch %d: reason %q with %d requests in state %s; want %q with %d",
							i, r.CloseReason, len(r.Requests), r.State, tt.want[i], tt.counts[i])
					}
				}
				a.Close()
			})
		})
	}
}

func TestWaitIsFromFirstRequestNotLast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s sink
		a := New(Config{Limits: Limits{MaxRequests: 100, MaxBytes: 1 << 20, MaxWait: time.Minute}}, s.seal, s.reject, nil)
		defer a.Close()
		_ = a.Add(gen, req("a", 1))
		time.Sleep(50 * time.Second)
		_ = a.Add(gen, req("b", 1))
		time.Sleep(10*time.Second + time.Millisecond)
		synctest.Wait()
		if sealed, _ := s.snapshot(); len(sealed) != 1 || len(sealed[0].Requests) != 2 {
			t.Fatalf("after 60s from the first request: %d batches sealed, want 1 with 2 requests", len(sealed))
		}
	})
}

func TestGroupsAreSeparate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s sink
		a := New(Config{Limits: Limits{MaxRequests: 2, MaxBytes: 1 << 20, MaxWait: time.Hour}}, s.seal, s.reject, nil)
		groups := []record.Group{gen, {Kind: gemini.KindEmbed, Model: "models/m"}, {Kind: gemini.KindGenerate, Model: "models/m", Priority: 5}, {Kind: gemini.KindGenerate, Model: "models/other"}}
		for _, g := range groups {
			_ = a.Add(g, req("same-key", 1))
		}
		synctest.Wait()
		if sealed, rejected := s.snapshot(); len(sealed) != 0 || len(rejected) != 0 {
			t.Fatalf("one request per group: %d sealed, %d rejected; want none", len(sealed), len(rejected))
		}
		a.Close()
		sealed, _ := s.snapshot()
		if len(sealed) != len(groups) {
			t.Fatalf("Close sealed %d batches, want %d", len(sealed), len(groups))
		}
		seen := map[record.Group]bool{}
		for _, r := range sealed {
			if r.CloseReason != "shutdown" || len(r.Requests) != 1 {
				t.Errorf("batch %+v: reason %q, %d requests; want shutdown, 1", r.Group, r.CloseReason, len(r.Requests))
			}
			seen[r.Group] = true
		}
		if len(seen) != len(groups) {
			t.Fatalf("batches cover %d groups, want %d", len(seen), len(groups))
		}
	})
}

func TestDuplicateKeyRejected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s sink
		a := New(Config{Limits: Limits{MaxRequests: 2, MaxBytes: 1 << 20, MaxWait: time.Hour}}, s.seal, s.reject, nil)
		_ = a.Add(gen, req("k", 1))
		_ = a.Add(gen, req("k", 1))
		_ = a.Add(gen, req("j", 1))
		// The batch with k was sealed; k may be used again in the next batch.
		_ = a.Add(gen, req("k", 1))
		a.Close()
		sealed, rejected := s.snapshot()
		if len(rejected) != 1 || rejected[0].Code != gemini.CodeAlreadyExists {
			t.Fatalf("rejected %v, want one ALREADY_EXISTS", rejected)
		}
		if len(sealed) != 2 || len(sealed[0].Requests) != 2 || len(sealed[1].Requests) != 1 {
			t.Fatalf("sealed %d batches, want [k j] and [k]", len(sealed))
		}
		if p, b := a.Pending(); p != 0 || b != 0 {
			t.Fatalf("pending after close = %d requests, %d bytes; want 0", p, b)
		}
	})
}

func TestRedeliveryIsNotADuplicate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s sink
		a := New(Config{Limits: Limits{MaxRequests: 10, MaxBytes: 1 << 20, MaxWait: time.Hour}}, s.seal, s.reject, nil)
		r := req("k", 1)
		_ = a.Add(gen, r)
		_ = a.Add(gen, r) // the same request (same id) delivered again
		a.Close()
		sealed, rejected := s.snapshot()
		if len(rejected) != 0 || len(sealed) != 1 || len(sealed[0].Requests) != 1 {
			t.Fatalf("redelivery: %d rejected, batch of %d; want 0 and 1", len(rejected), len(sealed[0].Requests))
		}
	})
}

func TestIdleGroupRetiresAndComesBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s sink
		a := New(Config{Limits: Limits{MaxRequests: 10, MaxBytes: 1 << 20, MaxWait: time.Second}, IdleAfter: time.Minute}, s.seal, s.reject, nil)
		_ = a.Add(gen, req("a", 1))
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		a.mu.Lock()
		n := len(a.groups)
		a.mu.Unlock()
		if n != 0 {
			t.Fatalf("%d groups alive after idling, want 0", n)
		}
		_ = a.Add(gen, req("b", 1))
		a.Close()
		if sealed, _ := s.snapshot(); len(sealed) != 2 {
			t.Fatalf("sealed %d batches, want 2", len(sealed))
		}
	})
}

func TestAddAfterClose(t *testing.T) {
	var s sink
	a := New(Config{Limits: Limits{MaxRequests: 1, MaxBytes: 1, MaxWait: time.Second}}, s.seal, s.reject, nil)
	a.Close()
	if err := a.Add(gen, req("a", 1)); err != ErrClosed {
		t.Fatalf("Add after Close = %v, want ErrClosed", err)
	}
}

func BenchmarkAdd(b *testing.B) {
	var n int
	a := New(Config{Limits: Limits{MaxRequests: 1000, MaxBytes: 1 << 30, MaxWait: time.Hour}},
		func(r *record.Record) { n += len(r.Requests) }, func(record.Group, record.Request, *gemini.Status) {}, nil)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = a.Add(gen, req(fmt.Sprint(i), 1024))
	}
	a.Close()
}

// TestHeldKeepsRequests: the compact form gives back every field, and a body copy cannot be
// appended into the next.
func TestHeldKeepsRequests(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 123, time.UTC)
	in := []record.Request{
		{ID: "a", Key: "ka", Reply: "r.a", Body: []byte(`{"contents":[1]}`), Received: now, Deadline: now.Add(time.Hour), Size: 40, Seq: 7, Attempt: 2},
		{ID: "b", Key: "b", Reply: "r.b", Body: []byte(`{"x":"` + strings.Repeat("y", maxSlabBody) + `"}`), Received: now, Size: 9},
		{ID: "c", Key: "kc", Reply: "r.c", Body: []byte(`{}`)},
	}
	var h held
	for _, r := range in {
		h.add(r, keySum(r.Key))
	}
	out := h.requests()
	if len(out) != len(in) {
		t.Fatalf("%d requests back, want %d", len(out), len(in))
	}
	for i, got := range out {
		want := in[i]
		if got.ID != want.ID || got.Key != want.Key || got.Reply != want.Reply || string(got.Body) != string(want.Body) ||
			!got.Received.Equal(want.Received) || !got.Deadline.Equal(want.Deadline) || got.Deadline.IsZero() != want.Deadline.IsZero() ||
			got.Received.IsZero() != want.Received.IsZero() || got.Size != want.Size || got.Seq != want.Seq || got.Attempt != want.Attempt {
			t.Errorf("request %d: got %+v, want %+v", i, got, want)
		}
		if cap(got.Body) != len(got.Body) {
			t.Errorf("request %d: body has room for %d more bytes of the next", i, cap(got.Body)-len(got.Body))
		}
	}
}

// TestHeldFindsKeysWhoseHashesClash: two keys with the same hash are both found, and a third
// key with that hash is not taken for either.
func TestHeldFindsKeysWhoseHashesClash(t *testing.T) {
	const sum = 42 // every key's
	var h held
	h.add(record.Request{ID: "1", Key: "a"}, sum)
	h.add(record.Request{ID: "2", Key: "b"}, sum)
	for key, want := range map[string]int{"a": 0, "b": 1} {
		if i, ok := h.find(key, sum); !ok || i != want {
			t.Errorf("find(%q) = %d, %v; want %d", key, i, ok, want)
		}
	}
	if _, ok := h.find("c", sum); ok {
		t.Error("found a key never added")
	}
}

// While a sealed batch is being recorded (a slow SealFunc), the group's next batch fills and
// seals behind it: Add does not wait for the recording. Batches reach the SealFunc in order, and
// the pending counts keep every request until its batch's SealFunc has returned.
func TestNextBatchFillsWhileOneIsSealed(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var order []string
	seal := func(r *record.Record) {
		mu.Lock()
		order = append(order, r.Requests[0].Key)
		first := len(order) == 1
		mu.Unlock()
		if first {
			<-release
		}
	}
	a := New(Config{Buffer: 1, Limits: Limits{MaxRequests: 2, MaxBytes: 1 << 20, MaxWait: time.Hour}}, seal, (&sink{}).reject, nil)
	added := make(chan struct{})
	go func() {
		defer close(added)
		for i := range 5 { // batch 1 is held in the SealFunc, batch 2 waits for it, the 5th is open
			_ = a.Add(gen, req(fmt.Sprintf("k%d", i), 10))
		}
	}()
	select {
	case <-added:
	case <-time.After(10 * time.Second):
		t.Fatal("Add blocked while the group's first batch was being sealed")
	}
	if n, b := a.Pending(); n != 5 || b != 50 {
		t.Errorf("pending %d requests, %d bytes while two batches are unrecorded and one open; want 5, 50", n, b)
	}
	close(release)
	a.Close()
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(order, ","); got != "k0,k2,k4" {
		t.Errorf("batches reached the SealFunc as %s, want k0,k2,k4", got)
	}
	if n, b := a.Pending(); n != 0 || b != 0 {
		t.Errorf("pending %d, %d after Close, want 0", n, b)
	}
}

// TestCloseAndRetireWhileAdding: Adds from several goroutines race Close and groups retiring
// (idle after a millisecond, queues of two). Every request whose Add returned nil is sealed,
// once; the others got ErrClosed; nothing is sent to a closed or retired group's queue.
func TestCloseAndRetireWhileAdding(t *testing.T) {
	for range 20 {
		var s sink
		a := New(Config{Limits: Limits{MaxRequests: 3, MaxBytes: 1 << 20, MaxWait: time.Hour}, IdleAfter: time.Millisecond, Buffer: 2},
			s.seal, s.reject, nil)
		var added atomic.Int64
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := 0; ; i++ {
					g := gen
					g.Model = fmt.Sprintf("models/m%d", i%3)
					err := a.Add(g, req(fmt.Sprintf("w%d-%d", w, i), 1))
					if err == ErrClosed {
						return
					}
					if err != nil {
						t.Error(err)
						return
					}
					added.Add(1)
					if i%50 == 49 {
						time.Sleep(2 * time.Millisecond) // let groups go idle and retire
					}
				}
			})
		}
		time.Sleep(20 * time.Millisecond)
		a.Close()
		wg.Wait()
		sealed, rejected := s.snapshot()
		keys := map[string]bool{}
		for _, r := range sealed {
			for _, q := range r.Requests {
				if keys[q.Key] {
					t.Fatalf("request %s sealed twice", q.Key)
				}
				keys[q.Key] = true
			}
		}
		if int64(len(keys)) != added.Load() || len(rejected) != 0 {
			t.Fatalf("%d requests added, %d sealed, %d rejected", added.Load(), len(keys), len(rejected))
		}
	}
}
