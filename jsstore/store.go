// Package jsstore keeps batch records in JetStream: each record in a KV bucket, its requests in
// an object store. What answering needs of each request is one object, named by the record's
// id. The request bodies stay in the request stream, which keeps them until its MaxAge, and
// are read back from it by sequence for the create (streamInput); those that came through the
// bodies bucket, or all of them when the stream may drop messages sooner, are written as the
// batch's JSONL input in chunks while the batch is open (Input). So an open batch holds no
// bodies, the upload streams its input, and taking over a submitted job never reads it. Every
// write is a compare-and-set on the revision the writer itself read, so a replica that lost a
// record cannot write it again. Request bodies too large for a NATS message wait in a bodies
// bucket until their batch is written.
package jsstore

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/internal/kvsnap"
	"github.com/gembatch/gembatch/record"
)

// Config names the buckets.
type Config struct {
	// RecordsBucket is the KV bucket of records; RequestsBucket the object store of request lines.
	RecordsBucket  string
	RequestsBucket string
	// BodiesBucket is the object store where producers put request bodies too large for a NATS
	// message; its objects expire after BodiesTTL (default: Retention) if nobody deletes them.
	BodiesBucket string
	BodiesTTL    time.Duration
	Replicas     int
	Storage      jetstream.StorageType
	// Retention is how long a record is kept after its last write, and how long request objects
	// live at most, so that what a crash failed to delete expires all the same.
	Retention time.Duration
	// RedeliveryWindow is how long after a record is cleaned its messages may still be delivered
	// again (twice the consumer's AckWait); default 10 minutes.
	RedeliveryWindow time.Duration
	// Stream is the request stream, from which records InStream read their bodies back.
	Stream string
}

// Store is a record.Store on JetStream KV and object store.
type Store struct {
	cfg    Config
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	obj    jetstream.ObjectStore
	bodies jetstream.ObjectStore
	chunk  uint32 // object store chunk size that fits the connection's max payload
	log    zerolog.Logger

	// metaReads and bodyReads count the request objects read, for the takeover tests: a replica
	// taking over a submitted job must read no bodies.
	metaReads, bodyReads atomic.Int64

	// watched is the records bucket's stream sequence the watch has indexed up to.
	watched atomic.Uint64
	// skips counts the gaps in the sequences the watch delivered: messages deleted before the
	// server sent them (a later revision of their record replaced them), whose later revision
	// comes after them. Only the watch's goroutine touches watchedTop, the highest it delivered.
	skips      atomic.Uint64
	watchedTop uint64

	// lost holds, by record id, the value of the last write whose answer was lost and whose
	// outcome is unknown.
	lost sync.Map

	mu      sync.Mutex
	seqs    map[uint64]string   // stream sequence → the live (or lately cleaned) record holding it
	recSeqs map[string][]uint64 // record → its sequences in seqs
	later   map[uint64][]string // sequence → records written after its holder that hold it too
	written map[string][]uint64 // records this store created that the watch has not brought yet
	settled map[string]bool     // records in seqs whose messages are done with: see Recorded
	// cleaned holds when each record still indexed was cleaned, to drop it once the stream
	// cannot deliver its messages again (RedeliveryWindow).
	cleaned map[string]time.Time
}

var _ record.Store = (*Store)(nil)

// Open creates the buckets if they do not exist and returns the store.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config, log zerolog.Logger) (*Store, error) {
	kv, err := js.KeyValue(ctx, cfg.RecordsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: cfg.RecordsBucket, Description: "gembatch batch records", History: 1,
			TTL: cfg.Retention, Replicas: cfg.Replicas, Storage: cfg.Storage,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("records bucket %s: %w", cfg.RecordsBucket, err)
	}
	obj, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: cfg.RequestsBucket, Description: "gembatch request lines of each batch record",
		TTL: cfg.Retention, Replicas: cfg.Replicas, Storage: cfg.Storage,
	})
	if err != nil {
		return nil, fmt.Errorf("requests bucket %s: %w", cfg.RequestsBucket, err)
	}
	if cfg.BodiesBucket == "" {
		cfg.BodiesBucket = "gembatch-bodies"
	}
	if cfg.BodiesTTL <= 0 {
		cfg.BodiesTTL = cfg.Retention
	}
	bodies, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: cfg.BodiesBucket, Description: "gembatch request bodies too large for a NATS message",
		TTL: cfg.BodiesTTL, Replicas: cfg.Replicas, Storage: cfg.Storage,
	})
	if err != nil {
		return nil, fmt.Errorf("bodies bucket %s: %w", cfg.BodiesBucket, err)
	}
	return &Store{cfg: cfg, js: js, kv: kv, obj: obj, bodies: bodies, chunk: chunkSize(js.Conn().MaxPayload()), log: log,
		seqs: map[uint64]string{}, recSeqs: map[string][]uint64{}, later: map[uint64][]string{}, written: map[string][]uint64{}, settled: map[string]bool{}, cleaned: map[string]time.Time{}}, nil
}

// chunkSize is the object store's default chunk size, 128 KiB, or half the connection's max
// payload when that is smaller: a chunk is one message.
func chunkSize(maxPayload int64) uint32 {
	if maxPayload <= 0 {
		return 128 << 10
	}
	return uint32(min(128<<10, maxPayload/2))
}

// meta names an object to put, in chunks that fit a message.
func (s *Store) meta(name string) jetstream.ObjectMeta {
	return jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: s.chunk}}
}

// BodiesBucket is the name of the bucket of big request bodies.
func (s *Store) BodiesBucket() string { return s.cfg.BodiesBucket }

// BodyObjects is the bucket of big request bodies, for intake to check them.
func (s *Store) BodyObjects() jetstream.ObjectStore { return s.bodies }

// DeleteBodyObjects deletes the body objects of a recorded batch's big requests: their bodies
// are in its input now. One that cannot be deleted expires with the bucket's TTL.
func (s *Store) DeleteBodyObjects(ctx context.Context, reqs []record.Request) {
	for _, q := range reqs {
		if q.BodyObject == "" {
			continue
		}
		if err := s.bodies.Delete(ctx, q.BodyObject); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			s.log.Warn().Err(err).Str("object", q.BodyObject).Msg("delete a body object already in its batch's input; it expires with the bucket's TTL")
		}
	}
}

// stored is a record as the KV bucket holds it: without its requests, with their stream
// sequences while their acknowledgements are not confirmed.
type stored struct {
	*record.Record
	Seqs []byte `json:"seqs,omitempty"` // delta-varint stream sequences, for redelivery checks
}

// encode is the KV value of r. A record keeps its sequences for its whole life, even when
// written without its requests (a takeover writes the record as the watch gave it): confirmed
// acks can still be lost to a consumer leader change, and the message delivered again.
func (s *Store) encode(r *record.Record) ([]byte, error) {
	st := stored{Record: bare(r)}
	st.Seqs = encodeSeqs(r.Requests)
	if st.Seqs == nil {
		st.Seqs = s.knownSeqs(r.ID)
	}
	return json.Marshal(st)
}

// knownSeqs are the sequences this store knows of a record, encoded.
func (s *Store) knownSeqs(id string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	known, ok := s.recSeqs[id]
	if !ok {
		known = s.written[id]
	}
	reqs := make([]record.Request, len(known))
	for i, q := range known {
		reqs[i].Seq = q
	}
	return encodeSeqs(reqs)
}

// bodiesObject names the object that held a record's request bodies before inputs were
// written in chunks; records written then still read them from there.
func bodiesObject(id string) string { return id + ".bodies" }

// Create writes the request lines, then the record. The record must name its owner: it is
// owned from the moment it is visible. A record whose input was not written while its batch
// was open (a resubmission, a part of a split) has it written here from its requests' bodies;
// a record InStream has its input where it is, whatever bodies it holds as well.
func (s *Store) Create(ctx context.Context, r *record.Record) error {
	if _, err := s.kv.Get(ctx, r.ID); err == nil {
		return record.ErrExists // its requests must not be overwritten
	}
	if r.Chunks == 0 && !r.InStream && hasBodies(r.Requests) {
		in := s.OpenInput(r.ID, false) // the bodies in hand: written whole
		for _, q := range r.Requests {
			if _, err := in.Append(q); err != nil {
				return fmt.Errorf("write input of %s: %w", r.ID, err)
			}
		}
		if err := in.Seal(r); err != nil {
			return fmt.Errorf("write input of %s: %w", r.ID, err)
		}
	}
	meta, err := encodeRequests(r.Requests)
	if err != nil {
		return fmt.Errorf("encode requests of %s: %w", r.ID, err)
	}
	if _, err := s.obj.Put(ctx, s.meta(r.ID), meta); err != nil {
		return fmt.Errorf("store requests of %s: %w", r.ID, err)
	}
	b, err := s.encode(r)
	if err != nil {
		return err
	}
	rev, err := s.kv.Create(ctx, r.ID, b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return record.ErrExists
	}
	if err != nil {
		return fmt.Errorf("store record %s: %w", r.ID, err)
	}
	r.Revision = rev
	s.mu.Lock() // known for a bare write before the watch brings it; indexed by the watch, in order
	s.written[r.ID] = decodeSeqs(encodeSeqs(r.Requests))
	s.mu.Unlock()
	return nil
}

func hasBodies(reqs []record.Request) bool {
	for _, q := range reqs {
		if q.Body != nil || q.BodyObject != "" {
			return true
		}
	}
	return false
}

// bodyLine is one line of a record's bodies object (records written before input chunks).
type bodyLine struct {
	Key  string          `json:"key"`
	Body json.RawMessage `json:"body"`
}

// Update writes r by a compare-and-set on r.Revision, the revision its writer read or wrote
// last: record.ErrConflict if anyone wrote the record since. A write whose answer was lost (a
// timeout, a reconnect, a leader change) may have landed all the same: it is read back at once,
// and if that fails too, remembered, so that the writer's next try is not taken for another
// writer's and its record left unowned.
func (s *Store) Update(ctx context.Context, r *record.Record) error {
	b, err := s.encode(r)
	if err != nil {
		return err
	}
	rev, err := s.kv.Update(ctx, r.ID, b, r.Revision)
	switch {
	case isConflict(err):
		rev, err = s.overOwnLostWrite(ctx, r.ID, b)
		if err != nil {
			return fmt.Errorf("record %s at revision %d: %w", r.ID, r.Revision, err)
		}
	case err != nil:
		if rev, err = s.landed(ctx, r.ID, b, err); err != nil {
			return fmt.Errorf("write record %s: %w", r.ID, err)
		}
	}
	s.lost.Delete(r.ID)
	r.Revision = rev
	return nil
}

func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyNotFound)
}

// landed reads a record back after a write whose answer was lost: the write is done if the
// record holds what it wrote. Otherwise the value is remembered for overOwnLostWrite.
func (s *Store) landed(ctx context.Context, id string, value []byte, cause error) (uint64, error) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if e, err := s.kv.Get(rctx, id); err == nil && bytes.Equal(e.Value(), value) {
		return e.Revision(), nil
	}
	s.lost.Store(id, value)
	return 0, cause
}

// overOwnLostWrite settles a conflict: if the record holds exactly what an earlier write of this
// store whose answer was lost wrote, nobody wrote since, and value goes on top of it; anything
// else is a real conflict.
func (s *Store) overOwnLostWrite(ctx context.Context, id string, value []byte) (uint64, error) {
	prev, ok := s.lost.Load(id)
	if !ok {
		return 0, record.ErrConflict
	}
	e, err := s.kv.Get(ctx, id)
	if err != nil || !bytes.Equal(e.Value(), prev.([]byte)) {
		return 0, record.ErrConflict
	}
	rev, err := s.kv.Update(ctx, id, value, e.Revision())
	switch {
	case isConflict(err):
		return 0, record.ErrConflict
	case err != nil:
		return s.landed(ctx, id, value, err)
	}
	return rev, nil
}

// Get reads a record with its requests, without their bodies.
func (s *Store) Get(ctx context.Context, id string) (*record.Record, error) {
	r, err := s.Head(ctx, id)
	if err != nil || r.State == record.Cleaned {
		return r, err
	}
	if r.Requests, err = s.requests(ctx, id); err != nil {
		return nil, err
	}
	return r, nil
}

// Head reads a record without its requests.
func (s *Store) Head(ctx context.Context, id string) (*record.Record, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, record.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", id, err)
	}
	r, _, err := decode(e)
	return r, err
}

func decode(e jetstream.KeyValueEntry) (*record.Record, []byte, error) {
	st := stored{Record: &record.Record{}}
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return nil, nil, fmt.Errorf("decode record %s: %w", e.Key(), err)
	}
	st.Record.Revision = e.Revision()
	return st.Record, st.Seqs, nil
}

// ObjectReads is how many request-metadata and request-body objects this store has read.
func (s *Store) ObjectReads() (meta, bodies int64) { return s.metaReads.Load(), s.bodyReads.Load() }

// requests reads a record's requests without bodies.
func (s *Store) requests(ctx context.Context, id string) ([]record.Request, error) {
	s.metaReads.Add(1)
	var out []record.Request
	err := s.lines(ctx, id, func(dec *json.Decoder) error {
		var q record.Request
		if err := dec.Decode(&q); err != nil {
			return err
		}
		out = append(out, q)
		return nil
	})
	return out, err
}

// Bodies reads a record's request bodies back from its input, by key.
func (s *Store) Bodies(ctx context.Context, id string) (map[string]json.RawMessage, error) {
	s.bodyReads.Add(1)
	r, err := s.Head(ctx, id)
	if err == nil && r.InStream { // read back by its requests' sequences
		r.Requests, err = s.requests(ctx, id)
	}
	if err != nil {
		return nil, err
	}
	out := map[string]json.RawMessage{}
	if r.Chunks > 0 || r.InStream {
		return out, s.EachInput(ctx, r, func(key string, request json.RawMessage) error {
			out[key] = request
			return nil
		})
	}
	err = s.lines(ctx, bodiesObject(id), func(dec *json.Decoder) error {
		var l bodyLine
		if err := dec.Decode(&l); err != nil {
			return err
		}
		out[l.Key] = l.Body
		return nil
	})
	return out, err
}

// lines streams one object's JSON lines to next, which decodes one.
func (s *Store) lines(ctx context.Context, name string, next func(*json.Decoder) error) error {
	res, err := s.obj.Get(ctx, name)
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	defer res.Close()
	dec := json.NewDecoder(bufio.NewReaderSize(res, 1<<20))
	for dec.More() {
		if err := next(dec); err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
	}
	return nil
}

// List reads every record that is not cleaned, without its requests (Count says how many).
func (s *Store) List(ctx context.Context) ([]*record.Record, error) {
	var out []*record.Record
	err := s.each(ctx, func(r *record.Record) error {
		if r.State != record.Cleaned {
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// each calls f with every record in the bucket, without its requests. It reads the bucket's
// current values as one stream (a watcher's initial values), not one request per key.
func (s *Store) each(ctx context.Context, f func(*record.Record) error) error {
	err := kvsnap.Each(ctx, s.js, s.kv, func(e jetstream.KeyValueEntry) error {
		r, _, err := decode(e)
		if err != nil {
			s.log.Error().Err(err).Str("record", e.Key()).Msg("skipping a record that does not decode")
			return nil
		}
		return f(r)
	})
	if err != nil {
		return fmt.Errorf("list records: %w", err)
	}
	return nil
}

// Delete drops a record's request objects (its input chunks are numbered from 0 without a
// gap, so they are deleted until one is not found); the record itself, Cleaned, stays in the
// bucket until the retention period expires it.
func (s *Store) Delete(ctx context.Context, id string) error {
	s.lost.Delete(id)
	for _, name := range []string{id, bodiesObject(id)} {
		if err := s.obj.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
	}
	for n := 0; ; n++ {
		err := s.obj.Delete(ctx, inputObject(id, n))
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("delete %s: %w", inputObject(id, n), err)
		}
	}
}

// Watch calls f with every record as it is written, from the records that exist at the start
// on, and keeps the sequences of live records (and of those cleaned within the redelivery
// window), so that a redelivered message whose batch is recorded is recognised. It closes
// ready once every record that exists at the start is read, and returns when ctx ends.
func (s *Store) Watch(ctx context.Context, ready chan<- struct{}, f func(*record.Record)) error {
	start, err := kvsnap.Begin(ctx, s.js, s.kv)
	if err != nil {
		return fmt.Errorf("watch records: %w", err)
	}
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch records: %w", err)
	}
	defer w.Stop()
	prune := time.NewTicker(s.window() / 4)
	defer prune.Stop()
	var recheck <-chan time.Time // while records of the start are late: drop those gone since
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-prune.C:
			s.pruneCleaned(time.Now())
		case <-recheck:
			recheck = nil
			if err := start.DropGone(ctx); err != nil {
				s.log.Warn().Err(err).Msg("records watch: look up the records not delivered yet")
			}
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e != nil {
				s.observe(e, f)
			}
			start.Saw(e)
		}
		switch {
		case ready == nil:
		case start.Done():
			close(ready)
			ready = nil
		case start.Late() && recheck == nil:
			recheck = time.After(100 * time.Millisecond)
		}
	}
}

// observe indexes a record as the watch delivers it, and passes it to f.
func (s *Store) observe(e jetstream.KeyValueEntry, f func(*record.Record)) {
	if rev := e.Revision(); rev > s.watchedTop {
		if rev > s.watchedTop+1 {
			s.skips.Add(1)
		}
		s.watchedTop = rev
	}
	r, seqs, err := decode(e)
	if e.Operation() != jetstream.KeyValuePut || err != nil {
		s.watched.Store(e.Revision())
		return
	}
	switch {
	case r.State != record.Cleaned:
		s.index(r.ID, seqs, r.Acked || (r.State != record.Sealed && r.State != record.Submitting), time.Time{})
	case r.Replied > 0 && time.Since(e.Created()) < s.window():
		s.index(r.ID, seqs, true, e.Created()) // answered: its messages are done with
	default: // abandoned before it was sent (its messages are to be batched again), or long done
		s.mu.Lock()
		s.unindex(r.ID)
		s.mu.Unlock()
	}
	s.watched.Store(e.Revision()) // indexed: Sealed answers for it
	f(r)
}

// window is how long the messages of a cleaned record may still be delivered again.
func (s *Store) window() time.Duration { return cmp.Or(s.cfg.RedeliveryWindow, 10*time.Minute) }

// index puts a record's sequences in the redelivery index in place of those it had there;
// settled says its messages are done with (see Recorded); cleaned, if set, is when it was
// cleaned, after which it leaves within the window.
func (s *Store) index(id string, seqs []byte, settled bool, cleaned time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, indexed := s.recSeqs[id]; !indexed { // a record's sequences never change
		list := decodeSeqs(seqs)
		for _, q := range list {
			switch holder, held := s.seqs[q]; {
			case !held: // the first record written holds it: see HeldElsewhere
				s.seqs[q] = id
			case holder != id: // a later one (a resubmission, a duplicate) waits its turn
				s.later[q] = append(s.later[q], id)
			}
		}
		s.recSeqs[id] = list
		delete(s.written, id)
	}
	if settled {
		s.settled[id] = true
	}
	if !cleaned.IsZero() {
		s.cleaned[id] = cleaned
	}
}

// unindex drops a record from the redelivery index. s.mu is held.
func (s *Store) unindex(id string) {
	for _, q := range s.recSeqs[id] {
		next := slices.DeleteFunc(s.later[q], func(l string) bool { return l == id })
		switch {
		case s.seqs[q] != id:
			s.later[q] = next
		case len(next) > 0: // the next record holding it takes it over
			s.seqs[q], s.later[q] = next[0], next[1:]
		default:
			delete(s.seqs, q)
		}
		if len(s.later[q]) == 0 {
			delete(s.later, q)
		}
	}
	delete(s.recSeqs, id)
	delete(s.written, id)
	delete(s.settled, id)
	delete(s.cleaned, id)
}

// pruneCleaned drops the records cleaned longer than the window ago.
func (s *Store) pruneCleaned(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, t := range s.cleaned {
		if now.Sub(t) >= s.window() {
			s.unindex(id)
		}
	}
}

// CaughtUp returns once the watch has passed every record written before the call, so that
// Sealed answers for all of them.
func (s *Store) CaughtUp(ctx context.Context) error {
	for {
		skips := s.skips.Load()
		last, err := s.lastSeq(ctx)
		if err != nil {
			return err
		}
		for s.watched.Load() < last {
			select {
			case <-ctx.Done():
				return fmt.Errorf("records watch at %d, bucket at %d: %w", s.watched.Load(), last, ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		}
		// A record whose revision the watch skipped on the way has a later one, written
		// before the skip and so at or below the bucket's last sequence read after it.
		if s.skips.Load() == skips {
			return nil
		}
	}
}

// lastSeq is the records bucket's last stream sequence, 0 if it holds none (or all expired:
// the newest record expires last).
func (s *Store) lastSeq(ctx context.Context) (uint64, error) {
	st, err := s.kv.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("records bucket %s: %w", s.cfg.RecordsBucket, err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, fmt.Errorf("records bucket %s: no stream state", s.cfg.RecordsBucket)
	}
	if state := bs.StreamInfo().State; state.Msgs > 0 {
		return state.LastSeq, nil
	}
	return 0, nil
}

// HeldElsewhere reports whether a message of r belongs to a record written before it. A
// consumer leader change can lose deliveries, and one message then sits in two replicas' open
// batches at once; each writes its record, waits until its watch has passed its own write
// (CaughtUp), and asks: the record written second sees the first and yields, whatever the
// timing, since every replica's watch sees the writes in one order.
func (s *Store) HeldElsewhere(r *record.Record) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range r.Requests {
		if id, ok := s.seqs[q.Seq]; ok && id != r.ID && q.Seq != 0 {
			return true
		}
	}
	return false
}

// Recorded reports whether a stream sequence belongs to a recorded batch (a live one, or one
// answered within the redelivery window), and whether that batch is settled: its acks
// confirmed, or past submitting. A message of an unsettled batch is neither batched again nor
// acknowledged: its owner may still give the batch up, and the message must then be batched.
func (s *Store) Recorded(seq uint64) (recorded, settled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.seqs[seq]
	return ok, ok && s.settled[id]
}

// Confirmed marks a record's acks confirmed, so that whoever takes it over need not remove its
// messages from the stream. Its sequences stay indexed: a consumer leader change can lose
// confirmed acks.
func (s *Store) Confirmed(ctx context.Context, r *record.Record) error {
	r.Acked = true
	if err := s.Update(ctx, r); err != nil {
		r.Acked = false
		return err
	}
	return nil
}

// bare copies a record without its requests.
func bare(r *record.Record) *record.Record {
	c := *r
	c.Requests = nil
	return &c
}

// Ping checks that the records bucket answers.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.kv.Status(ctx); err != nil {
		return fmt.Errorf("records bucket %s: %w", s.cfg.RecordsBucket, err)
	}
	return nil
}
