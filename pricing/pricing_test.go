package pricing_test

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/pricing"
)

func TestDefaultModels(t *testing.T) {
	got := pricing.Default().Models()
	want := []string{"models/gemini-2.0-flash", "models/gemini-2.0-flash-lite", "models/gemini-2.5-flash",
		"models/gemini-2.5-flash-lite", "models/gemini-2.5-pro", "models/gemini-3-pro-preview", "models/gemini-embedding-001"}
	if !slices.Equal(got, want) {
		t.Fatalf("models %v, want %v", got, want)
	}
}

type usage = gemini.UsageMetadata

func TestCost(t *testing.T) {
	tab := pricing.Default()
	for _, tc := range []struct {
		model string
		u     usage
		usd   float64 // worked out by hand from prices.json
		ok    bool
	}{
		// 6000 input × 0.15 + 4000 cached × 0.03 + (1500 + 500) output × 1.25.
		{"gemini-2.5-flash", usage{PromptTokenCount: 10_000, CachedContentTokenCount: 4_000, CandidatesTokenCount: 1_500, ThoughtsTokenCount: 500}, 0.003520, true},
		{"models/gemini-2.5-flash", usage{PromptTokenCount: 1e6, CandidatesTokenCount: 1e6}, 1.40, true},
		{"gemini-2.5-flash", usage{}, 0, true},
		// More cached than prompt tokens: no input billed, every cached token is.
		{"gemini-2.5-flash", usage{PromptTokenCount: 100, CachedContentTokenCount: 200}, 200 * 0.03 / 1e6, true},
		// Negative counts, from a broken response, count as none.
		{"gemini-2.5-flash", usage{PromptTokenCount: -5, CachedContentTokenCount: -5, CandidatesTokenCount: 10, ThoughtsTokenCount: -1}, 10 * 1.25 / 1e6, true},
		// Long context starts above 200000 prompt tokens: 200000 × 0.625 + 1000 × 5, then 200001 × 1.25 + 1000 × 7.5.
		{"gemini-2.5-pro", usage{PromptTokenCount: 200_000, CandidatesTokenCount: 1_000}, 0.13, true},
		{"gemini-2.5-pro", usage{PromptTokenCount: 200_001, CandidatesTokenCount: 1_000}, 0.25750125, true},
		// The whole prompt, cached part included, decides: 200000 × 2 + 100000 × 0.4 + 5000 × 9.
		{"gemini-3-pro-preview", usage{PromptTokenCount: 300_000, CachedContentTokenCount: 100_000, CandidatesTokenCount: 2_000, ThoughtsTokenCount: 3_000}, 0.485, true},
		{"gemini-3-pro-preview", usage{PromptTokenCount: 200_000, CachedContentTokenCount: 150_000}, 0.08, true},
		{"gemini-embedding-001", usage{PromptTokenCount: 1e6}, 0.075, true},
		// Dated and preview names price as the longest listed name they extend.
		{"models/gemini-2.5-flash-preview-09-2025", usage{PromptTokenCount: 1e6, CandidatesTokenCount: 1e6}, 1.40, true},
		{"gemini-2.5-flash-lite", usage{PromptTokenCount: 1e6, CandidatesTokenCount: 1e6}, 0.25, true},
		{"gemini-2.5-flash-lite-preview-06-17", usage{PromptTokenCount: 1e6, CandidatesTokenCount: 1e6}, 0.25, true},
		{"gemini-2.0-flash-lite-001", usage{PromptTokenCount: 1e6, CandidatesTokenCount: 1e6}, 0.1875, true},
		{"gemini-2.0-flash-001", usage{PromptTokenCount: 1e6, CandidatesTokenCount: 1e6}, 0.25, true},
		{"gemini-2.5-flashy", usage{PromptTokenCount: 1e6}, 0, false},
		{"gemini-1.5-pro", usage{PromptTokenCount: 1e6}, 0, false},
		{"gemini", usage{PromptTokenCount: 1e6}, 0, false},
		{"", usage{PromptTokenCount: 1e6}, 0, false},
	} {
		e, ok := tab.Costs(tc.model, tc.u)
		usd := e.Batch
		if ok != tc.ok || math.Abs(usd-tc.usd) > 1e-12 {
			t.Errorf("Costs(%q, %+v) batch = %v, %v; want %v, %v", tc.model, tc.u, usd, ok, tc.usd, tc.ok)
		}
	}
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	p := writeFile(t, "prices.json", `{"asOf": "2025-11-20", "note": "test", "models": {
		"models/big": {"input": 1, "output": 10, "cached": 0.5, "longContext": {"above": 1000, "input": 2, "output": 20, "cached": 1}},
		"big-mini": {"input": 0.1, "output": 1, "cached": 0.01}}}`)
	tab, err := pricing.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tab.Models(), []string{"models/big", "models/big-mini"}; !slices.Equal(got, want) {
		t.Errorf("models %v, want %v", got, want)
	}
	for _, tc := range []struct {
		model string
		u     usage
		usd   float64
	}{
		{"big", usage{PromptTokenCount: 1000, CachedContentTokenCount: 400, CandidatesTokenCount: 10}, (600*1 + 400*0.5 + 10*10) / 1e6},
		{"big-2", usage{PromptTokenCount: 1001, CachedContentTokenCount: 400, CandidatesTokenCount: 10}, (601*2 + 400*1 + 10*20) / 1e6},
		{"big-mini-001", usage{PromptTokenCount: 1e6, ThoughtsTokenCount: 1e6}, 1.1},
	} {
		if e, ok := tab.Costs(tc.model, tc.u); !ok || math.Abs(e.Batch-tc.usd) > 1e-12 {
			t.Errorf("Costs(%q, %+v) = %+v, %v; want batch %v", tc.model, tc.u, e, ok, tc.usd)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"truncated", `{"models":`, "not a price table: unexpected EOF"},
		{"array", `[]`, "not a price table: json: cannot unmarshal array"},
		{"trailing", `{"models":{"m":{}}} {}`, "not a price table: data after the top-level object"},
		{"unknown top-level field", `{"modles":{"m":{}}}`, `unknown field "modles"`},
		{"unknown rate field", `{"models":{"m":{"input":1,"price":2}}}`, `unknown field "price"`},
		{"unknown long-context field", `{"models":{"m":{"longContext":{"above":5,"over":6}}}}`, `unknown field "over"`},
		{"negative rate", `{"models":{"gemini-2.5-flash":{"input":0.15,"output":-1.25,"cached":0.03}}}`, `model "gemini-2.5-flash": output: must not be negative`},
		{"huge rate", `{"models":{"m":{"input":2e6}}}`, `model "m": input: must not exceed 1000000`},
		{"long context at 0", `{"models":{"m":{"longContext":{"input":1}}}}`, `model "m": longContext.above: must be a positive number of tokens`},
		{"negative long-context rate", `{"models":{"m":{"longContext":{"above":5,"cached":-1}}}}`, `model "m": longContext.cached: must not be negative`},
		{"empty models", `{"models":{}}`, "no models in the price table"},
		{"no models", `{"asOf":"2025-11-20"}`, "no models in the price table"},
		{"null model", `{"models":{"m":null}}`, `model "m": no rates`},
		{"empty name", `{"models":{"":{}}}`, `model "": name is empty`},
		{"empty name with prefix", `{"models":{"models/":{}}}`, `model "models/": name is empty`},
		{"duplicate", `{"models":{"x":{},"models/x":{}}}`, `model "x": same model as "models/x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, "prices.json", tc.text)
			_, err := pricing.Load(p)
			if err == nil || !strings.HasPrefix(err.Error(), p+": ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q after the file name", err, tc.want)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing.json")
	if _, err := pricing.Load(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("error %v, want one naming %s", err, p)
	}
}

func FuzzParse(f *testing.F) {
	shipped, err := os.ReadFile("prices.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(shipped, int64(250_000), int64(1_000), int64(777), int64(5))
	f.Add(shipped, int64(-1), int64(math.MaxInt64), int64(math.MinInt64), int64(-7))
	f.Add([]byte(`{"models":{"m":{"input":1e6,"output":1e6,"cached":1e6}}}`),
		int64(math.MaxInt64), int64(0), int64(math.MaxInt64), int64(math.MaxInt64))
	f.Fuzz(func(t *testing.T, data []byte, prompt, cached, candidates, thoughts int64) {
		tab, err := pricing.Parse(data)
		if err != nil {
			return
		}
		models := tab.Models()
		if len(models) == 0 {
			t.Fatal("a table without models")
		}
		u := usage{PromptTokenCount: prompt, CachedContentTokenCount: cached, CandidatesTokenCount: candidates, ThoughtsTokenCount: thoughts}
		for _, m := range models {
			for _, name := range []string{m, m + "-001"} {
				e, ok := tab.Costs(name, u)
				if !ok || !(e.Batch >= 0) || math.IsInf(e.Batch, 0) || !(e.Interactive >= 0) || math.IsInf(e.Interactive, 0) {
					t.Fatalf("Costs(%q, %+v) = %+v, %v", name, u, e, ok)
				}
			}
		}
	})
}

func ExampleTable_Costs() {
	prices := pricing.Default()
	e, ok := prices.Costs("models/gemini-2.5-flash-preview-09-2025", gemini.UsageMetadata{
		PromptTokenCount: 10_000, CachedContentTokenCount: 4_000, CandidatesTokenCount: 1_500, ThoughtsTokenCount: 500,
	})
	fmt.Printf("batch $%.6f, interactive $%.6f, saved $%.6f %v\n", e.Batch, e.Interactive, e.Saved(), ok)
	e, ok = prices.Costs("gemini-1.5-pro", gemini.UsageMetadata{PromptTokenCount: 10_000})
	fmt.Printf("batch $%.6f %v\n", e.Batch, ok)
	// Output:
	// batch $0.003520, interactive $0.006920, saved $0.003400 true
	// batch $0.000000 false
}

// TestCosts: the interactive-price equivalent comes from the table's interactive rates (as
// published, not assumed to be twice the batch price), and the saving is the difference.
func TestCosts(t *testing.T) {
	tab := pricing.Default()
	for _, tc := range []struct {
		model              string
		u                  usage
		batch, interactive float64 // worked out by hand from prices.json
	}{
		// 6000 input × 0.30 + 4000 cached × 0.03 + 2000 output × 2.50 (batch: 0.003520).
		{"gemini-2.5-flash", usage{PromptTokenCount: 10_000, CachedContentTokenCount: 4_000, CandidatesTokenCount: 1_500, ThoughtsTokenCount: 500}, 0.003520, 0.00692},
		// Long context: 200001 × 2.50 + 1000 × 15.
		{"gemini-2.5-pro", usage{PromptTokenCount: 200_001, CandidatesTokenCount: 1_000}, 0.25750125, 0.5150025},
		{"gemini-2.5-pro", usage{PromptTokenCount: 200_000, CandidatesTokenCount: 1_000}, 0.13, 0.26},
		{"gemini-3-pro-preview", usage{PromptTokenCount: 300_000, CachedContentTokenCount: 100_000, CandidatesTokenCount: 5_000}, 0.485, 0.93},
		{"gemini-embedding-001", usage{PromptTokenCount: 1e6}, 0.075, 0.15},
		{"gemini-2.0-flash-lite-001", usage{PromptTokenCount: 1e6, CandidatesTokenCount: 1e6}, 0.1875, 0.375},
	} {
		e, ok := tab.Costs(tc.model, tc.u)
		if !ok || math.Abs(e.Batch-tc.batch) > 1e-12 || math.Abs(e.Interactive-tc.interactive) > 1e-12 ||
			math.Abs(e.Saved()-(tc.interactive-tc.batch)) > 1e-12 {
			t.Errorf("Costs(%q, %+v) = %+v, %v; want batch %v, interactive %v", tc.model, tc.u, e, ok, tc.batch, tc.interactive)
		}
	}
}

// TestShippedInteractivePrices: every shipped model has interactive rates, none below its
// batch rate (the Batch API is the cheaper way).
func TestShippedInteractivePrices(t *testing.T) {
	u := usage{PromptTokenCount: 150_000, CachedContentTokenCount: 50_000, CandidatesTokenCount: 10_000}
	long := usage{PromptTokenCount: 250_000, CachedContentTokenCount: 50_000, CandidatesTokenCount: 10_000}
	for _, m := range pricing.Default().Models() {
		for _, u := range []usage{u, long} {
			e, ok := pricing.Default().Costs(m, u)
			if !ok || !e.HasInteractive || e.Interactive < e.Batch || e.Saved() <= 0 {
				t.Errorf("%s %+v: %+v, %v: want interactive prices above batch ones", m, u, e, ok)
			}
		}
	}
}

// TestNoInteractivePrices: a table without interactive rates for a model claims no saving.
func TestNoInteractivePrices(t *testing.T) {
	tab, err := pricing.Parse([]byte(`{"models":{"m":{"input":1,"output":2,"cached":0.5},
		"n":{"input":1,"output":2,"cached":0.5,"interactive":{"input":2,"output":4,"cached":0.5,"longContext":{"above":10,"input":3,"output":6,"cached":1}}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := tab.Costs("m", usage{PromptTokenCount: 1e6}); !ok || e.HasInteractive || e.Batch != 1 || e.Interactive != 1 || e.Saved() != 0 {
		t.Errorf("no interactive rates: %+v, %v", e, ok)
	}
	if e, ok := tab.Costs("n", usage{PromptTokenCount: 11, CachedContentTokenCount: 1}); !ok || e.Interactive != (10*3+1*1)/1e6 {
		t.Errorf("interactive long context: %+v, %v", e, ok)
	}
	if _, err := pricing.Parse([]byte(`{"models":{"m":{"input":1,"interactive":{"input":-1}}}}`)); err == nil ||
		!strings.Contains(err.Error(), `model "m": interactive.input: must not be negative`) {
		t.Errorf("bad interactive rate: %v", err)
	}
}
