// Package kvsnap tells when a watch of a JetStream key-value bucket has delivered every key
// the bucket held when it began. The watcher's own marker for that (a nil entry) can come
// before every key is delivered when keys are written during the watch (nats-server#4824,
// nats.py#995), so a list that stops there can leave out a key that existed all along.
// kvsnap takes the bucket's keys from the stream's own list of subjects first, and checks the
// watch against it.
package kvsnap

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Initial is the set of keys a bucket held when a watch of it began, less those the watch
// has delivered.
type Initial struct {
	kv     jetstream.KeyValue
	unread map[string]bool
	marked bool // the watcher's marker came
}

// Begin reads the keys the bucket holds now (a deleted key's marker counts: it is a message
// too). Start the watch after it.
func Begin(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (*Initial, error) {
	stream, err := js.Stream(ctx, "KV_"+kv.Bucket())
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", kv.Bucket(), err)
	}
	prefix := "$KV." + kv.Bucket() + "."
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("bucket %s: keys: %w", kv.Bucket(), err)
	}
	in := &Initial{kv: kv, unread: make(map[string]bool, len(info.State.Subjects))}
	for subject := range info.State.Subjects {
		in.unread[strings.TrimPrefix(subject, prefix)] = true
	}
	return in, nil
}

// Saw notes an entry of the watch (nil: the watcher's marker).
func (in *Initial) Saw(e jetstream.KeyValueEntry) {
	if e == nil {
		in.marked = true
		return
	}
	delete(in.unread, e.Key())
}

// Done reports whether the watch has delivered every key of the start.
func (in *Initial) Done() bool { return in.marked && len(in.unread) == 0 }

// Late reports whether the marker came before some keys of the start: they come later, or
// expired since.
func (in *Initial) Late() bool { return in.marked && len(in.unread) > 0 }

// DropGone forgets the keys not delivered yet that the bucket no longer holds.
func (in *Initial) DropGone(ctx context.Context) error {
	return in.readLate(ctx, func(jetstream.KeyValueEntry) error { return nil })
}

// readLate calls f with the current value of each key not delivered yet, and forgets those
// the bucket no longer holds.
func (in *Initial) readLate(ctx context.Context, f func(jetstream.KeyValueEntry) error) error {
	for key := range in.unread {
		e, err := in.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound): // deleted, or expired
			delete(in.unread, key)
			continue
		case err != nil:
			return fmt.Errorf("read %s %s: %w", in.kv.Bucket(), key, err)
		}
		if err := f(e); err != nil {
			return err
		}
	}
	return nil
}

// Each calls f with the current value of every key the bucket holds when Each is called (one
// written since may be left out): in one stream of messages, a watcher's initial values, and
// one request each for the few keys the watch delivers after its marker.
func Each(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, f func(jetstream.KeyValueEntry) error) error {
	in, err := Begin(ctx, js, kv)
	if err != nil {
		return err
	}
	w, err := kv.WatchAll(ctx) // deletes included: a key deleted since is done with
	if err != nil {
		return fmt.Errorf("watch %s: %w", kv.Bucket(), err)
	}
	defer func() { _ = w.Stop() }()
	for !in.marked {
		select {
		case <-ctx.Done():
			return fmt.Errorf("read %s: %w", kv.Bucket(), ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("read %s: the watch ended", kv.Bucket())
			}
			in.Saw(e)
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if err := f(e); err != nil {
				return err
			}
		}
	}
	return in.readLate(ctx, f)
}
