package benchkit

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// collector subscribes to a subject and counts every message, with the time of the first and
// the last, and keeps them unless told not to; the baselines and gembatchd are received by the
// same code. A reply whose Gembatch-Status is not ok fails the wait: an error is no answer.
type collector struct {
	mu          sync.Mutex
	keep        bool
	msgs        []*nats.Msg
	got         int
	failed      *nats.Msg // the first reply that was not ok
	bytes       int64
	first, last time.Time
	want        int
	done        chan struct{}
	sub         *nats.Subscription
}

// collect receives want messages on subject and keeps them.
func (e *env) collect(subject string, want int) (*collector, error) {
	return e.subscribe(&collector{keep: true, msgs: make([]*nats.Msg, 0, want)}, subject, want)
}

// tally receives want messages on subject and keeps none: a measure of large replies that uses
// only their count would otherwise hold them all, a GB in the process it times.
func (e *env) tally(subject string, want int) (*collector, error) {
	return e.subscribe(&collector{}, subject, want)
}

func (e *env) subscribe(c *collector, subject string, want int) (*collector, error) {
	c.want, c.done = want, make(chan struct{})
	sub, err := e.nc.Subscribe(subject, func(m *nats.Msg) {
		now := time.Now()
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.got == 0 {
			c.first = now
		}
		c.last = now
		c.got++
		c.bytes += int64(len(m.Data))
		if c.failed == nil && m.Header.Get("Gembatch-Status") != "ok" {
			c.failed = m
		}
		if c.keep {
			c.msgs = append(c.msgs, m)
		}
		if c.got == c.want {
			close(c.done)
		}
	})
	if err != nil {
		return nil, err
	}
	_ = sub.SetPendingLimits(-1, -1)
	c.sub = sub
	return c, e.nc.Flush()
}

// wait waits for every message, then stops the subscription.
func (c *collector) wait(ctx context.Context, within time.Duration) error {
	defer func() { _ = c.sub.Unsubscribe() }()
	select {
	case <-c.done:
		if c.failed != nil {
			return fmt.Errorf("a reply was not ok: %s %.300s", c.failed.Header.Get("Gembatch-Status"), c.failed.Data)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(within):
		c.mu.Lock()
		defer c.mu.Unlock()
		return fmt.Errorf("received %d of %d messages within %s", c.got, c.want, within)
	}
}

// fanOut: one batch of 10,000 requests; replies per second from the first reply published to the
// last received, against a raw publish of the same replies (same headers and bodies) on one
// connection. The raw run is timed from its first publish; gembatchd's from its first reply
// received, since when it published it is not visible from outside the daemon: one message's
// latency later, in its favour. Timing the raw run from its first message received instead made
// its rate swing from 216,000 to 10 million a second: while the publisher filled the socket the
// receiver often had not run yet, and then read everything in one burst.
func fanOut(ctx context.Context, e *env) ([]Row, error) {
	n := e.size(10000, 500)
	a, err := startAPI(0)
	if err != nil {
		return nil, err
	}
	defer a.close()
	cfg := e.config(true, a.url)
	cfg.BatchMaxRequests, cfg.BatchMaxWait = n, time.Minute
	d, err := e.startDaemon(cfg)
	if err != nil {
		return nil, err
	}
	defer d.close()
	f, err := e.fleet()
	if err != nil {
		return nil, err
	}
	defer f.close()
	body, raw := generateBody(1024), e.name()
	var r rounds
	for round := range e.opts.Rounds {
		// gembatchd first: the baseline publishes the replies it delivered.
		replies, err := e.collect(replySubject(cfg, "fan"), n)
		if err != nil {
			return nil, err
		}
		if err := f.publish(requests(cfg.SubjectGenerate, replySubject(cfg, "fan"), fmt.Sprintf("o%d", round), body, n, false)); err != nil {
			return nil, err
		}
		if err := replies.wait(ctx, 5*time.Minute); err != nil {
			return nil, fmt.Errorf("gembatchd replies: %w", err)
		}
		got := rate(n, replies.last.Sub(replies.first))
		if err := d.drained(ctx); err != nil {
			return nil, err
		}

		rawReplies, err := e.collect(raw, n)
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		for _, m := range replies.msgs {
			if err := f.conns[0].PublishMsg(&nats.Msg{Subject: raw, Header: m.Header, Data: m.Data}); err != nil {
				return nil, err
			}
		}
		if err := f.conns[0].Flush(); err != nil {
			return nil, err
		}
		if err := rawReplies.wait(ctx, 5*time.Minute); err != nil {
			return nil, fmt.Errorf("raw replies: %w", err)
		}
		base := rate(n, rawReplies.last.Sub(t0))
		r.add(base, got)
		e.progress("fan-out round %d/%d: raw %.0f replies/s, gembatchd %.0f replies/s", round+1, e.opts.Rounds, base, got)
	}
	return []Row{r.row(fmt.Sprintf("reply fan-out of one %s-request batch (durable), first reply out to last received", num(float64(n))), "replies/s", "higher", "raw publish of the same replies")}, nil
}
