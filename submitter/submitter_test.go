package submitter_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/backoff"
	"github.com/gembatch/gembatch/record"
	"github.com/gembatch/gembatch/submitter"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	emu       *emulator.Server
	url       string
	store     *record.MemStore
	sub       *submitter.Submitter
	mu        sync.Mutex
	submitted []*record.Record
	failed    []*record.Record
}

func setup(t *testing.T, opts emulator.Options, cfg submitter.Config) *env {
	t.Helper()
	return setupWrapped(t, opts, cfg, func(api submitter.API) submitter.API { return api })
}

// setupWrapped is setup with the submitter's API client wrapped, for tests that act between
// its calls.
func setupWrapped(t *testing.T, opts emulator.Options, cfg submitter.Config, wrap func(submitter.API) submitter.API) *env {
	t.Helper()
	e := &env{emu: emulator.New(opts), store: record.NewMemStore()}
	srv := httptest.NewServer(e.emu)
	e.url = srv.URL
	t.Cleanup(func() { srv.Close(); e.emu.Close() })
	api := gemini.New("test-api-key-0123", gemini.WithBaseURL(srv.URL), gemini.WithRetry(gemini.RetryPolicy{MaxAttempts: 1}))
	if cfg.Backoff.Initial == 0 {
		cfg.Backoff = backoff.Policy{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	}
	e.sub = submitter.New(cfg, wrap(api), e.store, zerolog.New(zerolog.NewTestWriter(t)), nil,
		func(r *record.Record) { e.mu.Lock(); e.failed = append(e.failed, r); e.mu.Unlock() })
	e.sub.OnSubmitted(func(r *record.Record) { e.mu.Lock(); e.submitted = append(e.submitted, r); e.mu.Unlock() })
	return e
}

// run submits recs and returns once every one is submitted or failed.
func (e *env) run(t *testing.T, recs ...*record.Record) {
	t.Helper()
	for _, r := range recs {
		if err := e.store.Create(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		e.sub.Enqueue(r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.sub.CloseQueue()
	if err := e.sub.Run(ctx); err != nil || ctx.Err() != nil {
		t.Fatalf("Run: %v (ctx %v)", err, ctx.Err())
	}
}

func sealed(n int, size int) *record.Record {
	rec := &record.Record{ID: fmt.Sprintf("rec%d%d", n, time.Now().UnixNano()), Group: record.Group{Kind: gemini.KindGenerate, Model: "models/m"}, State: record.Sealed}
	for i := range n {
		text := fmt.Sprintf("q%d %s", i, strings.Repeat("p", size))
		body := json.RawMessage(`{"contents":[{"parts":[{"text":"` + text + `"}]}]}`)
		key := fmt.Sprintf("k%d", i)
		rec.Requests = append(rec.Requests, record.Request{ID: key, Key: key, Body: body, Size: gemini.InputLineSize(key, body)})
		rec.Bytes += rec.Requests[i].Size
	}
	return rec
}

func TestInlineAndFile(t *testing.T) {
	e := setup(t, emulator.Options{}, submitter.Config{InlineMaxBytes: 4096})
	small, large := sealed(3, 10), sealed(20, 400)
	e.run(t, small, large)
	if len(e.submitted) != 2 || len(e.failed) != 0 {
		t.Fatalf("%d submitted, %d failed", len(e.submitted), len(e.failed))
	}
	for _, r := range e.submitted {
		stored, err := e.store.Get(context.Background(), r.ID)
		if err != nil || stored.State != record.Submitted || !strings.HasPrefix(stored.RemoteName, "batches/") {
			t.Fatalf("stored record %+v, %v", stored, err)
		}
		want := record.ModeInline
		if r.ID == large.ID {
			want = record.ModeFile
			if !strings.HasPrefix(stored.InputFile, "files/") {
				t.Fatalf("file-mode record has input file %q", stored.InputFile)
			}
		}
		if stored.Mode != want {
			t.Fatalf("record %s went %s, want %s", r.ID, stored.Mode, want)
		}
		if e.emu.Creates(r.DisplayName()) != 1 {
			t.Fatalf("%s created %d times", r.DisplayName(), e.emu.Creates(r.DisplayName()))
		}
		for _, q := range stored.Requests {
			if q.Body != nil {
				t.Fatal("request bodies kept after submission")
			}
		}
	}
}

func TestLostCreateAnswerIsAdopted(t *testing.T) {
	e := setup(t, emulator.Options{Faults: emulator.Faults{LoseCreateAnswers: 1}}, submitter.Config{InlineMaxBytes: 1 << 20, CreateGrace: 2 * time.Second})
	rec := sealed(2, 1)
	e.run(t, rec)
	if len(e.submitted) != 1 || e.emu.Creates(rec.DisplayName()) != 1 {
		t.Fatalf("%d submitted, %d creates; want the lost job adopted, 1 create", len(e.submitted), e.emu.Creates(rec.DisplayName()))
	}
}

func TestListLagDoesNotCauseSecondCreate(t *testing.T) {
	// The lost job shows in the list only after 300ms; the grace is longer, so it is found.
	e := setup(t, emulator.Options{Faults: emulator.Faults{LoseCreateAnswers: 1, ListLag: 300 * time.Millisecond}},
		submitter.Config{InlineMaxBytes: 1 << 20, CreateGrace: 2 * time.Second})
	rec := sealed(2, 1)
	e.run(t, rec)
	if n := e.emu.Creates(rec.DisplayName()); n != 1 || len(e.submitted) != 1 {
		t.Fatalf("%d creates, %d submitted; want 1 and 1", n, len(e.submitted))
	}
}

func TestThrottledCreatesRetry(t *testing.T) {
	e := setup(t, emulator.Options{Faults: emulator.Faults{CreateThrottleRate: 0.7, ThrottleDelay: 10 * time.Millisecond, Seed: 3}}, submitter.Config{InlineMaxBytes: 1 << 20})
	var recs []*record.Record
	for range 5 {
		recs = append(recs, sealed(2, 1))
	}
	e.run(t, recs...)
	if len(e.submitted) != 5 {
		t.Fatalf("%d of 5 submitted under 429s", len(e.submitted))
	}
	for _, r := range recs {
		if n := e.emu.Creates(r.DisplayName()); n != 1 {
			t.Fatalf("%s created %d times", r.DisplayName(), n)
		}
	}
}

func TestRefusedCreateFailsTheRecord(t *testing.T) {
	e := setup(t, emulator.Options{InlineMaxBytes: 512}, submitter.Config{InlineMaxBytes: 1 << 20})
	rec := sealed(5, 200) // over the emulator's inline limit: 400 INVALID_ARGUMENT
	e.run(t, rec)
	if len(e.failed) != 1 || len(e.submitted) != 0 {
		t.Fatalf("%d failed, %d submitted", len(e.failed), len(e.submitted))
	}
	if st := e.failed[0].Error; st == nil || st.Code != gemini.CodeInvalidArgument || e.failed[0].State != record.Failed {
		t.Fatalf("failed record: state %s error %+v", e.failed[0].State, st)
	}
}

func TestSplitOverFileLimit(t *testing.T) {
	e := setup(t, emulator.Options{}, submitter.Config{InlineMaxBytes: 100, FileMaxBytes: 2000})
	rec := sealed(10, 300) // ~3.5 KB: two or three files
	e.run(t, rec)
	var total int
	for _, r := range e.submitted {
		total += len(r.Requests)
		if r.Bytes > 2000 {
			t.Fatalf("part of %d bytes over the 2000-byte limit", r.Bytes)
		}
	}
	if len(e.submitted) < 2 || total != 10 {
		t.Fatalf("%d parts holding %d requests; want several holding 10", len(e.submitted), total)
	}
	if _, err := e.store.Get(context.Background(), rec.ID); err == nil {
		t.Fatal("the split record is still stored")
	}
}

func TestFailedUploadIsRetried(t *testing.T) {
	// Two chunk uploads fail outright and the client retries only once: the first submit fails,
	// and the submitter must come back to the batch rather than drop it.
	e := setup(t, emulator.Options{Faults: emulator.Faults{UploadChunkFailures: 4}}, submitter.Config{InlineMaxBytes: 100})
	rec := sealed(20, 400)
	e.run(t, rec)
	if len(e.submitted) != 1 || e.emu.Creates(rec.DisplayName()) != 1 {
		t.Fatalf("%d submitted, %d creates; want the batch submitted once after the failed uploads", len(e.submitted), e.emu.Creates(rec.DisplayName()))
	}
	if got, _ := e.store.Get(context.Background(), rec.ID); got.Mode != record.ModeFile || got.InputFile == "" {
		t.Fatalf("record %+v", got)
	}
}

// TestImageBatchesGoByFile: a small batch is sent inline unless one of its requests asks for
// images, whose answers run to megabytes each.
func TestImageBatchesGoByFile(t *testing.T) {
	e := setup(t, emulator.Options{}, submitter.Config{InlineMaxBytes: 1 << 20})
	text, image := sealed(3, 10), sealed(3, 10)
	q := &image.Requests[1]
	q.Body = json.RawMessage(`{"contents":[{"parts":[{"text":"a cat"}]}],"generationConfig":{"responseModalities":["TEXT","IMAGE"]}}`)
	image.Bytes -= q.Size
	q.Size = gemini.InputLineSize(q.Key, q.Body)
	image.Bytes += q.Size
	image.Images = true // as the accumulator marks it
	e.run(t, text, image)
	for _, tt := range []struct {
		rec  *record.Record
		want record.Mode
	}{{text, record.ModeInline}, {image, record.ModeFile}} {
		stored, err := e.store.Get(context.Background(), tt.rec.ID)
		if err != nil || stored.State != record.Submitted {
			t.Fatalf("stored record %+v, %v", stored, err)
		}
		if stored.Mode != tt.want {
			t.Errorf("record %s went %s, want %s", tt.rec.ID, stored.Mode, tt.want)
		}
	}
}
