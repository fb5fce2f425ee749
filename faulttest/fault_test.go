package faulttest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/failpoint"
)

// steps are where a trial kills the daemon: "accumulating" is a kill -9 while batches are open;
// the rest are failpoints.
var steps = []string{
	"accumulating",
	failpoint.AfterSealBeforeAck,
	failpoint.BeforeCreate,
	failpoint.MidUpload,
	failpoint.AfterCreateBeforeRec,
	failpoint.WhilePolling,
	failpoint.MidReply,
}

// TestCrashAtEachStep kills gembatchd -9 at each step of a batch's life, restarts it, and checks
// that every request is answered, no batch is created twice, and no request is answered twice.
func TestCrashAtEachStep(t *testing.T) {
	trials := 3 * len(steps)
	if v, err := strconv.Atoi(os.Getenv("GEMBATCH_FAULT_TRIALS")); err == nil && v > 0 {
		trials = v
	}
	const perTrial = 60
	var requests, unanswered, dupJobs, dupReplies int
	for i := range trials {
		step := steps[i%len(steps)]
		t.Run(fmt.Sprintf("%03d-%s", i, step), func(t *testing.T) {
			w := newWorld(t, emulator.Faults{})
			var env []string
			if step != "accumulating" {
				env = append(env, "GEMBATCH_FAILPOINT="+step)
			}
			d := w.start("a", env...)
			w.send(perTrial, "r")
			if step == "accumulating" {
				time.Sleep(100 * time.Millisecond)
				d.kill()
			} else if !d.died(20 * time.Second) {
				d.kill()
				t.Fatalf("failpoint %s was never reached\n%s", step, d.log())
			}
			again := w.start("a")
			w.waitAnswered(60*time.Second, func() string { return d.log() + "\n--- after restart ---\n" + again.log() })
			again.stop(t)
			un, dup := w.tally()
			requests += len(w.sent)
			unanswered += un
			dupReplies += dup
			dupJobs += w.duplicateJobs()
			if un != 0 || dup != 0 || w.duplicateJobs() != 0 {
				t.Fatalf("%s: %d unanswered, %d duplicate replies, %d duplicate jobs", step, un, dup, w.duplicateJobs())
			}
		})
	}
	summary := fmt.Sprintf("crash trials=%d requests=%d unanswered=%d duplicate_jobs=%d duplicate_replies=%d",
		trials, requests, unanswered, dupJobs, dupReplies)
	report(t, summary)
}

// TestLostCreateAnswersAndLaggingList: creates whose answers are lost, and a list that lags
// behind creates: each job is adopted, none created twice.
func TestLostCreateAnswersAndLaggingList(t *testing.T) {
	w := newWorld(t, emulator.Faults{LoseCreateAnswers: 3, ListLag: 500 * time.Millisecond})
	d := w.start("a")
	w.send(120, "lost")
	w.waitAnswered(60*time.Second, d.log)
	d.stop(t)
	un, dup := w.tally()
	jobs := len(w.emu.CreateCounts())
	report(t, fmt.Sprintf("lost create answers: requests=%d jobs=%d unanswered=%d duplicate_jobs=%d duplicate_replies=%d",
		len(w.sent), jobs, un, w.duplicateJobs(), dup))
	if w.duplicateJobs() != 0 || un != 0 || dup != 0 {
		t.Fatalf("%d duplicate jobs, %d unanswered, %d duplicate replies", w.duplicateJobs(), un, dup)
	}
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
	w.waitAnswered(60*time.Second, func() string { return a.log() + "\n--- b ---\n" + b.log() })
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // a renews (and is refused) and polls again
	a.stop(t)
	b.stop(t)
	un, dup := w.tally()
	report(t, fmt.Sprintf("paused owner: requests=%d unanswered=%d duplicate_jobs=%d duplicate_replies=%d", len(w.sent), un, w.duplicateJobs(), dup))
	if un != 0 || dup != 0 || w.duplicateJobs() != 0 {
		t.Fatalf("%d unanswered, %d duplicate replies, %d duplicate jobs", un, dup, w.duplicateJobs())
	}
	if !strings.Contains(b.log(), "took over a record") {
		t.Fatalf("b took nothing over\n%s", b.log())
	}
	if !strings.Contains(a.log(), "lost the lease on a record") {
		t.Fatalf("a's writes after its pause were not refused\n%s", a.log())
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
	w.waitAnswered(60*time.Second, d.log)
	if n := sample(scrape(t, d), "gembatch_nats_reconnects_total"); n < 1 {
		t.Fatalf("gembatch_nats_reconnects_total = %v after a server restart", n)
	}
	if !strings.Contains(d.log(), "reconnected to NATS") {
		t.Fatal("no reconnect in the log")
	}
	d.stop(t)
	un, dup := w.tally()
	report(t, fmt.Sprintf("nats restart: requests=%d unanswered=%d duplicate_jobs=%d duplicate_replies=%d", len(w.sent), un, w.duplicateJobs(), dup))
	if un != 0 || dup != 0 || w.duplicateJobs() != 0 {
		t.Fatalf("%d unanswered, %d duplicate replies, %d duplicate jobs", un, dup, w.duplicateJobs())
	}
}

// TestAPIStorms runs through 429s on create and 5xx on get: progress continues and the backoff
// shows in the metrics.
func TestAPIStorms(t *testing.T) {
	w := newWorld(t, emulator.Faults{CreateThrottleRate: 0.5, ThrottleDelay: 100 * time.Millisecond, GetErrorRate: 0.3, Seed: 7})
	d := w.start("a")
	w.send(120, "storm")
	w.waitAnswered(90*time.Second, d.log)
	metrics := scrape(t, d)
	d.stop(t)
	throttled := sample(metrics, "gembatch_submitter_create_throttled_total")
	retries := sample(metrics, "gembatch_gemini_api_retries_total")
	report(t, fmt.Sprintf("api storms: requests=%d duplicate_jobs=%d create_throttled=%v api_retries=%v", len(w.sent), w.duplicateJobs(), throttled, retries))
	if throttled == 0 || retries == 0 {
		t.Fatalf("backoff not visible: throttled %v, retries %v", throttled, retries)
	}
	if w.duplicateJobs() != 0 {
		t.Fatalf("%d duplicate jobs", w.duplicateJobs())
	}
}

// TestTokensCountedOnceAcrossRestart: a batch whose replies are cut off by a crash is answered
// again after the restart, and its tokens and cost are counted once, by the instance that
// finished it: the sums equal the usage the replies carry.
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
	w.waitAnswered(60*time.Second, func() string { return d.log() + "\n--- after restart ---\n" + again.log() })
	metrics := scrape(t, again)
	again.stop(t)
	var want int64
	w.ledger(func(m jetstream.Msg) {
		var r struct {
			Response struct {
				UsageMetadata gemini.UsageMetadata `json:"usageMetadata"`
			} `json:"response"`
		}
		if err := json.Unmarshal(m.Data(), &r); err != nil {
			t.Fatalf("reply %s: %v", m.Data(), err)
		}
		want += r.Response.UsageMetadata.PromptTokenCount + r.Response.UsageMetadata.CandidatesTokenCount
	})
	got := sample(metrics, "gembatch_publisher_tokens_total")
	cost := sample(metrics, "gembatch_publisher_cost_usd_total")
	un, dup := w.tally()
	report(t, fmt.Sprintf("tokens across a restart: requests=%d tokens_in_replies=%d tokens_counted=%v cost_usd=%.8f duplicate_replies=%d",
		len(w.sent), want, got, cost, dup))
	if want == 0 || got != float64(want) || un != 0 || dup != 0 {
		t.Fatalf("counted %v tokens, the replies carry %d (%d unanswered, %d duplicates)", got, want, un, dup)
	}
	if cost <= 0 {
		t.Fatalf("cost %v: the shipped prices cover gemini-2.5-flash", cost)
	}
}

var readyLine = regexp.MustCompile(`"metrics":"([^"]+)".*"gembatchd ready"|"gembatchd ready".*"metrics":"([^"]+)"`)

func scrape(t *testing.T, d *daemon) string {
	t.Helper()
	m := readyLine.FindStringSubmatch(d.log())
	if m == nil {
		t.Fatal("no metrics address in the log")
	}
	addr := m[1] + m[2]
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// sample sums a metric's samples in a text exposition.
func sample(exposition, name string) float64 {
	var sum float64
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, name) || (len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ') {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}
