package submitter

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

// asksForImages reports whether a generate batch has a request whose
// generationConfig.responseModalities holds IMAGE. Such a batch goes by file whatever its size,
// as the Batch API guide recommends: its answers run to megabytes each, and an inline job's
// answers all come back in one operation.
func asksForImages(rec *record.Record) bool {
	if rec.Group.Kind != gemini.KindGenerate {
		return false
	}
	for _, q := range rec.Requests {
		var body struct {
			GenerationConfig struct {
				ResponseModalities []string `json:"responseModalities"`
			} `json:"generationConfig"`
		}
		if json.Unmarshal(q.Body, &body) != nil {
			continue
		}
		if slices.ContainsFunc(body.GenerationConfig.ResponseModalities, func(m string) bool { return strings.EqualFold(m, "IMAGE") }) {
			return true
		}
	}
	return false
}
