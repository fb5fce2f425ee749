package ownership

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/record"
)

// lossyRecords is a record store whose watch runs on its own goroutine, as a KV watch does, and
// whose next writes land but answer with an error, as over a cluster losing a leader.
type lossyRecords struct {
	mu         sync.Mutex
	recs       map[string]record.Record
	rev        uint64
	loseWrites int
	events     chan record.Record
}

func (s *lossyRecords) Watch(ctx context.Context, ready chan<- struct{}, f func(*record.Record)) error {
	s.mu.Lock()
	for _, r := range s.recs {
		f(&r)
	}
	s.mu.Unlock()
	close(ready)
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-s.events:
			f(&r)
		}
	}
}

func (s *lossyRecords) Update(_ context.Context, r *record.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recs[r.ID].Revision != r.Revision {
		return record.ErrConflict
	}
	s.rev++
	w := *r
	w.Revision = s.rev
	s.recs[r.ID] = w
	s.events <- w
	if s.loseWrites > 0 {
		s.loseWrites--
		return errors.New("nats: timeout")
	}
	r.Revision = s.rev
	return nil
}

// runCoordinator runs replica b's coordinator over store until the test ends; routed receives
// what it hands to a stage.
func runCoordinator(t *testing.T, store Records) (*Coordinator, <-chan *record.Record) {
	t.Helper()
	kv, c := leases(t), &clock{t: time.Now()}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	l, err := StartLease(ctx, kv, "b", 400*time.Millisecond, c.now, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	coord := NewCoordinator(l, store, zerolog.Nop(), nil)
	routed := make(chan *record.Record, 4)
	coord.Route = func(r *record.Record) { routed <- r }
	coord.Lost = func(string) {}
	go func() { _ = coord.Run(ctx, make(chan struct{})) }()
	return coord, routed
}

// A claim whose write landed but whose answer was lost is the claimer's all the same: the
// watch shows the record in its name, and it is handed to its stage then, once. Before, the
// record was its in the index, so never a candidate again, and handled by nobody.
func TestClaimWithLostAnswerIsRoutedOnce(t *testing.T) {
	store := &lossyRecords{recs: map[string]record.Record{}, events: make(chan record.Record, 16), loseWrites: 1}
	store.rev = 1
	store.recs["r1"] = record.Record{ID: "r1", State: record.Submitted, Revision: 1} // nobody's: claimed at once
	_, routed := runCoordinator(t, store)
	select {
	case r := <-routed:
		if r.Owner != "b" || r.Revision != 2 {
			t.Fatalf("routed %+v, want it in b's name at revision 2", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the claimed record was never handed to a stage")
	}
	select {
	case r := <-routed:
		t.Fatalf("routed twice: %+v", r)
	case <-time.After(time.Second):
	}
}

// List, which metrics scrapes read, gives the live records from the index, and copies: a stage
// changing the record it was handed (the claimed one here) changes neither the index nor what
// List gave before.
func TestListGivesTheLiveIndex(t *testing.T) {
	store := &lossyRecords{recs: map[string]record.Record{}, events: make(chan record.Record, 16), rev: 2}
	store.recs["r1"] = record.Record{ID: "r1", State: record.Submitted, Revision: 1} // nobody's: claimed at once
	store.recs["r2"] = record.Record{ID: "r2", State: record.Cleaned, Revision: 2}
	coord, routed := runCoordinator(t, store)
	ctx := context.Background()
	var handed *record.Record
	select {
	case handed = <-routed:
	case <-time.After(5 * time.Second):
		t.Fatal("the record was never claimed")
	}
	before, _ := coord.List(ctx)
	handed.State = record.Finished
	after, _ := coord.List(ctx)
	for _, got := range [][]*record.Record{before, after} {
		if len(got) != 1 || got[0].ID != "r1" || got[0].State != record.Submitted || got[0].Owner != "b" {
			t.Fatalf("List gave %+v; want r1 alone, submitted, in b's name", got)
		}
	}
}
