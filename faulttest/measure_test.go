package faulttest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/gemini"
)

// send publishes n requests to the stream with a JetStream publish (the producer's durable path)
// and returns once each has its PubAck. Half go to a model whose batches go by file.
func (w *world) send(n int, tag string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		key := fmt.Sprintf("%s-%04d", tag, i)
		text := key
		models := w.models
		if models == nil {
			models = []string{"gemini-2.5-flash", "gemini-2.5-pro"}
		}
		if i%2 == 1 { // every other request is large enough for its batch to go by file
			text += strings.Repeat(" padding", 80)
		}
		body, _ := json.Marshal(map[string]any{"contents": []any{map[string]any{"parts": []any{map[string]string{"text": text}}}}})
		msg := nats.NewMsg("gembatch.stream.generate")
		msg.Data = body
		msg.Header.Set("Gembatch-Key", key)
		msg.Header.Set("Gembatch-Reply", "ledger."+key)
		msg.Header.Set("Gembatch-Model", models[i%len(models)])
		for {
			if _, err := w.js.PublishMsg(ctx, msg); err == nil {
				break
			} else if ctx.Err() != nil {
				w.t.Fatalf("publish %s: %v", key, err)
			}
			time.Sleep(50 * time.Millisecond) // NATS restarting
		}
		w.sent = append(w.sent, key)
	}
}

// answered waits until every sent request has a reply, and says whether that came.
func (w *world) answered(within time.Duration) bool {
	w.t.Helper()
	deadline := time.Now().Add(within)
	for w.replies.unanswered(w.sent) > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
	return true
}

// waitAnswered fails the test unless every sent request has a reply within the time.
func (w *world) waitAnswered(within time.Duration) {
	w.t.Helper()
	if !w.answered(within) {
		w.t.Fatalf("%d of %d requests unanswered after %s; consumer: %s\n%s", w.replies.unanswered(w.sent), len(w.sent), within, w.consumerState(), w.logs())
	}
}

// figures are what a test or a trial measured; a campaign sums them.
type figures struct {
	trials, requests int
	unanswered       int
	billedTwice      int // requests the emulator billed more than once
	createdTwice     int // jobs created beyond the first per displayName
	deliveries       int
	repeatedDeliv    int // replies beyond the first per request
	repeatedAnswers  int // of those, the same answer again (allowed)
	conflicting      int // requests answered in two different ways
	failed           int // requests answered with an error
	tokensCounted    int64
	tokensBilled     int64
}

func (f *figures) add(g figures) {
	f.trials += g.trials
	f.requests += g.requests
	f.unanswered += g.unanswered
	f.billedTwice += g.billedTwice
	f.createdTwice += g.createdTwice
	f.deliveries += g.deliveries
	f.repeatedDeliv += g.repeatedDeliv
	f.repeatedAnswers += g.repeatedAnswers
	f.conflicting += g.conflicting
	f.failed += g.failed
	f.tokensCounted += g.tokensCounted
	f.tokensBilled += g.tokensBilled
}

func (f figures) String() string {
	return fmt.Sprintf("trials=%d requests=%d unanswered=%d billed_twice=%d created_twice=%d "+
		"deliveries=%d repeated_deliveries=%d repeated_answers=%d conflicting_answers=%d failed_answers=%d tokens_counted=%d tokens_billed=%d",
		f.trials, f.requests, f.unanswered, f.billedTwice, f.createdTwice,
		f.deliveries, f.repeatedDeliv, f.repeatedAnswers, f.conflicting, f.failed, f.tokensCounted, f.tokensBilled)
}

// breaches lists how the figures break the promise: a request unanswered or answered two ways,
// billed twice, tokens counted otherwise than billed, and, if jobs is set, a job created twice.
// (A job created twice and cancelled before it ran bills nothing: the last line of defence
// against a freeze between the lease check and the create, which no fence can stop.)
func (f figures) breaches(jobs bool) []string {
	var out []string
	if f.unanswered > 0 {
		out = append(out, fmt.Sprintf("%d unanswered", f.unanswered))
	}
	if f.conflicting > 0 {
		out = append(out, fmt.Sprintf("%d answered two different ways", f.conflicting))
	}
	if f.failed > 0 {
		out = append(out, fmt.Sprintf("%d answered with an error", f.failed))
	}
	if f.billedTwice > 0 {
		out = append(out, fmt.Sprintf("%d billed twice", f.billedTwice))
	}
	if jobs && f.createdTwice > 0 {
		out = append(out, fmt.Sprintf("%d jobs created twice", f.createdTwice))
	}
	if f.tokensCounted != f.tokensBilled {
		out = append(out, fmt.Sprintf("tokens counted %d, billed %d", f.tokensCounted, f.tokensBilled))
	}
	return out
}

// measure reads the ledgers once the daemons are stopped: replies from the reply ledger, billing
// and creates from the emulator's (after every job has ended, so that a late duplicate is billed
// too), tokens counted from the records, which keep them with their replied state (a process's
// counter dies with it; the record's sums are what a SIGKILL cannot take).
func (w *world) measure() figures {
	w.t.Helper()
	w.settleJobs(15 * time.Second)
	l := w.emu.Ledger()
	r := w.replies.tally(w.sent)
	twice, _ := l.BilledTwice()
	f := figures{
		trials: 1, requests: len(w.sent), unanswered: r.unanswered,
		billedTwice: twice, createdTwice: l.CreatedTwice(),
		deliveries: r.deliveries, repeatedDeliv: r.repeatedDeliveries, repeatedAnswers: r.repeatedAnswers,
		conflicting: r.conflicting, failed: r.failed, tokensBilled: l.Tokens(),
	}
	f.tokensCounted = w.recordedTokens()
	return f
}

// recordedTokens sums the tokens every record says its batch used, as gembatch_publisher_tokens_total
// counts them (every type), over the records bucket.
func (w *world) recordedTokens() int64 {
	w.t.Helper()
	var n int64
	w.eachRecord(func(k string, value []byte) {
		var rec struct {
			Usage *struct {
				gemini.UsageMetadata
				EstimatedPrompt int64 `json:"estimatedPrompt"`
			} `json:"usage"`
		}
		if err := json.Unmarshal(value, &rec); err != nil {
			w.t.Fatalf("decode record %s: %v", k, err)
		}
		if u := rec.Usage; u != nil {
			n += u.PromptTokenCount + u.CandidatesTokenCount + u.CachedContentTokenCount + u.ThoughtsTokenCount + u.EstimatedPrompt
		}
	})
	return n
}

// eachRecord calls f with every record in the records bucket, as stored; none if the bucket
// was never made.
func (w *world) eachRecord(f func(key string, value []byte)) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := w.js.KeyValue(ctx, "gembatch-records")
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return
	}
	if err != nil {
		w.t.Fatalf("records bucket: %v", err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		w.t.Fatalf("list records: %v", err)
	}
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired or purged between the list and the read
		}
		if err != nil {
			w.t.Fatalf("read record %s: %v", k, err)
		}
		f(k, e.Value())
	}
}

// settleJobs waits until every job the emulator holds has ended.
func (w *world) settleJobs(within time.Duration) {
	w.t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(100 * time.Millisecond) {
		open := 0
		for _, op := range w.emu.Batches() {
			if !op.Done {
				open++
			}
		}
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			w.t.Logf("%d jobs still running after %s: their billing is not counted", open, within)
			return
		}
	}
}

var readyLine = regexp.MustCompile(`"metrics":"([^"]+)".*"gembatchd ready"|"gembatchd ready".*"metrics":"([^"]+)"`)

func scrape(t *testing.T, d *daemon) string {
	t.Helper()
	m, err := scrapeDaemon(d)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func scrapeDaemon(d *daemon) (string, error) {
	m := readyLine.FindStringSubmatch(d.log())
	if m == nil {
		return "", fmt.Errorf("no metrics address in the log of %s", d.name)
	}
	resp, err := http.Get("http://" + m[1] + m[2] + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
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

// settled waits until no record is live (every one cleaned) and returns those still live after
// within, as id → state.
func (w *world) settled(within time.Duration) map[string]string {
	w.t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(100 * time.Millisecond) {
		live := map[string]string{}
		w.eachRecord(func(k string, value []byte) {
			var rec struct {
				State string `json:"state"`
			}
			if json.Unmarshal(value, &rec) == nil && rec.State != "cleaned" {
				live[k] = rec.State
			}
		})
		if len(live) == 0 || time.Now().After(deadline) {
			return live
		}
	}
}
