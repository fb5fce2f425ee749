// Package pricing estimates what answered Gemini Batch API requests cost, in US dollars, from
// each response's usageMetadata and a price table per model, and what the same requests would
// have cost at interactive (standard) prices. The shipped table holds both, as published; a
// file in the same format replaces it.
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

// Rates are US dollars per million tokens.
type Rates struct {
	Input  float64 `json:"input"`  // prompt tokens not served from cache
	Output float64 `json:"output"` // candidates and thoughts tokens
	Cached float64 `json:"cached"` // prompt tokens served from a context cache
}

// Tier is one way of buying a model: rates, with optional long-context rates for requests
// whose prompt exceeds a threshold.
type Tier struct {
	Rates
	LongContext *LongContext `json:"longContext,omitempty"`
}

// Price is one model's batch rates and, when known, its interactive (standard) rates.
type Price struct {
	Tier
	Interactive *Tier `json:"interactive,omitempty"`
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
	if err := p.Tier.check(""); err != nil {
		return err
	}
	if p.Interactive != nil {
		return p.Interactive.check("interactive.")
	}
	return nil
}

func (t *Tier) check(prefix string) error {
	if err := t.Rates.check(prefix); err != nil {
		return err
	}
	if lc := t.LongContext; lc != nil {
		if lc.Above <= 0 {
			return fmt.Errorf("%slongContext.above: must be a positive number of tokens", prefix)
		}
		return lc.Rates.check(prefix + "longContext.")
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

// Estimate is what one response's usage cost at batch prices, and what it would have cost
// interactively. Without interactive rates for the model, Interactive is the batch cost: no
// saving is claimed.
type Estimate struct {
	Batch          float64 // US dollars
	Interactive    float64 // US dollars
	HasInteractive bool    // the model has interactive rates
}

// Saved is what batching saved against interactive prices.
func (e Estimate) Saved() float64 { return e.Interactive - e.Batch }

// Costs estimates one response's usage at batch and at interactive prices, and says whether
// the model has a price.
func (t *Table) Costs(model string, u gemini.UsageMetadata) (Estimate, bool) {
	p, ok := t.lookup(gemini.ModelName(model))
	if !ok {
		return Estimate{}, false
	}
	e := Estimate{Batch: p.Tier.cost(u)}
	e.Interactive = e.Batch
	if p.Interactive != nil {
		e.Interactive, e.HasInteractive = p.Interactive.cost(u), true
	}
	return e, true
}

// cost is the cost of u at t's rates.
func (t *Tier) cost(u gemini.UsageMetadata) float64 {
	r := t.Rates
	if lc := t.LongContext; lc != nil && u.PromptTokenCount > lc.Above {
		r = lc.Rates
	}
	// Counts below zero would only come from a broken response; they count as none.
	prompt, cached := max(u.PromptTokenCount, 0), max(u.CachedContentTokenCount, 0)
	input := max(prompt-cached, 0)
	// Added as floats: two int64 counts can overflow.
	output := float64(max(u.CandidatesTokenCount, 0)) + float64(max(u.ThoughtsTokenCount, 0))
	return (float64(input)*r.Input + float64(cached)*r.Cached + output*r.Output) / 1e6
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
