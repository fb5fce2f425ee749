package gemini

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
)

// AsksForImages reports whether a GenerateContentRequest body asks for images
// (generationConfig.responseModalities holds IMAGE): such answers run to megabytes each, so a
// batch holding one goes by file whatever its size. Bodies that do not name the field are
// passed over without being decoded.
func AsksForImages(body []byte) bool {
	if !bytes.Contains(body, []byte("odalities")) {
		return false
	}
	var b struct {
		GenerationConfig struct {
			ResponseModalities []string `json:"responseModalities"`
		} `json:"generationConfig"`
	}
	if json.Unmarshal(body, &b) != nil {
		return false
	}
	return slices.ContainsFunc(b.GenerationConfig.ResponseModalities, func(m string) bool { return strings.EqualFold(m, "IMAGE") })
}
