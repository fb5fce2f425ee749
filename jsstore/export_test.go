package jsstore

import "github.com/nats-io/nats.go/jetstream"

// WrapKV puts f's KeyValue between the store and its records bucket, for tests that lose the
// answers of real writes.
func (s *Store) WrapKV(f func(jetstream.KeyValue) jetstream.KeyValue) { s.kv = f(s.kv) }
