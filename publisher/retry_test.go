package publisher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/metrics"
	"github.com/gembatch/gembatch/pricing"
	"github.com/gembatch/gembatch/publisher"
	"github.com/gembatch/gembatch/record"
)

// retryEnv answers one batch record with a policy and keeps what came out of it: replies, dead
// letters and resubmitted records.
type retryEnv struct {
	*natsEnv
	store *record.MemStore
	reg   *prometheus.Registry
	b     *publisher.Batches

	mu          sync.Mutex
	deadLetters map[string]publisher.DeadLetter
	resubmitted []*record.Record
}

func newRetryEnv(t *testing.T, api publisher.API, policy publisher.Policy) *retryEnv {
	t.Helper()
	e := &retryEnv{natsEnv: natsUp(t), store: record.NewMemStore(), reg: prometheus.NewRegistry(), deadLetters: map[string]publisher.DeadLetter{}}
	if _, err := e.nc.Subscribe("dead", func(m *nats.Msg) {
		var dl publisher.DeadLetter
		if err := json.Unmarshal(m.Data, &dl); err != nil {
			t.Errorf("dead letter %q: %v", m.Data, err)
		}
		if m.Header.Get("Gembatch-Key") != dl.Key || m.Header.Get("Nats-Msg-Id") == "" {
			t.Errorf("dead letter headers %v", m.Header)
		}
		e.mu.Lock()
		e.deadLetters[dl.Key] = dl
		e.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	policy.DeadLetter = "dead"
	policy.Resubmit = func(r *record.Record) {
		e.mu.Lock()
		e.resubmitted = append(e.resubmitted, r)
		e.mu.Unlock()
	}
	e.b = publisher.NewBatches(publisher.New(e.nc, publisher.NewMetrics(e.reg)), e.store, api, zerolog.Nop())
	e.b.Policy = policy
	return e
}

// withBodies gives each request a body, as the store keeps them.
func withBodies(rec *record.Record) *record.Record {
	for i := range rec.Requests {
		rec.Requests[i].Body = json.RawMessage(`{"contents":[{"parts":[{"text":"` + rec.Requests[i].Key + `"}]}]}`)
		rec.Requests[i].Size = 60
	}
	return rec
}

func errorReply(t *testing.T, msgs []*nats.Msg) gemini.Status {
	t.Helper()
	if len(msgs) != 1 {
		t.Fatalf("%d replies, want 1", len(msgs))
	}
	var line struct{ Error *gemini.Status }
	if err := json.Unmarshal(msgs[0].Data, &line); err != nil || line.Error == nil {
		t.Fatalf("reply %s is not an error", msgs[0].Data)
	}
	return *line.Error
}

// TestRetryableItemsGoToALaterBatch: each per-item outcome takes its path. Retryable errors
// with attempts left and no passed deadline, and missing results, go into one new record;
// the rest are answered at once and dead-lettered.
func TestRetryableItemsGoToALaterBatch(t *testing.T) {
	api := &fakeAPI{results: strings.Join([]string{
		`{"key":"ok","response":{"n":1}}`,
		`{"key":"internal","error":{"code":13,"message":"internal"}}`,
		`{"key":"invalid","error":{"code":3,"message":"bad request"}}`,
		`{"key":"late","error":{"code":14,"message":"unavailable"}}`,
		`{"key":"spent","error":{"code":8,"message":"exhausted"}}`,
		`{"key":"busy","status":{"code":4,"message":"deadline"}}`,
	}, "\n")}
	e := newRetryEnv(t, api, publisher.Policy{MaxAttempts: 3})
	rec := withBodies(finished("ok", "internal", "invalid", "late", "spent", "busy", "missing"))
	rec.Group = record.Group{Kind: gemini.KindGenerate, Model: "models/m", Priority: 7}
	rec.Requests[3].Deadline = time.Now().Add(-time.Minute)
	rec.Requests[4].Attempt = 3
	rec.Requests[5].Attempt = 2
	rec.Requests[5].Deadline = time.Now().Add(time.Hour)
	if err := e.store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	if err := e.b.Answer(context.Background(), rec, nil); err != nil {
		t.Fatal(err)
	}
	got := e.settle(t)
	if len(got["ok"]) != 1 || len(got["internal"]) != 0 || len(got["busy"]) != 0 || len(got["missing"]) != 0 {
		t.Fatalf("replies: ok %d, internal %d, busy %d, missing %d", len(got["ok"]), len(got["internal"]), len(got["busy"]), len(got["missing"]))
	}
	if st := errorReply(t, got["invalid"]); st.Code != 3 {
		t.Errorf("invalid: %+v", st)
	}
	if st := errorReply(t, got["late"]); st.Code != gemini.CodeDeadlineExceeded || !strings.Contains(st.Message, "last error: unavailable") {
		t.Errorf("late: %+v", st)
	}
	if st := errorReply(t, got["spent"]); st.Code != 8 || !strings.Contains(st.Message, "gave up after 3 attempts") {
		t.Errorf("spent: %+v", st)
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.resubmitted) != 1 {
		t.Fatalf("%d records resubmitted, want 1", len(e.resubmitted))
	}
	next := e.resubmitted[0]
	if next.ID != rec.RetryID() || next.State != record.Sealed || next.RetryOf != rec.ID || next.Group != rec.Group || next.Count != 3 || next.Bytes != 180 {
		t.Fatalf("retry record %+v", next)
	}
	want := map[string]int{"internal": 2, "busy": 3, "missing": 2}
	for _, q := range next.Requests {
		if want[q.Key] != q.Attempt || len(q.Body) == 0 || q.ID != "id-"+q.Key || q.Reply != "r."+q.Key {
			t.Errorf("resubmitted request %+v", q)
		}
		delete(want, q.Key)
	}
	if len(want) != 0 {
		t.Errorf("not resubmitted: %v", want)
	}
	if stored, err := e.store.Get(context.Background(), next.ID); err != nil || stored.State != record.Sealed {
		t.Fatalf("retry record not stored: %v", err)
	}
	if len(e.deadLetters) != 3 {
		t.Fatalf("dead letters %v, want invalid, late, spent", e.deadLetters)
	}
	dl := e.deadLetters["spent"]
	if dl.Reply != "r.spent" || dl.Model != "models/m" || dl.Priority != 7 || dl.Attempts != 3 || dl.Batch != "batches/b1" ||
		dl.Error == nil || dl.Error.Code != 8 || !strings.Contains(string(dl.Request), `"spent"`) {
		t.Errorf("dead letter %+v", dl)
	}
	wantMetrics := `
# HELP gembatch_publisher_gave_up_requests_total Requests answered with their error instead of resubmitted, by reason (attempts: GEMBATCH_MAX_ATTEMPTS used up; deadline: Gembatch-Deadline passed).
# TYPE gembatch_publisher_gave_up_requests_total counter
gembatch_publisher_gave_up_requests_total{reason="attempts"} 1
gembatch_publisher_gave_up_requests_total{reason="deadline"} 1
# HELP gembatch_publisher_resubmitted_requests_total Requests put into a later batch, by reason (item_error, missing_result, expired, cancelled, stuck).
# TYPE gembatch_publisher_resubmitted_requests_total counter
gembatch_publisher_resubmitted_requests_total{reason="cancelled"} 0
gembatch_publisher_resubmitted_requests_total{reason="expired"} 0
gembatch_publisher_resubmitted_requests_total{reason="item_error"} 2
gembatch_publisher_resubmitted_requests_total{reason="missing_result"} 1
gembatch_publisher_resubmitted_requests_total{reason="stuck"} 0
# HELP gembatch_publisher_dead_letters_total Finally failed requests published to GEMBATCH_DEAD_LETTER_SUBJECT.
# TYPE gembatch_publisher_dead_letters_total counter
gembatch_publisher_dead_letters_total 3
`
	if err := testutil.GatherAndCompare(e.reg, strings.NewReader(wantMetrics), "gembatch_publisher_gave_up_requests_total",
		"gembatch_publisher_resubmitted_requests_total", "gembatch_publisher_dead_letters_total"); err != nil {
		t.Fatal(err)
	}
}

// TestResubmissionMadeOnce: a batch answered again after a crash finds its retry record and
// does not hand a second one on.
func TestResubmissionMadeOnce(t *testing.T) {
	api := &fakeAPI{results: `{"key":"a","error":{"code":13,"message":"internal"}}`}
	e := newRetryEnv(t, api, publisher.Policy{MaxAttempts: 2})
	rec := withBodies(finished("a"))
	if err := e.store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Create(context.Background(), &record.Record{ID: rec.RetryID(), State: record.Sealed}); err != nil {
		t.Fatal(err)
	}
	if err := e.b.Answer(context.Background(), rec, nil); err != nil {
		t.Fatal(err)
	}
	if got := e.settle(t); len(got["a"]) != 0 || len(e.resubmitted) != 0 {
		t.Fatalf("replies %d, resubmitted %d; want none", len(got["a"]), len(e.resubmitted))
	}
}

// TestUnfinishedRequests: what an expired or cancelled job left unanswered is resubmitted or
// answered, by the policy; the results it carries are delivered either way.
func TestUnfinishedRequests(t *testing.T) {
	partial := &gemini.Operation{Done: true, Metadata: &gemini.BatchMetadata{Output: &gemini.Output{InlinedResponses: &gemini.InlinedResponses{
		InlinedResponses: []gemini.InlinedResponse{
			{Response: json.RawMessage(`{"n":1}`), Metadata: &gemini.ResponseMetadata{Key: "done"}},
			{Error: &gemini.Status{Code: 1, Message: "cancelled"}, Metadata: &gemini.ResponseMetadata{Key: "unserved"}},
		}}}}}
	for _, tc := range []struct {
		name      string
		state     gemini.State
		stuck     bool
		policy    publisher.Policy
		retried   []string // keys resubmitted
		errorCode int      // the reply code of "left" when it is not resubmitted
	}{
		{"expired, resubmitted", gemini.StateExpired, false, publisher.Policy{MaxAttempts: 3, ResubmitExpired: true}, []string{"left"}, 0},
		{"expired, answered", gemini.StateExpired, false, publisher.Policy{MaxAttempts: 3}, nil, gemini.CodeDeadlineExceeded},
		{"cancelled by a person", gemini.StateCancelled, false, publisher.Policy{MaxAttempts: 3, ResubmitExpired: true}, nil, gemini.CodeCancelled},
		{"cancelled, resubmitted", gemini.StateCancelled, false, publisher.Policy{MaxAttempts: 3, ResubmitCancelled: true}, []string{"left"}, 0},
		{"cancelled as stuck", gemini.StateCancelled, true, publisher.Policy{MaxAttempts: 3}, []string{"left", "unserved"}, 0},
		{"stuck but succeeded", gemini.StateSucceeded, true, publisher.Policy{MaxAttempts: 3}, []string{"unserved", "left"}, 0},
		{"no attempts left", gemini.StateExpired, false, publisher.Policy{MaxAttempts: 1, ResubmitExpired: true}, nil, gemini.CodeDeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRetryEnv(t, &fakeAPI{}, tc.policy)
			rec := withBodies(finished("done", "unserved", "left"))
			rec.RemoteState, rec.StuckCancelled = tc.state, tc.stuck
			if err := e.store.Create(context.Background(), rec); err != nil {
				t.Fatal(err)
			}
			if err := e.b.Answer(context.Background(), rec, partial); err != nil {
				t.Fatal(err)
			}
			got := e.settle(t)
			if len(got["done"]) != 1 || got["done"][0].Header.Get("Gembatch-Status") != "ok" {
				t.Fatalf("the delivered result: %v", got["done"])
			}
			e.mu.Lock()
			defer e.mu.Unlock()
			retried := map[string]bool{}
			if len(e.resubmitted) == 1 {
				for _, q := range e.resubmitted[0].Requests {
					retried[q.Key] = true
				}
			}
			if len(retried) != len(tc.retried) {
				t.Fatalf("resubmitted %v, want %v", retried, tc.retried)
			}
			for _, k := range tc.retried {
				if !retried[k] || len(got[k]) != 0 {
					t.Errorf("%s: resubmitted %v, %d replies", k, retried[k], len(got[k]))
				}
			}
			if !retried["unserved"] {
				if st := errorReply(t, got["unserved"]); st.Code != gemini.CodeCancelled {
					t.Errorf("unserved answered %+v, want its own error", st)
				}
			}
			if !retried["left"] {
				if st := errorReply(t, got["left"]); st.Code != tc.errorCode {
					t.Errorf("left answered %+v, want code %d", st, tc.errorCode)
				}
			}
		})
	}
}

// TestCostFromPrices: a batch's estimated cost, and what batching saved against interactive
// prices, are counted once, by model, from its responses' usage; an embedding without usage is
// priced from its request's size; a model without interactive prices claims no saving.
func TestCostFromPrices(t *testing.T) {
	prices, err := pricing.Parse([]byte(`{"models":{"gen":{"input":1,"output":10,"cached":0.5,"interactive":{"input":2,"output":20,"cached":0.5}},
		"emb":{"input":2,"output":0,"cached":0}}}`))
	if err != nil {
		t.Fatal(err)
	}
	api := &fakeAPI{results: `{"key":"a","response":{"usageMetadata":{"promptTokenCount":1000000,"candidatesTokenCount":100000,"cachedContentTokenCount":200000}}}
{"key":"b","error":{"code":3,"message":"bad"}}
`}
	e := newRetryEnv(t, api, publisher.Policy{MaxAttempts: 1, Prices: prices})
	rec := finished("a", "b")
	rec.Group.Model = "models/gen"
	_ = e.store.Create(context.Background(), rec)
	if err := e.b.Answer(context.Background(), rec, nil); err != nil {
		t.Fatal(err)
	}
	emb := finished("v")
	emb.ID, emb.Group = "emb", record.Group{Kind: gemini.KindEmbed, Model: "models/emb"}
	emb.Requests[0].Size = 4_000_000 // a million tokens at four bytes a token
	_ = e.store.Create(context.Background(), emb)
	op := &gemini.Operation{Metadata: &gemini.BatchMetadata{Output: &gemini.Output{InlinedResponses: &gemini.InlinedResponses{
		InlinedResponses: []gemini.InlinedResponse{{Response: json.RawMessage(`{"embedding":{"values":[0.1]}}`), Metadata: &gemini.ResponseMetadata{Key: "v"}}}}}}}
	if err := e.b.Answer(context.Background(), emb, op); err != nil {
		t.Fatal(err)
	}
	// gen: 0.8M input at $1, 0.2M cached at $0.5, 0.1M output at $10 = 0.8 + 0.1 + 1 = 1.9.
	want := `
# HELP gembatch_publisher_cost_usd_total Estimated cost of answered requests in US dollars at batch prices (GEMBATCH_PRICES_FILE), by model; counted once per batch.
# TYPE gembatch_publisher_cost_usd_total counter
gembatch_publisher_cost_usd_total{model="models/emb"} 2
gembatch_publisher_cost_usd_total{model="models/gen"} 1.9
`
	if err := testutil.GatherAndCompare(e.reg, strings.NewReader(want), "gembatch_publisher_cost_usd_total"); err != nil {
		t.Fatal(err)
	}
	// gen interactively: 0.8M at $2 + 0.2M at $0.5 + 0.1M at $20 = 3.7, so 1.8 saved.
	for model, want := range map[string]float64{"models/gen": 1.8, "models/emb": 0} {
		got, err := metrics.Sum(e.reg, "gembatch_publisher_cost_saved_usd_total", "model", model)
		if err != nil || math.Abs(got-want) > 1e-9 {
			t.Errorf("saved for %s: %v, %v; want %v", model, got, err, want)
		}
	}
	var tokens strings.Builder
	for _, m := range []struct {
		model  string
		counts [5]int
	}{{"emb", [5]int{0, 0, 0, 1000000, 0}}, {"gen", [5]int{200000, 100000, 1000000, 0, 0}}} {
		for i, typ := range []string{"cached", "candidates", "prompt", "prompt_estimated", "thoughts"} {
			fmt.Fprintf(&tokens, "gembatch_publisher_tokens_total{model=\"models/%s\",type=%q} %d\n", m.model, typ, m.counts[i])
		}
	}
	if err := testutil.GatherAndCompare(e.reg, strings.NewReader(tokensHelp+tokens.String()), "gembatch_publisher_tokens_total"); err != nil {
		t.Fatal(err)
	}
}

const tokensHelp = `# HELP gembatch_publisher_tokens_total Tokens of answered batches from their responses' usageMetadata, by model and type (prompt, candidates, cached, thoughts; prompt_estimated for responses without usage, such as embeddings); counted once per batch.
# TYPE gembatch_publisher_tokens_total counter
`
