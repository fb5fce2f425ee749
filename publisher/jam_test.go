package publisher_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/publisher"
	"github.com/gembatch/gembatch/record"
)

// Finding 1: an answer larger than the connection may publish is that request's own outcome
// (an error reply naming the size and the limit); the replies around it all go out and the
// batch is answered in one try, instead of being retried forever.
func TestOversizeAnswerDoesNotJamTheBatch(t *testing.T) {
	e := natsUp(t)
	big := strings.Repeat("A", int(e.nc.MaxPayload())+1024)
	api := &fakeAPI{results: strings.Join([]string{
		`{"key":"a","response":{"candidates":[{"content":{"parts":[{"text":"small"}]}}]}}`,
		`{"key":"b","response":{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"` + big + `"}}]}}]}}`,
		`{"key":"c","response":{"candidates":[{"content":{"parts":[{"text":"small"}]}}]}}`,
	}, "\n") + "\n"}
	store := record.NewMemStore()
	rec := finished("a", "b", "c")
	if err := store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	b := publisher.NewBatches(publisher.New(e.nc, nil), store, api, zerolog.New(zerolog.NewTestWriter(t)))
	if err := b.Answer(context.Background(), rec, nil); err != nil {
		t.Fatalf("answer jammed on one oversize reply: %v", err)
	}
	replies := e.settle(t)
	for _, k := range []string{"a", "c"} {
		if len(replies[k]) != 1 || replies[k][0].Header.Get("Gembatch-Status") != "ok" {
			t.Fatalf("key %s: %d replies", k, len(replies[k]))
		}
	}
	if len(replies["b"]) != 1 {
		t.Fatalf("oversize key answered %d times", len(replies["b"]))
	}
	body := string(replies["b"][0].Data)
	if replies["b"][0].Header.Get("Gembatch-Status") != "error" || !strings.Contains(body, "RESOURCE_EXHAUSTED") || !strings.Contains(body, "bytes") {
		t.Fatalf("oversize key's reply: %s", body)
	}
	if _, err := store.Get(context.Background(), rec.ID); !errors.Is(err, record.ErrNotFound) {
		t.Fatalf("record not cleaned and deleted: %v", err)
	}
}

// Finding 4: a record found Replied after a restart is only cleaned up: no result is read
// again, no reply or dead letter is sent again, nothing is counted twice.
func TestRepliedRecordIsOnlyCleaned(t *testing.T) {
	e := natsUp(t)
	api := &fakeAPI{results: `{"key":"a","response":{"usageMetadata":{"promptTokenCount":7}}}` + "\n"}
	store := record.NewMemStore()
	rec := finished("a")
	rec.State = record.Replied
	rec.Usage = &record.Usage{UsageMetadata: gemini.UsageMetadata{PromptTokenCount: 7}}
	if err := store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	b := publisher.NewBatches(publisher.New(e.nc, nil), store, api, zerolog.New(zerolog.NewTestWriter(t)))
	if err := b.Answer(context.Background(), rec, nil); err != nil {
		t.Fatal(err)
	}
	if n := len(e.settle(t)["a"]); n != 0 {
		t.Fatalf("a replied record was answered again: %d replies", n)
	}
	if api.downloads != 0 {
		t.Fatalf("results downloaded %d times for a replied record", api.downloads)
	}
	if _, err := store.Get(context.Background(), rec.ID); !errors.Is(err, record.ErrNotFound) || len(api.deletedJobs) != 1 {
		t.Fatalf("record not cleaned (%v), jobs deleted %v", err, api.deletedJobs)
	}
}

// Enqueue never blocks, however many batches wait: it is called from goroutines (the poller,
// takeovers) that must never stall behind answering.
func TestAnswererEnqueueNeverBlocks(t *testing.T) {
	b := publisher.NewBatches(publisher.New(natsUp(t).nc, nil), record.NewMemStore(), &fakeAPI{}, zerolog.Nop())
	a := publisher.NewAnswerer(b, 1, zerolog.Nop())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 5000 { // no worker runs: every one waits
			a.Enqueue(&record.Record{ID: strings.Repeat("x", i%7) + string(rune('a'+i%26)) + strings.Repeat("y", i/26)}, nil)
		}
	}()
	select { // a bound on a hang, not on speed: 5,000 enqueues take milliseconds
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Enqueue blocked with no worker running")
	}
}
