// Package readiness decides whether the Gemini API counts as reachable for /readyz: it does
// while any call answered within the last Window, the daemon's own traffic included; when none
// has, a probe pings, but at most once a Window. The decision is a plain value: time in,
// decision out, so it is tested without a clock.
package readiness

import (
	"fmt"
	"time"
)

// Window is how recent the API's last answer must be (README: "within the last minute").
const Window = time.Minute

// Action is what a probe does.
type Action int

const (
	// Ready: the API answered within the window.
	Ready Action = iota
	// Ping: no answer within the window and no ping either: ping now, then report Pinged.
	Ping
	// NotReady: no answer within the window, and a ping within it failed.
	NotReady
)

// Gate is the state of the API check: when it last pinged, and how that went. The zero value
// has never pinged. It is not safe for concurrent use: the caller holds a lock across a probe.
type Gate struct {
	lastPing time.Time
	pingErr  error
}

// Decide says what a probe at now does, given the time of the API's last successful answer
// (zero when there was none).
func (a *Gate) Decide(now, lastAnswer time.Time) Action {
	switch {
	case !lastAnswer.IsZero() && now.Sub(lastAnswer) < Window:
		return Ready
	case !a.lastPing.IsZero() && now.Sub(a.lastPing) < Window:
		return NotReady
	default:
		return Ping
	}
}

// Pinged records a ping made at now and its outcome.
func (a *Gate) Pinged(now time.Time, err error) {
	a.lastPing, a.pingErr = now, err
}

// Err explains a NotReady decision at now.
func (a *Gate) Err(now, lastAnswer time.Time) error {
	since := "never"
	if !lastAnswer.IsZero() {
		since = "last " + now.Sub(lastAnswer).Round(time.Second).String() + " ago"
	}
	return fmt.Errorf("gemini API: no answer within %s (%s); ping %s ago failed, next ping in %s: %w",
		Window, since, now.Sub(a.lastPing).Round(time.Second), (Window - now.Sub(a.lastPing)).Round(time.Second), a.pingErr)
}
