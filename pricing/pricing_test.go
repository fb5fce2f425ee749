package pricing_test

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/pricing"
)

func TestDefaultTable(t *testing.T) {
	got := pricing.Default().Models()
	want := []string{"models/gemini-2.0-flash", "models/gemini-2.0-flash-lite", "models/gemini-2.5-flash", "models/gemini-2.5-flash-lite",
		"models/gemini-2.5-pro", "models/gemini-3-pro-preview", "models/gemini-embedding-001"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("models %v, want %v", got, want)
	}
}

func TestCost(t *testing.T) {
	tab, err := pricing.Parse([]byte(`{"models":{
		"pro": {"input": 1, "output": 10, "cached": 0.5, "longContext": {"above": 1000, "input": 2, "output": 20, "cached": 1}},
		"models/flash": {"input": 0.1, "output": 1, "cached": 0.01},
		"flash-lite": {"input": 0.05, "output": 0.5, "cached": 0}}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		model string
		u     gemini.UsageMetadata
		usd   float64
		ok    bool
	}{
		{"pro", gemini.UsageMetadata{PromptTokenCount: 1000, CandidatesTokenCount: 100}, (1000*1 + 100*10) / 1e6, true},
		{"models/pro", gemini.UsageMetadata{PromptTokenCount: 1001, CandidatesTokenCount: 100}, (1001*2 + 100*20) / 1e6, true},
		{"pro", gemini.UsageMetadata{PromptTokenCount: 800, CachedContentTokenCount: 300, CandidatesTokenCount: 10, ThoughtsTokenCount: 40},
			(500*1 + 300*0.5 + 50*10) / 1e6, true},
		{"flash", gemini.UsageMetadata{PromptTokenCount: 1e6, CandidatesTokenCount: 1e6}, 1.1, true},
		{"flash-preview-09-2025", gemini.UsageMetadata{PromptTokenCount: 1e6}, 0.1, true},
		{"flash-lite", gemini.UsageMetadata{PromptTokenCount: 1e6}, 0.05, true},
		{"flash-lite-001", gemini.UsageMetadata{PromptTokenCount: 1e6}, 0.05, true},
		{"flashy", gemini.UsageMetadata{PromptTokenCount: 1e6}, 0, false},
		{"other", gemini.UsageMetadata{PromptTokenCount: 1e6}, 0, false},
	} {
		usd, ok := tab.Cost(tc.model, tc.u)
		if ok != tc.ok || math.Abs(usd-tc.usd) > 1e-12 {
			t.Errorf("Cost(%s, %+v) = %v, %v; want %v, %v", tc.model, tc.u, usd, ok, tc.usd, tc.ok)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if tab, err := pricing.Load(write("good.json", `{"models":{"m":{"input":1,"output":2,"cached":0}}}`)); err != nil || len(tab.Models()) != 1 {
		t.Fatalf("good file: %v", err)
	}
	for _, tc := range []struct {
		name, text, want string
	}{
		{"json.json", `{"models":`, "json.json: not a price table"},
		{"unknown.json", `{"models":{"m":{"input":1,"price":2}}}`, `unknown field "price"`},
		{"negative.json", `{"models":{"m":{"input":1,"output":-2}}}`, `model "m": output: must not be negative`},
		{"long.json", `{"models":{"m":{"longContext":{"above":0}}}}`, `model "m": longContext.above`},
		{"longneg.json", `{"models":{"m":{"longContext":{"above":5,"cached":-1}}}}`, `model "m": longContext.cached: must not be negative`},
		{"empty.json", `{"models":{}}`, "no models"},
		{"dup.json", `{"models":{"m":{},"models/m":{}}}`, `"models/m" is listed twice`},
	} {
		_, err := pricing.Load(write(tc.name, tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s: error %v, want one naming the file and %q", tc.name, err, tc.want)
		}
	}
	if _, err := pricing.Load(filepath.Join(dir, "missing.json")); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("missing file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	shipped, err := os.ReadFile("prices.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(shipped)
	f.Add([]byte(`{"models":{"m":{"input":1e308,"output":1e308,"cached":1e308}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tab, err := pricing.Parse(data)
		if err != nil {
			return
		}
		for _, m := range tab.Models() {
			usd, ok := tab.Cost(m, gemini.UsageMetadata{PromptTokenCount: 123456, CachedContentTokenCount: 1000, CandidatesTokenCount: 777, ThoughtsTokenCount: 5})
			if !ok || usd < 0 || math.IsNaN(usd) {
				t.Fatalf("%s: cost %v, %v", m, usd, ok)
			}
		}
	})
}

func ExampleTable_Cost() {
	usd, ok := pricing.Default().Cost("gemini-2.5-flash", gemini.UsageMetadata{PromptTokenCount: 2_000_000, CandidatesTokenCount: 400_000})
	fmt.Printf("$%.2f %v\n", usd, ok)
	// Output: $0.80 true
}
