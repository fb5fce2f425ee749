package main

import (
	"encoding/json"
	"fmt"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/pricing"
)

// costTally sums what submit's answers cost at batch prices and what batching saved against
// interactive prices, from each response's usageMetadata, priced as its modelVersion (else the
// model asked for). Answers without usage (embeddings) or a priced model are not counted.
type costTally struct {
	prices       *pricing.Table
	model        string // --model: the model of answers that do not name theirs
	batch, saved float64
}

func newCostTally(prices *pricing.Table, model string) *costTally {
	return &costTally{prices: prices, model: model}
}

// add counts one answer's response.
func (c *costTally) add(response json.RawMessage) {
	var r struct {
		ModelVersion  string                `json:"modelVersion"`
		UsageMetadata *gemini.UsageMetadata `json:"usageMetadata"`
	}
	if json.Unmarshal(response, &r) != nil || r.UsageMetadata == nil {
		return
	}
	model := r.ModelVersion
	if model == "" {
		model = c.model
	}
	if e, ok := c.prices.Costs(model, *r.UsageMetadata); ok {
		c.batch += e.Batch
		c.saved += e.Saved()
	}
}

func (c *costTally) String() string {
	return fmt.Sprintf("estimated $%.6f at batch prices, $%.6f saved against interactive prices", c.batch, c.saved)
}
