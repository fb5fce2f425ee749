package daemon_test

import (
	"context"
	"fmt"
	"strings"
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

// A request the stream refuses to store is answered at once with UNAVAILABLE saying why, and
// the requests it does store are answered as usual.
func TestRefusedForwardIsAnswered(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "true"
	h := start(t, cfg, emulator.Options{})
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	sc := st.CachedInfo().Config
	sc.MaxMsgSize = 2048 // the stream takes no message larger, headers included
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	h.send("gembatch.generate", "small", generateBody("a short question"))
	h.send("gembatch.generate", "large", generateBody(strings.Repeat("a long question ", 200)))
	replies := h.waitReplies([]string{"small", "large"}, 30*time.Second)
	if n := len(replies["large"]); n != 1 {
		t.Fatalf("the refused request was answered %d times, want once", n)
	}
	r := decode(t, replies["large"][0])
	if r.Error == nil || r.Error.Status != "UNAVAILABLE" || !strings.Contains(r.Error.Message, "could not store the request") {
		t.Fatalf("refused request answered %+v, want UNAVAILABLE: could not store the request", r.Error)
	}
	if n := len(replies["small"]); n != 1 || decode(t, replies["small"][0]).Error != nil {
		t.Fatalf("the stored request: %d replies, %+v", n, replies["small"])
	}
}

// Plain producers can send faster than the stream stores: what gembatchd has received and not
// yet forwarded is held in memory up to GEMBATCH_INTAKE_BUFFER_BYTES per subject (it held up to
// 1 GiB, and a burst of 1 GB of 32 KiB requests took the process to 1,031 MiB). Past it NATS
// drops the newest requests, which get no reply, and each is counted.
func TestIntakeBufferBoundsABurst(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "true"
	cfg.MaxRequestBytes = 64 << 10
	cfg.IntakeBufferBytes = 64 << 10
	cfg.BatchMaxWait = 500 * time.Millisecond
	h := start(t, cfg, emulator.Options{})
	body := generateBody(strings.Repeat("a burst of questions ", 700)) // about 15 KiB
	const sent = 2000
	for i := range sent {
		h.send("gembatch.generate", fmt.Sprintf("k%d", i), body)
	}
	var answered, dropped int
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		answered, dropped = len(h.waitReplies(nil, 0)), int(h.metric("gembatch_intake_requests_dropped_total"))
		if answered+dropped >= sent {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if dropped == 0 {
		t.Fatalf("no request dropped from a burst of %d of 15 KiB past a 64 KiB buffer (%d answered)", sent, answered)
	}
	if answered+dropped != sent {
		t.Fatalf("%d answered and %d dropped of %d sent", answered, dropped, sent)
	}
	for k, ms := range h.waitReplies(nil, 0) {
		if len(ms) != 1 {
			t.Fatalf("key %s answered %d times", k, len(ms))
		}
	}
}
