// Package pricing estimates what answered Gemini Batch API requests cost, in US dollars, from
// each response's usageMetadata and a price table per model. The shipped table holds batch
// prices; a file in the same format replaces it.
package pricing

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/gembatch/gembatch/gemini"
)

// maxRate is a dollar a token, far above any real price. JSON holds no NaN or infinity, so
// with this cap every rate, and every cost of up to math.MaxInt64 tokens, is finite.
const maxRate = 1e6

// Rates are US dollars per million tokens, at batch prices.
type Rates struct {
	Input  float64 `json:"input"`  // prompt tokens not served from cache
	Output float64 `json:"output"` // candidates and thoughts tokens
	Cached float64 `json:"cached"` // prompt tokens served from a context cache
}

// Price is one model's rates, with optional long-context rates for requests whose prompt
// exceeds a threshold.
type Price struct {
	Rates
	LongContext *LongContext `json:"longContext,omitempty"`
}

// LongContext are the rates of a request with a long prompt.
type LongContext struct {
	Above int64 `json:"above"` // prompt tokens; a request with more uses these rates
	Rates
}

// Table is a price per model. It is not changed after Parse, so it may be shared.
type Table struct {
	prices map[string]Price // by model name with "models/"
}

// file is the table's JSON form.
type file struct {
	AsOf   string            `json:"asOf"`
	Note   string            `json:"note"`
	Models map[string]*Price `json:"models"` // a pointer, so that a null entry is told from zero rates
}

//go:embed prices.json
var shipped []byte

var defaultTable = sync.OnceValue(func() *Table {
	t, err := Parse(shipped)
	if err != nil {
		panic("pricing: the shipped prices.json is broken: " + err.Error())
	}
	return t
})

// Default returns the shipped table of batch prices.
func Default() *Table { return defaultTable() }

// Load reads a price table file.
func Load(path string) (*Table, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Parse reads a price table: {"models":{"gemini-2.5-flash":{"input":0.15,"output":1.25,"cached":0.03}}}.
func Parse(data []byte) (*Table, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f file
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("not a price table: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("not a price table: data after the top-level object")
	}
	if len(f.Models) == 0 {
		return nil, errors.New("no models in the price table")
	}
	t := &Table{prices: make(map[string]Price, len(f.Models))}
	seen := make(map[string]string, len(f.Models))
	// Sorted, so that a table with several faults always reports the same one.
	for _, name := range slices.Sorted(maps.Keys(f.Models)) {
		model := gemini.ModelName(name)
		if model == "models/" {
			return nil, fmt.Errorf("model %q: name is empty", name)
		}
		if other, dup := seen[model]; dup {
			return nil, fmt.Errorf("model %q: same model as %q", name, other)
		}
		seen[model] = name
		p := f.Models[name]
		if p == nil {
			return nil, fmt.Errorf("model %q: no rates", name)
		}
		if err := p.check(); err != nil {
			return nil, fmt.Errorf("model %q: %w", name, err)
		}
		t.prices[model] = *p
	}
	return t, nil
}

func (p *Price) check() error {
	if err := p.Rates.check(""); err != nil {
		return err
	}
	if lc := p.LongContext; lc != nil {
		if lc.Above <= 0 {
			return errors.New("longContext.above: must be a positive number of tokens")
		}
		return lc.Rates.check("longContext.")
	}
	return nil
}

func (r Rates) check(prefix string) error {
	for _, f := range []struct {
		name string
		v    float64
	}{{"input", r.Input}, {"output", r.Output}, {"cached", r.Cached}} {
		switch {
		case f.v < 0:
			return fmt.Errorf("%s%s: must not be negative", prefix, f.name)
		case f.v > maxRate:
			return fmt.Errorf("%s%s: must not exceed %.0f", prefix, f.name, maxRate)
		}
	}
	return nil
}

// Cost is the estimated cost of one response's usage, and whether the model has a price.
func (t *Table) Cost(model string, u gemini.UsageMetadata) (usd float64, ok bool) {
	p, ok := t.lookup(gemini.ModelName(model))
	if !ok {
		return 0, false
	}
	r := p.Rates
	if lc := p.LongContext; lc != nil && u.PromptTokenCount > lc.Above {
		r = lc.Rates
	}
	// Counts below zero would only come from a broken response; they count as none.
	prompt, cached := max(u.PromptTokenCount, 0), max(u.CachedContentTokenCount, 0)
	input := max(prompt-cached, 0)
	// Added as floats: two int64 counts can overflow.
	output := float64(max(u.CandidatesTokenCount, 0)) + float64(max(u.ThoughtsTokenCount, 0))
	return (float64(input)*r.Input + float64(cached)*r.Cached + output*r.Output) / 1e6, true
}

// lookup finds a model's price: its own, else that of the longest listed name it extends with
// a "-" suffix (a dated or preview version).
func (t *Table) lookup(model string) (Price, bool) {
	if p, ok := t.prices[model]; ok {
		return p, true
	}
	best := ""
	for name := range t.prices {
		if strings.HasPrefix(model, name+"-") && len(name) > len(best) {
			best = name
		}
	}
	p, ok := t.prices[best]
	return p, ok
}

// Models lists the priced models, sorted, with the "models/" prefix.
func (t *Table) Models() []string {
	return slices.Sorted(maps.Keys(t.prices))
}
