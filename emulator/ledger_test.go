package emulator_test

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
)

// TestLedgerCountsEveryBilling: a request sent in two jobs under different displayNames, inline
// and by file, shows as billed twice; a request with the same key and another body is another
// request; per-item errors bill nothing; a job nobody read after its end is billed all the same;
// GET /emulator/ledger says what Server.Ledger says.
func TestLedgerCountsEveryBilling(t *testing.T) {
	a := start(t, emulator.Options{}) // jobs end on their first read
	first := a.create("one", item("k1", "hello"), item("k2", "world"), item("bad", "[[emulator:error=13]]"))
	a.wait(first.Name, gemini.StateSucceeded)
	// k1 again, with its body spaced differently, in a file batch under another displayName.
	data := []byte(`{"key":"k1","request":{ "contents": [ {"parts":[{"text":"hello"}], "role":"user"} ] }}` + "\n" +
		`{"key":"k2","request":{"contents":[{"role":"user","parts":[{"text":"other"}]}]}}` + "\n")
	f := a.uploadFile(data, len(data))
	a.do("POST", generatePath, map[string]any{"batch": map[string]any{
		"displayName": "two", "inputConfig": map[string]any{"fileName": f.Name},
	}}).ok(t)
	// The file batch is never read: Ledger settles it.

	l := a.emu.Ledger()
	billed := map[string][]int{}
	var tokens int64
	for _, e := range l.Entries {
		billed[e.Key] = append(billed[e.Key], e.Billed)
		if e.Tokens <= 0 {
			t.Errorf("entry %+v billed no tokens", e)
		}
		tokens += e.Tokens
	}
	want := map[string][]int{"k1": {2}, "k2": {1, 1}}
	if !reflect.DeepEqual(billed, want) {
		t.Fatalf("billed %v, want %v (entries %+v)", billed, want, l.Entries)
	}
	if n, extra := l.BilledTwice(); n != 1 || extra != 1 {
		t.Errorf("BilledTwice = %d, %d, want 1, 1", n, extra)
	}
	if l.Tokens() != tokens {
		t.Errorf("Tokens() = %d, entries sum to %d", l.Tokens(), tokens)
	}
	if !reflect.DeepEqual(l.Creates, map[string]int{"one": 1, "two": 1}) || l.CreatedTwice() != 0 {
		t.Errorf("creates %v (twice %d), want one:1 two:1", l.Creates, l.CreatedTwice())
	}

	// The tokens are those the answers report.
	_, op := a.get(first.Name)
	var fromAnswers int64
	for _, r := range gemini.InlineResults(op.Output()) {
		if r.Key != "k1" {
			continue
		}
		var u struct{ UsageMetadata gemini.UsageMetadata }
		if err := json.Unmarshal(r.Response, &u); err != nil {
			t.Fatal(err)
		}
		fromAnswers = u.UsageMetadata.TotalTokenCount
	}
	for _, e := range l.Entries {
		if e.Key == "k1" && e.Tokens != 2*fromAnswers {
			t.Errorf("k1 billed %d tokens, its answer reports %d a time", e.Tokens, fromAnswers)
		}
	}

	if got := decode[emulator.Ledger](t, a.do("GET", "/emulator/ledger").ok(t)); !reflect.DeepEqual(got, l) {
		t.Errorf("GET /emulator/ledger = %+v, Ledger() = %+v", got, l)
	}
}

// TestLedgerCancelledJobBillsNothing: a job cancelled before its end ran nothing, so it bills
// nothing, though it was created (twice, under one displayName).
func TestLedgerCancelledJobBillsNothing(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: time.Hour})
	for range 2 {
		op := a.create("same", item("k", "never run"))
		a.do("POST", "/v1beta/"+op.Name+":cancel").ok(t)
	}
	l := a.emu.Ledger()
	if len(l.Entries) != 0 || l.Tokens() != 0 {
		t.Errorf("cancelled jobs billed %+v", l.Entries)
	}
	if l.CreatedTwice() != 1 || l.Creates["same"] != 2 {
		t.Errorf("creates %v, twice %d; want same:2, twice 1", l.Creates, l.CreatedTwice())
	}
}
