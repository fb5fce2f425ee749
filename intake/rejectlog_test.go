package intake

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
)

// lockedBuffer is a log sink safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		_ = json.Unmarshal([]byte(line), &m)
		out = append(out, m)
	}
	return out
}

// TestRejectionsSummarised: 300 duplicate keys make one full warn line and, at the end of the
// interval, one line with the count of the rest, not 300 lines; another reason is logged on
// its own; Drain logs what is still counted.
func TestRejectionsSummarised(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs lockedBuffer
		in := New(Config{}, nil, nil, nil, zerolog.New(&logs), nil)
		dup := func(key string) *Rejection {
			return &Rejection{Reason: ReasonDuplicate, Key: key, Status: gemini.NewStatus(6, "duplicate key %q", key)}
		}
		for i := range 300 {
			in.Reject(gemini.KindGenerate, "", dup(fmt.Sprintf("k%03d", i)))
		}
		in.Reject(gemini.KindGenerate, "", &Rejection{Reason: ReasonInvalidJSON, Key: "j", Status: gemini.NewStatus(3, "not JSON")})
		if got := logs.lines(); len(got) != 2 || got[0]["key"] != "k000" || got[1]["reason"] != ReasonInvalidJSON {
			t.Fatalf("before the interval ends: %d lines %v, want the first duplicate and the invalid one", len(got), got)
		}
		time.Sleep(rejectLogInterval + time.Second)
		got := logs.lines()
		if len(got) != 3 || got[2]["reason"] != ReasonDuplicate || got[2]["count"] != 299.0 || got[2]["last_key"] != "k299" {
			t.Fatalf("after the interval: %d lines, last %v; want one summary of 299 duplicates", len(got), got[len(got)-1])
		}

		in.Reject(gemini.KindGenerate, "", dup("again-1"))
		in.Reject(gemini.KindGenerate, "", dup("again-2"))
		if err := in.Drain(context.Background()); err != nil {
			t.Fatal(err)
		}
		got = logs.lines()
		if len(got) != 5 || got[4]["count"] != 1.0 {
			t.Fatalf("after Drain: %d lines, last %v; want the counted one summarised", len(got), got[len(got)-1])
		}
	})
}
