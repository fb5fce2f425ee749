package daemon

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/gemini"
	ready "github.com/gembatch/gembatch/internal/readiness"
	"github.com/gembatch/gembatch/jsstore"
)

// readiness is ready while NATS is connected, the record buckets answer (durable mode), and the
// Gemini API answered within the last minute: any call the daemon made counts, and a probe
// pings (outside the API metrics) only when none did, at most once a minute.
func readiness(nc *nats.Conn, api *gemini.Client, st *jsstore.Store) func(context.Context) error {
	var mu sync.Mutex // one probe at a time: concurrent probes must not ping twice
	var gate ready.Gate
	return func(ctx context.Context) error {
		if !nc.IsConnected() {
			return fmt.Errorf("NATS is %s", nc.Status())
		}
		if st != nil {
			if err := st.Ping(ctx); err != nil {
				return err
			}
		}
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		switch gate.Decide(now, api.LastAnswer()) {
		case ready.Ready:
			return nil
		case ready.NotReady:
			return gate.Err(now, api.LastAnswer())
		}
		err := api.Ping(ctx)
		gate.Pinged(now, err)
		if err != nil {
			return fmt.Errorf("gemini API: %w", err)
		}
		return nil
	}
}
