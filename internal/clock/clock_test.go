package clock_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gembatch/gembatch/internal/clock"
)

func TestParseOffset(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 0, "60s": time.Minute, "-60s": -time.Minute, "1h30m": 90 * time.Minute} {
		if got, err := clock.ParseOffset(in); err != nil || got != want {
			t.Errorf("ParseOffset(%q) = %v, %v, want %v", in, got, err, want)
		}
	}
	if _, err := clock.ParseOffset("60"); err == nil || !strings.Contains(err.Error(), clock.OffsetEnv) {
		t.Errorf("ParseOffset(\"60\") error %v, want one naming %s", err, clock.OffsetEnv)
	}
}

// The child mode: print the offset and how far Now is from time.Now, in whole seconds.
func TestMain(m *testing.M) {
	if os.Getenv("CLOCK_CHILD") != "" {
		println(clock.Offset().String(), time.Until(clock.Now()).Round(time.Second).String())
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestOffsetFromEnv runs this test binary with the variable set, since it is read once at start.
func TestOffsetFromEnv(t *testing.T) {
	for env, want := range map[string]string{"": "0s 0s", "60s": "1m0s 1m0s", "-60s": "-1m0s -1m0s"} {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "CLOCK_CHILD=1", clock.OffsetEnv+"="+env)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("offset %q: child said %q (%v), want %q", env, out, err, want)
		}
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "CLOCK_CHILD=1", clock.OffsetEnv+"=soon")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), clock.OffsetEnv) {
		t.Errorf("a bad offset: child said %q (%v), want a failure naming the variable", out, err)
	}
}
