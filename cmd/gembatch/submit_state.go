package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/client"
)

// sentFile is the state file submit keeps next to its results between runs: the reply prefix
// its answers come to and every key it has sent, so that a resume sends no key twice and
// collects the answers that came while it was not running.
//
// The first line is {"id":...,"replyPrefix":...,"started":...}; then one line a key: +"key" once the key is
// about to be published (written before the publish, so a key on the wire is always recorded),
// -"key" when the publish failed after all.
type sentFile struct {
	f      *os.File
	ID     string `json:"id"`
	Prefix string `json:"replyPrefix"`
	// Started is when the first run began: batches sealed since may hold its requests.
	Started time.Time `json:"started"`
	written []byte    // scratch for one line
}

// sentPath is the state file of a results file.
func sentPath(output string) string { return output + ".sent" }

// openSent reads the state file of output, or starts one. It returns the keys sent by earlier
// runs. replyPrefix, if not empty, must be the prefix the earlier run used.
func openSent(output, replyPrefix string) (*sentFile, map[string]struct{}, error) {
	path := sentPath(output)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, err
	}
	s := &sentFile{f: f}
	sent, good, err := s.read()
	if err == nil && good == 0 { // a new file
		err = s.start(output, replyPrefix)
	} else if err == nil && replyPrefix != "" && replyPrefix != s.Prefix {
		err = fmt.Errorf("the earlier run used --reply-prefix %s: give the same, or none", s.Prefix)
	} else if err == nil {
		err = f.Truncate(good) // a last line cut short by a crash
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekEnd)
	}
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, sent, nil
}

// read loads the header and the sent keys, and returns how many bytes are whole lines.
func (s *sentFile) read() (map[string]struct{}, int64, error) {
	sent := map[string]struct{}{}
	r := bufio.NewReader(s.f)
	var good int64
	for n := 1; ; n++ {
		b, err := r.ReadBytes('\n')
		if err == io.EOF {
			return sent, good, nil // a last line without its newline is incomplete: dropped
		}
		if err != nil {
			return nil, 0, err
		}
		good += int64(len(b))
		b = bytes.TrimSuffix(b, []byte("\n"))
		if n == 1 {
			if err := json.Unmarshal(b, s); err != nil || s.Prefix == "" {
				return nil, 0, fmt.Errorf("line 1 is not a submit state header")
			}
			continue
		}
		var key string
		if len(b) < 2 || json.Unmarshal(b[1:], &key) != nil {
			return nil, 0, fmt.Errorf("line %d is not a key", n)
		}
		switch b[0] {
		case '+':
			sent[key] = struct{}{}
		case '-':
			delete(sent, key)
		default:
			return nil, 0, fmt.Errorf("line %d is not a key", n)
		}
	}
}

// start writes the header of a new state file: a random id, and the reply prefix, derived
// from the results file's absolute path and the id unless given.
func (s *sentFile) start(output, replyPrefix string) error {
	if err := s.f.Truncate(0); err != nil {
		return err
	}
	s.ID = rand.Text()
	s.Started = time.Now()
	s.Prefix = replyPrefix
	if s.Prefix == "" {
		s.Prefix = "_INBOX.gembatch-submit." + s.hash(output)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	_, err = s.f.Write(append(b, '\n'))
	return err
}

// hash names this run's reply prefix and capture stream: results file and id together.
func (s *sentFile) hash(output string) string {
	abs, err := filepath.Abs(output)
	if err != nil {
		abs = output
	}
	sum := sha256.Sum256([]byte(abs + "\x00" + s.ID))
	return hex.EncodeToString(sum[:12])
}

// mark records that key is about to be sent (sent true) or was not sent after all. It writes
// straight to the file: a crash right after it cannot lose the line.
func (s *sentFile) mark(key string, sent bool) error {
	q, err := json.Marshal(key)
	if err != nil {
		return err
	}
	sign := byte('+')
	if !sent {
		sign = '-'
	}
	s.written = append(append(append(s.written[:0], sign), q...), '\n')
	_, err = s.f.Write(s.written)
	return err
}

// unanswered leaves in sent the keys sent by an earlier run and not answered in done. With
// resend it empties it: those keys are recorded as not sent, to be sent again.
func (s *sentFile) unanswered(sent, done map[string]struct{}, resend bool) error {
	for k := range done {
		delete(sent, k)
	}
	if !resend {
		return nil
	}
	for k := range sent {
		if err := s.mark(k, false); err != nil {
			return err
		}
	}
	clear(sent)
	return nil
}

// close closes the file; remove also deletes it, once every key sent has its answer written.
func (s *sentFile) close(remove bool) error {
	err := s.f.Close()
	if remove {
		err = errors.Join(err, os.Remove(s.f.Name()))
	}
	return err
}

// captureStream is the JetStream stream that keeps the answers to a run's reply prefix while
// submit is not running.
func captureStream(s *sentFile) jetstream.StreamConfig {
	name := strings.ToUpper(s.hash(s.f.Name()))
	return jetstream.StreamConfig{
		Name:        "GEMBATCH_SUBMIT_" + name,
		Description: "answers to gembatch submit, kept for its resume; deleted when the run is complete",
		Subjects:    []string{s.Prefix + ".>"},
		Storage:     jetstream.FileStorage,
		MaxAge:      7 * 24 * time.Hour,
		Duplicates:  time.Second, // submit keeps the first answer of a key: the server need not remember ids
	}
}

// ensureCapture creates (or finds) the capture stream. Without JetStream it returns nil: the
// answers published while submit is not running are then lost, as any core NATS message.
func ensureCapture(ctx context.Context, nc *nats.Conn, s *sentFile) (jetstream.Stream, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := js.CreateOrUpdateStream(ctx, captureStream(s))
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) ||
		errors.Is(err, nats.ErrNoResponders) { // a server without JetStream answers nothing on its API

		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("capture the answers in stream %s: %w", captureStream(s).Name, err)
	}
	return stream, nil
}

// earlier collects the answers to keys sent by an earlier run: from the capture stream, read
// from its start, or without JetStream from the reply prefix as they come.
type earlier struct {
	mu      sync.Mutex
	keys    map[string]struct{} // still unanswered
	stopped bool
	deliver func(*client.Reply)
	empty   chan struct{} // closed once keys is empty
	stop    func()
}

// collectEarlier starts collecting the answers to keys; deliver gets each one once.
func collectEarlier(ctx context.Context, nc *nats.Conn, stream jetstream.Stream, prefix string,
	keys map[string]struct{}, deliver func(*client.Reply)) (*earlier, error) {
	e := &earlier{keys: keys, deliver: deliver, empty: make(chan struct{}), stop: func() {}}
	if len(keys) == 0 {
		close(e.empty)
		return e, nil
	}
	if stream == nil {
		sub, err := nc.Subscribe(prefix+".>", e.take)
		if err != nil {
			return nil, err
		}
		e.stop = func() { _ = sub.Unsubscribe() }
		return e, nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return nil, fmt.Errorf("read the captured answers: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		e.take(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
	})
	if err != nil {
		return nil, fmt.Errorf("read the captured answers: %w", err)
	}
	e.stop = cc.Stop
	return e, nil
}

// take hands over the answer in m if it is one still awaited.
func (e *earlier) take(m *nats.Msg) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.keys[m.Header.Get(client.HeaderKey)]; !ok || e.stopped {
		return // most are answers to this run's keys, which the client takes
	}
	r, err := client.ParseReply(m)
	if err != nil {
		return
	}
	delete(e.keys, r.Key)
	e.deliver(r)
	if len(e.keys) == 0 {
		close(e.empty)
	}
}

// close stops collecting; after it deliver is not called again.
func (e *earlier) close() {
	e.stop()
	e.mu.Lock()
	e.stopped = true
	e.mu.Unlock()
}
