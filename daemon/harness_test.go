package daemon_test

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/stacktest"
	"github.com/gembatch/gembatch/metrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, stacktest.LeakOptions()...) }

// harness is the in-process stack with a subscription that collects every reply by key.
type harness struct {
	*stacktest.Stack
	t    testing.TB
	emu  *emulator.Server
	http *httptest.Server
	nc   *nats.Conn
	main *daemon.Main

	mu      sync.Mutex
	replies map[string][]*nats.Msg // by Gembatch-Key
}

// testConfig is the fast test configuration, with replies allowed to test.> too.
func testConfig() daemon.Config {
	c := stacktest.Config()
	c.ReplyAllow = []string{"_INBOX.>", "test.>"}
	return c
}

func start(t testing.TB, cfg daemon.Config, emu emulator.Options) *harness {
	t.Helper()
	return harnessOn(t, stacktest.Start(t, cfg, emu))
}

// harnessOn collects the replies of a running stack.
func harnessOn(t testing.TB, s *stacktest.Stack) *harness {
	t.Helper()
	h := &harness{Stack: s, t: t, emu: s.Emulator, http: s.API, main: s.Main, replies: make(map[string][]*nats.Msg)}
	var err error
	if h.nc, err = nats.Connect(s.NATS.ClientURL()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.nc.Close)
	inbox, err := h.nc.Subscribe("test.reply.>", func(m *nats.Msg) {
		h.mu.Lock()
		defer h.mu.Unlock()
		k := m.Header.Get("Gembatch-Key")
		h.replies[k] = append(h.replies[k], m)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := inbox.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	return h
}

// shutdown stops the daemon as SIGTERM would and returns Run's error.
func (h *harness) shutdown() error { return h.Stop() }

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
	return h.metricOf(h.main, name, labels...)
}

// metricOf is metric of a given daemon (after a restart).
func (h *harness) metricOf(m *daemon.Main, name string, labels ...string) float64 {
	h.t.Helper()
	v, err := metrics.Sum(m.Registry, name, labels...)
	if err != nil {
		h.t.Fatal(err)
	}
	return v
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
