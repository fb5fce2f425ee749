package accumulator

import "sync"

// byteGate bounds the bytes in a group's queue: a request enters once what is queued leaves
// room for it, or at once into an empty queue, so that a request larger than the bound still
// passes, alone.
type byteGate struct {
	mu     sync.Mutex
	room   *sync.Cond
	bytes  int64
	limit  int64
	waiter int // senders waiting for room
}

func (g *byteGate) init(limit int64) {
	g.limit = limit
	g.room = sync.NewCond(&g.mu)
}

// enter waits for room for n bytes, then counts them.
func (g *byteGate) enter(n int64) {
	g.mu.Lock()
	for g.bytes > 0 && g.bytes+n > g.limit {
		g.waiter++
		g.room.Wait()
		g.waiter--
	}
	g.bytes += n
	g.mu.Unlock()
}

// leave takes n bytes off the count, as their request leaves the queue.
func (g *byteGate) leave(n int64) {
	g.mu.Lock()
	g.bytes -= n
	if g.waiter > 0 {
		g.room.Broadcast()
	}
	g.mu.Unlock()
}
