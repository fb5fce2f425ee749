package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/internal/natstest"
	"github.com/gembatch/gembatch/jsstore"
	"github.com/gembatch/gembatch/record"
)

// A batch that waited for its group's previous batch to be recorded longer than a quarter of
// the AckWait had no heartbeat meanwhile: it is handed back, not recorded. The far side shows
// it: no record in the bucket, no input left, and its messages still pending in the consumer,
// to be delivered again.
func TestBatchThatWaitedItsTurnIsHandedBack(t *testing.T) {
	nc := natstest.NATS(t) // stacktest would import this package
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	st, err := jsstore.Open(ctx, js, jsstore.Config{RecordsBucket: "recs", RequestsBucket: "reqs", Replicas: 1,
		Storage: jetstream.FileStorage, Retention: time.Hour}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	cons, msgs := natstest.Pulled(t, nc, 3, time.Minute)
	now := time.Now()
	rec := &record.Record{ID: "waited", State: record.Sealed, Sealed: now.Add(-2 * time.Second), Count: 3}
	input := st.OpenInput(rec.ID, false)
	for _, m := range msgs {
		q := record.Request{Key: fmt.Sprint(len(rec.Requests)), Body: []byte(`{"contents":[]}`), Size: 15, Received: now.Add(-3 * time.Second), Msg: m}
		if _, err := input.Append(q); err != nil {
			t.Fatal(err)
		}
		rec.Requests = append(rec.Requests, q)
	}
	if err = input.Seal(rec); err != nil {
		t.Fatal(err)
	}
	d := &durableSealer{store: st, own: func(*record.Record) {}, log: zerolog.Nop(), ackWait: 4 * time.Second, now: func() time.Time { return now }}
	d.seal(rec) // sealed 2s ago: more than a quarter of the 4s AckWait

	if _, err := st.Get(ctx, rec.ID); !errors.Is(err, record.ErrNotFound) {
		t.Errorf("record of the batch handed back: %v, want not found", err)
	}
	if rd, err := st.Input(ctx, rec); err == nil {
		b, _ := io.ReadAll(rd)
		_ = rd.Close()
		if len(b) > 0 {
			t.Errorf("the input of the batch handed back is still there: %d bytes", len(b))
		}
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 3 {
		t.Errorf("consumer holds %d messages unacknowledged, want all 3 left to be delivered again", info.NumAckPending)
	}
}
