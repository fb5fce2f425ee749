package daemon_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/emulator"
)

// Every replica forwards every core request under the same Nats-Msg-Id: the stream keeps one
// copy (counted by the server), every request is answered once, and a producer that retries a
// keyed request within the duplicate window is not billed twice (counted by the emulator).
func TestEveryReplicaForwardsOneCopyIsKept(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "true"
	cfg.Instance = "a"
	h := start(t, cfg, emulator.Options{})
	bcfg := cfg
	bcfg.Instance = "b"
	replica(t, h, bcfg)

	var keys []string
	for i := range 100 {
		k := fmt.Sprintf("k%d", i)
		keys = append(keys, k)
		h.send("gembatch.generate", k, generateBody(fmt.Sprintf("question %d", i)))
	}
	h.send("gembatch.generate", "k0", generateBody("question 0")) // the producer retries k0
	// Keyless requests sharing one reply subject, as `nats pub --count` sends them.
	for i := range 20 {
		msg := &nats.Msg{Subject: "gembatch.generate", Reply: "test.reply.shared", Data: []byte(generateBody(fmt.Sprintf("keyless %d", i)))}
		if err := h.nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	replies := h.waitReplies(keys, 30*time.Second)
	for _, k := range keys {
		if n := len(replies[k]); n != 1 {
			t.Errorf("key %s answered %d times", k, n)
		}
	}
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 120 {
		t.Errorf("stream holds %d messages for 120 distinct requests forwarded by two replicas", info.State.Msgs)
	}
	if twice, _ := h.emu.Ledger().BilledTwice(); twice != 0 {
		t.Errorf("%d requests billed twice", twice)
	}
}
