package submitter

import (
	"slices"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

// asksForImages reports whether a generate batch holds a request that asks for images
// (record.AsksForImages), among the bodies it carries: a resubmission's, or a core-mode
// record's. A durable record carries no bodies; the accumulator set its Images instead.
func asksForImages(rec *record.Record) bool {
	return rec.Group.Kind == gemini.KindGenerate &&
		slices.ContainsFunc(rec.Requests, func(q record.Request) bool { return record.AsksForImages(q.Body) })
}
