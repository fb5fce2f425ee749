package submitter_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
	"github.com/gembatch/gembatch/submitter"
)

// inputs is a store's input of each record, as JSONL; reads counts the streams opened.
type inputs struct {
	files map[string][]byte
	reads atomic.Int64
}

var _ submitter.Input = (*inputs)(nil)

func (in *inputs) Input(_ context.Context, rec *record.Record) (io.ReadCloser, error) {
	in.reads.Add(1)
	return io.NopCloser(bytes.NewReader(in.files[rec.ID])), nil
}

func (in *inputs) EachInput(_ context.Context, rec *record.Record, f func(string, json.RawMessage) error) error {
	in.reads.Add(1)
	dec := json.NewDecoder(bytes.NewReader(in.files[rec.ID]))
	for dec.More() {
		var l struct {
			Key     string          `json:"key"`
			Request json.RawMessage `json:"request"`
		}
		if err := dec.Decode(&l); err != nil {
			return err
		}
		if err := f(l.Key, l.Request); err != nil {
			return err
		}
	}
	return nil
}

// stored moves a record's bodies into in, as the accumulator does in durable mode.
func (in *inputs) stored(t *testing.T, rec *record.Record) map[string]string {
	t.Helper()
	var b bytes.Buffer
	w := gemini.NewInputWriter(&b)
	digests := map[string]string{}
	for i, q := range rec.Requests {
		if err := w.Write(q.Key, q.Body); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(q.Body)
		digests[q.Key] = hex.EncodeToString(sum[:])
		rec.Requests[i].Body = nil
	}
	in.files[rec.ID] = b.Bytes()
	rec.Chunks = 1
	return digests
}

// A record whose bodies are in the store is sent from there, by file (the upload streams the
// stored input) and inline (the create reads it), and the service gets every request intact.
func TestBodiesFromTheStore(t *testing.T) {
	in := &inputs{files: map[string][]byte{}}
	e := setup(t, emulator.Options{}, submitter.Config{InlineMaxBytes: 4096, Input: in})
	small, large := sealed(3, 10), sealed(20, 400)
	want := in.stored(t, small)
	for k, d := range in.stored(t, large) {
		want[k+"/large"] = d
	}
	e.run(t, small, large)
	if len(e.submitted) != 2 || len(e.failed) != 0 || in.reads.Load() != 2 {
		t.Fatalf("%d submitted, %d failed, %d reads of the store", len(e.submitted), len(e.failed), in.reads.Load())
	}
	modes := map[record.Mode]bool{}
	for _, r := range e.submitted {
		modes[r.Mode] = true
	}
	if !modes[record.ModeInline] || !modes[record.ModeFile] {
		t.Fatalf("modes %v, want one inline and one file", modes)
	}
	got := map[string]int{}
	for _, entry := range e.emu.Ledger().Entries {
		got[entry.Digest]++
	}
	for k, d := range want {
		if got[d] == 0 {
			t.Fatalf("request %s never reached the service intact", k)
		}
	}
	if len(e.emu.Ledger().Entries) != 23 {
		t.Fatalf("service billed %d requests, want 23", len(e.emu.Ledger().Entries))
	}
}

// flakyInputs fails the first read of an inline batch's input, as a store under load times out.
type flakyInputs struct {
	inputs
	failed atomic.Bool
}

func (in *flakyInputs) EachInput(ctx context.Context, rec *record.Record, f func(string, json.RawMessage) error) error {
	if in.failed.CompareAndSwap(false, true) {
		return errors.New("nats: timeout")
	}
	return in.inputs.EachInput(ctx, rec, f)
}

// A failed read of the batch's input from the store is tried again, like a failed upload: the
// batch is submitted once, never failed with the store's error (a load-dependent failure of the
// ten-thousand-request test answered a whole batch with "nats: timeout").
func TestFailedInputReadIsRetried(t *testing.T) {
	in := &flakyInputs{inputs: inputs{files: map[string][]byte{}}}
	e := setup(t, emulator.Options{}, submitter.Config{InlineMaxBytes: 1 << 20, Input: in, CreateGrace: 50 * time.Millisecond})
	rec := sealed(3, 10)
	in.stored(t, rec)
	e.run(t, rec)
	if len(e.submitted) != 1 || len(e.failed) != 0 || e.emu.Creates(rec.DisplayName()) != 1 {
		t.Fatalf("%d submitted, %d failed, %d creates; want the batch submitted once after the failed read",
			len(e.submitted), len(e.failed), e.emu.Creates(rec.DisplayName()))
	}
}
