package faulttest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/embedded"
)

var gembatchd string // the binary under test

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gembatch-faulttest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gembatchd = filepath.Join(dir, "gembatchd")
	if out, err := exec.Command("go", "build", "-o", gembatchd, "../cmd/gembatchd").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build gembatchd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// world is NATS, the emulator and a ledger of replies, all outliving the daemons under test.
type world struct {
	t       *testing.T
	dir     string
	port    int
	ns      *server.Server
	emu     *emulator.Server
	http    *httptest.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	replies jetstream.Stream
	sent    []string
	// models are the models requests go to in turn; the default is a flash and a pro model.
	models []string
}

func newWorld(t *testing.T, faults emulator.Faults) *world {
	return newWorldWithJobs(t, 300*time.Millisecond, faults)
}

func newWorldWithJobs(t *testing.T, jobDelay time.Duration, faults emulator.Faults) *world {
	t.Helper()
	w := &world{t: t, dir: t.TempDir(), port: freePort(t)}
	w.startNATS()
	w.emu = emulator.New(emulator.Options{JobDelay: jobDelay, Faults: faults})
	w.http = httptest.NewServer(w.emu)
	t.Cleanup(func() {
		w.nc.Close()
		w.http.Close()
		w.emu.Close()
		w.ns.Shutdown()
		w.ns.WaitForShutdown()
	})
	var err error
	if w.nc, err = nats.Connect(w.ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if w.js, err = jetstream.New(w.nc); err != nil {
		t.Fatal(err)
	}
	// The ledger: replies captured by a stream whose duplicate window drops repeats by Nats-Msg-Id.
	w.replies, err = w.js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: "LEDGER", Subjects: []string{"ledger.>"}, Duplicates: 10 * time.Minute, Storage: jetstream.FileStorage,
	})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (w *world) startNATS() {
	w.t.Helper()
	ns, err := embedded.NATSWith(&server.Options{Port: w.port}, filepath.Join(w.dir, "nats"))
	if err != nil {
		w.t.Fatal(err)
	}
	w.ns = ns
}

// restartNATS stops the server and starts it again on the same port and store.
func (w *world) restartNATS(down time.Duration) {
	w.ns.Shutdown()
	w.ns.WaitForShutdown()
	time.Sleep(down)
	w.startNATS()
}

// daemon is one gembatchd subprocess.
type daemon struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs strings.Builder
	done chan struct{}
	err  error
}

// start runs gembatchd with the world's settings plus env.
func (w *world) start(instance string, env ...string) *daemon {
	w.t.Helper()
	cmd := exec.Command(gembatchd)
	// Without the GEMBATCH_* variables of the test's own environment (GEMBATCH_FAULT_REPORT...),
	// which gembatchd would refuse as unknown.
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GEMBATCH_") }),
		"GEMBATCH_NATS_URL="+w.ns.ClientURL(),
		"GEMBATCH_GEMINI_BASE_URL="+w.http.URL,
		"GEMBATCH_GEMINI_API_KEY=fault-test-key",
		"GEMBATCH_DURABLE=true",
		"GEMBATCH_INSTANCE="+instance,
		"GEMBATCH_METRICS_ADDR=127.0.0.1:0",
		"GEMBATCH_REPLY_ALLOW=ledger.>",
		"GEMBATCH_BATCH_MAX_REQUESTS=40",
		"GEMBATCH_BATCH_MAX_WAIT=300ms",
		"GEMBATCH_ACK_WAIT=3s",
		"GEMBATCH_INLINE_MAX_BYTES=8KiB",
		"GEMBATCH_POLL_INTERVAL=100ms",
		"GEMBATCH_POLL_MAX_INTERVAL=400ms",
		"GEMBATCH_CREATE_GRACE=1s",
		"GEMBATCH_LEASE_TTL=2s",
		"GEMBATCH_SHUTDOWN_GRACE=5s",
		"GEMBATCH_LOG_LEVEL=info",
	)
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		w.t.Fatal(err)
	}
	d := &daemon{cmd: cmd, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			d.mu.Lock()
			d.logs.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			if strings.Contains(sc.Text(), `"gembatchd ready"`) {
				close(ready)
			}
		}
		d.err = cmd.Wait()
		close(d.done)
	}()
	w.t.Cleanup(func() { d.kill() })
	select {
	case <-ready:
	case <-d.done:
		w.t.Fatalf("gembatchd exited before ready: %v\n%s", d.err, d.log())
	case <-time.After(20 * time.Second):
		w.t.Fatalf("gembatchd not ready after 20s\n%s", d.log())
	}
	return d
}

func (d *daemon) log() string { d.mu.Lock(); defer d.mu.Unlock(); return d.logs.String() }

func (d *daemon) kill() {
	select {
	case <-d.done:
	default:
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
	}
}

// died reports whether the process ended within d.
func (d *daemon) died(within time.Duration) bool {
	select {
	case <-d.done:
		return true
	case <-time.After(within):
		return false
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if !d.died(15 * time.Second) {
		d.kill()
		t.Fatalf("gembatchd did not stop within 15s of SIGTERM\n%s", d.log())
	}
	if d.err != nil {
		t.Fatalf("gembatchd exited with %v after SIGTERM\n%s", d.err, d.log())
	}
}

// send publishes n requests to the stream with a JetStream publish (the producer's durable path)
// and returns once each has its PubAck. Half go to a model whose batches go by file.
func (w *world) send(n int, tag string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		key := fmt.Sprintf("%s-%04d", tag, i)
		text := key
		models := w.models
		if models == nil {
			models = []string{"gemini-2.5-flash", "gemini-2.5-pro"}
		}
		if i%2 == 1 { // every other request is large enough for its batch to go by file
			text += strings.Repeat(" padding", 80)
		}
		body, _ := json.Marshal(map[string]any{"contents": []any{map[string]any{"parts": []any{map[string]string{"text": text}}}}})
		msg := nats.NewMsg("gembatch.stream.generate")
		msg.Data = body
		msg.Header.Set("Gembatch-Key", key)
		msg.Header.Set("Gembatch-Reply", "ledger."+key)
		msg.Header.Set("Gembatch-Model", models[i%len(models)])
		for {
			if _, err := w.js.PublishMsg(ctx, msg); err == nil {
				break
			} else if ctx.Err() != nil {
				w.t.Fatalf("publish %s: %v", key, err)
			}
			time.Sleep(50 * time.Millisecond) // NATS restarting
		}
		w.sent = append(w.sent, key)
	}
}

// tally reads the ledger: how many sent requests have no reply, and how many have more than one.
func (w *world) tally() (unanswered, duplicates int) {
	w.t.Helper()
	counts := map[string]int{}
	w.ledger(func(m jetstream.Msg) { counts[m.Headers().Get("Gembatch-Key")]++ })
	for _, k := range w.sent {
		switch n := counts[k]; {
		case n == 0:
			unanswered++
		case n > 1:
			duplicates += n - 1
		}
	}
	return unanswered, duplicates
}

// ledger calls f with every reply the ledger holds, in order.
func (w *world) ledger(f func(jetstream.Msg)) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := w.replies.Info(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		return
	}
	cons, err := w.replies.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		w.t.Fatal(err)
	}
	for got := uint64(0); got < info.State.Msgs; {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			w.t.Fatal(err)
		}
		for m := range batch.Messages() {
			f(m)
			got++
		}
		if batch.Error() != nil {
			w.t.Fatal(batch.Error())
		}
	}
}

// waitAnswered waits until every sent request has a reply.
func (w *world) waitAnswered(within time.Duration, logs func() string) {
	w.t.Helper()
	deadline := time.Now().Add(within)
	for {
		unanswered, _ := w.tally()
		if unanswered == 0 {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%d of %d requests unanswered after %s\n%s", unanswered, len(w.sent), within, logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// duplicateJobs counts batches created more than once (by displayName).
func (w *world) duplicateJobs() int {
	n := 0
	for _, c := range w.emu.CreateCounts() {
		if c > 1 {
			n += c - 1
		}
	}
	return n
}

// report logs a run's figures and, when GEMBATCH_FAULT_REPORT names a file, appends them there,
// so that CI can print them although go test shows no output of passing packages.
func report(t *testing.T, line string) {
	t.Helper()
	t.Log(line)
	path := os.Getenv("GEMBATCH_FAULT_REPORT")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, line); err != nil {
		t.Fatal(err)
	}
}
