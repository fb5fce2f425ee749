package publisher

import (
	"context"

	"github.com/gembatch/gembatch/gemini"
)

// Slabs bound what the reading side may run ahead of the answering side: at most
// prefetchSlabs full slabs wait, each of up to slabResults results or slabBytes of answers
// (a larger answer makes a slab of its own).
const (
	prefetchSlabs = 2
	slabResults   = 256
	slabBytes     = 256 << 10
)

// slab is a run of results whose answers were copied out of the reader's buffer into one arena.
type slab struct {
	results []gemini.Result
	arena   []byte
}

// add copies r into the slab: its answer and usage, which point into the reader's buffer.
func (s *slab) add(r gemini.Result) {
	if r.Response != nil {
		start := len(s.arena)
		s.arena = append(s.arena, r.Response...)
		r.Response = s.arena[start:len(s.arena):len(s.arena)]
	}
	if r.Usage != nil {
		u := *r.Usage
		r.Usage = &u
	}
	s.results = append(s.results, r)
}

func (s *slab) full() bool { return len(s.results) >= slabResults || len(s.arena) >= slabBytes }

// prefetch runs read, which hands results to its callback in order, on a goroutine of its own,
// and hands them in the same order to answer on this one: reading and decoding the next
// answers overlaps publishing these (on two cores, the two halves of answering a batch). read
// calls handedAll after the last result: the results gathered since the last full slab go to
// answer then, not after the rest of what read reads (a job's mirror of its answers: about
// 12 MB to skip for 10,000 answers of 1 KiB). An error from answer stops the reading and is
// returned as answerErr; readErr is read's own.
func prefetch(ctx context.Context, read func(ctx context.Context, each func(gemini.Result) error, handedAll func()) error, answer func(gemini.Result) error) (answerErr, readErr error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	slabs := make(chan *slab, prefetchSlabs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(slabs)
		newSlab := func() *slab { return &slab{arena: make([]byte, 0, slabBytes)} }
		cur := newSlab()
		send := func() bool {
			select {
			case slabs <- cur:
				cur = newSlab()
				return true
			case <-ctx.Done():
				return false
			}
		}
		sendRest := func() {
			if len(cur.results) > 0 {
				send()
			}
		}
		readErr = read(ctx, func(r gemini.Result) error {
			// Checked first: while the answering side drains the queue after an error, a send
			// may still win its select against the cancelled context.
			if err := ctx.Err(); err != nil {
				return err
			}
			if cur.add(r); cur.full() && !send() {
				return ctx.Err()
			}
			return nil
		}, sendRest)
		sendRest()
	}()
	for s := range slabs {
		for _, r := range s.results {
			if answerErr = answer(r); answerErr != nil {
				cancel()
				for range slabs { // let the reader end
				}
				<-done
				return answerErr, nil
			}
		}
	}
	<-done
	return nil, readErr
}
