package faulttest_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/emulator"
)

// answer is what a reply says: the same request answered twice with the same answer is a
// repeat the contract allows after a crash mid-reply; with another answer, a breach.
type answer struct {
	msgID  string // Nats-Msg-Id
	status string // Gembatch-Status
	body   string // the first 8 bytes of the body's SHA-256, in hex
}

// replyLedger counts every reply delivered on ledger.>. A core subscription sees every delivery
// (no deduplication by Nats-Msg-Id, unlike a stream's duplicate window) while the test's
// connection is up; a stream with the shortest duplicate window the server allows (100ms) keeps
// what arrives while that connection is reconnecting after a NATS restart. Per request, the
// ledger believes whichever of the two saw more deliveries, plus any answer only the other saw:
// neither can see a delivery that did not happen.
type replyLedger struct {
	t      *testing.T
	nc     *nats.Conn
	sub    *nats.Subscription
	stream jetstream.Stream

	mu  sync.Mutex
	got map[string][]answer // by Gembatch-Key, in order of delivery
}

func newReplyLedger(t *testing.T, nc *nats.Conn, js jetstream.JetStream, replicas int) *replyLedger {
	t.Helper()
	l := &replyLedger{t: t, nc: nc, got: map[string][]answer{}}
	// A cluster answers JetStream before every peer is known to it; placing three replicas
	// may take a moment more.
	err := retry(func(ctx context.Context) (err error) {
		l.stream, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name: "LEDGER", Subjects: []string{"ledger.>"}, Duplicates: 100 * time.Millisecond,
			Storage: jetstream.FileStorage, Replicas: replicas,
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if l.sub, err = nc.Subscribe("ledger.>", func(m *nats.Msg) { l.note(l.got, m.Header, m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := l.sub.SetPendingLimits(-1, -1); err != nil { // never drop a delivery as a slow consumer
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *replyLedger) note(into map[string][]answer, h nats.Header, body []byte) {
	sum := sha256.Sum256(body)
	a := answer{msgID: h.Get("Nats-Msg-Id"), status: h.Get("Gembatch-Status"), body: hex.EncodeToString(sum[:8])}
	key := h.Get("Gembatch-Key")
	l.mu.Lock()
	defer l.mu.Unlock()
	into[key] = append(into[key], a)
}

// core is what the subscription has seen, once every delivery the server has routed to it is
// handled.
func (l *replyLedger) core() map[string][]answer {
	l.t.Helper()
	if err := l.nc.Flush(); err != nil {
		l.t.Fatalf("ledger flush: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		n, _, err := l.sub.Pending()
		if err != nil {
			l.t.Fatalf("ledger: %v", err)
		}
		if n == 0 || time.Now().After(deadline) {
			break
		}
	}
	if n, _ := l.sub.Dropped(); n > 0 {
		l.t.Fatalf("the ledger's subscription dropped %d replies", n)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string][]answer, len(l.got))
	for k, as := range l.got {
		out[k] = append([]answer(nil), as...)
	}
	return out
}

// stored reads every reply the stream holds, trying again while a cluster that just lost a node
// elects its leaders.
func (l *replyLedger) stored() map[string][]answer {
	l.t.Helper()
	var out map[string][]answer
	if err := retry(func(ctx context.Context) (err error) { out, err = l.read(ctx); return err }); err != nil {
		l.t.Fatalf("ledger stream: %v", err)
	}
	return out
}

func (l *replyLedger) read(ctx context.Context) (map[string][]answer, error) {
	out := map[string][]answer{}
	info, err := l.stream.Info(ctx)
	if err != nil || info.State.Msgs == 0 {
		return out, err
	}
	cons, err := l.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	for got := uint64(0); got < info.State.Msgs; {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		for m := range batch.Messages() {
			l.note(out, m.Headers(), m.Data())
			got++
		}
		if batch.Error() != nil {
			return nil, batch.Error()
		}
	}
	return out, nil
}

// retry calls f, with a deadline of its own each time, until it succeeds or 30s have passed.
func retry(f func(ctx context.Context) error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := f(ctx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// all merges the two views: per request, the longer list of deliveries, plus the deliveries of
// the other list with an answer the longer one never saw (they are deliveries it missed).
func (l *replyLedger) all() map[string][]answer {
	merged := l.core()
	for k, stored := range l.stored() {
		longer, shorter := merged[k], stored
		if len(stored) > len(longer) {
			longer, shorter = stored, longer
		}
		seen := map[answer]bool{}
		for _, a := range longer {
			seen[a] = true
		}
		for _, a := range shorter {
			if !seen[a] {
				longer = append(longer, a)
			}
		}
		merged[k] = longer
	}
	return merged
}

// unanswered counts the keys with no reply, reading the stream only when the subscription
// alone leaves some unanswered.
func (l *replyLedger) unanswered(keys []string) int {
	count := func(got map[string][]answer) int {
		n := 0
		for _, k := range keys {
			if len(got[k]) == 0 {
				n++
			}
		}
		return n
	}
	if n := count(l.core()); n == 0 {
		return 0
	}
	return count(l.all())
}

// replyTally is what the ledger says of the replies to a set of requests.
type replyTally struct {
	unanswered int
	deliveries int
	// repeatedDeliveries are deliveries beyond the first per request, for whatever reason.
	repeatedDeliveries int
	// repeatedAnswers are those of them that repeat the first answer exactly (same Nats-Msg-Id,
	// status and body): the contract allows them after a crash mid-reply.
	repeatedAnswers int
	// conflicting counts requests answered in more than one way (another Nats-Msg-Id, status
	// or body): a breach.
	conflicting int
	// failed counts requests whose first answer is an error: no trial's fault may cost a
	// request its answer (the emulator's jobs answer every request).
	failed int
}

func (l *replyLedger) tally(keys []string) replyTally {
	got := l.all()
	var r replyTally
	for _, k := range keys {
		as := got[k]
		r.deliveries += len(as)
		if len(as) == 0 {
			r.unanswered++
			continue
		}
		r.repeatedDeliveries += len(as) - 1
		if as[0].status != "ok" {
			r.failed++
		}
		distinct := map[answer]bool{}
		for _, a := range as {
			distinct[a] = true
			if a == as[0] {
				r.repeatedAnswers++
			}
		}
		r.repeatedAnswers-- // the first is not a repeat
		if len(distinct) > 1 {
			r.conflicting++
		}
	}
	return r
}

// TestReplyLedgerSeesEveryDelivery checks the instrument: replies repeated within a stream's
// duplicate window are each counted, repeats of one answer apart from a second, different answer,
// and an error answer is counted as one.
func TestReplyLedgerSeesEveryDelivery(t *testing.T) {
	w := newWorld(t, emulator.Faults{})
	w.sent = []string{"same", "other", "two-ways", "none", "failed"}
	reply := func(key, msgID, status, body string) {
		m := nats.NewMsg("ledger." + key)
		m.Header.Set("Gembatch-Key", key)
		m.Header.Set("Nats-Msg-Id", msgID)
		m.Header.Set("Gembatch-Status", status)
		m.Data = []byte(body)
		if err := w.nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		reply("same", "id-same", "ok", `{"key":"same"}`) // the same answer three times, at once
	}
	reply("other", "id-other", "ok", `{"key":"other"}`)
	reply("two-ways", "id-two", "ok", `{"key":"two-ways"}`)
	reply("two-ways", "id-two-again", "error", `{"key":"two-ways","error":{}}`)
	reply("failed", "id-failed", "error", `{"key":"failed","error":{}}`)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		info, err := w.replies.stream.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 5 { // seven, less the two repeats its window drops
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream holds %d replies, want 5", info.State.Msgs)
		}
	}
	got := w.replies.tally(w.sent)
	want := replyTally{unanswered: 1, deliveries: 7, repeatedDeliveries: 3, repeatedAnswers: 2, conflicting: 1, failed: 1}
	if got != want {
		t.Fatalf("tally %+v, want %+v", got, want)
	}
	// A stream's duplicate window, the ledger of old, sees one of the three.
	if n := len(w.replies.stored()["same"]); n != 1 {
		t.Fatalf("the stream kept %d of three replies with one Nats-Msg-Id; the test assumes its window drops them", n)
	}
}
