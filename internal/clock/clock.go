// Package clock is gembatchd's wall clock: time.Now shifted by GEMBATCH_TEST_CLOCK_OFFSET (a Go
// duration such as "60s" or "-60s", read once at start), so that the fault tests can run two
// replicas whose clocks disagree, as two machines' clocks do. Unset, Now is time.Now.
package clock

import (
	"fmt"
	"os"
	"time"
)

// OffsetEnv names the environment variable that shifts the clock.
const OffsetEnv = "GEMBATCH_TEST_CLOCK_OFFSET"

var offset = mustOffset(os.Getenv(OffsetEnv))

// Now is the current wall-clock time, shifted by the test offset. The monotonic reading is kept,
// so durations measured between two Now values are true whatever the offset.
func Now() time.Time { return time.Now().Add(offset) }

// Offset is the shift Now applies.
func Offset() time.Duration { return offset }

// ParseOffset reads an offset as GEMBATCH_TEST_CLOCK_OFFSET takes it; empty is zero.
func ParseOffset(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", OffsetEnv, err)
	}
	return d, nil
}

// mustOffset stops the process on a bad offset: a skew trial that silently ran unskewed would
// prove nothing.
func mustOffset(v string) time.Duration {
	d, err := ParseOffset(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	return d
}
