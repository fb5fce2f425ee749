package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// natsLostAfter is how long NATS may stay disconnected during shutdown before it counts as gone:
// long enough to ride out a blip, short against the grace period.
const natsLostAfter = time.Second

// errNATSGone ends the shutdown's waits when the NATS server is gone.
var errNATSGone = errors.New("NATS is gone: nothing more can be recorded")

// whileNATS returns a context that ends with parent or, once nc has been disconnected for
// natsLostAfter, with errNATSGone, and then closes nc; stop ends the watch. During shutdown
// nothing is gained by waiting for a server that is gone: each drain and NATS call would wait
// out its own timeout, one after the other. What could not be recorded stays where it was
// (unacknowledged in the stream, or in the store) for the next start.
func whileNATS(parent context.Context, nc *nats.Conn, log zerolog.Logger) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		var lostSince time.Time
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
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
					cancel(errNATSGone)
					nc.Close()
					return
				}
			}
		}
	}()
	return ctx, func() { close(done); <-stopped; cancel(nil) }
}
