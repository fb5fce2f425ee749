package benchkit

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// bigAnswer is the answer size of the big-answer measure.
const bigAnswer = 2 << 20

// headerResultObject is the reply header of an answer delivered by reference (contract:
// "Gembatch-Result-Object: <bucket>/<object>").
const headerResultObject = "Gembatch-Result-Object"

// imageRequest asks for an image answer, the kind of answer that is a few MB.
var imageRequest = []byte(`{"contents":[{"role":"user","parts":[{"text":"a lighthouse at dawn, watercolor"}]}],"generationConfig":{"responseModalities":["IMAGE"]}}`)

// bigReplies: answers of 2 MB delivered per second (each reply resolved from the object store
// the daemon put it in) against a raw object-store put and get of 2 MB objects. Until
// gembatchd can deliver big answers the gembatchd figure is reported not available: the
// measure first sends one image request and checks how the answer came back.
func bigReplies(ctx context.Context, e *env) ([]Row, error) {
	n := e.size(20, 2)
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

	na, err := e.probeBigAnswer(ctx, f, cfg.SubjectGenerate, replySubject(cfg, "big"))
	if err != nil {
		return nil, err
	}
	answer := bytes.Repeat([]byte("A"), bigAnswer)
	var base, got []float64
	for round := range e.opts.Rounds {
		b, err := objectRoundTrip(ctx, bucket, answer, n, round)
		if err != nil {
			return nil, err
		}
		base = append(base, b)
		if na == "" {
			g, err := e.bigAnswerRound(ctx, f, cfg.SubjectGenerate, replySubject(cfg, "big"), n, round)
			if err != nil {
				return nil, err
			}
			got = append(got, g)
		}
		e.progress("big answers round %d/%d: raw object store %.1f answers/s, gembatchd %s", round+1, e.opts.Rounds, b, lastFigure(got, "answers/s"))
	}
	row := Row{Measure: "answers of 2 MB delivered (durable, by object store)", Unit: "answers/s", Better: "higher",
		BaselineLabel: "object-store put + get of 2 MB", Baseline: summarize(base), NA: na}
	if na == "" {
		r := rounds{base: base, daemon: got}
		row = r.row(row.Measure, row.Unit, row.Better, row.BaselineLabel)
	}
	return []Row{row}, nil
}

// objectRoundTrip puts n objects and reads each back; objects per second.
func objectRoundTrip(ctx context.Context, bucket jetstream.ObjectStore, data []byte, n, round int) (float64, error) {
	t0 := time.Now()
	for i := range n {
		name := fmt.Sprintf("r%d-%d", round, i)
		if _, err := bucket.Put(ctx, jetstream.ObjectMeta{Name: name}, bytes.NewReader(data)); err != nil {
			return 0, err
		}
		if err := readObject(ctx, bucket, name); err != nil {
			return 0, err
		}
	}
	took := time.Since(t0)
	for i := range n {
		_ = bucket.Delete(ctx, fmt.Sprintf("r%d-%d", round, i))
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

// probeBigAnswer sends one image request and returns why big answers cannot be measured, or
// "" when the answer came back by reference.
func (e *env) probeBigAnswer(ctx context.Context, f *fleet, subject, reply string) (string, error) {
	replies, err := e.collect(reply, 1)
	if err != nil {
		return "", err
	}
	if err := f.publish(requests(subject, reply, "probe", imageRequest, 1, false)); err != nil {
		return "", err
	}
	if err := replies.wait(ctx, 2*time.Minute); err != nil {
		return "", fmt.Errorf("the image request was not answered: %w", err)
	}
	m := replies.msgs[0]
	if m.Header.Get(headerResultObject) != "" {
		return "", nil
	}
	return fmt.Sprintf("n/a: an image request was answered inline with %d bytes; delivering 2 MB answers by object store is issue 13", len(m.Data)), nil
}

// bigAnswerRound sends n image requests and times, from the first reply to the last answer
// read whole from the object store it names, the answers delivered per second.
func (e *env) bigAnswerRound(ctx context.Context, f *fleet, subject, reply string, n, round int) (float64, error) {
	replies, err := e.collect(reply, n)
	if err != nil {
		return 0, err
	}
	if err := f.publish(requests(subject, reply, fmt.Sprintf("i%d", round), imageRequest, n, false)); err != nil {
		return 0, err
	}
	if err := replies.wait(ctx, 5*time.Minute); err != nil {
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
		return fmt.Errorf("reply %s has no result object", m.Header.Get("Gembatch-Key"))
	}
	bucket, err := e.js.ObjectStore(ctx, name)
	if err != nil {
		return err
	}
	return readObject(ctx, bucket, object)
}

// lastFigure is the newest figure for a progress line, or n/a.
func lastFigure(v []float64, unit string) string {
	if len(v) == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f %s", v[len(v)-1], unit)
}
