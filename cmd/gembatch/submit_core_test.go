package main

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// holder stands for gembatchd in core mode: it keeps each request and answers it when told.
type holder struct {
	nc   *nats.Conn
	mu   sync.Mutex
	held []*nats.Msg
	seen map[string]int
	now  bool // answer at once
}

func (h *holder) take(m *nats.Msg) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen[m.Header.Get("Gembatch-Key")]++
	h.held = append(h.held, m)
	if h.now {
		h.answerLocked()
	}
}

func (h *holder) answerLocked() {
	for _, m := range h.held {
		key := m.Header.Get("Gembatch-Key")
		r := nats.NewMsg(m.Reply)
		r.Header.Set("Gembatch-Key", key)
		r.Header.Set("Gembatch-Status", "ok")
		r.Data = []byte(`{"key":"` + key + `","response":{"candidates":[]}}`)
		_ = h.nc.PublishMsg(r)
	}
	h.held = nil
}

// answerAll answers what it holds, and from now on every request at once.
func (h *holder) answerAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.now = true
	h.answerLocked()
}

func (h *holder) counts() (held int, seen map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.held), maps.Clone(h.seen)
}

// TestSubmitResumeWithoutJetStream: without JetStream a resume sends nothing again and takes
// the answers that come on the same reply prefix after it started; --resend sends again.
func TestSubmitResumeWithoutJetStream(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	h := &holder{nc: nc, seen: map[string]int{}}
	if _, err := nc.Subscribe("gembatch.generate", h.take); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "in.jsonl")
	writeInput(t, in, 3, 0)

	// interrupted runs until the holder has the 3 requests, then interrupts it.
	interrupted := func(out string) {
		t.Helper()
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		var code int
		var stderr string
		wg.Go(func() { code, _, stderr = cmd(ctx, "submit", in, "-o", out, "--nats", ns.ClientURL()) })
		waitFor(t, "requests held", func() bool { n, _ := h.counts(); return n == 3 })
		cancel()
		wg.Wait()
		if code != 1 || !strings.Contains(stderr, "no JetStream at") {
			t.Fatalf("interrupted run: exit %d\n%s", code, stderr)
		}
	}

	out := filepath.Join(dir, "out.jsonl")
	interrupted(out)
	var wg sync.WaitGroup
	var code int
	var stdout, stderr string
	// The interrupted run's connection is gone before the resume starts.
	waitFor(t, "the first run disconnected", func() bool { return ns.NumClients() == 1 })
	header, err := os.ReadFile(out + ".sent")
	if err != nil {
		t.Fatal(err)
	}
	var state struct {
		Prefix string `json:"replyPrefix"`
	}
	if err := json.Unmarshal(bytes.SplitN(header, []byte("\n"), 2)[0], &state); err != nil || state.Prefix == "" {
		t.Fatalf("state file header %q: %v", header, err)
	}
	ended := make(chan struct{})
	wg.Go(func() {
		defer close(ended)
		code, stdout, stderr = cmd(t.Context(), "submit", in, "-o", out, "--nats", ns.ClientURL())
	})
	// The answers come once the resume listens: its client's reply subscription and its
	// listener for the earlier run's answers, both on the same reply prefix.
	waitFor(t, "resume listening", func() bool {
		select {
		case <-ended:
			return true
		default:
			return ns.GlobalAccount().Interest(state.Prefix+".x") >= 2
		}
	})
	h.answerAll()
	wg.Wait()
	if _, seen := h.counts(); code != 0 || len(readResults(t, out)) != 3 || seen["k0000000"] != 1 || seen["k0000002"] != 1 {
		t.Fatalf("resume: exit %d, seen %v\n%s\n%s", code, seen, stdout, stderr)
	}
	if !strings.Contains(stderr, "3 sent by an earlier run are awaited, not sent again") {
		t.Errorf("resume: %s", stderr)
	}

	// --resend: the keys are sent again (billed twice), and answered.
	h.mu.Lock()
	h.now, h.seen = false, map[string]int{}
	h.mu.Unlock()
	out2 := filepath.Join(dir, "out2.jsonl")
	interrupted(out2)
	h.mu.Lock()
	h.held, h.now = nil, true // the first copies are never answered
	h.mu.Unlock()
	code, stdout, stderr = cmd(t.Context(), "submit", in, "-o", out2, "--nats", ns.ClientURL(), "--resend")
	if _, seen := h.counts(); code != 0 || len(readResults(t, out2)) != 3 || seen["k0000001"] != 2 {
		t.Fatalf("--resend: exit %d, seen %v\n%s\n%s", code, seen, stdout, stderr)
	}
}
