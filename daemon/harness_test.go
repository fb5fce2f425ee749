package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
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
	"github.com/gembatch/gembatch/metrics"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// nats-server keeps a few process-wide goroutines after Shutdown.
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).logRejectedTLSConns"),
		goleak.IgnoreTopFunction("time.Sleep"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		// nats.go's async publisher can leave this watcher blocked on a nil channel after Close
		// (a race in the library, not a leak per daemon run).
		goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
	)
}

// harness runs gembatchd in-process against an in-process NATS server and the emulator over HTTP.
type harness struct {
	t    testing.TB
	ns   *server.Server
	emu  *emulator.Server
	http *httptest.Server
	nc   *nats.Conn
	main *daemon.Main
	stop context.CancelFunc
	done chan error

	mu      sync.Mutex
	replies map[string][]*nats.Msg // by Gembatch-Key
	inbox   *nats.Subscription
}

// testConfig is a fast configuration for tests: short waits and polls.
func testConfig() daemon.Config {
	c := daemon.Defaults()
	c.MetricsAddr = "127.0.0.1:0"
	c.BatchMaxWait = 200 * time.Millisecond
	c.PollInterval = 20 * time.Millisecond
	c.PollMaxInterval = 100 * time.Millisecond
	c.CreateGrace = 200 * time.Millisecond
	c.ShutdownGrace = 10 * time.Second
	c.ReplyAllow = []string{"_INBOX.>", "test.>"}
	c.LogLevel = "warn"
	return c
}

func start(t testing.TB, cfg daemon.Config, emu emulator.Options) *harness {
	t.Helper()
	ns, err := embedded.NATS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if emu.JobDelay == 0 {
		emu.JobDelay = 100 * time.Millisecond
	}
	h := &harness{t: t, ns: ns, emu: emulator.New(emu), replies: make(map[string][]*nats.Msg)}
	h.http = httptest.NewServer(h.emu)
	cfg.NATSURL = ns.ClientURL()
	if cfg.GeminiBaseURL == daemon.Defaults().GeminiBaseURL {
		cfg.GeminiBaseURL = h.http.URL
	}
	t.Cleanup(h.close)

	lvl, err := zerolog.ParseLevel(cfg.LogLevel)
	if err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(lvl)
	h.main = daemon.NewMain(cfg, log, metrics.Build{Version: "test"})
	ctx, cancel := context.WithCancel(context.Background())
	h.stop, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.main.Run(ctx) }()
	select {
	case <-h.main.Ready:
	case err := <-h.done:
		h.done <- err
		t.Fatalf("daemon did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon not ready after 10s")
	}

	if h.nc, err = nats.Connect(ns.ClientURL()); err != nil {
		t.Fatal(err)
	}
	h.inbox, err = h.nc.Subscribe("test.reply.>", func(m *nats.Msg) {
		h.mu.Lock()
		defer h.mu.Unlock()
		k := m.Header.Get("Gembatch-Key")
		h.replies[k] = append(h.replies[k], m)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.inbox.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	return h
}

// shutdown stops the daemon as SIGTERM would and returns Run's error.
func (h *harness) shutdown() error {
	h.stop()
	select {
	case err := <-h.done:
		h.done <- err
		return err
	case <-time.After(30 * time.Second):
		h.t.Fatal("daemon did not stop within 30s")
		return nil
	}
}

func (h *harness) close() {
	_ = h.shutdown()
	if h.nc != nil {
		h.nc.Close()
	}
	h.http.Close()
	h.emu.Close()
	h.ns.Shutdown()
	h.ns.WaitForShutdown()
}

// send publishes one request with headers; key "" leaves the key to the daemon.
func (h *harness) send(subject, key string, body string, hdr ...string) {
	h.t.Helper()
	msg := &nats.Msg{Subject: subject, Reply: "test.reply." + fmt.Sprint(time.Now().UnixNano()), Data: []byte(body), Header: nats.Header{}}
	if key != "" {
		msg.Header.Set("Gembatch-Key", key)
		msg.Reply = "test.reply." + key
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		msg.Header.Set(hdr[i], hdr[i+1])
	}
	if err := h.nc.PublishMsg(msg); err != nil {
		h.t.Fatal(err)
	}
}

// waitReplies waits until every key has at least one reply, then a little longer for duplicates.
func (h *harness) waitReplies(keys []string, within time.Duration) map[string][]*nats.Msg {
	h.t.Helper()
	if err := h.nc.Flush(); err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(within)
	for {
		h.mu.Lock()
		missing := 0
		for _, k := range keys {
			if len(h.replies[k]) == 0 {
				missing++
			}
		}
		h.mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d of %d requests unanswered after %s", missing, len(keys), within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string][]*nats.Msg, len(h.replies))
	for k, v := range h.replies {
		out[k] = append([]*nats.Msg(nil), v...)
	}
	return out
}

// metric sums the samples of a metric family whose labels include the given ones.
func (h *harness) metric(name string, labels ...string) float64 {
	h.t.Helper()
	mfs, err := h.main.Registry.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	sample:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue sample
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

// reply is a decoded reply body.
type reply struct {
	Key      string          `json:"key"`
	Response json.RawMessage `json:"response"`
	Error    *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
	} `json:"error"`
}

func decode(t *testing.T, m *nats.Msg) reply {
	t.Helper()
	var r reply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatalf("reply is not JSON: %v: %s", err, m.Data)
	}
	if strings.Contains(string(m.Data), "\n") {
		t.Fatalf("reply spans lines: %q", m.Data)
	}
	return r
}

// responseText is the first candidate's text of a GenerateContentResponse.
func responseText(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var r struct {
		Candidates []struct {
			Content struct {
				Parts []struct {
					Text string `json:"text"`
				} `json:"parts"`
			} `json:"content"`
		} `json:"candidates"`
	}
	if err := json.Unmarshal(raw, &r); err != nil || len(r.Candidates) == 0 || len(r.Candidates[0].Content.Parts) == 0 {
		t.Fatalf("not a GenerateContentResponse with text: %s", raw)
	}
	return r.Candidates[0].Content.Parts[0].Text
}

func generateBody(text string) string {
	b, _ := json.Marshal(text)
	return `{"contents":[{"role":"user","parts":[{"text":` + string(b) + `}]}]}`
}

func embedBody(text string, dims int) string {
	b, _ := json.Marshal(text)
	return fmt.Sprintf(`{"content":{"parts":[{"text":%s}]},"taskType":"RETRIEVAL_DOCUMENT","outputDimensionality":%d}`, b, dims)
}
