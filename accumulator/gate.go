package accumulator

import (
	"sync"
	"sync/atomic"
)

// byteGate bounds the bytes in a group's queue: a request enters once what is queued leaves
// room for it, or at once into an empty queue, so that a request larger than the bound still
// passes, alone. Entering and leaving are an atomic operation each while there is room: they
// run for every request, on two goroutines; the lock is only for waiting.
type byteGate struct {
	bytes   atomic.Int64
	waiting atomic.Int32
	limit   int64
	mu      sync.Mutex
	room    *sync.Cond
}

func (g *byteGate) init(limit int64) {
	g.limit = limit
	g.room = sync.NewCond(&g.mu)
}

func (g *byteGate) fits(queued, n int64) bool { return queued == 0 || queued+n <= g.limit }

// enter waits for room for n bytes, then counts them.
func (g *byteGate) enter(n int64) {
	for {
		queued := g.bytes.Load()
		if g.fits(queued, n) {
			if g.bytes.CompareAndSwap(queued, queued+n) {
				return
			}
			continue
		}
		g.mu.Lock()
		g.waiting.Add(1) // before the check: a leave after it sees the waiter and wakes it
		for !g.fits(g.bytes.Load(), n) {
			g.room.Wait()
		}
		g.waiting.Add(-1)
		g.mu.Unlock()
	}
}

// leave takes n bytes off the count, as their request leaves the queue.
func (g *byteGate) leave(n int64) {
	g.bytes.Add(-n)
	if g.waiting.Load() > 0 {
		g.mu.Lock()
		g.room.Broadcast()
		g.mu.Unlock()
	}
}
