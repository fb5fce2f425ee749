package ownership

import (
	"testing"
	"time"
)

func TestJudge(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ttl := 30 * time.Second
	self := Owner{"a", 7}
	seen := map[string]Sighting{
		"b":    {Epoch: 5, Revision: 40, Seen: t0},
		"gone": {Epoch: 3, Revision: 9, Seen: t0, Gone: true},
		"a":    {Epoch: 7, Revision: 41, Seen: t0},
	}
	for _, tc := range []struct {
		name  string
		owner Owner
		now   time.Time
		want  Verdict
	}{
		{"own current epoch", Owner{"a", 7}, t0, Mine},
		{"own name, earlier epoch (a restart)", Owner{"a", 2}, t0, Claim},
		{"unowned", Owner{}, t0, Claim},
		{"live other", Owner{"b", 5}, t0.Add(ttl - time.Millisecond), Live},
		{"other silent for the TTL", Owner{"b", 5}, t0.Add(ttl), Confirm},
		{"other restarted", Owner{"b", 4}, t0, Claim},
		{"record newer than the sighting", Owner{"b", 6}, t0, Confirm},
		{"lease released", Owner{"gone", 3}, t0, Claim},
		{"lease never seen", Owner{"c", 1}, t0, Confirm},
	} {
		if got := Judge(tc.owner, self, seen, tc.now, ttl); got != tc.want {
			t.Errorf("%s: Judge = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestHolds(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ttl, margin := 30*time.Second, 10*time.Second
	for _, tc := range []struct {
		now  time.Time
		want bool
	}{
		{t0, true},
		{t0.Add(ttl - margin - time.Millisecond), true},
		{t0.Add(ttl - margin), false},
		{t0.Add(ttl), false},
	} {
		if got := Holds(t0, tc.now, ttl, margin); got != tc.want {
			t.Errorf("Holds at +%s = %v, want %v", tc.now.Sub(t0), got, tc.want)
		}
	}
	if Holds(time.Time{}, t0, ttl, margin) {
		t.Error("a lease never renewed is not held")
	}
}

// An owner's lease always ends, by its own reckoning, before any observer can judge it dead:
// the observer's first sighting of a renewal is never earlier than the owner sent it.
func TestHoldsEndsBeforeObserversJudgeDead(t *testing.T) {
	sent := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ttl, margin := 30*time.Second, 5*time.Second
	for lag := time.Duration(0); lag < 3*time.Second; lag += 500 * time.Millisecond {
		s := Sighting{Epoch: 1, Revision: 1, Seen: sent.Add(lag)}
		for now := sent; now.Before(sent.Add(2 * ttl)); now = now.Add(100 * time.Millisecond) {
			if Holds(sent, now, ttl, margin) && s.Silent(now, ttl) {
				t.Fatalf("lag %s, +%s: owner holds while an observer finds it silent", lag, now.Sub(sent))
			}
		}
	}
}

func TestGraceOver(t *testing.T) {
	t0 := time.Now()
	if GraceOver(t0, t0.Add(59*time.Second), time.Minute) || !GraceOver(t0, t0.Add(time.Minute), time.Minute) {
		t.Fatal("grace measured from the claimer's own first sighting")
	}
}
