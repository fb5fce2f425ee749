package accumulator

import (
	"hash/maphash"
	"strings"
	"time"

	"github.com/gembatch/gembatch/record"
)

// chunkLen is how many requests one chunk of an open batch holds: chunks, not one growing
// slice, so that the batch never holds a half-empty array from its last doubling.
const chunkLen = 1024

// Bodies are copied back to back into slabs that start at minSlab bytes and double up to
// maxSlab; a body longer than maxSlabBody gets an allocation of its own. One allocation per
// body would round each up to its size class (up to 12.5% of it); a slab wastes only its tail.
const (
	minSlab     = 4 << 10
	maxSlab     = 256 << 10
	maxSlabBody = 32 << 10
)

// held is an open batch's requests, in the compact form they wait in. In core mode these are
// the only copy of a request, so their bytes per request are the daemon's memory.
type held struct {
	chunks [][]pending
	n      int
	slab   []byte // where the next bodies are copied to

	// The keys' index, for duplicates: by a 64-bit hash of the key (a 16-byte map slot where a
	// string key takes 24), and by the key itself for the rare key whose hash another has.
	byHash  map[uint64]int32
	clashes map[string]int32
}

// pending is a record.Request as it waits: times as Unix nanoseconds (0 for none) instead of
// 24-byte time.Times, its attempt in 32 bits, what came from the stream behind a pointer: 120
// bytes where a record.Request takes 176.
type pending struct {
	id, key, reply     string
	body               []byte
	received, deadline int64
	size               int64
	seq                uint64
	stream             *fromStream // durable mode only: nil in core mode, where memory is the bound
	attempt            int32
}

// fromStream is what a request held in durable mode carries beyond its fields: its stream
// message, and the object holding its body when it came by reference.
type fromStream struct {
	msg        record.Held
	bodyObject string
}

// find returns the index of the request with this key, whose hash is sum (keySum).
func (h *held) find(key string, sum uint64) (int, bool) {
	if i, ok := h.byHash[sum]; ok && h.at(int(i)).key == key {
		return int(i), true
	}
	i, ok := h.clashes[key]
	return int(i), ok
}

// index adds the key of request i, whose hash is sum, which find does not know yet.
func (h *held) index(key string, sum uint64, i int32) {
	if h.byHash == nil {
		h.byHash = make(map[uint64]int32)
	}
	if _, taken := h.byHash[sum]; !taken {
		h.byHash[sum] = i
		return
	}
	if h.clashes == nil {
		h.clashes = make(map[string]int32)
	}
	h.clashes[key] = i
}

func (h *held) at(i int) *pending { return &h.chunks[i/chunkLen][i%chunkLen] }

// keySum is the hash find and add index a key by: computed once a request, for both.
func keySum(key string) uint64 { return maphash.String(keySeed, key) }

var keySeed = maphash.MakeSeed()

// add keeps a request whose key (hashed to sum) is not held yet. Its body and key are copied out
// of the message they came in: the body shares an allocation with the message's header block,
// rounded up to a size class, and the key is a substring of that header block, so keeping either
// would keep all of it. A body from the stream is kept as it is: a durable batch holds bodies
// only while they are few (Config.HoldBodies), and copying them cost a kilobyte allocated and
// copied a request.
func (h *held) add(r record.Request, sum uint64) {
	if h.n%chunkLen == 0 {
		h.chunks = append(h.chunks, make([]pending, 0, chunkLen))
	}
	p := pending{id: r.ID, key: r.Key, reply: r.Reply, body: r.Body, size: r.Size,
		seq: r.Seq, stream: streamOf(r), attempt: int32(r.Attempt), received: nanos(r.Received), deadline: nanos(r.Deadline)}
	if p.stream == nil {
		p.body = h.copyBody(r.Body)
	}
	if r.Key != r.ID { // a generated key is the id itself
		p.key = strings.Clone(r.Key)
	}
	last := &h.chunks[len(h.chunks)-1]
	*last = append(*last, p)
	h.index(p.key, sum, int32(h.n)) // the held copy of the key
	h.n++
}

// copyBody copies a body into the slab. The copy's capacity ends with it, so that an append to
// one body can never write over the next.
func (h *held) copyBody(b []byte) []byte {
	if b == nil {
		return nil
	}
	if len(b) > maxSlabBody {
		return append(make([]byte, 0, len(b)), b...)
	}
	if cap(h.slab)-len(h.slab) < len(b) {
		h.slab = make([]byte, 0, min(max(2*cap(h.slab), minSlab), maxSlab))
	}
	start := len(h.slab)
	h.slab = append(h.slab, b...)
	return h.slab[start:len(h.slab):len(h.slab)]
}

// dropBodies lets go of every body held.
func (h *held) dropBodies() {
	for _, c := range h.chunks {
		for i := range c {
			c[i].body = nil
		}
	}
	h.slab = nil
}

// requests returns the batch as the record carries it.
func (h *held) requests() []record.Request {
	if h.n == 0 {
		return nil
	}
	reqs := make([]record.Request, 0, h.n)
	for _, c := range h.chunks {
		for i := range c {
			p := &c[i]
			q := record.Request{ID: p.id, Key: p.key, Reply: p.reply, Body: p.body, Size: p.size,
				Seq: p.seq, Attempt: int(p.attempt), Received: fromNanos(p.received), Deadline: fromNanos(p.deadline)}
			if p.stream != nil {
				q.Msg, q.BodyObject = p.stream.msg, p.stream.bodyObject
			}
			reqs = append(reqs, q)
		}
	}
	return reqs
}

// inProgress tells the stream that the batch's messages are still being worked on.
func (h *held) inProgress() {
	for _, c := range h.chunks {
		for i := range c {
			if st := c[i].stream; st != nil && st.msg != nil {
				_ = st.msg.InProgress() // a lost one is covered by the next beat, well inside AckWait
			}
		}
	}
}

// streamOf is what a request carries from the stream, if anything.
func streamOf(r record.Request) *fromStream {
	if r.Msg == nil && r.BodyObject == "" {
		return nil
	}
	return &fromStream{msg: r.Msg, bodyObject: r.BodyObject}
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
