package readiness

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	down := errors.New("connection refused")
	tests := []struct {
		name       string
		pingedAt   time.Time // zero: never pinged
		pingErr    error
		now        time.Time
		lastAnswer time.Time
		want       Action
	}{
		{"never answered, never pinged: ping", time.Time{}, nil, t0, time.Time{}, Ping},
		{"traffic answered seconds ago: ready without a ping", time.Time{}, nil, t0, t0.Add(-5 * time.Second), Ready},
		{"traffic answered seconds ago, a ping failed since: still ready", t0.Add(-time.Second), down, t0, t0.Add(-5 * time.Second), Ready},
		{"answer a minute old, no recent ping: ping", t0.Add(-2 * time.Minute), nil, t0, t0.Add(-time.Minute), Ping},
		{"answer old, ping failed 30s ago: not ready, no second ping", t0.Add(-30 * time.Second), down, t0, t0.Add(-2 * time.Minute), NotReady},
		{"answer old, ping failed a minute ago: ping again", t0.Add(-time.Minute), down, t0, t0.Add(-2 * time.Minute), Ping},
		{"never answered, ping failed 59s ago: not ready", t0.Add(-59 * time.Second), down, t0, time.Time{}, NotReady},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a Gate
			if !tt.pingedAt.IsZero() {
				a.Pinged(tt.pingedAt, tt.pingErr)
			}
			if got := a.Decide(tt.now, tt.lastAnswer); got != tt.want {
				t.Fatalf("Decide = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestOutage follows probes every 10s through an outage that starts after the last answer:
// ready for the rest of the minute, then one ping a minute, each failure explained.
func TestOutage(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	lastAnswer := t0
	var a Gate
	var pings []time.Duration
	for at := time.Duration(0); at <= 3*time.Minute; at += 10 * time.Second {
		now := t0.Add(at)
		switch a.Decide(now, lastAnswer) {
		case Ready:
			if at >= Window {
				t.Fatalf("ready at +%s, a minute after the last answer", at)
			}
		case Ping:
			pings = append(pings, at)
			a.Pinged(now, errors.New("503"))
		case NotReady:
			if err := a.Err(now, lastAnswer); !strings.Contains(err.Error(), "503") {
				t.Fatalf("not ready without the cause: %v", err)
			}
		}
	}
	want := []time.Duration{time.Minute, 2 * time.Minute, 3 * time.Minute}
	if len(pings) != len(want) {
		t.Fatalf("pinged at %v, want %v", pings, want)
	}
	for i := range want {
		if pings[i] != want[i] {
			t.Fatalf("pinged at %v, want %v", pings, want)
		}
	}
}
