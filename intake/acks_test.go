package intake

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/internal/natstest"
	"github.com/gembatch/gembatch/record"
)

// pulled publishes n messages to a stream, pulls them, and returns each as a held request, with
// a ledger of the acknowledgements the server is sent.
func pulled(t *testing.T, n int) (*nats.Conn, jetstream.Consumer, []record.Request, *ledger) {
	t.Helper()
	nc := natstest.NATS(t) // stacktest would import intake through daemon
	cons, msgs := natstest.Pulled(t, nc, n, time.Minute)
	var reqs []record.Request
	for _, m := range msgs {
		reqs = append(reqs, record.Request{Msg: &ackHandle{nc: nc, reply: m.Reply(), consumer: cons.CachedInfo().Name}})
	}
	return nc, cons, reqs, watch(t, nc, "$JS.ACK.>")
}

// ledger counts the messages published to a subject, as the server routes them.
type ledger struct {
	mu sync.Mutex
	n  int
}

func watch(t *testing.T, nc *nats.Conn, subject string) *ledger {
	t.Helper()
	l := &ledger{}
	sub, err := nc.Subscribe(subject, func(*nats.Msg) { l.mu.Lock(); l.n++; l.mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *ledger) count(t *testing.T, nc *nats.Conn, want int) int {
	t.Helper()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// The copies routed back to this connection come after the flush: wait for those expected,
	// then a moment for any beyond them.
	for deadline := time.Now().Add(5 * time.Second); l.load() < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	return l.load()
}

func (l *ledger) load() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// Every message of a batch is acknowledged once and the server confirms it: nothing is left
// pending in the consumer, and a second call asks for nothing.
func TestConfirmAcksConfirmsEveryMessage(t *testing.T) {
	nc, cons, reqs, acks := pulled(t, 500)
	if err := ConfirmAcks(context.Background(), reqs); err != nil {
		t.Fatal(err)
	}
	allHandled(t, cons, 500)
	if n := acks.count(t, nc, 500); n != 500 {
		t.Fatalf("server was sent %d acknowledgements, want 500", n)
	}
	if err := ConfirmAcks(context.Background(), reqs); err != nil {
		t.Fatal(err)
	}
	if n := acks.count(t, nc, 500); n != 500 {
		t.Fatalf("a second call sent %d more acknowledgements, want none", n-500)
	}
}

// A batch's acknowledgements to one consumer ask the server for one confirmation, the last's,
// and every one of them is handled: the server handles a consumer's acknowledgements in the
// order one connection sends them.
func TestConfirmAcksAsksOneConfirmationABatch(t *testing.T) {
	nc, cons, reqs, acks := pulled(t, 500)
	confirmations := watch(t, nc, "_INBOX.>")
	if err := ConfirmAcks(context.Background(), reqs); err != nil {
		t.Fatal(err)
	}
	if a, c := acks.count(t, nc, 500), confirmations.count(t, nc, 1); a != 500 || c != 1 {
		t.Fatalf("server was sent %d acknowledgements and sent %d confirmations, want 500 and 1", a, c)
	}
	allHandled(t, cons, 500)
}

// Acknowledgements that are not confirmed make an error that counts them, and a second call
// asks again for those alone.
func TestConfirmAcksAsksAgainOnlyForTheUnconfirmed(t *testing.T) {
	nc, _, reqs, acks := pulled(t, 10)
	lost := watch(t, nc, "nowhere.>")
	for i := range 3 { // nothing confirms an ack sent to these
		reqs = append(reqs, record.Request{Msg: &ackHandle{nc: nc, reply: fmt.Sprintf("nowhere.%d", i)}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := ConfirmAcks(ctx, reqs)
	if err == nil || !strings.Contains(err.Error(), "3 of 3 acknowledgements not confirmed") {
		t.Fatalf("got %v, want the 3 that go nowhere not confirmed", err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	if err := ConfirmAcks(ctx2, reqs); err == nil || !strings.Contains(err.Error(), "3 of 3") {
		t.Fatalf("second call: %v, want 3 of 3 not confirmed", err)
	}
	if a, l := acks.count(t, nc, 10), lost.count(t, nc, 6); a != 10 || l != 6 {
		t.Fatalf("server sent %d acknowledgements and the unconfirmed subjects %d; want 10 and 6 (3 twice)", a, l)
	}
}

// When the connection reconnects while a batch's last acknowledgement is being confirmed, the
// plain acknowledgements before it may have been lost with the old connection: each of them is
// then confirmed on its own. The last one here goes to a responder that forces the reconnect
// before it answers; the server's confirmations of the others are counted on the wire.
func TestConfirmAcksConfirmsEachAfterAReconnect(t *testing.T) {
	nc, cons, reqs, _ := pulled(t, 200)
	other, err := nats.Connect(nc.ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	before := nc.Stats().Reconnects
	sub, err := other.Subscribe("slow.last", func(m *nats.Msg) {
		go func() {
			_ = nc.ForceReconnect()
			for nc.Stats().Reconnects == before || !nc.IsConnected() {
				time.Sleep(time.Millisecond)
			}
			_ = nc.Flush() // the confirmation's subscription is back on the server
			_ = m.Respond(nil)
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	reqs = append(reqs, record.Request{Msg: &ackHandle{nc: nc, reply: "slow.last", consumer: cons.CachedInfo().Name}})
	acks := watch(t, other, "$JS.ACK.>") // on the connection that stays: none of its copies is lost
	confirmations := watch(t, other, "_INBOX.>")
	if err := ConfirmAcks(context.Background(), reqs); err != nil {
		t.Fatal(err)
	}
	if nc.Stats().Reconnects == before {
		t.Fatal("the connection did not reconnect")
	}
	if a, c := acks.count(t, other, 400), confirmations.count(t, other, 201); a != 400 || c != 201 {
		t.Fatalf("server was sent %d acknowledgements and %d confirmations went out, want 400 (each twice) and 201 (each of 200 and the last)", a, c)
	}
	allHandled(t, cons, 200)
}

// allHandled fails unless the consumer has nothing pending and its ack floor is at stream
// sequence n: every one of the n messages handled.
func allHandled(t *testing.T, cons jetstream.Consumer, n uint64) {
	t.Helper()
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 0 || info.AckFloor.Stream != n {
		t.Fatalf("consumer has %d pending, ack floor %d; want 0 and %d", info.NumAckPending, info.AckFloor.Stream, n)
	}
}
