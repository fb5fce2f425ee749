package benchkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// imageBytes is the size of the PNG each image request asks the emulator for: base64 in its
// result line, the answer is about 2 MiB.
const imageBytes = 1_572_000

// headerResultObject is the reply header of an answer delivered by reference (contract:
// "Gembatch-Result-Object: <bucket>/<object>").
const headerResultObject = "Gembatch-Result-Object"

// imageRequest asks for an image answer of imageBytes, the kind of answer that is a few MB.
var imageRequest = []byte(`{"contents":[{"role":"user","parts":[{"text":"a lighthouse at dawn, watercolor [[emulator:image-bytes=` +
	strconv.Itoa(imageBytes) + `]]"}]}],"generationConfig":{"responseModalities":["IMAGE"]}}`)

// bigReplies: answers of about 2 MB delivered per second (each reply resolved from the object
// store the daemon put it in) against a raw object-store put and get of objects of the same
// size; then the peak RSS growth while many of them are delivered, against the same number of
// raw puts and gets.
func bigReplies(ctx context.Context, e *env) ([]Row, error) {
	n, many := e.size(20, 4), e.size(500, 20)
	a, err := startAPI(0)
	if err != nil {
		return nil, err
	}
	defer a.close()
	cfg := e.config(true, a.url)
	cfg.BatchMaxRequests, cfg.BatchMaxWait = n, 200*time.Millisecond
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
	bucket, err := e.js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: raw})
	if err != nil {
		return nil, err
	}
	defer func() { _ = e.js.DeleteObjectStore(context.Background(), raw) }()

	size, err := e.probeBigAnswer(ctx, f, cfg.SubjectGenerate, replySubject(cfg, "big"))
	if err != nil {
		return nil, err
	}
	answer := bytes.Repeat([]byte("A"), size)
	var speed rounds
	for round := range e.opts.Rounds {
		var b, g float64
		err := interleave(round,
			func() (err error) { b, err = objectRoundTrip(ctx, bucket, answer, n, fmt.Sprint(round)); return err },
			func() (err error) {
				g, err = e.bigAnswerRound(ctx, f, cfg.SubjectGenerate, replySubject(cfg, "big"), n, fmt.Sprintf("i%d", round))
				return err
			})
		if err != nil {
			return nil, err
		}
		speed.add(b, g)
		e.progress("big answers round %d/%d: raw object store %.1f answers/s, gembatchd %.1f answers/s", round+1, e.opts.Rounds, b, g)
	}
	label := fmt.Sprintf("object-store put + get of %.1f MB", float64(size)/1e6)
	rows := []Row{speed.row(fmt.Sprintf("answers of %.1f MB delivered (durable, by object store)", float64(size)/1e6), "answers/s", "higher", label)}

	var mem rounds
	var b, g float64
	err = interleave(0,
		func() error {
			rss0, err := resetPeak()
			if err == nil {
				_, err = objectRoundTrip(ctx, bucket, answer, many, "rss")
			}
			if err == nil {
				b, err = peakGrowth(rss0)
			}
			return err
		},
		func() error {
			rss0, err := resetPeak()
			if err == nil {
				_, err = e.bigAnswerRound(ctx, f, cfg.SubjectGenerate, replySubject(cfg, "big"), many, "rss")
			}
			if err == nil {
				g, err = peakGrowth(rss0)
			}
			return err
		})
	if err != nil {
		return nil, err
	}
	mem.add(b, g)
	e.progress("big answers RSS: raw object store +%.0f MiB, gembatchd +%.0f MiB delivering %d", b, g, many)
	row := mem.row(fmt.Sprintf("peak RSS growth delivering %d answers of %.1f MB (one round)", many, float64(size)/1e6), "MiB", "lower", label)
	row.Note = "includes the emulator making the answers and the producers reading them"
	if e.ns != nil {
		row.Note = "in-process: includes the NATS server (its block caches grow with the rate of writes), the emulator and the producers"
	}
	return append(rows, row), d.drained(ctx)
}

// objectRoundTrip puts n objects and reads each back; objects per second.
func objectRoundTrip(ctx context.Context, bucket jetstream.ObjectStore, data []byte, n int, tag string) (float64, error) {
	t0 := time.Now()
	for i := range n {
		name := fmt.Sprintf("r%s-%d", tag, i)
		if _, err := bucket.Put(ctx, jetstream.ObjectMeta{Name: name}, bytes.NewReader(data)); err != nil {
			return 0, err
		}
		if err := readObject(ctx, bucket, name); err != nil {
			return 0, err
		}
	}
	took := time.Since(t0)
	for i := range n {
		_ = bucket.Delete(ctx, fmt.Sprintf("r%s-%d", tag, i))
	}
	return rate(n, took), nil
}

func readObject(ctx context.Context, bucket jetstream.ObjectStore, name string) error {
	r, err := bucket.Get(ctx, name)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(io.Discard, r)
	return err
}

// probeBigAnswer sends one image request and returns the size of its answer, which must come
// back by reference.
func (e *env) probeBigAnswer(ctx context.Context, f *fleet, subject, reply string) (int, error) {
	replies, err := e.collect(reply, 1)
	if err != nil {
		return 0, err
	}
	if err := f.publish(requests(subject, reply, "probe", imageRequest, 1, false)); err != nil {
		return 0, err
	}
	if err := replies.wait(ctx, 2*time.Minute); err != nil {
		return 0, fmt.Errorf("the image request was not answered: %w", err)
	}
	m := replies.msgs[0]
	if m.Header.Get(headerResultObject) == "" {
		return 0, fmt.Errorf("an image request was answered with %d bytes, not by reference: %.200s", len(m.Data), m.Data)
	}
	return strconv.Atoi(m.Header.Get("Gembatch-Result-Size"))
}

// bigAnswerRound sends n image requests and times, from the first reply to the last answer
// read whole from the object store it names, the answers delivered per second.
func (e *env) bigAnswerRound(ctx context.Context, f *fleet, subject, reply string, n int, tag string) (float64, error) {
	replies, err := e.collect(reply, n)
	if err != nil {
		return 0, err
	}
	if err := f.publish(requests(subject, reply, tag, imageRequest, n, false)); err != nil {
		return 0, err
	}
	if err := replies.wait(ctx, 10*time.Minute); err != nil {
		return 0, err
	}
	for _, m := range replies.msgs {
		if err := e.resolve(ctx, m); err != nil {
			return 0, err
		}
	}
	return rate(n, time.Since(replies.first)), nil
}

// resolve reads the answer a reply refers to.
func (e *env) resolve(ctx context.Context, m *nats.Msg) error {
	ref := m.Header.Get(headerResultObject)
	name, object, ok := strings.Cut(ref, "/")
	if !ok {
		return errors.New("reply " + m.Header.Get("Gembatch-Key") + " has no result object")
	}
	bucket, err := e.js.ObjectStore(ctx, name)
	if err != nil {
		return err
	}
	return readObject(ctx, bucket, object)
}
