// Package embedded starts an in-process NATS server with JetStream, for the demo and the tests.
package embedded

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATS starts a NATS server on a free loopback port with JetStream storing in dir, and waits
// until it accepts connections. Stop it with Shutdown.
func NATS(dir string) (*server.Server, error) {
	return NATSWith(&server.Options{}, dir)
}

// NATSWith is NATS with options of the caller's (authentication, TLS, a fixed port).
func NATSWith(opts *server.Options, dir string) (*server.Server, error) {
	o := *opts
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	o.JetStream = true
	o.StoreDir = dir
	o.NoSigs = true
	o.NoLog = true
	s, err := server.NewServer(&o)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not start within 10s")
	}
	return s, nil
}
