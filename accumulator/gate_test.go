package accumulator

import (
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gembatch/gembatch/record"
)

// stalledSinks is a BodyStore whose first Append waits for resume: the group is busy writing a
// batch's input while more requests arrive.
type stalledSinks struct {
	first   atomic.Bool
	resume  chan struct{}
	written atomic.Int64
}

func (s *stalledSinks) OpenBodies(string) BodySink { return s }

func (s *stalledSinks) Append(record.Request) (bool, error) {
	if s.first.CompareAndSwap(false, true) {
		<-s.resume
	}
	s.written.Add(1)
	return false, nil
}

func (s *stalledSinks) Seal(rec *record.Record) error { rec.Chunks = 1; return nil }

// While a group writes a batch's input, the requests that arrive wait in its queue with their
// bodies: the queue holds at most QueueBytes of bodies, then Add waits.
func TestQueueIsBoundedInBytes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const size, limit = 64 << 10, 256 << 10
		bodies := &stalledSinks{resume: make(chan struct{})}
		a := New(Config{QueueBytes: limit, Bodies: bodies, Limits: Limits{MaxRequests: 1000, MaxBytes: 1 << 30, MaxWait: time.Hour}},
			func(*record.Record) {}, (&sink{}).reject, nil)
		var added atomic.Int64
		go func() {
			for i := range 20 {
				_ = a.Add(gen, withSize(fmt.Sprintf("k%d", i), size))
				added.Add(1)
			}
		}()
		synctest.Wait()
		// One request is being written; four (256 KiB) wait in the queue; the sixth waits in Add.
		if n := added.Load(); n != 1+limit/size {
			t.Errorf("%d Adds returned while the group was stalled; want %d", n, 1+limit/size)
		}
		close(bodies.resume)
		synctest.Wait()
		if n := added.Load(); n != 20 {
			t.Errorf("%d Adds returned after the group went on; want 20", n)
		}
		a.Close()
		if n := bodies.written.Load(); n != 20 {
			t.Errorf("%d bodies written, want 20", n)
		}
	})
}

// A request larger than the bound still passes, into an empty queue.
func TestRequestLargerThanTheQueuePasses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bodies := &stalledSinks{resume: make(chan struct{})}
		a := New(Config{QueueBytes: 1 << 10, Bodies: bodies, Limits: Limits{MaxRequests: 1000, MaxBytes: 1 << 30, MaxWait: time.Hour}},
			func(*record.Record) {}, (&sink{}).reject, nil)
		var added atomic.Int64
		go func() {
			for i := range 3 {
				_ = a.Add(gen, withSize(fmt.Sprintf("k%d", i), 1<<20))
				added.Add(1)
			}
		}()
		synctest.Wait()
		if n := added.Load(); n != 2 { // one being written, one queued alone
			t.Errorf("%d Adds of 1 MiB returned past a 1 KiB queue while the group was stalled; want 2", n)
		}
		close(bodies.resume)
		a.Close()
		if n := bodies.written.Load(); n != 3 {
			t.Errorf("%d bodies written, want 3", n)
		}
	})
}

// withSize is a request whose body is size bytes.
func withSize(key string, size int64) record.Request {
	q := req(key, size)
	q.Body = make([]byte, size)
	return q
}
