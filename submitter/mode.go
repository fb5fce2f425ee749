package submitter

import (
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

// asksForImages reports whether a generate batch asks for images: marked so when sealed (a
// batch whose bodies went to input chunks carries none), or a request body that does. Such a
// batch goes by file whatever its size, as the Batch API guide recommends: its answers run to
// megabytes each, and an inline job's answers all come back in one operation.
func asksForImages(rec *record.Record) bool {
	if rec.Group.Kind != gemini.KindGenerate {
		return false
	}
	if rec.Images {
		return true
	}
	for _, q := range rec.Requests {
		if gemini.AsksForImages(q.Body) {
			return true
		}
	}
	return false
}
