package poller

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeAPI answers GetBatch from a function and counts cancels.
type fakeAPI struct {
	get     func(name string) (*gemini.Operation, error)
	cancels atomic.Int32
}

var _ API = (*fakeAPI)(nil)

func (f *fakeAPI) GetBatch(_ context.Context, name string) (*gemini.Operation, error) {
	return f.get(name)
}

func (f *fakeAPI) CancelBatch(context.Context, string) error {
	f.cancels.Add(1)
	return nil
}

func op(name string, s gemini.State) *gemini.Operation {
	return &gemini.Operation{Name: name, Done: s.Terminal(), Metadata: &gemini.BatchMetadata{State: s}}
}

func submitted(store record.Store, name string) *record.Record {
	r := &record.Record{ID: name, State: record.Submitted, RemoteName: name}
	_ = store.Create(context.Background(), r)
	return r
}

func TestPollsUntilTerminalWithGrowingIntervals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var at []time.Time
		api := &fakeAPI{get: func(name string) (*gemini.Operation, error) {
			mu.Lock()
			defer mu.Unlock()
			at = append(at, time.Now())
			if len(at) < 8 {
				return op(name, gemini.StateRunning), nil
			}
			return op(name, gemini.StateSucceeded), nil
		}}
		store := record.NewMemStore()
		var finished []*record.Record
		p := New(Config{Interval: time.Second, MaxInterval: 4 * time.Second, Concurrency: 2}, api, store, zerolog.Nop(), nil,
			func(r *record.Record, o *gemini.Operation) { finished = append(finished, r) })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = p.Run(ctx); close(done) }()
		p.Enqueue(submitted(store, "batches/a"))
		time.Sleep(time.Minute)
		synctest.Wait()
		cancel()
		<-done

		if len(finished) != 1 || finished[0].State != record.Finished || finished[0].RemoteState != gemini.StateSucceeded {
			t.Fatalf("finished %d records: %+v", len(finished), finished)
		}
		if got, _ := store.Get(context.Background(), "batches/a"); got.State != record.Finished {
			t.Fatalf("stored state %s", got.State)
		}
		if len(at) != 8 {
			t.Fatalf("%d polls, want 8", len(at))
		}
		for i := 1; i < len(at); i++ {
			gap := at[i].Sub(at[i-1])
			if gap < time.Second || gap > 4*time.Second {
				t.Fatalf("poll %d came %v after the last; want within [1s, 4s]", i, gap)
			}
			if i > 4 && gap < 3*time.Second {
				t.Fatalf("poll %d came %v after the last; the interval should have grown near the 4s cap", i, gap)
			}
		}
		if p.Watching() != 0 {
			t.Fatalf("%d still watched", p.Watching())
		}
	})
}

func TestConcurrencyIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var inFlight, peak atomic.Int32
		api := &fakeAPI{get: func(name string) (*gemini.Operation, error) {
			n := inFlight.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
			inFlight.Add(-1)
			return op(name, gemini.StateSucceeded), nil
		}}
		store := record.NewMemStore()
		var count atomic.Int32
		p := New(Config{Interval: time.Second, MaxInterval: time.Second, Concurrency: 3}, api, store, zerolog.Nop(), nil,
			func(*record.Record, *gemini.Operation) { count.Add(1) })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = p.Run(ctx); close(done) }()
		for i := range 20 {
			p.Enqueue(submitted(store, fmt.Sprintf("batches/%d", i)))
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		cancel()
		<-done
		if count.Load() != 20 || peak.Load() > 3 {
			t.Fatalf("%d finished, peak %d in flight; want 20 and at most 3", count.Load(), peak.Load())
		}
	})
}

func TestErrorsRetryAndVanishedBatchFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		api := &fakeAPI{get: func(name string) (*gemini.Operation, error) {
			if name == "batches/gone" {
				return nil, &gemini.APIError{Op: "batches.get", HTTPStatus: 404, Status: gemini.Status{Code: 404, Status: "NOT_FOUND"}}
			}
			if calls.Add(1) < 3 {
				return nil, fmt.Errorf("connection refused")
			}
			return op(name, gemini.StateExpired), nil
		}}
		store := record.NewMemStore()
		got := map[string]*record.Record{}
		var mu sync.Mutex
		p := New(Config{Interval: time.Second, MaxInterval: 2 * time.Second}, api, store, zerolog.Nop(), nil,
			func(r *record.Record, _ *gemini.Operation) { mu.Lock(); got[r.RemoteName] = r; mu.Unlock() })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = p.Run(ctx); close(done) }()
		p.Enqueue(submitted(store, "batches/flaky"))
		p.Enqueue(submitted(store, "batches/gone"))
		time.Sleep(time.Minute)
		synctest.Wait()
		cancel()
		<-done
		if r := got["batches/flaky"]; r == nil || r.RemoteState != gemini.StateExpired {
			t.Fatalf("flaky batch: %+v", r)
		}
		if r := got["batches/gone"]; r == nil || r.RemoteState != gemini.StateFailed || r.Error == nil || r.Error.Code != gemini.CodeNotFound {
			t.Fatalf("vanished batch: %+v", r)
		}
	})
}

// TestStuckJobReportedAndCancelled: a job PENDING past StuckAfter is reported once; with
// CancelStuck the record is marked before the cancel, and the job's end is handed on.
func TestStuckJobReportedAndCancelled(t *testing.T) {
	for _, cancelStuck := range []bool{false, true} {
		t.Run(fmt.Sprint("cancel=", cancelStuck), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				api := &fakeAPI{}
				api.get = func(name string) (*gemini.Operation, error) {
					if api.cancels.Load() > 0 {
						return op(name, gemini.StateCancelled), nil
					}
					return op(name, gemini.StatePending), nil
				}
				store := record.NewMemStore()
				var finished atomic.Int32
				m := NewMetrics(nil)
				p := New(Config{Interval: time.Second, MaxInterval: 10 * time.Second, StuckAfter: time.Minute, CancelStuck: cancelStuck},
					api, store, zerolog.Nop(), m, func(*record.Record, *gemini.Operation) { finished.Add(1) })
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { _ = p.Run(ctx); close(done) }()
				rec := submitted(store, "batches/s")
				rec.Submitted = time.Now()
				p.Enqueue(rec)
				time.Sleep(30 * time.Second)
				synctest.Wait()
				if got := testutil.ToFloat64(m.stuck); got != 0 {
					t.Fatalf("stuck after 30s: %v", got)
				}
				time.Sleep(5 * time.Minute)
				synctest.Wait()
				cancel()
				<-done
				stored, _ := store.Get(context.Background(), "batches/s")
				if !cancelStuck {
					if testutil.ToFloat64(m.stuck) != 1 || testutil.ToFloat64(m.stuckTotal) != 1 || api.cancels.Load() != 0 || finished.Load() != 0 || stored.StuckCancelled {
						t.Fatalf("report only: stuck %v, total %v, cancels %d, finished %d", testutil.ToFloat64(m.stuck),
							testutil.ToFloat64(m.stuckTotal), api.cancels.Load(), finished.Load())
					}
					return
				}
				if api.cancels.Load() != 1 || finished.Load() != 1 || !stored.StuckCancelled || stored.RemoteState != gemini.StateCancelled ||
					testutil.ToFloat64(m.stuck) != 0 || testutil.ToFloat64(m.stuckTotal) != 1 || testutil.ToFloat64(m.stuckCancelled) != 1 {
					t.Fatalf("cancel: cancels %d, finished %d, record %+v", api.cancels.Load(), finished.Load(), stored)
				}
			})
		})
	}
}

// A record enqueued twice (a takeover racing a resume) is polled by one job: one in-memory
// owner per record.
func TestEnqueueTwiceWatchesOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var polls atomic.Int32
		api := &fakeAPI{get: func(name string) (*gemini.Operation, error) {
			polls.Add(1)
			return op(name, gemini.StateRunning), nil
		}}
		store := record.NewMemStore()
		p := New(Config{Interval: time.Second, MaxInterval: time.Second, Concurrency: 2}, api, store, zerolog.Nop(), nil,
			func(*record.Record, *gemini.Operation) {})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = p.Run(ctx); close(done) }()
		rec := submitted(store, "batches/a")
		p.Enqueue(rec)
		p.Enqueue(rec)
		time.Sleep(10*time.Second + time.Millisecond)
		synctest.Wait()
		cancel()
		<-done
		if n := polls.Load(); n != 10 {
			t.Fatalf("%d polls in 10 intervals, want 10 (one job)", n)
		}
		if p.Watching() != 1 {
			t.Fatalf("%d watched, want 1", p.Watching())
		}
	})
}
