package jsstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/record"
)

// Sweep deletes the request objects no live record names that were last written before
// cutoff: the input chunks of a batch a crash (or a failed seal) left unrecorded, and what a
// cleaned record's delete left behind. An open batch's chunks have no record yet, so cutoff
// must lie further back than a batch stays open. It returns how many objects it deleted.
func (s *Store) Sweep(ctx context.Context, cutoff time.Time) (int, error) {
	infos, err := s.obj.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", s.cfg.RequestsBucket, err)
	}
	var old []string
	for _, info := range infos {
		if info.ModTime.Before(cutoff) {
			old = append(old, info.Name)
		}
	}
	if len(old) == 0 {
		return 0, nil
	}
	// Records are read after the objects: a record written meanwhile is seen.
	live := map[string]bool{}
	if err := s.each(ctx, func(r *record.Record) error {
		live[r.ID] = r.State != record.Cleaned
		return nil
	}); err != nil {
		return 0, err
	}
	deleted := 0
	for _, name := range old {
		if live[recordOf(name)] {
			continue
		}
		if err := s.obj.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return deleted, fmt.Errorf("delete %s: %w", name, err)
		}
		deleted++
	}
	return deleted, nil
}

// recordOf is the id of the record an object belongs to: <id>, <id>.bodies or <id>.input.<n>.
func recordOf(name string) string {
	if id, _, ok := strings.Cut(name, ".input."); ok {
		return id
	}
	return strings.TrimSuffix(name, ".bodies")
}
