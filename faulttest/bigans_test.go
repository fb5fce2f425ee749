package faulttest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/internal/failpoint"
)

// sendImages publishes n image requests, whose answers are larger than the server's max payload.
func (w *world) sendImages(n int, tag string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		key := fmt.Sprintf("%s-%04d", tag, i)
		body, _ := json.Marshal(map[string]any{
			"contents":         []any{map[string]any{"parts": []any{map[string]string{"text": "draw " + key}}}},
			"generationConfig": map[string]any{"responseModalities": []string{"IMAGE"}},
		})
		msg := nats.NewMsg("gembatch.stream.generate")
		msg.Data = body
		msg.Header.Set("Gembatch-Key", key)
		msg.Header.Set("Gembatch-Reply", "ledger."+key)
		msg.Header.Set("Gembatch-Model", "gemini-2.5-flash-image")
		if _, err := w.js.PublishMsg(ctx, msg); err != nil {
			w.t.Fatalf("publish %s: %v", key, err)
		}
		w.sent = append(w.sent, key)
	}
}

// longLease is a lease long enough for the daemon's create fence: with the harness's 2s lease
// the submitter never certainly holds it for the 1s create timeout plus its 1s margin, and
// holds every create back (the other tests of this package meet that too).
var longLease = []string{"GEMBATCH_LEASE_TTL=9s", "GEMBATCH_ACK_WAIT=20s"}

// TestCrashBetweenResultObjectAndReply kills gembatchd once it has written a big answer to the
// results bucket and before it published the reply naming it. The instance started again
// answers every request; a reply sent again is the same reference (no conflicting answer), and
// every big answer is one object, none written twice.
func TestCrashBetweenResultObjectAndReply(t *testing.T) {
	w := newWorldWith(t, worldOptions{jobDelay: 300 * time.Millisecond, maxPayload: 64 << 10, imageBytes: 150_000})
	w.models = []string{"gemini-2.5-flash-image"}
	d := w.start("a", append(longLease, "GEMBATCH_FAILPOINT="+failpoint.AfterResultObjectBeforeReply+":2")...)
	w.sendImages(6, "img")
	w.send(6, "txt")
	if !d.died(30 * time.Second) {
		d.kill()
		t.Fatalf("failpoint %s was never reached\n%s", failpoint.AfterResultObjectBeforeReply, d.log())
	}
	bucket, err := w.js.ObjectStore(context.Background(), "gembatch-results")
	if err != nil {
		t.Fatal(err)
	}
	before := objects(t, bucket)
	if len(before) != 2 {
		t.Fatalf("%d result objects at the crash, want 2", len(before))
	}
	again := w.start("a", longLease...)
	w.waitAnswered(60 * time.Second)
	again.stop(t)
	f := w.measure()
	report(t, "crash between a result object and its reply: "+f.String())
	check(t, w, f)
	after := objects(t, bucket)
	if len(after) != 6 {
		t.Fatalf("%d result objects, want one per image request (6)", len(after))
	}
	for name, nuid := range before {
		if after[name] != nuid {
			t.Errorf("object %s written again after the restart", name)
		}
	}
	refs := 0
	for key, as := range w.replies.core() {
		if strings.HasPrefix(key, "img-") && len(as) > 0 {
			refs++
		}
	}
	if refs != 6 {
		t.Fatalf("%d image requests answered, want 6", refs)
	}
}

// objects lists a bucket's objects: name to the NUID of the write that made it.
func objects(t *testing.T, bucket jetstream.ObjectStore) map[string]string {
	t.Helper()
	infos, err := bucket.List(context.Background())
	if err != nil && err != jetstream.ErrNoObjectsFound {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, i := range infos {
		out[i.Name] = i.NUID
	}
	return out
}
