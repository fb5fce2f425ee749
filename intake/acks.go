package intake

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/record"
)

// ConfirmAcks acknowledges the stream messages of reqs and waits until the server has confirmed
// them: every acknowledgement is sent at once, and a batch's messages of one consumer on one
// connection ask for one confirmation, the last's (confirmOn). Messages confirmed before are
// not asked again; on an error, those confirmed are remembered, and a second call asks only
// the rest.
func ConfirmAcks(ctx context.Context, reqs []record.Request) error {
	type source struct {
		nc       *nats.Conn
		consumer string
	}
	bySource := map[source][]*ackHandle{} // one intake's connection and consumer, in practice
	var errs []error
	for _, q := range reqs {
		switch h := q.Msg.(type) {
		case nil:
		case *ackHandle:
			if !h.acked.Load() {
				bySource[source{h.nc, h.consumer}] = append(bySource[source{h.nc, h.consumer}], h)
			}
		default:
			errs = append(errs, h.DoubleAck(ctx))
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for src, hs := range bySource { // at once: each waits on ctx
		wg.Go(func() {
			confirm := confirmOn
			if src.consumer == "" {
				confirm = confirmEach
			}
			err := confirm(ctx, src.nc, hs)
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// confirmOn acknowledges the messages of hs, deliveries of one consumer sent on nc, and asks the
// server to confirm the last alone. NATS keeps the order of one connection's messages and the
// server handles a consumer's acknowledgements in the order they come (replicated in that order
// in a cluster), so the last confirmed says every one before it was handled, unless the
// connection reconnected meanwhile and lost some: then each is confirmed (confirmEach). A
// confirmation per message cost the server a reply each, and the daemon a message each to
// handle: the 10,000 of a batch took 37-74 ms of the server's time.
func confirmOn(ctx context.Context, nc *nats.Conn, hs []*ackHandle) error {
	reconnects := nc.Stats().Reconnects
	last := len(hs) - 1
	for _, h := range hs[:last] {
		if err := nc.Publish(h.reply, ack); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
	}
	if err := confirmEach(ctx, nc, hs[last:]); err != nil {
		return err
	}
	if nc.Stats().Reconnects != reconnects {
		return confirmEach(ctx, nc, hs[:last])
	}
	for _, h := range hs[:last] {
		h.acked.Store(true)
	}
	return nil
}

var ack = []byte("+ACK")

// confirmEach sends the double acks of hs, which share nc, and waits for every confirmation:
// one request each, all sent at once, their confirmations asked on one subscription of this
// call, so a batch takes about one round trip and the server's own time (one request at a time,
// 64 at once, took 154-187 ms a batch of 10,000; this way, 46-88 ms). The index of each in hs is
// the last token of its confirmation's subject.
func confirmEach(ctx context.Context, nc *nats.Conn, hs []*ackHandle) error {
	if _, ok := ctx.Deadline(); !ok {
		// As long as one double ack may take, and a tenth of a millisecond more for each.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ackTimeout+time.Duration(len(hs))*100*time.Microsecond)
		defer cancel()
	}
	inbox := nc.NewInbox()
	var mu sync.Mutex
	left := len(hs)
	done := make(chan struct{})
	sub, err := nc.Subscribe(inbox+".*", func(m *nats.Msg) {
		i, err := strconv.Atoi(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:])
		if err != nil || i < 0 || i >= len(hs) || !hs[i].acked.CompareAndSwap(false, true) {
			return // not one of ours, or a confirmation repeated
		}
		mu.Lock()
		defer mu.Unlock()
		if left--; left == 0 {
			close(done)
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe for ack confirmations: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	for i, h := range hs {
		if err := nc.PublishRequest(h.reply, inbox+"."+strconv.Itoa(i), ack); err != nil {
			return fmt.Errorf("double ack: %w", err)
		}
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		return fmt.Errorf("%d of %d acknowledgements not confirmed: %w", left, len(hs), ctx.Err())
	}
}
