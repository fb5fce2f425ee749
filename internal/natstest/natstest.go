// Package natstest gives a test an in-process NATS server with JetStream of its own. It imports
// nothing of gembatch's but the embedded server, so that the internal tests of packages the
// daemon is built from can use it (stacktest, which starts the whole stack, cannot be imported
// there).
package natstest

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/internal/embedded"
)

// NATS starts an in-process NATS server with JetStream for the test alone and returns a
// connection to it; both close when the test ends.
func NATS(t testing.TB) *nats.Conn {
	t.Helper()
	ns, err := embedded.NATS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() })
	return nc
}
