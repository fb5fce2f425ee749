package emulator

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"sync"

	"github.com/gembatch/gembatch/gemini"
)

// LedgerEntry is what the emulator billed for one request, across every job it was ever in.
// Requests are told apart by their key and a digest of their body, not by the job's displayName,
// so that one request sent in two different batches shows as billed twice.
type LedgerEntry struct {
	Key    string `json:"key"`
	Digest string `json:"digest"` // hex SHA-256 of the request with insignificant space removed
	// Billed is how many times the request was answered with a response; per-item errors are
	// not billed.
	Billed int `json:"billed"`
	// Tokens is the sum of the totalTokenCount of those responses (embeddings carry none).
	Tokens int64 `json:"tokens"`
}

// Ledger is the emulator's account of what it billed, for tests that prove a client bills each
// request once.
type Ledger struct {
	Entries []LedgerEntry `json:"entries"` // by key, then digest
	// Creates is how many jobs were created per displayName (as [Server.CreateCounts]).
	Creates map[string]int `json:"creates"`
}

// BilledTwice is how many requests were billed more than once, and how many extra times.
func (l Ledger) BilledTwice() (requests, extra int) {
	for _, e := range l.Entries {
		if e.Billed > 1 {
			requests++
			extra += e.Billed - 1
		}
	}
	return requests, extra
}

// Tokens is the sum of the tokens billed.
func (l Ledger) Tokens() int64 {
	var n int64
	for _, e := range l.Entries {
		n += e.Tokens
	}
	return n
}

// CreatedTwice is how many jobs were created beyond the first for their displayName.
func (l Ledger) CreatedTwice() int {
	n := 0
	for _, c := range l.Creates {
		n += max(c-1, 0)
	}
	return n
}

type ledgerKey struct{ key, digest string }

// billing is the ledger as it is kept: its own lock, since answers are made outside Server.mu.
type billing struct {
	mu      sync.Mutex
	entries map[ledgerKey]*LedgerEntry
}

// bill records one answer to the request with key and body.
func (b *billing) bill(key string, request, response json.RawMessage, st *gemini.Status) {
	if st != nil {
		return
	}
	var usage struct {
		UsageMetadata gemini.UsageMetadata `json:"usageMetadata"`
	}
	_ = json.Unmarshal(response, &usage) // an embedding has no usage: no tokens
	k := ledgerKey{key: key, digest: digest(request)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.entries == nil {
		b.entries = make(map[ledgerKey]*LedgerEntry)
	}
	e := b.entries[k]
	if e == nil {
		e = &LedgerEntry{Key: k.key, Digest: k.digest}
		b.entries[k] = e
	}
	e.Billed++
	e.Tokens += usage.UsageMetadata.TotalTokenCount
}

// digest is the hex SHA-256 of a request compacted, so that an inline request and the same
// request in a file line, encoded with different spacing, are one request.
func digest(request json.RawMessage) string {
	var buf bytes.Buffer
	if json.Compact(&buf, request) != nil {
		buf.Reset()
		buf.Write(request)
	}
	sum := sha256.Sum256(buf.Bytes())
	return hex.EncodeToString(sum[:])
}

func (b *billing) snapshot() []LedgerEntry {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]LedgerEntry, 0, len(b.entries))
	for _, e := range b.entries {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(x, y LedgerEntry) int {
		return cmp.Or(cmp.Compare(x.Key, y.Key), cmp.Compare(x.Digest, y.Digest))
	})
	return out
}

// Ledger returns what the emulator has billed so far. Jobs whose end has come are settled first,
// so that a job nobody read after its end is billed as the service would have billed it; a job
// still PENDING or RUNNING, or cancelled before its end, has billed nothing.
func (s *Server) Ledger() Ledger {
	s.Batches() // settles every job whose end has come, making its results
	return Ledger{Entries: s.billing.snapshot(), Creates: s.CreateCounts()}
}

// ledger answers GET /emulator/ledger with the Ledger as JSON: not part of the Gemini API, it
// lets a test in another process (or a person) check the billing.
func (s *Server) ledger(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, s.Ledger())
}
