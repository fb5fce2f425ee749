package intake

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

// HeaderReply carries a request's reply subject inside the stream: JetStream does not keep a
// message's own reply subject. Producers that publish to the stream directly set it themselves.
const HeaderReply = "Gembatch-Reply"

// Sealed reports whether a stream sequence already belongs to a recorded batch.
type Sealed interface {
	// Recorded reports whether seq is in a recorded batch, and whether that batch is settled
	// (its acks confirmed): a message of an unsettled one waits, since its owner may yet give
	// the batch up.
	Recorded(seq uint64) (recorded, settled bool)
	// CaughtUp returns once the index holds every record written before the call: the index
	// follows a watch, which lags (most after a reconnect), and a message delivered again may
	// belong to a record written a moment ago.
	CaughtUp(ctx context.Context) error
}

// StreamConfig sets up durable intake.
type StreamConfig struct {
	Config
	Stream string
	// SubjectPrefix: requests are stored on <prefix>.generate and <prefix>.embed.
	SubjectPrefix string
	Replicas      int
	Storage       jetstream.StorageType
	MaxAge        time.Duration
	// Update allows changing a stream gembatch did not create.
	Update   bool
	Consumer string
	AckWait  time.Duration
}

// StreamSubject is the stream subject of a kind.
func (c *StreamConfig) StreamSubject(k gemini.Kind) string { return c.SubjectPrefix + "." + string(k) }

// EnsureStream creates the request stream, or adopts an existing one. A stream gembatch did
// not create is changed only with Update set; one that does not capture the request subjects is
// an error.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c *StreamConfig, log zerolog.Logger) (jetstream.Stream, error) {
	want := jetstream.StreamConfig{
		Name:        c.Stream,
		Description: "gembatch requests waiting to be batched",
		Subjects:    []string{c.StreamSubject(gemini.KindGenerate), c.StreamSubject(gemini.KindEmbed)},
		Storage:     c.Storage,
		Replicas:    c.Replicas,
		MaxAge:      c.MaxAge,
		Duplicates:  2 * time.Minute,
		Metadata:    map[string]string{"gembatch": "managed"},
	}
	s, err := js.Stream(ctx, c.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if err != nil {
			return nil, fmt.Errorf("create stream %s: %w", c.Stream, err)
		}
		log.Info().Str("stream", c.Stream).Strs("subjects", want.Subjects).Msg("created request stream")
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", c.Stream, err)
	}
	have := s.CachedInfo().Config
	differs := have.MaxAge != want.MaxAge || have.Replicas != want.Replicas || !covers(have.Subjects, want.Subjects)
	if !differs {
		return s, nil
	}
	if have.Metadata["gembatch"] != "managed" && !c.Update {
		if !covers(have.Subjects, want.Subjects) {
			return nil, fmt.Errorf("stream %s does not capture %v and was not created by gembatch: set GEMBATCH_STREAM_UPDATE=true to let gembatch change it", c.Stream, want.Subjects)
		}
		log.Warn().Str("stream", c.Stream).Msg("adopting a stream gembatch did not create; leaving its settings as they are")
		return s, nil
	}
	want.Storage = have.Storage // storage cannot change
	if s, err = js.UpdateStream(ctx, want); err != nil {
		return nil, fmt.Errorf("update stream %s: %w", c.Stream, err)
	}
	log.Info().Str("stream", c.Stream).Msg("updated request stream settings")
	return s, nil
}

func covers(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			if SubjectMatches(h, w) {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// StreamIntake is durable intake: producer messages are forwarded into the stream (with their
// reply subject in a header) and consumed from it through one durable pull consumer shared by
// every replica. A message is acknowledged only when the batch it joined is recorded.
type StreamIntake struct {
	*Intake
	scfg     StreamConfig
	js       jetstream.JetStream
	sealed   Sealed
	futures  chan forwarded
	fwdDone  chan struct{}
	stop     chan struct{} // closed by Drain: the pull loop ends
	pullDone chan struct{}
	stream   jetstream.Stream
	keeps    bool // see KeepsMessages
	// avgSize is a moving average of the requests' sizes, to pull about fetchBytes at a time;
	// only the pull loop uses it.
	avgSize int
}

// fetchMax and fetchBytes bound one pull from the stream: intake holds at most this much past
// its pending bounds, and a pull of large requests never puts the connection so far behind
// that the server cuts it off as a slow consumer.
const (
	fetchMax   = 1024
	fetchBytes = 8 << 20
)

type forwarded struct {
	kind  gemini.Kind
	reply string
	key   string
	f     jetstream.PubAckFuture
}

// NewStream returns durable intake; Start forwards and consumes.
func NewStream(cfg StreamConfig, nc *nats.Conn, js jetstream.JetStream, sealed Sealed, rej Rejecter, log zerolog.Logger, m *Metrics) *StreamIntake {
	in := New(cfg.Config, nc, nil, rej, log, m)
	return &StreamIntake{Intake: in, scfg: cfg, js: js, sealed: sealed, futures: make(chan forwarded, 4096), fwdDone: make(chan struct{}),
		stop: make(chan struct{}), pullDone: make(chan struct{}), avgSize: 256 << 10} // cautious until sizes are seen
}

// Start subscribes the forwarders and starts consuming the stream.
func (in *StreamIntake) Start(ctx context.Context) error {
	var err error
	if in.stream, err = EnsureStream(ctx, in.js, &in.scfg, in.log); err != nil {
		return err
	}
	in.keeps = keepsMessages(in.stream.CachedInfo().Config)
	if !in.keeps {
		in.log.Warn().Str("stream", in.scfg.Stream).
			Msg("the stream may drop messages before their MaxAge (retention other than limits, or a message, byte or per-subject limit): each batch's bodies are copied into the requests bucket")
	}
	cons, err := in.js.CreateOrUpdateConsumer(ctx, in.scfg.Stream, jetstream.ConsumerConfig{
		Durable:        in.scfg.Consumer,
		Description:    "gembatchd replicas batching requests",
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        in.scfg.AckWait,
		MaxDeliver:     -1,
		MaxAckPending:  int(in.cfg.MaxPending),
		FilterSubjects: in.filter(),
	})
	if err != nil {
		return fmt.Errorf("consumer %s on stream %s: %w", in.scfg.Consumer, in.scfg.Stream, err)
	}
	go in.confirm()
	// Every replica forwards every core request, each with the same Nats-Msg-Id: the stream
	// keeps one, and a request received by a replica that dies before forwarding it is still
	// stored by the others.
	if err := in.subscribe("", in.forward); err != nil {
		dctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if in.Intake.Drain(dctx) == nil { // no forwarder can run any more
			close(in.futures)
		}
		return err
	}
	go in.pull(cons)
	return in.nc.Flush()
}

// filter is the consumer's subject filter: the request subjects, or none when the stream
// captures nothing else. Two filters cost the server a match of every message against both
// (0.17 s of the 5 s of CPU of five of the bench's durable rounds, which the baseline's
// consumer, with one filter, does not spend).
func (in *StreamIntake) filter() []string {
	want := []string{in.scfg.StreamSubject(gemini.KindGenerate), in.scfg.StreamSubject(gemini.KindEmbed)}
	for _, s := range in.stream.CachedInfo().Config.Subjects {
		if !slices.Contains(want, s) {
			return want
		}
	}
	return nil
}

// pull fetches from the stream only as many messages as there is room for under the pending
// bounds, and hands each on at once: nothing waits in a client buffer past its AckWait, and
// nothing is handed back while the daemon is full.
func (in *StreamIntake) pull(cons jetstream.Consumer) {
	defer close(in.pullDone)
	paused := false
	for {
		select {
		case <-in.stop:
			return
		default:
		}
		room := in.room()
		if room <= 0 {
			if !paused {
				in.m.deferred.Inc()
				paused = true
			}
			select {
			case <-in.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		paused = false
		// Stamped before the pull: a request counts as received when it may first have been
		// delivered, so that a replica frozen after this pull (its messages meanwhile delivered
		// to another) sees that its lease lapsed since, and does not batch them.
		pulled := in.cfg.Now()
		batch, err := cons.Fetch(room, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			in.log.Warn().Err(err).Msg("fetch requests from the stream; will try again")
			select {
			case <-in.stop:
				return
			case <-time.After(time.Second):
			}
			continue
		}
		caughtUp := false // one catch-up covers the messages of one pull
		for m := range batch.Messages() {
			in.avgSize = (7*in.avgSize + len(m.Data())) / 8
			in.consume(m, pulled, &caughtUp)
		}
	}
}

// room is how many requests intake may take in one pull before passing its pending bounds.
func (in *StreamIntake) room() int {
	n, b := in.sink.Pending()
	bytes := int64(fetchBytes)
	if in.cfg.MaxPendingBytes > 0 {
		bytes = min(bytes, in.cfg.MaxPendingBytes-b)
	}
	if bytes <= 0 {
		return 0
	}
	room := min(fetchMax, max(1, int(bytes)/max(1, in.avgSize)))
	if in.cfg.MaxPending > 0 {
		room = min(room, int(in.cfg.MaxPending-n))
	}
	return room
}

// forward stores one producer message in the stream. A message with no reply subject cannot be
// answered and is refused here.
func (in *StreamIntake) forward(kind gemini.Kind, msg *nats.Msg) {
	in.m.receivedOf(kind).Inc()
	if msg.Reply == "" {
		in.Reject(kind, "", reject(ReasonNoReply, msg.Header.Get(HeaderKey), gemini.CodeInvalidArgument, "message has no reply subject"))
		return
	}
	out := &nats.Msg{Subject: in.scfg.StreamSubject(kind), Data: msg.Data, Header: nats.Header{}}
	for k, v := range msg.Header {
		out.Header[k] = v
	}
	out.Header.Set(HeaderReply, msg.Reply)
	out.Header.Set(nats.MsgIdHdr, ForwardID(kind, msg))
	// When the stream falls behind, wait (holding the subscription: NATS buffers the rest) rather
	// than refuse at once.
	f, err := in.js.PublishMsgAsync(out, jetstream.WithStallWait(10*time.Second))
	if err != nil {
		in.Reject(kind, msg.Reply, reject(ReasonUnstored, msg.Header.Get(HeaderKey), gemini.CodeUnavailable, "could not store the request: %v; retry later", err))
		return
	}
	in.futures <- forwarded{kind: kind, reply: msg.Reply, key: msg.Header.Get(HeaderKey), f: f}
}

// ForwardID is the Nats-Msg-Id a core request is stored under: built from what every replica
// sees alike (kind, reply subject, key and body), so the stream's duplicate window keeps one copy
// of what several replicas forward, and a producer that sends a request again with the same key
// and reply subject within the window is not billed twice. The reply subject is in it because
// many keyless requests may share one (nats pub --count), and so that a producer sending the same
// keys again on purpose, to another reply subject, is answered again.
func ForwardID(kind gemini.Kind, msg *nats.Msg) string {
	h := sha256.New()
	for _, part := range []string{string(kind), msg.Reply, msg.Header.Get(HeaderKey)} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	h.Write(msg.Data)
	return "gb-" + hex.EncodeToString(h.Sum(nil)[:16])
}

// confirm answers forwarded messages the stream refused.
func (in *StreamIntake) confirm() {
	defer close(in.fwdDone)
	for {
		var fw forwarded
		select {
		case f, ok := <-in.futures:
			if !ok {
				return
			}
			fw = f
		case <-in.stop: // shutting down without NATS: an acknowledgement may never come
			return
		}
		select {
		case <-fw.f.Ok():
		case err := <-fw.f.Err():
			in.Reject(fw.kind, fw.reply, reject(ReasonUnstored, fw.key, gemini.CodeUnavailable, "could not store the request: %v; retry later", err))
		case <-in.stop:
			return
		}
	}
}

// consume checks one stored request and hands it to the accumulator with its acknowledgement.
func (in *StreamIntake) consume(m jetstream.Msg, received time.Time, caughtUp *bool) {
	meta, err := m.Metadata()
	if err != nil {
		in.log.Error().Err(err).Str("subject", m.Subject()).Msg("stream message without metadata")
		_ = m.Term()
		return
	}
	seq := meta.Sequence.Stream
	// Once a pull for first deliveries (a consumer leader change can lose deliveries as well as
	// acks, and a message batched elsewhere then comes back counted as a first delivery), and
	// for every redelivery, whose batch may have been recorded since the pull began.
	if !*caughtUp || meta.NumDelivered > 1 {
		if err := in.catchUp(); err != nil {
			in.log.Warn().Err(err).Uint64("seq", seq).Msg("cannot tell whether a message is recorded already; it is handed back")
			_ = m.NakWithDelay(time.Second)
			return
		}
		*caughtUp = true
	}
	recorded, settled := in.sealed.Recorded(seq)
	if recorded && !settled {
		// Its batch is recorded and its owner has not confirmed the acks: it may yet give the
		// batch up (a lapse, a write that outlasted the AckWait), and then this message is to
		// be batched. Asked again shortly; acknowledged by the owner otherwise.
		_ = m.NakWithDelay(time.Second)
		return
	}
	if recorded || (meta.NumDelivered > 1 && in.removed(seq)) {
		in.m.redelivered.Inc()
		in.log.Info().Uint64("seq", seq).Uint64("deliveries", meta.NumDelivered).Bool("recorded", recorded).
			Msg("a message already in a recorded batch was delivered again; acknowledged, not batched twice")
		_ = m.Ack()
		return
	}
	kind := gemini.Kind(m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:])
	msg := &nats.Msg{Subject: m.Subject(), Reply: m.Headers().Get(HeaderReply), Header: m.Headers(), Data: m.Data()}
	g, req, rej := in.parse(kind, msg, received)
	if rej == nil {
		if req.BodyObject != "" {
			req.Body = nil // the batch's input reads it from the object: an open batch holds no bodies
		}
		req.ID = fmt.Sprintf("%s-%d", in.scfg.Stream, seq)
		if msg.Header.Get(HeaderKey) == "" { // the same on every delivery, so a redelivery is known as one
			req.Size += gemini.InputLineLen(req.ID, 0) - gemini.InputLineLen(req.Key, 0) // its line carries this key
			req.Key = req.ID
		}
		req.Seq = seq
		req.Msg = &ackHandle{nc: in.nc, reply: m.Reply(), consumer: in.scfg.Consumer}
		if err := in.sink.Add(g, req); err == nil {
			in.m.acceptedOf(kind, g.Model).Inc()
			return
		}
		// Shutting down: leave it in the stream for the next consumer.
		_ = m.Nak()
		return
	}
	in.Reject(kind, msg.Reply, rej)
	_ = m.Ack()
}

// catchUp waits, a few seconds at most, until the redelivery index holds every record written.
func (in *StreamIntake) catchUp() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return in.sealed.CaughtUp(ctx)
}

// removed reports whether a message delivered again is no longer in the stream: a replica that
// took over its batch removed it (the redelivery was on its way), so it is recorded already.
// The record's sequences leave the index only after the removal, so between the two checks in
// consume nothing can fall.
func (in *StreamIntake) removed(seq uint64) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return gone(ctx, in.stream, seq)
}

// gone reports a message the stream no longer holds. A failed delete is checked this way: the
// server words "already deleted" differently by version and storage (10043 "sequence N not
// found", 10057 "no message found"), and another replica may have removed it meanwhile.
func gone(ctx context.Context, s jetstream.Stream, seq uint64) bool {
	_, err := s.GetMsg(ctx, seq)
	return errors.Is(err, jetstream.ErrMsgNotFound)
}

// KeepsMessages reports whether the stream, as it was at Start, keeps every message until its
// MaxAge, acknowledged or not: a recorded batch then reads its bodies back from it, instead of
// a copy of them.
func (in *StreamIntake) KeepsMessages() bool { return in.keeps }

func keepsMessages(c jetstream.StreamConfig) bool {
	return c.Retention == jetstream.LimitsPolicy && c.MaxMsgs <= 0 && c.MaxBytes <= 0 && c.MaxMsgsPerSubject <= 0
}

// Remove deletes the requests' messages from the stream, so that none is delivered again: for a
// recorded batch whose acknowledgements its previous owner may not have sent.
func (in *StreamIntake) Remove(ctx context.Context, reqs []record.Request) error {
	s, err := in.js.Stream(ctx, in.scfg.Stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", in.scfg.Stream, err)
	}
	for _, q := range reqs {
		if q.Seq == 0 {
			continue
		}
		if err := s.DeleteMsg(ctx, q.Seq); err != nil && !gone(ctx, s, q.Seq) {
			return fmt.Errorf("remove message %d of stream %s: %w", q.Seq, in.scfg.Stream, err)
		}
	}
	return nil
}

// Drain stops forwarding and consuming and returns once what was delivered is handled.
func (in *StreamIntake) Drain(ctx context.Context) error {
	err := in.Intake.Drain(ctx)
	if err == nil { // no forwarder can run any more
		close(in.futures)
		select {
		case <-in.fwdDone:
		case <-ctx.Done():
		}
	}
	close(in.stop)
	select {
	case <-in.pullDone:
	case <-ctx.Done():
		return fmt.Errorf("stop pulling from the stream: %w", ctx.Err())
	}
	return err
}

// ackHandle answers a stream message held in an open batch by the message's reply subject
// alone, as jetstream.Msg does (the same bodies, and a request for the double ack). Holding the
// jetstream.Msg itself kept the whole message, body and all, alive until the batch was recorded:
// 132 MB of a 128 MiB batch's peak heap, which the batch's input chunks hold durably already.
type ackHandle struct {
	nc       *nats.Conn
	reply    string
	consumer string      // whose delivery it is: see confirmOn
	acked    atomic.Bool // a confirmed ack is not asked again (jetstream says ErrMsgAlreadyAckd)
}

// ackTimeout bounds a double ack whose context has no deadline, as jetstream's default does.
const ackTimeout = 5 * time.Second

// InProgress tells the stream the message is being worked on, restarting its AckWait.
func (h *ackHandle) InProgress() error { return h.nc.Publish(h.reply, []byte("+WPI")) }

// Nak hands the message back for redelivery.
func (h *ackHandle) Nak() error { return h.nc.Publish(h.reply, []byte("-NAK")) }

// DoubleAck acknowledges the message and waits for the server to confirm it.
func (h *ackHandle) DoubleAck(ctx context.Context) error {
	if h.acked.Load() {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ackTimeout)
		defer cancel()
	}
	if _, err := h.nc.RequestWithContext(ctx, h.reply, []byte("+ACK")); err != nil {
		return err
	}
	h.acked.Store(true)
	return nil
}
