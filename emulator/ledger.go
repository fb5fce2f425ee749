package emulator

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
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

// billing is the ledger as it is kept: its own lock, since answers are made outside Server.mu.
// Nothing in it is a pointer for the garbage collector to follow: an entry is found by a SHA-256
// of its key and digest, and holds its key as a span of one byte arena. The ledger gains an entry
// for every request ever billed and lives as long as its process, which may be gembatch bench's,
// shared with the daemon it measures: as a map of strings to pointers, 100,000 entries added
// 9.6 MB to what every collection marks (TestLedgerIsNotScannedByTheCollector).
type billing struct {
	mu      sync.Mutex
	index   map[[sha256.Size]byte]int // entries, by entryID
	entries []billed
	keys    []byte // the entries' keys, back to back
}

// billed is one request's ledger entry as it is kept.
type billed struct {
	digest        [sha256.Size]byte
	keyAt, keyLen int
	count         int
	tokens        int64
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
	d := digest(request)
	id := entryID(key, d)
	b.mu.Lock()
	defer b.mu.Unlock()
	i, ok := b.index[id]
	if !ok {
		if b.index == nil {
			b.index = make(map[[sha256.Size]byte]int)
		}
		i = len(b.entries)
		b.index[id] = i
		b.entries = append(b.entries, billed{digest: d, keyAt: len(b.keys), keyLen: len(key)})
		b.keys = append(b.keys, key...)
	}
	b.entries[i].count++
	b.entries[i].tokens += usage.UsageMetadata.TotalTokenCount
}

// digest is the SHA-256 of a request compacted, so that an inline request and the same request
// in a file line, encoded with different spacing, are one request.
func digest(request json.RawMessage) [sha256.Size]byte {
	var buf bytes.Buffer
	if json.Compact(&buf, request) != nil {
		buf.Reset()
		buf.Write(request)
	}
	return sha256.Sum256(buf.Bytes())
}

// entryID tells entries apart by key and digest: the key's length first, so that no key can
// run into the digest.
func entryID(key string, d [sha256.Size]byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(key))))
	h.Write([]byte(key))
	h.Write(d[:])
	var id [sha256.Size]byte
	h.Sum(id[:0])
	return id
}

func (b *billing) snapshot() []LedgerEntry {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]LedgerEntry, 0, len(b.entries))
	for _, e := range b.entries {
		out = append(out, LedgerEntry{Key: string(b.keys[e.keyAt : e.keyAt+e.keyLen]), Digest: hex.EncodeToString(e.digest[:]),
			Billed: e.count, Tokens: e.tokens})
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
