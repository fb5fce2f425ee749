package daemon_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/accumulator"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/natstest"
	"github.com/gembatch/gembatch/internal/stacktest"
	"github.com/gembatch/gembatch/record"
)

// consumerInfo reads the request consumer's state from the server: the far side's own count of
// what it delivered and redelivered.
func consumerInfo(t *testing.T, h *harness) *jetstream.ConsumerInfo {
	t.Helper()
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	c, err := js.Consumer(context.Background(), h.main.Config.Stream, h.main.Config.Consumer)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// Finding 7: while the API is down and the pending bounds are reached, intake stops pulling
// instead of pulling, parsing and handing messages back every second. The server's own counts
// show it: nothing redelivered, and no more delivered than the bounds plus one pull.
func TestFullIntakeStopsPullingInsteadOfNaking(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "true"
	cfg.MaxPending = 40
	cfg.BatchMaxRequests = 10
	cfg.GeminiBaseURL = "http://127.0.0.1:1" // nothing listens: every create fails to connect
	h := start(t, cfg, emulator.Options{})
	for i := range 400 {
		h.send("gembatch.generate", fmt.Sprintf("k%d", i), generateBody("hold me"))
	}
	if err := h.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // four of the old loop's NAK rounds
	info := consumerInfo(t, h)
	if info.NumRedelivered != 0 {
		t.Errorf("server redelivered %d messages while intake was full (a NAK loop)", info.NumRedelivered)
	}
	if max := uint64(cfg.MaxPending) + 256; info.Delivered.Consumer > max {
		t.Errorf("server delivered %d messages; at most %d fit the bounds and one pull", info.Delivered.Consumer, max)
	}
	t.Logf("delivered %d, redelivered %d, pending in stream %d", info.Delivered.Consumer, info.NumRedelivered, info.NumPending)
}

// Finding 5: a request that waits in an open batch longer than AckWait is not delivered again
// (JetStream is told it is in progress), and a request without a key gets one derived from its
// stream sequence, the same on every delivery.
func TestHeldRequestsAreNotRedelivered(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "true"
	cfg.LeaseTTL = time.Second
	cfg.BatchMaxWait = 3 * time.Second
	cfg.AckWait = 3500 * time.Millisecond // longer than the batch wait, as configuration requires
	h := start(t, cfg, emulator.Options{})
	h.send("gembatch.generate", "", generateBody("no key"))
	time.Sleep(2 * time.Second)
	// Hold the batch open past AckWait by feeding it: a slow seal behaves alike.
	for i := range 3 {
		h.send("gembatch.generate", fmt.Sprintf("late%d", i), generateBody("late"))
		time.Sleep(600 * time.Millisecond)
	}
	keys := []string{"late0", "late1", "late2"}
	replies := h.waitReplies(keys, 20*time.Second)
	if info := consumerInfo(t, h); info.NumRedelivered != 0 {
		t.Errorf("server redelivered %d held messages", info.NumRedelivered)
	}
	var keyless []string
	for k := range replies {
		if k != "late0" && k != "late1" && k != "late2" {
			keyless = append(keyless, k)
		}
	}
	if len(keyless) != 1 || keyless[0] != cfg.Stream+"-1" {
		t.Errorf("keyless request answered under keys %v, want [%s-1]", keyless, cfg.Stream)
	}
}

// Finding 5, the mechanism: a message held in an open batch longer than its AckWait is not
// delivered again while the accumulator tells the stream it is in progress. The control run,
// without the heartbeat, shows the instrument sees a redelivery when there is one.
func TestHeartbeatKeepsHeldMessagesFromRedelivery(t *testing.T) {
	for _, tc := range []struct {
		heartbeat   time.Duration
		redelivered bool
	}{{300 * time.Millisecond, false}, {0, true}} {
		t.Run(fmt.Sprintf("heartbeat=%s", tc.heartbeat), func(t *testing.T) {
			cons, msgs := natstest.Pulled(t, stacktest.NATS(t), 1, time.Second)
			msg, ctx := msgs[0], context.Background()
			sealed := make(chan *record.Record, 1)
			acc := accumulator.New(accumulator.Config{Heartbeat: tc.heartbeat, Limits: accumulator.Limits{MaxRequests: 10, MaxBytes: 1 << 20, MaxWait: 2500 * time.Millisecond}},
				func(r *record.Record) { sealed <- r }, func(record.Group, record.Request, *gemini.Status) {}, nil)
			if err := acc.Add(record.Group{Kind: gemini.KindGenerate, Model: "models/m"}, record.Request{ID: "S-1", Key: "k", Reply: "r", Size: 2, Msg: msg}); err != nil {
				t.Fatal(err)
			}
			// Another replica pulls while the batch is still open, after the AckWait has run out.
			time.Sleep(1500 * time.Millisecond)
			again, err := cons.Fetch(1, jetstream.FetchMaxWait(800*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			for range again.Messages() {
			}
			r := <-sealed
			acc.Close()
			for _, q := range r.Requests {
				if err := q.Msg.DoubleAck(ctx); err != nil {
					t.Fatal(err)
				}
			}
			info, err := cons.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := info.NumRedelivered > 0 || info.Delivered.Consumer > 1; got != tc.redelivered {
				t.Fatalf("redelivered = %v (delivered %d, redelivered %d), want %v", got, info.Delivered.Consumer, info.NumRedelivered, tc.redelivered)
			}
		})
	}
}

// A batch sealed soon after its messages were pulled is recorded without telling the stream
// each message is in progress (a consumer write each on the server, a raft proposal each in a
// cluster): their AckWait has most of its time left. The server's acknowledgement subject is
// the ledger: it sees every +WPI and +ACK the daemon sends.
func TestYoungBatchIsRecordedWithoutInProgress(t *testing.T) {
	cfg := testConfig()
	cfg.Durable = "true"
	cfg.BatchMaxRequests = 5
	h := start(t, cfg, emulator.Options{})
	acks := map[string]int{}
	var mu sync.Mutex
	sub, err := h.nc.Subscribe("$JS.ACK.>", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		acks[string(m.Data)]++
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	keys := make([]string, 5)
	for i := range keys {
		keys[i] = fmt.Sprintf("young%d", i)
		h.send("gembatch.generate", keys[i], generateBody("young"))
	}
	h.waitReplies(keys, 20*time.Second)
	if err := h.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if acks["+WPI"] != 0 || acks["+ACK"] != 5 {
		t.Errorf("acknowledgement subjects saw %v; want 5 +ACK and no +WPI", acks)
	}
}
