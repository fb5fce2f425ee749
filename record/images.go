package record

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
)

// AsksForImages reports whether a GenerateContentRequest body asks for images:
// generationConfig.responseModalities holds IMAGE. Its answers run to megabytes each, so its
// batch goes by file, as the Batch API guide recommends, and never comes back in one operation.
func AsksForImages(body json.RawMessage) bool {
	// Most bodies name no modalities: a scan for the field's name spares them a decode.
	if !bytes.Contains(body, []byte("Modalities")) {
		return false
	}
	var req struct {
		GenerationConfig struct {
			ResponseModalities []string `json:"responseModalities"`
		} `json:"generationConfig"`
	}
	if json.Unmarshal(body, &req) != nil {
		return false
	}
	return slices.ContainsFunc(req.GenerationConfig.ResponseModalities, func(m string) bool { return strings.EqualFold(m, "IMAGE") })
}
