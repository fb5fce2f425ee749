package publisher

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gembatch/gembatch/gemini"
)

// reader hands n results over, each answer in the same reused buffer as a stream reader does,
// says it has handed them all, then returns end.
func reader(n int, end error) func(context.Context, func(gemini.Result) error, func()) error {
	return func(ctx context.Context, each func(gemini.Result) error, handedAll func()) error {
		buf := make([]byte, 0, 64)
		usage := &gemini.UsageMetadata{}
		for i := range n {
			buf = fmt.Appendf(buf[:0], `{"n":%d}`, i)
			usage.PromptTokenCount = int64(i)
			if err := each(gemini.Result{Key: fmt.Sprint(i), Response: buf, Usage: usage}); err != nil {
				return err
			}
		}
		handedAll()
		return end
	}
}

// Every result reaches the answering side in order, its answer and usage its own although the
// reader reuses its buffer; what the reader returns at the end comes after them.
func TestPrefetchHandsEveryResultInOrder(t *testing.T) {
	end := errors.New("connection reset")
	var got []gemini.Result
	answerErr, readErr := prefetch(context.Background(), reader(1000, end), func(r gemini.Result) error {
		got = append(got, r)
		return nil
	})
	if answerErr != nil || !errors.Is(readErr, end) {
		t.Fatalf("errors %v, %v; want nil and the reader's", answerErr, readErr)
	}
	if len(got) != 1000 {
		t.Fatalf("answered %d of 1000", len(got))
	}
	for i, r := range got {
		if r.Key != fmt.Sprint(i) || string(r.Response) != fmt.Sprintf(`{"n":%d}`, i) || r.Usage.PromptTokenCount != int64(i) {
			t.Fatalf("result %d: %s %s %+v", i, r.Key, r.Response, r.Usage)
		}
	}
}

// An error while answering stops the reading: the reader sees its context end, and no result
// past the failed one is answered.
func TestPrefetchStopsReadingOnAnswerError(t *testing.T) {
	failed := errors.New("nats: connection closed")
	answered, handed := 0, 0
	read := reader(100000, nil)
	counted := func(ctx context.Context, each func(gemini.Result) error, handedAll func()) error {
		return read(ctx, func(r gemini.Result) error { handed++; return each(r) }, handedAll)
	}
	answerErr, readErr := prefetch(context.Background(), counted, func(r gemini.Result) error {
		if answered++; answered == 300 {
			return failed
		}
		return nil
	})
	if !errors.Is(answerErr, failed) || readErr != nil {
		t.Fatalf("errors %v, %v; want the answer's and nil", answerErr, readErr)
	}
	if answered != 300 {
		t.Fatalf("answered %d results, want 300 then none", answered)
	}
	// The slab that failed, those waiting behind it, and the one the reader was filling.
	if limit := (300/slabResults + 1 + prefetchSlabs + 1) * slabResults; handed > limit {
		t.Fatalf("the reader handed %d results over after answering failed at 300; at most %d fit the slabs", handed, limit)
	}
}

// Once the reader has handed its last result over, every result reaches the answering side
// while the reader goes on reading (the job's mirror of its answers), not after: the last,
// partial slab is not held back until the reader returns.
func TestPrefetchAnswersTheLastResultsBeforeTheRestIsRead(t *testing.T) {
	const n = slabResults + 44
	var answered atomic.Int64
	allAnswered := make(chan struct{})
	read := func(ctx context.Context, each func(gemini.Result) error, handedAll func()) error {
		if err := reader(n, nil)(ctx, each, handedAll); err != nil {
			return err
		}
		select { // the rest of the job, read while the last answers go out
		case <-allAnswered:
			return nil
		case <-time.After(10 * time.Second):
			return fmt.Errorf("%d of %d results answered while the reader read on", answered.Load(), n)
		}
	}
	answerErr, readErr := prefetch(context.Background(), read, func(gemini.Result) error {
		if answered.Add(1) == n {
			close(allAnswered)
		}
		return nil
	})
	if answerErr != nil || readErr != nil {
		t.Fatalf("errors %v, %v; want none", answerErr, readErr)
	}
}
