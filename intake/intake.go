package intake

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

// Sink takes accepted requests; the accumulator is one.
type Sink interface {
	Add(record.Group, record.Request) error
	Pending() (requests, bytes int64)
}

// Rejecter answers a request that was not accepted.
type Rejecter interface {
	Reject(subject, key, msgID string, st *gemini.Status) error
}

// Config sets up an Intake.
type Config struct {
	Rules
	SubjectGenerate string
	SubjectEmbed    string
	// Queue is the NATS queue group shared by every replica.
	Queue string
	// MaxPending and MaxPendingBytes bound the requests held in open batches; past them new
	// requests are refused with RESOURCE_EXHAUSTED.
	MaxPending      int64
	MaxPendingBytes int64
	// BufferBytes bounds, per subject, the messages NATS has delivered and intake not yet
	// handled; past it the client drops the newest (slow consumer), counted in Metrics.
	BufferBytes int64
	// Bodies is the bucket BodiesBucket of request bodies too large for a NATS message
	// (durable mode); nil refuses requests that name one.
	Bodies       BodyObjects
	BodiesBucket string
	Now          func() time.Time
}

// Intake subscribes to the request subjects.
type Intake struct {
	cfg  Config
	nc   *nats.Conn
	sink Sink
	rej  Rejecter
	log  zerolog.Logger
	m    *Metrics
	subs []*nats.Subscription
	// droppedSeen is the highest drop count seen of each subscription.
	droppedMu   sync.Mutex
	droppedSeen []int
	// rejects summarises refusals in the log.
	rejects rejectLog
}

// New returns an Intake; Start subscribes it.
func New(cfg Config, nc *nats.Conn, sink Sink, rej Rejecter, log zerolog.Logger, m *Metrics) *Intake {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	if cfg.Rules.DefaultModel != "" { // the model most requests go to: its series exist from start
		for _, k := range []gemini.Kind{gemini.KindGenerate, gemini.KindEmbed} {
			m.accepted.WithLabelValues(string(k), gemini.ModelName(cfg.Rules.DefaultModel))
		}
	}
	return &Intake{cfg: cfg, nc: nc, sink: sink, rej: rej, log: log, m: m, rejects: rejectLog{log: log}}
}

// SetSink sets where accepted requests go; it must be called before Start.
func (in *Intake) SetSink(s Sink) { in.sink = s }

// Start subscribes to both request subjects in the queue group.
func (in *Intake) Start() error {
	if err := in.subscribe(in.cfg.Queue, in.Handle); err != nil {
		return err
	}
	return in.nc.Flush()
}

// subscribe delivers both request subjects to handle, in the queue group if one is named (each
// message to one replica), else every message to every replica.
func (in *Intake) subscribe(queue string, handle func(gemini.Kind, *nats.Msg)) error {
	for kind, subject := range map[gemini.Kind]string{gemini.KindGenerate: in.cfg.SubjectGenerate, gemini.KindEmbed: in.cfg.SubjectEmbed} {
		sub, err := in.nc.QueueSubscribe(subject, queue, func(msg *nats.Msg) { handle(kind, msg) })
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", subject, err)
		}
		// Core NATS has no flow control: what arrives faster than intake handles it waits here,
		// in memory, up to the buffer. Past it the client drops the newest (slow consumer).
		if err := sub.SetPendingLimits(1<<20, int(cmp.Or(in.cfg.BufferBytes, 64<<20))); err != nil {
			return fmt.Errorf("subscribe %s: %w", subject, err)
		}
		in.subs = append(in.subs, sub)
	}
	in.droppedSeen = make([]int, len(in.subs))
	count := in.dropped
	in.m.dropping.Store(&count)
	return nil
}

// dropped counts the messages NATS dropped from intake's subscriptions, ever: a subscription's
// own count is gone once it is closed, so the highest seen of each is kept.
func (in *Intake) dropped() int {
	in.droppedMu.Lock()
	defer in.droppedMu.Unlock()
	total := 0
	for i, sub := range in.subs {
		if n, err := sub.Dropped(); err == nil {
			in.droppedSeen[i] = max(in.droppedSeen[i], n)
		}
		total += in.droppedSeen[i]
	}
	return total
}

// Drain stops taking new requests and returns once those already delivered are handled.
func (in *Intake) Drain(ctx context.Context) error {
	defer in.rejects.close()
	var closed []<-chan nats.SubStatus
	for _, sub := range in.subs {
		closed = append(closed, sub.StatusChanged(nats.SubscriptionClosed))
		if err := sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			return fmt.Errorf("drain %s: %w", sub.Subject, err)
		}
	}
	for i, ch := range closed {
		if !in.subs[i].IsValid() {
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("drain intake: %w", ctx.Err())
		}
	}
	return nil
}

// Handle checks one message and passes it on, or answers it with an error.
func (in *Intake) Handle(kind gemini.Kind, msg *nats.Msg) {
	in.m.receivedOf(kind).Inc()
	g, req, rej := in.parse(kind, msg, in.cfg.Now())
	if rej == nil {
		if n, b, full := in.full(req.Size); full {
			rej = reject(ReasonOverloaded, req.Key, gemini.CodeResourceExhausted,
				"gembatch is holding %d requests (%d bytes), its limit (GEMBATCH_MAX_PENDING, GEMBATCH_MAX_PENDING_BYTES); retry later", n, b)
		} else if err := in.sink.Add(g, req); err != nil {
			rej = reject(ReasonShutdown, req.Key, gemini.CodeUnavailable, "gembatch is shutting down; retry later")
		} else {
			in.m.acceptedOf(kind, g.Model).Inc()
			return
		}
	}
	in.Reject(kind, msg.Reply, rej)
}

// parse is Parse, with the body read from the bodies bucket when the message names an object
// there (where a reply could be sent). The request then names the object, to be deleted once
// its batch is recorded.
func (in *Intake) parse(kind gemini.Kind, msg *nats.Msg, received time.Time) (record.Group, record.Request, *Rejection) {
	ref := msg.Header.Get(HeaderBodyObject)
	if ref == "" || msg.Reply == "" || !in.cfg.Rules.replyAllowed(msg.Reply) {
		return Parse(&in.cfg.Rules, kind, msg, received)
	}
	name, body, rej := in.bodyObject(msg, ref)
	if rej != nil {
		return record.Group{}, record.Request{}, rej
	}
	withBody := *msg
	withBody.Data = body
	g, req, rej := Parse(&in.cfg.Rules, kind, &withBody, received)
	req.BodyObject = name
	return g, req, rej
}

// full reports whether taking size more bytes would pass the pending bounds.
func (in *Intake) full(size int64) (requests, bytes int64, full bool) {
	n, b := in.sink.Pending()
	return n, b, (in.cfg.MaxPending > 0 && n >= in.cfg.MaxPending) || (in.cfg.MaxPendingBytes > 0 && b+size > in.cfg.MaxPendingBytes)
}

// Reject counts, logs and answers a request that was not accepted (where it has a reply subject
// that may be answered).
func (in *Intake) Reject(kind gemini.Kind, reply string, rej *Rejection) {
	in.m.rejected.WithLabelValues(string(kind), rej.Reason).Inc()
	if in.rejects.first(kind, rej.Reason, rej.Key) {
		ev := in.log.Warn().Str("kind", string(kind)).Str("reason", rej.Reason).Str("key", rej.Key).Str("error", rej.Status.Message)
		if reply == "" || rej.Reason == ReasonReplyDenied {
			ev.Msg("request refused; no reply sent")
		} else {
			ev.Str("reply", reply).Msg("request refused")
		}
	}
	if reply == "" || rej.Reason == ReasonReplyDenied {
		return
	}
	if err := in.rej.Reject(reply, rej.Key, "", rej.Status); err != nil {
		in.log.Error().Err(err).Msg("error reply for a refused request")
	}
}

// Metrics are the intake's Prometheus metrics. A nil Registerer gives working, unregistered metrics.
type Metrics struct {
	received    *prometheus.CounterVec
	accepted    *prometheus.CounterVec
	rejected    *prometheus.CounterVec
	redelivered prometheus.Counter
	deferred    prometheus.Counter
	// counters holds the received and accepted counters of the labels seen, for the calls made
	// for every request: WithLabelValues hashes its labels at each call (120-135 ns, against
	// 35-45 ns for a load from this map, measured side by side).
	counters sync.Map // counterKey → *labelled
	// receivedGenerate and receivedEmbed, and the accepted counter found last, are tried before
	// the map: requests come in runs of one kind and model, and comparing two strings costs
	// less than hashing them.
	receivedGenerate, receivedEmbed prometheus.Counter
	lastAccepted                    atomic.Pointer[labelled]
	// dropping counts the requests NATS dropped before intake saw them, once subscribed.
	dropping atomic.Pointer[func() int]
}

type counterKey struct {
	accepted    bool
	kind, model string
}

// labelled is a counter with the labels it was found by.
type labelled struct {
	counterKey
	counter prometheus.Counter
}

// receivedOf is the received counter of kind.
func (m *Metrics) receivedOf(kind gemini.Kind) prometheus.Counter {
	switch kind {
	case gemini.KindGenerate:
		return m.receivedGenerate
	case gemini.KindEmbed:
		return m.receivedEmbed
	}
	return m.counter(counterKey{kind: string(kind)}, m.received).counter
}

// acceptedOf is the accepted counter of kind and model.
func (m *Metrics) acceptedOf(kind gemini.Kind, model string) prometheus.Counter {
	if last := m.lastAccepted.Load(); last != nil && last.kind == string(kind) && last.model == model {
		return last.counter
	}
	c := m.counter(counterKey{accepted: true, kind: string(kind), model: model}, m.accepted)
	m.lastAccepted.Store(c)
	return c.counter
}

func (m *Metrics) counter(k counterKey, vec *prometheus.CounterVec) *labelled {
	if c, ok := m.counters.Load(k); ok {
		return c.(*labelled)
	}
	labels := []string{k.kind}
	if k.accepted {
		labels = append(labels, k.model)
	}
	c, _ := m.counters.LoadOrStore(k, &labelled{counterKey: k, counter: vec.WithLabelValues(labels...)})
	return c.(*labelled)
}

// NewMetrics builds the intake's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		received: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_intake_requests_received_total",
			Help: "Request messages received, by kind.",
		}, []string{"kind"}),
		accepted: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_intake_requests_accepted_total",
			Help: "Requests accepted into a batch, by kind and model.",
		}, []string{"kind", "model"}),
		rejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_intake_requests_rejected_total",
			Help: "Requests refused with an error reply, by kind and reason.",
		}, []string{"kind", "reason"}),
		redelivered: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_intake_redelivered_sealed_total",
			Help: "Stream messages redelivered after their batch was already recorded (acked, not batched again).",
		}),
		deferred: f.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_intake_deferred_total",
			Help: "Times durable intake stopped pulling from the stream because the pending bounds were reached (it pulls again when there is room; nothing is handed back).",
		}),
	}
	f.NewCounterFunc(prometheus.CounterOpts{
		Name: "gembatch_intake_requests_dropped_total",
		Help: "Request messages NATS dropped before gembatchd took them in: they arrived faster than it could (durable: store them), past GEMBATCH_INTAKE_BUFFER_BYTES per subject. They get no reply.",
	}, func() float64 {
		if d := m.dropping.Load(); d != nil {
			return float64((*d)())
		}
		return 0
	})
	m.receivedGenerate = m.received.WithLabelValues(string(gemini.KindGenerate))
	m.receivedEmbed = m.received.WithLabelValues(string(gemini.KindEmbed))
	for _, k := range []string{string(gemini.KindGenerate), string(gemini.KindEmbed)} {
		for _, r := range []string{ReasonNoReply, ReasonReplyDenied, ReasonTooLarge, ReasonInvalidJSON, ReasonInvalid, ReasonBadHeader, ReasonDuplicate, ReasonOverloaded, ReasonUnstored, ReasonBodyObject} {
			m.rejected.WithLabelValues(k, r)
		}
	}
	return m
}
