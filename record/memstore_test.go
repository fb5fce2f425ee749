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
