// Package backoff computes capped exponential delays with jitter, and sleeps them under a context.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is a capped exponential backoff.
type Policy struct {
	Initial time.Duration
	Max     time.Duration
}

// Delay is the wait before retry number attempt (0 is the first retry): exponential from
// Initial, capped at Max, with equal jitter so that replicas retrying together spread out.
func (p Policy) Delay(attempt int) time.Duration {
	d := p.Initial
	for i := 0; i < attempt && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(half)
}

// Sleep waits d or until ctx is done, and reports whether the full wait passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
