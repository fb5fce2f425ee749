package intake

import (
	"regexp"
	"sync"
	"sync/atomic"

	"github.com/gembatch/gembatch/gemini"
)

var modelName = regexp.MustCompile(`^models/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// maxKnownModels bounds the names remembered; past it, names are checked every time.
const maxKnownModels = 256

// modelNames remembers the model names Parse has accepted, as written by producers, with their
// full names: the few models a deployment uses then cost a valid request neither an allocation
// nor a regexp match.
var modelNames knownModels

type knownModels struct {
	mu    sync.Mutex                        // serialises writers
	names atomic.Pointer[map[string]string] // as written → models/…; copied on write
}

// resolve picks the header's model, else the body's, else the default, and returns its full
// name and whether it is a valid one; an invalid name comes back full, for the rejection.
func (k *knownModels) resolve(header string, body []byte, def string) (string, bool) {
	names := ptrMap(k.names.Load())
	written := header
	if written == "" && len(body) > 0 {
		if full, ok := names[string(body)]; ok { // the lookup does not copy body
			return full, true
		}
		written = string(body)
	}
	if written == "" {
		written = def
	}
	if full, ok := names[written]; ok {
		return full, true
	}
	return k.check(written)
}

// check validates a name not seen before and remembers it when valid.
func (k *knownModels) check(written string) (string, bool) {
	full := gemini.ModelName(written)
	if !modelName.MatchString(full) {
		return full, false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	old := k.names.Load()
	if old != nil && len(*old) >= maxKnownModels {
		return full, true
	}
	names := make(map[string]string, 1+len(ptrMap(old)))
	for w, f := range ptrMap(old) {
		names[w] = f
	}
	names[written] = full
	k.names.Store(&names)
	return full, true
}

func ptrMap(m *map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	return *m
}
