package faulttest_test

import (
	"bufio"
	"context"
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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/failpoint"
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

// The daemon's timing in these tests: a lease outlives a renewal or two, a create's answer is
// looked for in the list this long before the create is sent again.
const (
	leaseTTL    = 2 * time.Second
	createGrace = time.Second
)

// worldOptions shape a world: how long the emulator's jobs take, its faults, and the NATS
// servers (one, or a cluster of three with the daemon's stream and buckets at three replicas).
type worldOptions struct {
	jobDelay time.Duration
	faults   emulator.Faults
	cluster  bool
	// maxPayload is the servers' max_payload (0: the default 1 MB); imageBytes the size of the
	// emulator's image answers.
	maxPayload int32
	imageBytes int
}

// world is NATS, the emulator and the ledger of replies, all outliving the daemons under test.
type world struct {
	t       *testing.T
	nats    *natsWorld
	emu     *emulator.Server
	http    *httptest.Server
	nc      *nats.Conn // to the first NATS server, which no test stops in a cluster
	js      jetstream.JetStream
	replies *replyLedger
	sent    []string
	daemons []*daemon
	// models are the models requests go to in turn; the default is a flash and a pro model.
	models []string
}

func newWorld(t *testing.T, faults emulator.Faults) *world {
	return newWorldWith(t, worldOptions{jobDelay: 300 * time.Millisecond, faults: faults})
}

func newWorldWithJobs(t *testing.T, jobDelay time.Duration, faults emulator.Faults) *world {
	return newWorldWith(t, worldOptions{jobDelay: jobDelay, faults: faults})
}

func newWorldWith(t *testing.T, o worldOptions) *world {
	t.Helper()
	w := &world{t: t}
	size := 1
	if o.cluster {
		size = 3
	}
	w.nats = startNATS(t, size, o.maxPayload)
	w.emu = emulator.New(emulator.Options{JobDelay: o.jobDelay, Faults: o.faults, ImageBytes: o.imageBytes})
	w.http = httptest.NewServer(w.emu)
	t.Cleanup(func() {
		for _, d := range w.daemons {
			d.kill()
		}
		if w.nc != nil {
			w.nc.Close()
		}
		w.http.Close()
		w.emu.Close()
		w.nats.shutdown()
	})
	var err error
	w.nc, err = nats.Connect(w.nats.nodes[0].url(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if w.js, err = jetstream.New(w.nc); err != nil {
		t.Fatal(err)
	}
	w.nats.waitJetStream(t, w.js)
	w.replies = newReplyLedger(t, w.nc, w.js, size)
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

// restartNATS stops the (single) server and starts it again on the same port and store.
func (w *world) restartNATS(down time.Duration) {
	w.t.Helper()
	w.nats.restart(w.t, 0, down)
}

// daemon is one gembatchd subprocess.
type daemon struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs strings.Builder
	hit  chan struct{} // closed when the armed failpoint is reached
	done chan struct{}
	err  error
	// metrics is the last exposition scraped before the daemon was stopped.
	metrics string
}

// start runs gembatchd with the world's settings plus env, and waits until it is ready.
func (w *world) start(instance string, env ...string) *daemon {
	w.t.Helper()
	cmd := exec.Command(gembatchd)
	// Without the GEMBATCH_* variables of the test's own environment (GEMBATCH_FAULT_REPORT...),
	// which gembatchd would refuse as unknown.
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GEMBATCH_") }),
		"GEMBATCH_NATS_URL="+w.nats.urls(),
		"GEMBATCH_GEMINI_BASE_URL="+w.http.URL,
		"GEMBATCH_GEMINI_API_KEY=fault-test-key",
		"GEMBATCH_DURABLE=true",
		"GEMBATCH_INSTANCE="+instance,
		fmt.Sprintf("GEMBATCH_STREAM_REPLICAS=%d", len(w.nats.nodes)),
		"GEMBATCH_METRICS_ADDR=127.0.0.1:0",
		"GEMBATCH_REPLY_ALLOW=ledger.>",
		"GEMBATCH_BATCH_MAX_REQUESTS=40",
		"GEMBATCH_BATCH_MAX_WAIT=300ms",
		"GEMBATCH_ACK_WAIT=3s",
		"GEMBATCH_INLINE_MAX_BYTES=8KiB",
		"GEMBATCH_POLL_INTERVAL=100ms",
		"GEMBATCH_POLL_MAX_INTERVAL=400ms",
		"GEMBATCH_CREATE_GRACE="+createGrace.String(),
		"GEMBATCH_LEASE_TTL="+leaseTTL.String(),
		"GEMBATCH_SHUTDOWN_GRACE=5s",
		"GEMBATCH_LOG_LEVEL=info",
	)
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		w.t.Fatal(err)
	}
	d := &daemon{name: instance, cmd: cmd, hit: make(chan struct{}), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	w.daemons = append(w.daemons, d)
	ready := make(chan struct{})
	go d.read(stderr, ready)
	w.t.Cleanup(func() { d.kill() })
	select {
	case <-ready:
	case <-d.done:
		w.t.Fatalf("gembatchd exited before ready: %v\n%s", d.err, d.log())
	case <-time.After(30 * time.Second):
		w.t.Fatalf("gembatchd not ready after 30s\n%s", d.log())
	}
	return d
}

// read keeps the daemon's log and notes when it is ready and when its failpoint is reached.
func (d *daemon) read(stderr interface{ Read([]byte) (int, error) }, ready chan struct{}) {
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		d.mu.Lock()
		d.logs.WriteString(line + "\n")
		d.mu.Unlock()
		switch {
		case strings.Contains(line, `"gembatchd ready"`):
			close(ready)
		case strings.Contains(line, `"failpoint reached"`):
			close(d.hit)
		}
	}
	d.err = d.cmd.Wait()
	close(d.done)
}

func (d *daemon) log() string { d.mu.Lock(); defer d.mu.Unlock(); return d.logs.String() }

func (d *daemon) kill() {
	select {
	case <-d.done:
	default:
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		_ = d.cmd.Process.Signal(syscall.SIGCONT) // a stopped process dies only once continued
		<-d.done
	}
}

// running reports whether the process has not ended.
func (d *daemon) running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
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

// frozen waits until the daemon has reached its failpoint and stands stopped.
func (d *daemon) frozen(within time.Duration) bool {
	select {
	case <-d.hit:
	case <-d.done:
		return false
	case <-time.After(within):
		return false
	}
	deadline := time.Now().Add(within)
	for !failpoint.Stopped(d.cmd.Process.Pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// stop scrapes the daemon's metrics, sends SIGTERM and waits for a clean exit.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if err := d.finish(); err != nil {
		t.Fatal(err)
	}
}

// finish is stop that returns what went wrong instead of failing the test.
func (d *daemon) finish() error {
	select {
	case <-d.done:
		return fmt.Errorf("gembatchd %s had exited already: %v", d.name, d.err)
	default:
	}
	if m, err := scrapeDaemon(d); err == nil {
		d.metrics = m
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if !d.died(15 * time.Second) {
		d.kill()
		return fmt.Errorf("gembatchd %s did not stop within 15s of SIGTERM\n%s", d.name, d.log())
	}
	if d.err != nil {
		return fmt.Errorf("gembatchd %s exited with %v after SIGTERM\n%s", d.name, d.err, d.log())
	}
	return nil
}

// logs joins every daemon's log, for a failure message.
func (w *world) logs() string {
	var b strings.Builder
	for i, d := range w.daemons {
		fmt.Fprintf(&b, "--- daemon %d (%s) ---\n%s", i, d.name, d.log())
	}
	return b.String()
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

// streamCopies lists the requests the request stream holds more than once (a forward stored
// twice), key → sequences, to tell such a breach from a request batched twice.
func (w *world) streamCopies() map[string][]uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := w.js.Stream(ctx, "GEMBATCH")
	if err != nil {
		return map[string][]uint64{"(stream unreadable: " + err.Error() + ")": nil}
	}
	info, err := s.Info(ctx)
	if err != nil {
		return map[string][]uint64{"(stream unreadable: " + err.Error() + ")": nil}
	}
	seqs := map[string][]uint64{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		if m, err := s.GetMsg(ctx, seq); err == nil {
			k := m.Header.Get("Gembatch-Key")
			seqs[k] = append(seqs[k], seq)
		}
	}
	for k, v := range seqs {
		if len(v) < 2 {
			delete(seqs, k)
		}
	}
	return seqs
}

// consumerState describes the daemons' consumer: what it delivered, what waits for an ack.
func (w *world) consumerState() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := w.js.Consumer(ctx, "GEMBATCH", "gembatch")
	if err != nil {
		return err.Error()
	}
	i, err := c.Info(ctx)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("delivered %d, ack floor %d, ack pending %d, pending %d, redelivered %d, cluster %+v",
		i.Delivered.Stream, i.AckFloor.Stream, i.NumAckPending, i.NumPending, i.NumRedelivered, i.Cluster)
}
