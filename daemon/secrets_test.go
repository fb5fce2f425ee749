package daemon_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/common/expfmt"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/embedded"
	"github.com/gembatch/gembatch/metrics"
)

// syncBuffer is a log sink the daemon's goroutines share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestAPIKeyNeverLeaks runs the daemon with a known key against an API that refuses it, and
// against one that fails in every other way, and searches every log line (debug level), reply and
// metric for the key.
func TestAPIKeyNeverLeaks(t *testing.T) {
	const canary = "AIzaSy-LEAK-CANARY-0123456789"
	for _, tc := range []struct {
		name string
		opts emulator.Options
	}{
		{"key refused", emulator.Options{APIKey: "the-right-key"}},
		{"jobs fail and gets error", emulator.Options{Faults: emulator.Faults{FailJobs: true, GetErrorRate: 0.5, CreateThrottleRate: 0.3, ThrottleDelay: 10 * time.Millisecond}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, err := embedded.NATS(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
			tc.opts.JobDelay = 50 * time.Millisecond
			emu := emulator.New(tc.opts)
			srv := httptest.NewServer(emu)
			defer func() { srv.Close(); emu.Close() }()

			cfg := testConfig()
			cfg.NATSURL, cfg.GeminiBaseURL, cfg.GeminiAPIKey = ns.ClientURL(), srv.URL, canary
			var logs syncBuffer
			m := daemon.NewMain(cfg, zerolog.New(&logs).Level(zerolog.DebugLevel), metrics.Build{})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- m.Run(ctx) }()
			<-m.Ready

			nc, err := nats.Connect(ns.ClientURL())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			var replies syncBuffer
			if _, err := nc.Subscribe("test.reply.>", func(msg *nats.Msg) {
				_, _ = replies.Write(append(msg.Data, '\n'))
				for k, v := range msg.Header {
					_, _ = replies.Write([]byte(k + ": " + strings.Join(v, ",") + "\n"))
				}
			}); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"a", "b", "c"} {
				if err := nc.PublishRequest("gembatch.generate", "test.reply."+k, []byte(generateBody(k))); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(20 * time.Second)
			for strings.Count(replies.String(), `"key":`) < 3 {
				if time.Now().After(deadline) {
					t.Fatalf("replies not all in:\n%s\nlogs:\n%s", replies.String(), logs.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			mfs, err := m.Registry.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var exposition bytes.Buffer
			for _, mf := range mfs {
				if _, err := expfmt.MetricFamilyToText(&exposition, mf); err != nil {
					t.Fatal(err)
				}
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			for what, text := range map[string]string{"logs": logs.String(), "replies": replies.String(), "metrics": exposition.String()} {
				if strings.Contains(text, canary) || strings.Contains(text, canary[len(canary)-12:]) {
					t.Fatalf("the API key appears in the %s", what)
				}
			}
			if !strings.Contains(replies.String(), `"error"`) {
				t.Fatalf("no error path was driven:\n%s", replies.String())
			}
		})
	}
}
