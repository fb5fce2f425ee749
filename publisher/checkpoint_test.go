package publisher_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/publisher"
	"github.com/gembatch/gembatch/record"
)

// heldCheckpoints is a record store whose progress checkpoints (writes of a record still
// being answered) wait until the test lets them through, or fail with fail when it is set.
type heldCheckpoints struct {
	*record.MemStore
	fail    error
	held    chan int      // the Replied of each checkpoint, as it begins
	release chan struct{} // closed: checkpoints go through
	mu      sync.Mutex
	writing int // checkpoints being written at once
	most    int
}

func (s *heldCheckpoints) Update(ctx context.Context, r *record.Record) error {
	if r.State != record.Finished {
		return s.MemStore.Update(ctx, r)
	}
	s.mu.Lock()
	s.writing++
	s.most = max(s.most, s.writing)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.writing--
		s.mu.Unlock()
	}()
	s.held <- r.Replied
	<-s.release
	if s.fail != nil {
		return s.fail
	}
	return s.MemStore.Update(ctx, r)
}

// resultFile is n results for keys k0 to k(n-1), and the keys.
func resultFile(n int) (string, []string) {
	var lines, keys []string
	for i := range n {
		k := fmt.Sprintf("k%d", i)
		keys = append(keys, k)
		lines = append(lines, `{"key":"`+k+`","response":{"n":`+fmt.Sprint(i)+`}}`)
	}
	return strings.Join(lines, "\n"), keys
}

func (e *natsEnv) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ms := range e.replies {
		n += len(ms)
	}
	return n
}

// The issue: fan-out "with checkpoints that do not slow it". A checkpoint is written while
// the next results are published, one at a time, each after the replies it counts.
func TestCheckpointsDoNotStopTheReplies(t *testing.T) {
	e := natsUp(t)
	results, keys := resultFile(3000)
	store := &heldCheckpoints{MemStore: record.NewMemStore(), held: make(chan int, 10), release: make(chan struct{})}
	rec := finished(keys...)
	if err := store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	b := publisher.NewBatches(publisher.New(e.nc, nil), store, &fakeAPI{results: results}, zerolog.Nop())
	done := make(chan error, 1)
	go func() { done <- b.Answer(context.Background(), rec, nil) }()
	if replied := <-store.held; replied != 1000 {
		t.Fatalf("the first checkpoint counts %d replies, want 1000", replied)
	}
	// While the first checkpoint is held, the replies go on up to the next one, which waits.
	deadline := time.Now().Add(20 * time.Second)
	for e.count() < 2000 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := e.count(); n < 2000 {
		t.Fatalf("%d replies while the first checkpoint was being written, want 2000: the checkpoint stopped them", n)
	}
	close(store.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := e.settle(t)
	for _, k := range keys {
		if n := len(got[k]); n != 1 {
			t.Fatalf("key %s: %d replies, want 1", k, n)
		}
	}
	if store.most != 1 {
		t.Fatalf("%d checkpoints were written at once, want 1", store.most)
	}
	if _, err := store.Get(context.Background(), "rec"); !errors.Is(err, record.ErrNotFound) {
		t.Fatalf("record not cleaned up: %v", err)
	}
}

// A checkpoint that fails (another replica took the record over) stops the answer, with the
// checkpoint's error, before the batch's results run out.
func TestFailedCheckpointStopsTheAnswer(t *testing.T) {
	e := natsUp(t)
	results, keys := resultFile(5000)
	store := &heldCheckpoints{MemStore: record.NewMemStore(), fail: record.ErrConflict, held: make(chan int, 10), release: make(chan struct{})}
	close(store.release)
	rec := finished(keys...)
	if err := store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	b := publisher.NewBatches(publisher.New(e.nc, nil), store, &fakeAPI{results: results}, zerolog.Nop())
	err := b.Answer(context.Background(), rec, nil)
	if !errors.Is(err, record.ErrConflict) || !strings.Contains(err.Error(), "checkpoint record rec at 1000") {
		t.Fatalf("Answer = %v, want the first checkpoint's conflict", err)
	}
	if n := e.count(); n >= len(keys) {
		t.Fatalf("%d replies published after the checkpoint failed, want fewer than the batch's %d", n, len(keys))
	}
	if got, err := store.Get(context.Background(), "rec"); err != nil || got.State != record.Finished {
		t.Fatalf("record after the failed checkpoint: %+v, %v; want it left Finished", got, err)
	}
}
