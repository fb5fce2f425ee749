package record

import (
	"context"
	"errors"
	"testing"
)

func TestMemStoreCompareAndSet(t *testing.T) {
	ctx := context.Background()
	s := NewMemStore()
	r := &Record{ID: "a", State: Sealed, Requests: []Request{{Key: "k"}}, Count: 1}
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, &Record{ID: "a"}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Create = %v, want ErrExists", err)
	}
	stale, _ := s.Get(ctx, "a")
	r.State = Submitting
	if err := s.Update(ctx, r); err != nil {
		t.Fatal(err)
	}
	stale.State = Failed
	if err := s.Update(ctx, stale); !errors.Is(err, ErrConflict) {
		t.Fatalf("update from a stale copy = %v, want ErrConflict", err)
	}
	got, _ := s.Get(ctx, "a")
	if got.State != Submitting || len(got.Requests) != 1 {
		t.Fatalf("stored %+v", got)
	}
	got.Requests[0].Key = "changed" // copies are the caller's own
	if again, _ := s.Get(ctx, "a"); again.Requests[0].Key != "k" {
		t.Fatal("a returned copy shares the stored requests")
	}
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete = %v", err)
	}
	if err := s.Update(ctx, r); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update after Delete = %v", err)
	}
}

// Heads lists every record with its state and count but none of its requests, which a scrape
// would otherwise copy every time.
func TestHeadsLeaveOutRequests(t *testing.T) {
	s := NewMemStore()
	for _, id := range []string{"b", "a"} {
		r := &Record{ID: id, State: Submitted, Count: 2, Requests: []Request{{Key: "k1"}, {Key: "k2"}}}
		if err := s.Create(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	heads, err := s.Heads(context.Background())
	if err != nil || len(heads) != 2 || heads[0].ID != "a" || heads[1].ID != "b" {
		t.Fatalf("heads %v, %v; want a and b", heads, err)
	}
	for _, h := range heads {
		if h.Requests != nil || h.Count != 2 || h.State != Submitted {
			t.Fatalf("head %+v; want state and count without requests", h)
		}
	}
}
