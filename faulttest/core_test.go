package faulttest_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/emulator"
)

// sendCore publishes n requests as a plain core NATS producer would (nats pub --reply): to the
// request subject, with a reply subject, no PubAck. Every replica forwards each into the stream.
func (w *world) sendCore(n int, tag string, each func(i int)) {
	w.t.Helper()
	for i := range n {
		key := fmt.Sprintf("%s-%04d", tag, i)
		body, _ := json.Marshal(map[string]any{"contents": []any{map[string]any{"parts": []any{map[string]string{"text": key}}}}})
		msg := &nats.Msg{Subject: "gembatch.generate", Reply: "ledger." + key, Data: body, Header: nats.Header{}}
		msg.Header.Set("Gembatch-Key", key)
		if err := w.nc.PublishMsg(msg); err != nil {
			w.t.Fatalf("publish %s: %v", key, err)
		}
		w.sent = append(w.sent, key)
		each(i)
	}
	if err := w.nc.Flush(); err != nil {
		w.t.Fatal(err)
	}
}

// TestCoreProducersLoseNothingWhileOneReplicaIsUp: two replicas; one is killed (SIGKILL) and
// started again six times while 2,000 plain core requests go out. Every replica receives and
// forwards every request under one Nats-Msg-Id, so a request the killed one had received but
// not yet forwarded is stored by the other: all answered, none billed twice.
func TestCoreProducersLoseNothingWhileOneReplicaIsUp(t *testing.T) {
	w := newWorld(t, emulator.Faults{})
	w.start("a")
	victim := w.start("b")
	kills := 0
	w.sendCore(2000, "core", func(i int) {
		if i%300 == 299 && kills < 6 {
			victim.kill()
			kills++
			victim = w.start("b")
		}
		if i%50 == 0 {
			time.Sleep(5 * time.Millisecond) // a producer's pace, so that kills land mid-stream
		}
	})
	w.waitAnswered(2 * time.Minute)
	for _, d := range w.daemons {
		if d.running() {
			d.stop(t)
		}
	}
	f := w.measure()
	report(t, fmt.Sprintf("core producers, one of two replicas killed %d times: %s", kills, f.String()))
	check(t, w, f)
}
