package benchkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/embedded"
	"github.com/gembatch/gembatch/metrics"
)

// env is one run's NATS server (in-process or the caller's), a connection for producers and
// baselines, and the unique names under which this run creates subjects, streams and buckets.
type env struct {
	opts Options
	dir  string
	ns   *server.Server // nil on the caller's server
	url  string
	nc   *nats.Conn
	js   jetstream.JetStream
	tag  string // random, in every name this run creates
	seq  int
}

func newEnv(opts Options) (*env, error) {
	dir, err := os.MkdirTemp("", "gembatch-bench-")
	if err != nil {
		return nil, err
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	e := &env{opts: opts, dir: dir, url: opts.NATSURL, tag: hex.EncodeToString(b[:])}
	if e.url == "" {
		if e.ns, err = embedded.NATS(dir); err != nil {
			e.close()
			return nil, err
		}
		e.url = e.ns.ClientURL()
	}
	if e.nc, err = nats.Connect(e.url, nats.Name("gembatch bench")); err != nil {
		e.close()
		return nil, fmt.Errorf("connect to NATS at %s: %w", e.url, err)
	}
	if e.js, err = jetstream.New(e.nc); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func (e *env) natsLabel() string {
	if e.ns != nil {
		return "in-process nats-server " + server.VERSION
	}
	return e.url
}

// close deletes what this run created on the caller's server, stops the in-process one and
// removes the temporary directory.
func (e *env) close() {
	if e.nc != nil && e.ns == nil && e.js != nil {
		e.dropStreams()
	}
	if e.nc != nil {
		e.nc.Close()
	}
	if e.ns != nil {
		e.ns.Shutdown()
		e.ns.WaitForShutdown()
	}
	_ = os.RemoveAll(e.dir)
}

// dropStreams deletes the streams, buckets and object stores this run created. Between
// measures it also frees what the server keeps of them: a file store's block caches expire
// on a timer seconds later, which a heap measure would otherwise see as its own.
func (e *env) dropStreams() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mine []string
	for n := range e.js.StreamNames(ctx).Name() {
		if strings.Contains(strings.ToLower(n), e.tag) {
			mine = append(mine, n)
		}
	}
	for _, n := range mine {
		_ = e.js.DeleteStream(ctx, n)
	}
}

// name returns a fresh name for one daemon's or baseline's subjects and streams.
func (e *env) name() string {
	e.seq++
	return fmt.Sprintf("gbbench_%s_%d", e.tag, e.seq)
}

// connect opens another connection to the server, for a producer or a subscriber.
func (e *env) connect() (*nats.Conn, error) { return nats.Connect(e.url, nats.Name("gembatch bench")) }

// api is an in-process Gemini emulator over real HTTP that counts the calls it answers.
type api struct {
	emu   *emulator.Server
	srv   *http.Server
	url   string
	calls atomic.Int64
	// keepFiles answers file deletes without deleting, so a baseline can read a result file
	// after gembatchd has answered from it (and cleaned up).
	keepFiles atomic.Bool
}

func startAPI(jobDelay time.Duration) (*api, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &api{emu: emulator.New(emulator.Options{JobDelay: jobDelay}), url: "http://" + ln.Addr().String()}
	a.srv = &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = a.srv.Serve(ln) }()
	return a, nil
}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.calls.Add(1)
	if a.keepFiles.Load() && r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, "/v1beta/files/") {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
		return
	}
	a.emu.ServeHTTP(w, r)
}

// deleteFile deletes a file kept by keepFiles.
func (a *api) deleteFile(name string) {
	a.emu.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodDelete, "/v1beta/"+name, nil))
}

func (a *api) close() {
	_ = a.srv.Close()
	a.emu.Close()
}

// gembatchd is one in-process daemon.
type gembatchd struct {
	main *daemon.Main
	reg  *watchedRegistry
	cfg  daemon.Config
	js   jetstream.JetStream // the run's connection, to read the daemon's consumer
	stop context.CancelFunc
	done chan error
}

// config is the daemon's defaults with this run's own names, replies allowed to <name>.reply.>,
// fast polls, and the API at apiURL.
func (e *env) config(durable bool, apiURL string) daemon.Config {
	n := e.name()
	c := daemon.Defaults()
	c.NATSURL = e.url
	c.GeminiBaseURL = apiURL
	c.MetricsAddr = "127.0.0.1:0"
	c.LogLevel = "error"
	c.Instance = n
	c.SubjectGenerate, c.SubjectEmbed = n+".generate", n+".embed"
	c.StreamSubject = n + ".stream"
	c.Queue, c.Consumer = n, n
	c.Stream = strings.ToUpper(n)
	c.RecordsBucket, c.RequestsBucket, c.BodiesBucket, c.ResultsBucket = n+"-records", n+"-requests", n+"-bodies", n+"-results"
	c.LeasesBucket = n + "-leases"
	c.ReplyAllow = []string{n + ".reply.>"}
	c.Durable = "false"
	if durable {
		c.Durable = "true"
	}
	c.PollInterval, c.PollMaxInterval = 50*time.Millisecond, 500*time.Millisecond
	c.CreateGrace = time.Second
	c.ShutdownGrace = 10 * time.Second
	return c
}

// replySubject is where a daemon of cfg may send replies.
func replySubject(cfg daemon.Config, leaf string) string {
	return strings.TrimSuffix(cfg.ReplyAllow[0], ">") + leaf
}

func (e *env) startDaemon(cfg daemon.Config) (*gembatchd, error) {
	log := zerolog.New(os.Stderr).Level(zerolog.ErrorLevel).With().Timestamp().Str("gembatchd", cfg.Instance).Logger()
	d := &gembatchd{main: daemon.NewMain(cfg, log, metrics.Build{Version: "bench"}), reg: newWatchedRegistry(), cfg: cfg, js: e.js, done: make(chan error, 1)}
	// The bench reads the daemon's counters while it measures: without the Go and process
	// collectors (the latter reads /proc at each gather), and the counters it times a round by
	// apart from the rest (watchedRegistry), reading them does not weigh on the figures.
	d.main.Registry = d.reg
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	go func() { d.done <- d.main.Run(ctx) }()
	select {
	case <-d.main.Ready:
		return d, nil
	case err := <-d.done:
		cancel()
		return nil, fmt.Errorf("gembatchd did not start: %w", err)
	case <-time.After(30 * time.Second):
		cancel()
		<-d.done
		return nil, errors.New("gembatchd not ready after 30s")
	}
}

// close stops the daemon as SIGTERM would and waits for it.
func (d *gembatchd) close() error {
	d.stop()
	select {
	case err := <-d.done:
		return err
	case <-time.After(d.cfg.ShutdownGrace + 30*time.Second):
		return errors.New("gembatchd did not stop")
	}
}

// metric sums a metric of the daemon's registry.
func (d *gembatchd) metric(name string, labels ...string) float64 {
	return d.reg.metric(name, labels...)
}

// waitFor polls cond every 10ms until it holds, ctx ends or within passes.
func waitFor(ctx context.Context, within time.Duration, what string, cond func() bool) error {
	return pollFor(ctx, 10*time.Millisecond, within, what, cond) // a Gather costs about a millisecond: poll gently
}

// pollFor polls cond every interval until it holds, ctx ends or within passes.
func pollFor(ctx context.Context, interval, within time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not done within %s", what, within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
	return nil
}

// drained waits until every request the daemon accepted has its reply published, so that the
// next round does not share the machine with this one's batches.
func (d *gembatchd) drained(ctx context.Context) error {
	return waitFor(ctx, 5*time.Minute, "answer every accepted request", func() bool {
		return d.metric("gembatch_publisher_replies_published_total") >= d.metric(acceptedSeries)
	})
}
