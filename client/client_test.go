package client_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/stacktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, stacktest.LeakOptions()...) }

// stack runs NATS, the emulator and gembatchd in-process and returns a connection to NATS.
func stack(t *testing.T, jobDelay time.Duration) *nats.Conn {
	t.Helper()
	s := stacktest.Start(t, stacktest.Config(), emulator.Options{JobDelay: jobDelay})
	nc, err := nats.Connect(s.NATS.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func newClient(t *testing.T, nc *nats.Conn, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(nc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestSubmit covers the answers a producer sees: success for both kinds, a per-item error from
// the API, an immediate rejection from gembatchd, and a deadline header.
func TestSubmit(t *testing.T) {
	nc := stack(t, 100*time.Millisecond)
	c := newClient(t, nc, client.WithDefaultModel("gemini-2.5-flash"))
	ctx := timeout(t, 30*time.Second)

	t.Run("generate", func(t *testing.T) {
		r, err := c.Submit(ctx, client.Request{Key: "ok-1", Body: client.GenerateText("Why is the sky blue?")})
		if err != nil {
			t.Fatal(err)
		}
		if r.Key != "ok-1" || r.Err != nil || !strings.Contains(string(r.Response), "candidates") || !strings.HasPrefix(r.Batch, "batches/") {
			t.Fatalf("reply %+v: %s", r, r.Line)
		}
		if !strings.HasPrefix(string(r.Line), `{"key":"ok-1"`) {
			t.Errorf("line %s", r.Line)
		}
	})
	t.Run("embed", func(t *testing.T) {
		r, err := c.Submit(ctx, client.Request{Kind: client.KindEmbed, Model: "gemini-embedding-001", Body: client.EmbedText("a passage"),
			Priority: 5, Deadline: time.Now().Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		if r.Key == "" || !strings.Contains(string(r.Response), "embedding") {
			t.Fatalf("reply %+v: %s", r, r.Line)
		}
	})
	t.Run("item error", func(t *testing.T) {
		r, err := c.Submit(ctx, client.Request{Key: "bad-1", Body: client.GenerateText("fail please [[emulator:error=3]]")})
		var e *client.Error
		if !errors.As(err, &e) || e.Code != 3 || e.Status != "INVALID_ARGUMENT" {
			t.Fatalf("err = %v (%T)", err, err)
		}
		if r == nil || r.Err != e || r.Key != "bad-1" {
			t.Fatalf("reply %+v", r)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		start := time.Now()
		_, err := c.Submit(ctx, client.Request{Key: "bad-2", Body: []byte(`{"contents": [ not JSON`)})
		var e *client.Error
		if !errors.As(err, &e) || e.Code != 3 || !strings.Contains(e.Error(), "INVALID_ARGUMENT (3)") {
			t.Fatalf("err = %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("rejection took %s; it should be immediate", d)
		}
	})
	t.Run("invalid locally", func(t *testing.T) {
		for _, r := range []client.Request{
			{Kind: "chat", Body: client.GenerateText("x")},
			{Key: "a\nb", Body: client.GenerateText("x")},
			{Key: strings.Repeat("k", 300), Body: client.GenerateText("x")},
			{Key: "nobody"},
		} {
			if _, err := c.SubmitAsync(ctx, r); !errors.Is(err, client.ErrInvalidRequest) {
				t.Errorf("%+v: err = %v", r, err)
			}
		}
	})
}

// TestSubmitAsyncMany keeps many requests in flight on one client: one subscription serves all.
func TestSubmitAsyncMany(t *testing.T) {
	nc := stack(t, 100*time.Millisecond)
	c := newClient(t, nc)
	ctx := timeout(t, 60*time.Second)
	before := nc.NumSubscriptions()

	const n = 500
	pending := make([]*client.Pending, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for g := range 10 {
		wg.Go(func() {
			for i := g; i < n; i += 10 {
				text := fmt.Sprintf("prompt %d", i)
				if i%50 == 0 {
					text += " [[emulator:error=13]]"
				}
				p, err := c.SubmitAsync(ctx, client.Request{Key: fmt.Sprintf("k%04d", i), Body: client.GenerateText(text)})
				if err != nil {
					mu.Lock()
					failed = append(failed, err.Error())
					mu.Unlock()
					continue
				}
				pending[i] = p
			}
		})
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d submits failed, first: %s", len(failed), failed[0])
	}
	if got := nc.NumSubscriptions(); got != before {
		t.Errorf("subscriptions went from %d to %d with %d requests in flight", before, got, n)
	}
	if got := c.InFlight(); got == 0 {
		t.Errorf("nothing in flight right after submitting")
	}
	var ok, errs int
	for i, p := range pending {
		<-p.Done()
		r, err := p.Wait(ctx)
		var e *client.Error
		switch {
		case errors.As(err, &e) && e.Code == 13 && i%50 == 0:
			errs++
		case err == nil && i%50 != 0 && r.Key == fmt.Sprintf("k%04d", i):
			ok++
		default:
			t.Fatalf("request %d: reply %+v, err %v", i, r, err)
		}
	}
	if ok != n-n/50 || errs != n/50 {
		t.Fatalf("ok %d errors %d", ok, errs)
	}
	if got := c.InFlight(); got != 0 {
		t.Errorf("%d still in flight", got)
	}
}

// TestCancelAndDuplicate: a context ending gives the request up; a key in flight is refused.
func TestCancelAndDuplicate(t *testing.T) {
	nc := stack(t, 5*time.Second)
	c := newClient(t, nc)

	ctx, cancel := context.WithCancel(context.Background())
	p, err := c.SubmitAsync(ctx, client.Request{Key: "slow-1", Body: client.GenerateText("slow")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SubmitAsync(context.Background(), client.Request{Key: "slow-1", Body: client.GenerateText("again")}); !errors.Is(err, client.ErrDuplicateKey) {
		t.Fatalf("duplicate key: err = %v", err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	if _, err := p.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with a short context: %v", err)
	}
	cancel()
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the context ended")
	}
	if _, err := p.Wait(context.Background()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel: %v", err)
	}
	if c.InFlight() != 0 {
		t.Fatalf("the cancelled request is still in flight")
	}
	// The key is free again in the client once given up: it is sent (gembatchd answers
	// ALREADY_EXISTS while its open batch still holds the first one; else the job is slow).
	ctx2, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	_, err = c.Submit(ctx2, client.Request{Key: "slow-1", Body: client.GenerateText("again")})
	if e, ok := errors.AsType[*client.Error](err); (!ok || e.Code != 6) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Submit of a given-up key again: %v", err)
	}
	// Close ends whatever is waiting.
	p3, err := c.SubmitAsync(context.Background(), client.Request{Key: "slow-3", Body: client.GenerateText("x")})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p3.Wait(context.Background()); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Wait after Close: %v", err)
	}
	if _, err := c.SubmitAsync(context.Background(), client.Request{Body: client.GenerateText("x")}); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("submit after Close: %v", err)
	}
}

// TestReplyPrefix: a reply prefix of the caller's, outside REPLY_ALLOW, gets no answer; inside it works.
func TestReplyPrefix(t *testing.T) {
	nc := stack(t, 100*time.Millisecond)
	c := newClient(t, nc, client.WithReplyPrefix("_INBOX.myservice"), client.WithSubjects("gembatch.generate", "gembatch.embed"))
	if c.ReplyPrefix() != "_INBOX.myservice" {
		t.Fatal(c.ReplyPrefix())
	}
	if _, err := c.Submit(timeout(t, 30*time.Second), client.Request{Body: client.GenerateText("hi")}); err != nil {
		t.Fatal(err)
	}
}
