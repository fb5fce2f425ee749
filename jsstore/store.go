// Package jsstore keeps batch records in JetStream: each record in a KV bucket, its requests in
// an object store. It implements record.Store with ownership: a record is worked on by one
// gembatchd instance at a time, under a lease renewed by compare-and-set on the record's
// revision, so that an instance that lost its lease (paused, partitioned) cannot write again.
package jsstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/record"
)

// Config names the buckets and sets the lease.
type Config struct {
	// RecordsBucket is the KV bucket of records; RequestsBucket the object store of request lines.
	RecordsBucket  string
	RequestsBucket string
	Replicas       int
	Storage        jetstream.StorageType
	// Retention is how long a record is kept after its last write; cleaned records expire then.
	Retention time.Duration
	// Instance names this gembatchd; a restart with the same name resumes its records at once.
	Instance string
	// LeaseTTL is how long a record stays owned without renewal; others take it over after.
	LeaseTTL time.Duration
	Now      func() time.Time
}

// Store is a record.Store on JetStream KV and object store.
type Store struct {
	cfg Config
	kv  jetstream.KeyValue
	obj jetstream.ObjectStore
	log zerolog.Logger

	mu    sync.Mutex
	owned map[string]*owned // records this instance holds a lease on
	seqs  map[uint64]string // stream sequence → live record holding that request
	lost  func(id string)
}

// owned is the last state of an owned record this instance wrote (without its requests, which
// the pipeline may be changing), with its revision and its requests' sequences.
type owned struct {
	rec  *record.Record
	rev  uint64
	seqs []byte
}

func newOwned(r *record.Record, rev uint64) *owned {
	return &owned{rec: bare(r), rev: rev, seqs: encodeSeqs(r.Requests)}
}

var _ record.Store = (*Store)(nil)

// Open creates the buckets if they do not exist and returns the store.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config, log zerolog.Logger) (*Store, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
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
	obj, err := js.ObjectStore(ctx, cfg.RequestsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		obj, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket: cfg.RequestsBucket, Description: "gembatch request lines of each batch record",
			Replicas: cfg.Replicas, Storage: cfg.Storage,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("requests bucket %s: %w", cfg.RequestsBucket, err)
	}
	return &Store{cfg: cfg, kv: kv, obj: obj, log: log, owned: make(map[string]*owned), seqs: make(map[uint64]string)}, nil
}

// OnLost sets a function told of each record whose lease this instance lost.
func (s *Store) OnLost(f func(id string)) { s.lost = f }

// stored is a record as the KV bucket holds it: without its requests, with their sequences.
type stored struct {
	*record.Record
	Seqs []byte `json:"seqs,omitempty"` // delta-varint stream sequences, for redelivery checks
}

func encode(r *record.Record, seqs []byte) ([]byte, error) {
	return json.Marshal(stored{Record: bare(r), Seqs: seqs})
}

// Create writes the request lines, then the record, owned by this instance.
func (s *Store) Create(ctx context.Context, r *record.Record) error {
	if _, err := s.kv.Get(ctx, r.ID); err == nil {
		return record.ErrExists // its requests must not be overwritten
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, q := range r.Requests {
		if err := enc.Encode(q); err != nil {
			return fmt.Errorf("encode requests of %s: %w", r.ID, err)
		}
	}
	if _, err := s.obj.Put(ctx, jetstream.ObjectMeta{Name: r.ID}, &buf); err != nil {
		return fmt.Errorf("store requests of %s: %w", r.ID, err)
	}
	r.Owner, r.LeaseUntil = s.cfg.Instance, s.cfg.Now().Add(s.cfg.LeaseTTL)
	o := newOwned(r, 0)
	b, err := encode(r, o.seqs)
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
	r.Revision, o.rev = rev, rev
	s.mu.Lock()
	s.owned[r.ID] = o
	for _, q := range r.Requests {
		if q.Seq != 0 {
			s.seqs[q.Seq] = r.ID
		}
	}
	s.mu.Unlock()
	return nil
}

// Update writes r if this instance still owns it, renewing the lease. Its compare-and-set is on
// the revision this instance last wrote: a takeover by another instance makes it fail with
// record.ErrConflict, and the record is no longer owned here.
func (s *Store) Update(ctx context.Context, r *record.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.owned[r.ID]
	if o == nil {
		return fmt.Errorf("record %s is not owned by %s: %w", r.ID, s.cfg.Instance, record.ErrConflict)
	}
	r.Owner, r.LeaseUntil = s.cfg.Instance, s.cfg.Now().Add(s.cfg.LeaseTTL)
	rev, err := s.write(ctx, r, o)
	if err != nil {
		return err
	}
	o.rec, o.rev, r.Revision = bare(r), rev, rev
	return nil
}

// write is a compare-and-set write on o's revision; the caller holds s.mu.
func (s *Store) write(ctx context.Context, r *record.Record, o *owned) (uint64, error) {
	b, err := encode(r, o.seqs)
	if err != nil {
		return 0, err
	}
	next, err := s.kv.Update(ctx, r.ID, b, o.rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		delete(s.owned, r.ID)
		s.log.Warn().Str("record", r.ID).Msg("lost the lease on a record: another instance took it over")
		if s.lost != nil {
			go s.lost(r.ID)
		}
		return 0, fmt.Errorf("record %s: %w", r.ID, record.ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("write record %s: %w", r.ID, err)
	}
	return next, nil
}

// Get reads a record with its requests.
func (s *Store) Get(ctx context.Context, id string) (*record.Record, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, record.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", id, err)
	}
	r, err := decode(e)
	if err != nil {
		return nil, err
	}
	if r.State == record.Cleaned {
		return r, nil
	}
	if r.Requests, err = s.requests(ctx, id); err != nil {
		return nil, err
	}
	return r, nil
}

func decode(e jetstream.KeyValueEntry) (*record.Record, error) {
	st := stored{Record: &record.Record{}}
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return nil, fmt.Errorf("decode record %s: %w", e.Key(), err)
	}
	st.Record.Revision = e.Revision()
	return st.Record, nil
}

// requests reads a record's request lines.
func (s *Store) requests(ctx context.Context, id string) ([]record.Request, error) {
	res, err := s.obj.Get(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("read requests of %s: %w", id, err)
	}
	defer res.Close()
	var out []record.Request
	dec := json.NewDecoder(bufio.NewReaderSize(res, 1<<20))
	for {
		var q record.Request
		if err := dec.Decode(&q); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("read requests of %s: %w", id, err)
		}
		out = append(out, q)
	}
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
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("list records: %w", err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("list records: %w", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok || e == nil { // nil: the current values are all read
				return nil
			}
			r, err := decode(e)
			if err != nil {
				s.log.Error().Err(err).Str("record", e.Key()).Msg("skipping a record that does not decode")
				continue
			}
			if err := f(r); err != nil {
				return err
			}
		}
	}
}

// Delete drops a record's request lines and its ownership; the record itself, Cleaned, stays
// in the bucket until the retention period expires it.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := s.obj.Delete(ctx, id); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("delete requests of %s: %w", id, err)
	}
	s.mu.Lock()
	delete(s.owned, id)
	s.mu.Unlock()
	return nil
}

// Claim takes ownership of a record that is unowned, owned by this instance's name (a restart),
// or whose lease has expired. It reports false when another instance holds it.
func (s *Store) Claim(ctx context.Context, r *record.Record) (bool, error) {
	now := s.cfg.Now()
	if r.Owner != "" && r.Owner != s.cfg.Instance && now.Before(r.LeaseUntil) {
		return false, nil
	}
	prev := r.Owner
	r.Owner, r.LeaseUntil = s.cfg.Instance, now.Add(s.cfg.LeaseTTL)
	s.mu.Lock()
	defer s.mu.Unlock()
	o := newOwned(r, r.Revision)
	rev, err := s.write(ctx, r, o)
	if errors.Is(err, record.ErrConflict) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	r.Revision, o.rev = rev, rev
	s.owned[r.ID] = o
	if prev != s.cfg.Instance {
		s.log.Info().Str("record", r.ID).Str("from", prev).Str("state", string(r.State)).Msg("took over a record")
	}
	return true, nil
}

// Renew extends the lease of every owned record. Run it every LeaseTTL/3.
func (s *Store) Renew(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, o := range s.owned {
		r := bare(o.rec)
		r.LeaseUntil = s.cfg.Now().Add(s.cfg.LeaseTTL)
		rev, err := s.write(ctx, r, o)
		if err != nil {
			if !errors.Is(err, record.ErrConflict) {
				s.log.Warn().Err(err).Str("record", id).Msg("renew lease")
			}
			continue
		}
		o.rec, o.rev = r, rev
	}
}

// Owned is the number of records this instance holds.
func (s *Store) Owned() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.owned)
}

// Watch keeps the set of sealed stream sequences up to date with every instance's records,
// so that a redelivered message whose batch is already recorded is recognised. It closes ready
// once the records that exist at the start are read, and returns when ctx ends.
func (s *Store) Watch(ctx context.Context, ready chan<- struct{}) error {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch records: %w", err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil { // the initial values are all read
				if ready != nil {
					close(ready)
					ready = nil
				}
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var st stored
			if json.Unmarshal(e.Value(), &st) != nil || st.Record == nil {
				continue
			}
			seqs := decodeSeqs(st.Seqs)
			s.mu.Lock()
			for _, q := range seqs {
				if st.State != record.Cleaned {
					s.seqs[q] = st.ID
				} else if s.seqs[q] == st.ID { // a split record's requests live on in its parts
					delete(s.seqs, q)
				}
			}
			s.mu.Unlock()
		}
	}
}

// Sealed reports whether a stream sequence belongs to a recorded batch.
func (s *Store) Sealed(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.seqs[seq]
	return ok
}

// bare copies a record without its requests.
func bare(r *record.Record) *record.Record {
	c := *r
	c.Requests = nil
	return &c
}

// ClaimAll takes over every record this instance may claim (see Claim) and returns them with
// their requests, along with every record not cleaned, without requests (read in the same pass,
// for whoever needs the whole picture). Records already owned here, cleaned, or leased by a
// live instance are not claimed and their requests not read.
func (s *Store) ClaimAll(ctx context.Context) (claimed, all []*record.Record, err error) {
	now := s.cfg.Now()
	err = s.each(ctx, func(r *record.Record) error {
		if r.State == record.Cleaned {
			return nil
		}
		all = append(all, r)
		s.mu.Lock()
		_, mine := s.owned[r.ID]
		s.mu.Unlock()
		if mine || (r.Owner != s.cfg.Instance && now.Before(r.LeaseUntil)) {
			return nil
		}
		var err error
		if r.Requests, err = s.requests(ctx, r.ID); err != nil {
			return err
		}
		ok, err := s.Claim(ctx, r)
		if ok {
			claimed = append(claimed, r)
		}
		return err
	})
	return claimed, all, err
}

// Ping checks that the records bucket answers.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.kv.Status(ctx); err != nil {
		return fmt.Errorf("records bucket %s: %w", s.cfg.RecordsBucket, err)
	}
	return nil
}
