package daemon

import (
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// natsLostAfter is how long NATS may stay disconnected during shutdown before it counts as gone:
// long enough to ride out a blip, short against the grace period.
const natsLostAfter = time.Second

// closeWhenLost closes nc once it has been disconnected for natsLostAfter, until the returned
// stop is called. During shutdown nothing is gained by waiting for a server that is gone: every
// NATS call would wait out its timeout, one after the other. Closed, they fail at once; what
// could not be recorded stays where it was (unacknowledged in the stream, or in the store) for
// the next start.
func closeWhenLost(nc *nats.Conn, log zerolog.Logger) (stop func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		var lostSince time.Time
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				switch {
				case nc.IsConnected() || nc.IsClosed():
					lostSince = time.Time{}
				case lostSince.IsZero():
					lostSince = now
				case now.Sub(lostSince) >= natsLostAfter:
					log.Warn().Str("nats", nc.Status().String()).Float64("lost_for_seconds", now.Sub(lostSince).Seconds()).
						Msg("NATS is gone during shutdown: closing the connection instead of waiting; unrecorded requests stay in the stream")
					nc.Close()
					return
				}
			}
		}
	}()
	return func() { close(done); <-stopped }
}
