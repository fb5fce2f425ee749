package gemini_test

import (
	"testing"

	"github.com/gembatch/gembatch/gemini"
)

func TestAsksForImages(t *testing.T) {
	for body, want := range map[string]bool{
		`{"contents":[{"parts":[{"text":"a cat"}]}],"generationConfig":{"responseModalities":["TEXT","IMAGE"]}}`: true,
		`{"generationConfig":{"responseModalities":["image"]}}`:                                                  true,
		`{"generationConfig":{"responseModalities":["TEXT"]}}`:                                                   false,
		`{"contents":[{"parts":[{"text":"responseModalities IMAGE"}]}]}`:                                         false,
		`{"contents":[{"parts":[{"text":"a cat"}]}]}`:                                                            false,
		`not json, but responseModalities IMAGE`:                                                                 false,
		``:                                                                                                       false,
	} {
		if got := gemini.AsksForImages([]byte(body)); got != want {
			t.Errorf("AsksForImages(%s) = %v, want %v", body, got, want)
		}
	}
}
