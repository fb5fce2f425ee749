package faulttest_test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/failpoint"
)

// check fails the test on any breach of the promise in f, jobs created twice included.
func check(t *testing.T, w *world, f figures) {
	t.Helper()
	if b := f.breaches(true); len(b) > 0 {
		t.Fatalf("%s\n%s", strings.Join(b, "; "), w.logs())
	}
}

// TestLostCreateAnswersAndLaggingList: creates whose answers are lost, and a list that lags
// behind creates: each job is adopted, none created twice.
func TestLostCreateAnswersAndLaggingList(t *testing.T) {
	w := newWorld(t, emulator.Faults{LoseCreateAnswers: 3, ListLag: 500 * time.Millisecond})
	d := w.start("a")
	w.send(120, "lost")
	w.waitAnswered(60 * time.Second)
	d.stop(t)
	f := w.measure()
	report(t, fmt.Sprintf("lost create answers: jobs=%d %s", len(w.emu.CreateCounts()), f))
	check(t, w, f)
	if !strings.Contains(d.log(), "adopted an existing remote batch") {
		t.Fatalf("no lost job was adopted\n%s", d.log())
	}
}

// TestPausedOwnerIsFenced pauses the replica that owns the batches past its lease while a second
// replica runs: the second takes them over and answers them; the first, resumed, is refused.
func TestPausedOwnerIsFenced(t *testing.T) {
	w := newWorldWithJobs(t, 4*time.Second, emulator.Faults{}) // jobs outlast a's lease
	a := w.start("a")
	w.send(80, "pause")
	deadline := time.Now().Add(20 * time.Second)
	for len(w.emu.Batches()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no batches submitted\n%s", a.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // let a seal and submit what it holds
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	b := w.start("b")
	w.waitAnswered(60 * time.Second)
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // a renews (and is refused) and polls again
	a.stop(t)
	b.stop(t)
	f := w.measure()
	report(t, "paused owner: "+f.String())
	check(t, w, f)
	if !strings.Contains(b.log(), "took over a record") {
		t.Fatalf("b took nothing over\n%s", b.log())
	}
	// a learns from its watch that its records are b's now, and stops working on them.
	if lost := sample(a.metrics, "gembatch_ownership_lost_records_total"); lost == 0 || !strings.Contains(a.log(), "was taken over") {
		t.Fatalf("a did not learn that its records were taken over (lost=%v)\n%s", lost, a.log())
	}
}

// TestNATSServerRestart restarts the NATS server mid-run on the same store.
func TestNATSServerRestart(t *testing.T) {
	w := newWorld(t, emulator.Faults{})
	d := w.start("a")
	w.send(60, "before")
	time.Sleep(200 * time.Millisecond)
	w.restartNATS(time.Second)
	w.send(60, "after")
	w.waitAnswered(60 * time.Second)
	if n := sample(scrape(t, d), "gembatch_nats_reconnects_total"); n < 1 {
		t.Fatalf("gembatch_nats_reconnects_total = %v after a server restart", n)
	}
	if !strings.Contains(d.log(), "reconnected to NATS") {
		t.Fatal("no reconnect in the log")
	}
	d.stop(t)
	f := w.measure()
	report(t, "nats restart: "+f.String())
	check(t, w, f)
}

// TestAPIStorms runs through 429s on create and 5xx on get: progress continues and the backoff
// shows in the metrics.
func TestAPIStorms(t *testing.T) {
	w := newWorld(t, emulator.Faults{CreateThrottleRate: 0.5, ThrottleDelay: 100 * time.Millisecond, GetErrorRate: 0.3, Seed: 7})
	d := w.start("a")
	w.send(120, "storm")
	w.waitAnswered(90 * time.Second)
	d.stop(t)
	throttled := sample(d.metrics, "gembatch_submitter_create_throttled_total")
	retries := sample(d.metrics, "gembatch_gemini_api_retries_total")
	f := w.measure()
	report(t, fmt.Sprintf("api storms: create_throttled=%v api_retries=%v %s", throttled, retries, f))
	if throttled == 0 || retries == 0 {
		t.Fatalf("backoff not visible: throttled %v, retries %v", throttled, retries)
	}
	check(t, w, f)
}

// TestTokensCountedOnceAcrossRestart: a batch whose replies are cut off by a crash is answered
// again after the restart, and its tokens are counted once, by the instance that finished it:
// the sum equals what the emulator billed.
func TestTokensCountedOnceAcrossRestart(t *testing.T) {
	w := newWorld(t, emulator.Faults{})
	w.models = []string{"gemini-2.5-flash"} // one batch: nothing is counted before the crash
	d := w.start("a", "GEMBATCH_FAILPOINT="+failpoint.MidReply)
	w.send(40, "tokens")
	if !d.died(20 * time.Second) {
		d.kill()
		t.Fatalf("failpoint %s was never reached\n%s", failpoint.MidReply, d.log())
	}
	again := w.start("a")
	w.waitAnswered(60 * time.Second)
	again.stop(t)
	cost := sample(again.metrics, "gembatch_publisher_cost_usd_total")
	f := w.measure()
	report(t, fmt.Sprintf("tokens across a restart: cost_usd=%.8f %s", cost, f))
	check(t, w, f)
	if f.tokensBilled == 0 {
		t.Fatal("the emulator billed no tokens")
	}
	if cost <= 0 {
		t.Fatalf("cost %v: the shipped prices cover gemini-2.5-flash", cost)
	}
}
