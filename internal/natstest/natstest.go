// Package natstest gives a test an in-process NATS server with JetStream of its own. It imports
// nothing of gembatch's but the embedded server, so that the internal tests of packages the
// daemon is built from can use it (stacktest, which starts the whole stack, cannot be imported
// there).
package natstest

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/internal/embedded"
)

// NATS starts an in-process NATS server with JetStream for the test alone and returns a
// connection to it; both close when the test ends.
func NATS(t testing.TB) *nats.Conn {
	t.Helper()
	ns, err := embedded.NATS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() })
	return nc
}

// Pulled publishes n messages ("0", "1", ...) to a new stream S on subject s, creates the
// explicit-ack durable consumer c with ackWait, fetches the n messages and returns them in
// order, delivered and not yet acknowledged.
func Pulled(t testing.TB, nc *nats.Conn, n int, ackWait time.Duration) (jetstream.Consumer, []jetstream.Msg) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := js.Publish(ctx, "s", strconv.AppendInt(nil, int64(i), 10)); err != nil {
			t.Fatal(err)
		}
	}
	batch, err := cons.Fetch(n)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != n {
		t.Fatalf("fetched %d of %d messages", len(msgs), n)
	}
	return cons, msgs
}
