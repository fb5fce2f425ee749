package benchkit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/daemon"
)

// producers is the number of producer connections of the intake measures.
const producers = 8

// intakeJobTime is how long the emulator's jobs run in the intake measures: longer than a round
// (20,000 requests at 7,000 a second take 3 s), so that the emulator answering and the daemon
// reading answers do not share the machine with the intake being timed. A profile of the durable
// measure with jobs of one second found half its CPU there.
const intakeJobTime = 10 * time.Second

// generateBody is a GenerateContentRequest of exactly size bytes.
func generateBody(size int) []byte {
	wrap := func(text string) []byte {
		b, _ := json.Marshal(text)
		return []byte(`{"contents":[{"role":"user","parts":[{"text":` + string(b) + `}]}]}`)
	}
	return wrap(strings.Repeat("q", max(0, size-len(wrap("")))))
}

// requests builds n request messages to subject, split among the producers, each with a key
// unique to the round. Built before the clock starts, for the baselines and gembatchd alike.
func requests(subject, reply, keyPrefix string, body []byte, n int, jsReply bool) [][]*nats.Msg {
	out := make([][]*nats.Msg, producers)
	for i := range n {
		m := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
		m.Header.Set("Gembatch-Key", fmt.Sprintf("%s-%d", keyPrefix, i))
		if jsReply {
			m.Header.Set("Gembatch-Reply", reply)
		} else {
			m.Reply = reply
		}
		out[i%producers] = append(out[i%producers], m)
	}
	return out
}

// fleet is the producers' connections.
type fleet struct {
	conns []*nats.Conn
	js    []jetstream.JetStream
}

func (e *env) fleet() (*fleet, error) {
	f := &fleet{}
	for range producers {
		nc, err := e.connect()
		if err != nil {
			f.close()
			return nil, err
		}
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			f.close()
			return nil, err
		}
		f.conns, f.js = append(f.conns, nc), append(f.js, js)
	}
	return f, nil
}

func (f *fleet) close() {
	for _, nc := range f.conns {
		nc.Close()
	}
}

// publish sends each producer's messages on its own connection, in parallel, with core NATS.
func (f *fleet) publish(msgs [][]*nats.Msg) error {
	return f.each(func(i int) error {
		for _, m := range msgs[i] {
			if err := f.conns[i].PublishMsg(m); err != nil {
				return err
			}
		}
		return f.conns[i].Flush()
	})
}

// publishJS sends each producer's messages with JetStream, asynchronously, and waits for
// every acknowledgement.
func (f *fleet) publishJS(ctx context.Context, msgs [][]*nats.Msg) error {
	return f.each(func(i int) error {
		for _, m := range msgs[i] {
			if _, err := f.js[i].PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
				return err
			}
		}
		select {
		case <-f.js[i].PublishAsyncComplete():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Minute):
			return errors.New("JetStream publishes not acknowledged within 5 minutes")
		}
	})
}

func (f *fleet) each(fn func(i int) error) error {
	errs := make([]error, len(f.conns))
	var wg sync.WaitGroup
	for i := range f.conns {
		wg.Go(func() { errs[i] = fn(i) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// rate is n per elapsed second.
func rate(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }

// rawPubSub is the core baseline: the producers publish the messages to one plain subscriber;
// msg/s until it has received every one.
func (e *env) rawPubSub(ctx context.Context, f *fleet, msgs [][]*nats.Msg, n int) (float64, error) {
	var got atomic.Int64
	done := make(chan struct{})
	sub, err := e.nc.Subscribe(msgs[0][0].Subject, func(*nats.Msg) {
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		return 0, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	if err := e.nc.Flush(); err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := f.publish(msgs); err != nil {
		return 0, err
	}
	select {
	case <-done:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(5 * time.Minute):
		return 0, fmt.Errorf("raw subscriber got %d of %d", got.Load(), n)
	}
	return rate(n, time.Since(t0)), nil
}

// accepted times send until the daemon has accepted n more requests (and, durable, recorded
// and acknowledged them all), in requests per second.
func (d *gembatchd) accepted(ctx context.Context, n int, send func() error) (float64, error) {
	before := d.metric(acceptedSeries)
	t0 := time.Now()
	if err := send(); err != nil {
		return 0, err
	}
	// Every millisecond, as the baseline's subscriber counts each message as it comes: the
	// accepted count is watched apart (watchedRegistry), a read of it costs microseconds. The
	// consumer's state, a request to the server, only once every request is accepted: a durable
	// round ends when their batches are recorded and acknowledged.
	err := pollFor(ctx, time.Millisecond, 5*time.Minute, "accept every request", func() bool {
		return d.metric(acceptedSeries)-before >= float64(n) && d.unacked(ctx) == 0
	})
	return rate(n, time.Since(t0)), err
}

// unacked is the number of stream messages not yet acknowledged by a durable daemon (0 in core
// mode): they are acknowledged once their batch is recorded. One consumer info request: the
// info that looking the consumer up brings. Asking again with Info cost as much once more
// (about 120 µs of the process's CPU a request, in-process server included), every
// millisecond while the round's last acknowledgements were being handled.
func (d *gembatchd) unacked(ctx context.Context) int {
	if d.cfg.Durable != "true" {
		return 0
	}
	c, err := d.js.Consumer(ctx, d.cfg.Stream, d.cfg.Consumer)
	if err != nil {
		return -1
	}
	info := c.CachedInfo()
	return info.NumAckPending + int(info.NumPending)
}

// coreIntake: 8 producers publish 1 KiB requests; raw publish→subscribe against core gembatchd.
func coreIntake(ctx context.Context, e *env) ([]Row, error) {
	n := e.size(20000, 1000)
	a, err := startAPI(intakeJobTime) // jobs end after the round, not during it
	if err != nil {
		return nil, err
	}
	defer a.close()
	cfg := e.config(false, a.url)
	// The round's batch closes after the round: a core request is accepted once it joins a
	// batch, and the create that a close sends (an inline body of 20 MB the emulator decodes,
	// on this machine; the service's work, elsewhere, in production) took a quarter of the CPU
	// during rounds whose batches closed at 5,000 requests.
	cfg.BatchMaxRequests, cfg.BatchMaxWait = 2*n, 2*time.Second
	d, err := e.startDaemon(cfg)
	if err != nil {
		return nil, err
	}
	defer d.close()
	f, err := e.fleet()
	if err != nil {
		return nil, err
	}
	defer f.close()
	body, raw := generateBody(1024), e.name()
	var r rounds
	for round := range e.opts.Rounds {
		var base, got float64
		err := interleave(round,
			func() (err error) {
				base, err = e.rawPubSub(ctx, f, requests(raw, replySubject(cfg, "void"), fmt.Sprint(round), body, n, false), n)
				return err
			},
			func() (err error) {
				msgs := requests(cfg.SubjectGenerate, replySubject(cfg, "void"), fmt.Sprintf("c%d", round), body, n, false)
				if got, err = d.accepted(ctx, n, func() error { return f.publish(msgs) }); err != nil {
					return err
				}
				return d.drained(ctx)
			})
		if err != nil {
			return nil, err
		}
		r.add(base, got)
		e.progress("core intake round %d/%d: raw %.0f msg/s, gembatchd %.0f accepted/s", round+1, e.opts.Rounds, base, got)
	}
	return []Row{r.row(fmt.Sprintf("core intake, %d producers, 1 KiB requests", producers), "msg/s", "higher", "raw publish→subscribe")}, nil
}

// interleave runs the baseline and gembatchd, the baseline first in even rounds and second in
// odd ones, so that a drift in the machine's load weighs on both alike.
func interleave(round int, base, daemon func() error) error {
	if round%2 == 1 {
		base, daemon = daemon, base
	}
	if err := base(); err != nil {
		return err
	}
	return daemon()
}

// rawJetStream is the durable baseline: the producers publish with JetStream into a stream of
// its own, and one consumer acknowledges every message; msg/s until all are acknowledged.
func (e *env) rawJetStream(ctx context.Context, f *fleet, stream jetstream.Stream, subject string, msgs [][]*nats.Msg, n int) (float64, error) {
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: subject})
	if err != nil {
		return 0, err
	}
	defer func() { _ = stream.DeleteConsumer(context.Background(), cons.CachedInfo().Name) }()
	var acked atomic.Int64
	done := make(chan struct{})
	t0 := time.Now()
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		if acked.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		return 0, err
	}
	defer cc.Stop()
	if err := f.publishJS(ctx, msgs); err != nil {
		return 0, err
	}
	select {
	case <-done:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(5 * time.Minute):
		return 0, fmt.Errorf("raw consumer acked %d of %d", acked.Load(), n)
	}
	took := time.Since(t0)
	return rate(n, took), stream.Purge(ctx)
}

// durableIntake: the JetStream baseline against durable gembatchd, for plain producers (whose
// requests gembatchd forwards into its stream) and for producers publishing to the stream.
func durableIntake(ctx context.Context, e *env) ([]Row, error) {
	n := e.size(20000, 1000)
	a, err := startAPI(intakeJobTime)
	if err != nil {
		return nil, err
	}
	defer a.close()
	cfg := e.config(true, a.url)
	// Batches of the default size (10,000 requests), closed by count: recorded and acknowledged
	// within the round, the last one's create (which the emulator decodes in this process)
	// after it. Batches of 5,000 had three of the round's four creates decoded during it.
	cfg.BatchMaxRequests, cfg.BatchMaxWait = min(n, daemon.Defaults().BatchMaxRequests), time.Minute
	d, err := e.startDaemon(cfg)
	if err != nil {
		return nil, err
	}
	defer d.close()
	f, err := e.fleet()
	if err != nil {
		return nil, err
	}
	defer f.close()
	raw := e.name()
	stream, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: strings.ToUpper(raw), Subjects: []string{raw + ".>"}})
	if err != nil {
		return nil, err
	}
	defer func() { _ = e.js.DeleteStream(context.Background(), stream.CachedInfo().Config.Name) }()
	body := generateBody(1024)
	var fwd, js rounds
	for round := range e.opts.Rounds {
		var base, forwarded, published float64
		baseline := func() (err error) {
			subject := fmt.Sprintf("%s.r%d", raw, round)
			base, err = e.rawJetStream(ctx, f, stream, subject, requests(subject, "", fmt.Sprint(round), body, n, true), n)
			return err
		}
		daemon := func() (err error) {
			plain := requests(cfg.SubjectGenerate, replySubject(cfg, "void"), fmt.Sprintf("f%d", round), body, n, false)
			if forwarded, err = d.accepted(ctx, n, func() error { return f.publish(plain) }); err != nil {
				return err
			}
			toStream := requests(cfg.StreamSubject+".generate", replySubject(cfg, "void"), fmt.Sprintf("j%d", round), body, n, true)
			if published, err = d.accepted(ctx, n, func() error { return f.publishJS(ctx, toStream) }); err != nil {
				return err
			}
			return d.drained(ctx)
		}
		if err := interleave(round, baseline, daemon); err != nil {
			return nil, err
		}
		fwd.add(base, forwarded)
		js.add(base, published)
		e.progress("durable intake round %d/%d: raw JetStream %.0f msg/s, gembatchd %.0f (plain producers), %.0f (JetStream producers) accepted/s",
			round+1, e.opts.Rounds, base, forwarded, published)
	}
	const baseLabel = "JetStream publish + consume-and-ack"
	return []Row{
		fwd.row(fmt.Sprintf("durable intake, %d plain producers (forwarded), 1 KiB", producers), "msg/s", "higher", baseLabel),
		js.row(fmt.Sprintf("durable intake, %d JetStream producers to the stream, 1 KiB", producers), "msg/s", "higher", baseLabel),
	}, nil
}
