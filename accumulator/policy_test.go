package accumulator

import (
	"testing"
	"time"
)

func TestPolicy(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lim := Limits{MaxRequests: 3, MaxBytes: 100, MaxWait: time.Minute}
	type add struct {
		size     int64
		at       time.Duration
		wantFull bool
		wantWhy  Reason
	}
	tests := []struct {
		name      string
		adds      []add
		wantUntil time.Duration
	}{
		{"count closes", []add{{10, 0, false, ""}, {10, time.Second, false, ""}, {10, 2 * time.Second, true, ReasonCount}}, time.Minute - 2*time.Second},
		{"bytes close at the limit", []add{{60, 0, false, ""}, {40, 0, true, ReasonBytes}}, time.Minute},
		{"one large request is full alone", []add{{500, 0, true, ReasonBytes}}, time.Minute},
		{"count wins over bytes", []add{{10, 0, false, ""}, {10, 0, false, ""}, {80, 0, true, ReasonCount}}, time.Minute},
		{"wait is measured from the first request", []add{{1, 10 * time.Second, false, ""}, {1, 50 * time.Second, false, ""}}, 20 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPolicy(lim)
			var last time.Duration
			for i, a := range tt.adds {
				full, why := p.Add(a.size, t0.Add(a.at))
				if full != a.wantFull || why != a.wantWhy {
					t.Fatalf("add %d: got (%v, %q), want (%v, %q)", i, full, why, a.wantFull, a.wantWhy)
				}
				last = a.at
			}
			until, ok := p.Until(t0.Add(last))
			if !ok || until != tt.wantUntil {
				t.Fatalf("Until = %v, %v; want %v, true", until, ok, tt.wantUntil)
			}
		})
	}
}

func TestPolicyFitsAndReset(t *testing.T) {
	t0 := time.Now()
	p := NewPolicy(Limits{MaxRequests: 10, MaxBytes: 100, MaxWait: time.Second})
	if !p.Fits(1000) {
		t.Fatal("an empty batch must take any request")
	}
	p.Add(70, t0)
	if p.Fits(31) {
		t.Fatal("70+31 fits a 100-byte batch")
	}
	if !p.Fits(30) {
		t.Fatal("70+30 does not fit a 100-byte batch")
	}
	if d, ok := p.Until(t0.Add(2 * time.Second)); !ok || d != 0 {
		t.Fatalf("overdue batch: Until = %v, %v; want 0, true", d, ok)
	}
	p.Reset()
	if _, ok := p.Until(t0); ok || p.Count() != 0 || p.Bytes() != 0 {
		t.Fatal("Reset left the batch non-empty")
	}
}
