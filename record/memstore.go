package record

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
)

// MemStore is an in-memory Store: records live as long as the process.
type MemStore struct {
	mu      sync.Mutex
	records map[string]*Record
	rev     uint64
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns an empty in-memory store.
func NewMemStore() *MemStore { return &MemStore{records: make(map[string]*Record)} }

// Create stores a new record.
func (s *MemStore) Create(_ context.Context, r *Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.records[r.ID]; ok {
		return ErrExists
	}
	s.rev++
	r.Revision = s.rev
	s.records[r.ID] = clone(r)
	return nil
}

// Update replaces a record if its revision is still the stored one.
func (s *MemStore) Update(_ context.Context, r *Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.records[r.ID]
	if !ok {
		return ErrNotFound
	}
	if cur.Revision != r.Revision {
		return ErrConflict
	}
	s.rev++
	r.Revision = s.rev
	s.records[r.ID] = clone(r)
	return nil
}

// Get returns a copy of a record.
func (s *MemStore) Get(_ context.Context, id string) (*Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.records[id]
	if !ok {
		return nil, ErrNotFound
	}
	return clone(r), nil
}

// Bodies returns the bodies the record's requests were stored with.
func (s *MemStore) Bodies(_ context.Context, id string) (map[string]json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.records[id]
	if !ok {
		return nil, ErrNotFound
	}
	out := make(map[string]json.RawMessage, len(r.Requests))
	for _, q := range r.Requests {
		out[q.Key] = q.Body
	}
	return out, nil
}

// List returns copies of all records, ordered by id.
func (s *MemStore) List(_ context.Context) ([]*Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Record, 0, len(s.records))
	for _, r := range s.records {
		out = append(out, clone(r))
	}
	slices.SortFunc(out, func(a, b *Record) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Heads returns copies of all records without their requests, ordered by id: what a metrics
// scrape reads, at a cost that does not grow with the requests the records hold.
func (s *MemStore) Heads(_ context.Context) ([]*Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Record, 0, len(s.records))
	for _, r := range s.records {
		h := *r
		h.Requests, h.Error = nil, nil
		out = append(out, &h)
	}
	slices.SortFunc(out, func(a, b *Record) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Delete removes a record.
func (s *MemStore) Delete(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.records[id]; !ok {
		return ErrNotFound
	}
	delete(s.records, id)
	return nil
}

// clone copies the record and its request slice; request bodies are shared, never mutated.
func clone(r *Record) *Record {
	c := *r
	c.Requests = slices.Clone(r.Requests)
	if r.Error != nil {
		e := *r.Error
		c.Error = &e
	}
	return &c
}
