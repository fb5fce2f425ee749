package jsstore

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/record"
)

const (
	// streamFetchBytes bounds what one fetch of a record's messages brings: the memory a read
	// back holds, whatever the batch's size. streamFetchMax bounds their number: a fetch by
	// bytes alone asks for a million messages, and the client makes a channel that long for
	// each (16 MB cleared: two thirds of a 10,000-request read back).
	streamFetchBytes = 4 << 20
	streamFetchMax   = 4096
	// streamFetchWait is how long a fetch waits for messages: when one brings none, the stream
	// is asked whether the message wanted next is gone.
	streamFetchWait = 2 * time.Second
)

// streamInput reads a record InStream's input: the lines in its chunks (bodies that came through
// the bodies bucket), then one line for each other request, from its message in the request
// stream, read back in stream order by an ordered consumer. The order of the lines does not
// matter to the Batch API, which answers by key; their bytes are those of Input.Append.
func (s *Store) streamInput(ctx context.Context, rec *record.Record) (io.ReadCloser, error) {
	if s.cfg.Stream == "" {
		return nil, fmt.Errorf("record %s reads its bodies from the request stream, and no stream is set", rec.ID)
	}
	pr, pw := io.Pipe()
	go func() {
		w := bufio.NewWriterSize(pw, 64<<10)
		err := s.writeStreamInput(ctx, rec, w)
		if err == nil {
			err = w.Flush()
		}
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// writeStreamInput writes the record's input to w; a record.InputLost when a body can never be
// read back.
func (s *Store) writeStreamInput(ctx context.Context, rec *record.Record, w io.Writer) error {
	inChunks := 0
	if rec.Chunks > 0 {
		rd := s.chunks(ctx, rec)
		lines := &lineCounter{w: w}
		_, err := io.Copy(lines, rd)
		_ = rd.Close()
		if err != nil {
			return err
		}
		inChunks = lines.n
	}
	order := bySeq(rec.Requests)
	if len(order) == 0 {
		return nil
	}
	objects, err := s.readBack(ctx, rec, order, w)
	if err != nil {
		return err
	}
	if objects != inChunks {
		return &record.InputLost{Reason: fmt.Sprintf("record %s has %d input lines in its chunks, and %d of its messages name a body object",
			rec.ID, inChunks, objects)}
	}
	return nil
}

// bySeq returns the indexes of reqs in stream order.
func bySeq(reqs []record.Request) []int {
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(reqs[a].Seq, reqs[b].Seq) })
	return order
}

// readBack reads the messages of the requests in order (stream order) and writes the line of
// each that carries its body; it returns how many carried none (their bodies came through the
// bodies bucket and are in the record's chunks).
func (s *Store) readBack(ctx context.Context, rec *record.Record, order []int, w io.Writer) (objects int, err error) {
	first := rec.Requests[order[0]].Seq
	if first == 0 {
		return 0, fmt.Errorf("record %s reads its bodies from the stream, and request %q has no sequence", rec.ID, rec.Requests[order[0]].Key)
	}
	cons, err := s.js.OrderedConsumer(ctx, s.cfg.Stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: first,
	})
	if err != nil {
		return 0, fmt.Errorf("read the bodies of record %s from stream %s: %w", rec.ID, s.cfg.Stream, err)
	}
	defer func() { // the server would drop it after 5 idle minutes
		if info := cons.CachedInfo(); info != nil {
			_ = s.js.DeleteConsumer(context.Background(), s.cfg.Stream, info.Name)
		}
	}()
	b := &backReader{s: s, rec: rec, order: order, w: w, line: make([]byte, 0, 64<<10)}
	for b.next < len(order) {
		batch, err := cons.Fetch(streamFetchMax, jetstream.FetchMaxBytes(streamFetchBytes), jetstream.FetchMaxWait(streamFetchWait))
		if err != nil {
			return 0, fmt.Errorf("read the bodies of record %s from stream %s: %w", rec.ID, s.cfg.Stream, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			if done, err := b.take(ctx, m); done || err != nil {
				return b.objects, err
			}
		}
		if err := batch.Error(); err != nil {
			return 0, fmt.Errorf("read the bodies of record %s from stream %s: %w", rec.ID, s.cfg.Stream, err)
		}
		if got == 0 { // nothing more came: the stream says whether the next one is gone
			return 0, s.missing(ctx, rec, b.want())
		}
	}
	return b.objects, nil
}

// backReader follows a read back: the record's requests in stream order, the next one wanted,
// and how many of those read so far had their bodies in objects.
type backReader struct {
	s       *Store
	rec     *record.Record
	order   []int
	next    int
	objects int
	w       io.Writer
	line    []byte
}

func (b *backReader) want() *record.Request { return &b.rec.Requests[b.order[b.next]] }

// take handles one message of the stream: the next request's (its line written), another
// batch's (skipped), or one past it (the request's message did not come). done once the last
// request is read.
func (b *backReader) take(ctx context.Context, m jetstream.Msg) (done bool, err error) {
	meta, err := m.Metadata()
	if err != nil {
		return false, fmt.Errorf("read the bodies of record %s: %w", b.rec.ID, err)
	}
	q := b.want()
	switch seq := meta.Sequence.Stream; {
	case q.Seq > seq:
		return false, nil
	case q.Seq < seq:
		return false, b.s.missing(ctx, b.rec, q)
	}
	b.next++
	body := bytes.TrimSpace(m.Data())
	if len(body) == 0 { // its body is in an object, written to the chunks
		b.objects++
	} else if b.line, err = b.s.bodyLine(b.line[:0], b.rec, *q, body); err != nil {
		return false, err
	} else if _, err := b.w.Write(b.line); err != nil {
		return false, err
	}
	if b.next == len(b.order) {
		return true, nil
	}
	if meta.NumPending == 0 {
		return false, b.s.missing(ctx, b.rec, b.want())
	}
	return false, nil
}

// bodyLine appends q's input line, from the body its message carries: the body intake
// accepted, by its line's size, or the request is not the one recorded.
func (s *Store) bodyLine(dst []byte, rec *record.Record, q record.Request, body []byte) ([]byte, error) {
	start := len(dst)
	dst, err := appendLine(dst, q.Key, body) // as gemini.InputLineSize counts it
	if err != nil || int64(len(dst)-start) != q.Size {
		return dst, &record.InputLost{Reason: fmt.Sprintf("message %d of stream %s is not request %q of record %s (was the stream recreated?)",
			q.Seq, s.cfg.Stream, q.Key, rec.ID)}
	}
	return dst, nil
}

// missing is the error of a request whose message the read back did not bring: lost if the
// stream itself says it no longer holds it, or else a failure to try again later (an ordered
// consumer can come up short while a cluster node rejoins: seen in TestNATSClusterNodeLoss).
func (s *Store) missing(ctx context.Context, rec *record.Record, q *record.Request) error {
	stream, err := s.js.Stream(ctx, s.cfg.Stream)
	if err == nil {
		_, err = stream.GetMsg(ctx, q.Seq)
	}
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return s.lostBody(rec, q)
	case err != nil:
		return fmt.Errorf("read the bodies of record %s: message %d of stream %s not read back, and the stream cannot say whether it holds it: %w",
			rec.ID, q.Seq, s.cfg.Stream, err)
	}
	return fmt.Errorf("read the bodies of record %s: message %d of stream %s not read back, though the stream holds it", rec.ID, q.Seq, s.cfg.Stream)
}

// lostBody is the error of a request whose message the stream no longer holds.
func (s *Store) lostBody(rec *record.Record, q *record.Request) error {
	return &record.InputLost{Reason: fmt.Sprintf("message %d of stream %s (request %q of record %s) is no longer in the stream: older than its MaxAge (GEMBATCH_STREAM_MAX_AGE), or deleted",
		q.Seq, s.cfg.Stream, q.Key, rec.ID)}
}

// lineCounter counts the lines written through it.
type lineCounter struct {
	w io.Writer
	n int
}

func (c *lineCounter) Write(p []byte) (int, error) {
	c.n += bytes.Count(p, []byte{'\n'})
	return c.w.Write(p)
}
