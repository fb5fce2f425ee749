// Package stacktest runs NATS, the Gemini emulator (over real HTTP) and gembatchd in-process, for
// the tests of every package that needs the whole stack.
package stacktest

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/embedded"
	"github.com/gembatch/gembatch/internal/natstest"
	"github.com/gembatch/gembatch/metrics"
)

// LeakOptions are the goroutines goleak must ignore in tests that run NATS.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		// nats-server keeps a few process-wide goroutines after Shutdown.
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).logRejectedTLSConns"),
		goleak.IgnoreTopFunction("time.Sleep"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		// nats.go's async publisher can leave this watcher blocked on a nil channel after Close
		// (a race in the library, not a leak per daemon run).
		goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
	}
}

// Config is a fast configuration for tests: short waits and polls, metrics on a free port.
func Config() daemon.Config {
	c := daemon.Defaults()
	c.MetricsAddr = "127.0.0.1:0"
	c.BatchMaxWait = 200 * time.Millisecond
	c.PollInterval = 20 * time.Millisecond
	c.PollMaxInterval = 100 * time.Millisecond
	c.CreateGrace = 200 * time.Millisecond
	c.ShutdownGrace = 10 * time.Second
	c.LogLevel = "warn"
	return c
}

// Stack is one running NATS server, emulator and gembatchd.
type Stack struct {
	NATS     *server.Server
	Emulator *emulator.Server
	API      *httptest.Server
	Main     *daemon.Main

	t        testing.TB
	stop     context.CancelFunc
	done     chan error
	stopOnce sync.Once
	runErr   error
	checked  bool // the test read Run's error through Stop
}

// Start runs the stack until the end of the test. cfg gets the NATS URL, and the emulator's URL
// unless its Gemini base URL was changed from the default; its LogLevel sets the daemon's log,
// written to the test log. emu.JobDelay defaults to 100ms.
func Start(t testing.TB, cfg daemon.Config, emu emulator.Options) *Stack {
	t.Helper()
	return StartWith(t, cfg, emu, server.Options{})
}

// StartWith is Start on a NATS server with the given options (a small MaxPayload, say); its
// JetStream store, host and port are the test's own.
func StartWith(t testing.TB, cfg daemon.Config, emu emulator.Options, natsOpts server.Options) *Stack {
	t.Helper()
	natsOpts.Host, natsOpts.Port = "", 0
	ns, err := embedded.NATSWith(&natsOpts, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if emu.JobDelay == 0 {
		emu.JobDelay = 100 * time.Millisecond
	}
	s := &Stack{NATS: ns, Emulator: emulator.New(emu), t: t, done: make(chan error, 1)}
	s.API = httptest.NewServer(s.Emulator)
	t.Cleanup(func() {
		if err := s.stopDaemon(); err != nil && !s.checked {
			t.Errorf("gembatchd: %v", err)
		}
		s.API.Close()
		s.Emulator.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	s.run(cfg)
	return s
}

// Restart stops the daemon as SIGTERM would and starts a new one with cfg on the same NATS
// server and emulator: a restart, or (with another GEMBATCH_INSTANCE) a replica taking over.
func (s *Stack) Restart(cfg daemon.Config) {
	s.t.Helper()
	if err := s.Stop(); err != nil {
		s.t.Errorf("gembatchd: %v", err)
	}
	s.stopOnce, s.runErr, s.done = sync.Once{}, nil, make(chan error, 1)
	s.run(cfg)
}

// run starts the daemon with cfg and waits until it is ready.
func (s *Stack) run(cfg daemon.Config) {
	t := s.t
	t.Helper()
	cfg.NATSURL = s.NATS.ClientURL()
	if cfg.GeminiBaseURL == daemon.Defaults().GeminiBaseURL {
		cfg.GeminiBaseURL = s.API.URL
	}
	lvl, err := zerolog.ParseLevel(cfg.LogLevel)
	if err != nil {
		t.Fatal(err)
	}
	s.Main = daemon.NewMain(cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(lvl), metrics.Build{Version: "test", Commit: "test"})
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	done := s.done
	go func() { done <- s.Main.Run(ctx) }()
	select {
	case <-s.Main.Ready:
	case err := <-s.done:
		s.done <- err
		t.Fatalf("gembatchd did not start: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("gembatchd not ready after 15s")
	}
}

// Stop stops the daemon as SIGTERM would and returns Run's error, for the test to judge; later
// calls return the same.
func (s *Stack) Stop() error {
	s.checked = true
	return s.stopDaemon()
}

func (s *Stack) stopDaemon() error {
	s.stopOnce.Do(func() {
		s.stop()
		select {
		case s.runErr = <-s.done:
		case <-time.After(30 * time.Second):
			s.t.Error("gembatchd did not stop within 30s")
		}
	})
	return s.runErr
}

// NATS starts an in-process NATS server with JetStream for the test alone and returns a
// connection to it; both close when the test ends (natstest.NATS).
func NATS(t testing.TB) *nats.Conn { return natstest.NATS(t) }
