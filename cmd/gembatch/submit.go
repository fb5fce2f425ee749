package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/pricing"
)

const submitUsage = `Usage: gembatch submit [flags] REQUESTS.jsonl -o RESULTS.jsonl

Sends every request of a Gemini batch input file to gembatchd over NATS and writes every
answer to RESULTS.jsonl in the Gemini batch result format, one line per request, in the order
the answers come. The input has one {"key":"...","request":{...}} object a line (a line with no
key gets its line number as key); REQUESTS.jsonl may be - for standard input.

Run it again with the same output to resume: keys already answered there are skipped, keys
sent by an earlier run are not sent again (their answers are read from a JetStream stream that
kept them, RESULTS.jsonl.sent lists them), and new answers are appended. Exit status: 0 when every request succeeded, 1 when some answers are
errors (they are the lines with "error" in the output) or the run was interrupted, 2 on a
usage error.

Example:
  gembatch submit prompts.jsonl -o results.jsonl --model gemini-2.5-flash
  gembatch submit embed.jsonl -o vectors.jsonl --kind embed --model gemini-embedding-001
  gembatch submit prompts.jsonl --wait=false --reply-prefix _INBOX.myservice   # publish only

Flags:
`

// submitOptions are the submit command's flags.
type submitOptions struct {
	input, output string
	natsURL       string
	model         string
	kind          string
	subject       string
	replyPrefix   string
	maxInFlight   int
	wait          bool
	resend        bool
	progressEvery time.Duration
}

func natsURLDefault() string {
	if u := os.Getenv("GEMBATCH_NATS_URL"); u != "" {
		return u
	}
	return nats.DefaultURL
}

// parseInterleaved parses flags that may come before, between or after positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func submit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("submit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o submitOptions
	fs.StringVar(&o.output, "o", "", "results file (JSONL); appended to, and resumed from, when it exists")
	fs.StringVar(&o.output, "output", "", "same as -o")
	fs.StringVar(&o.natsURL, "nats", natsURLDefault(), "NATS server URL (env GEMBATCH_NATS_URL)")
	fs.StringVar(&o.model, "model", "", "model for every request (default: each request's \"model\", else gembatchd's default)")
	fs.StringVar(&o.kind, "kind", "generate", "generate (GenerateContentRequest) or embed (EmbedContentRequest)")
	fs.StringVar(&o.subject, "subject", "", "request subject (default gembatch.generate or gembatch.embed, by --kind)")
	fs.StringVar(&o.replyPrefix, "reply-prefix", "", "reply subjects are <prefix>.<n> (default _INBOX.<unique id>); gembatchd must allow them")
	fs.IntVar(&o.maxInFlight, "max-in-flight", 10000, "requests sent but not yet answered, at most")
	fs.BoolVar(&o.resend, "resend", false, "send again the keys an earlier run sent that have no answer yet (they may be billed twice)")
	fs.BoolVar(&o.wait, "wait", true, "wait for the answers and write them; --wait=false only publishes")
	fs.DurationVar(&o.progressEvery, "progress-every", 10*time.Second, "interval of progress lines when stderr is not a terminal")
	fs.Usage = func() {} // flagError prints it
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagError(fs, err, submitUsage, stdout, stderr)
	}
	usageErr := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "gembatch submit: "+format+"\nRun \"gembatch submit --help\" for an example.\n", args...)
		return 2
	}
	switch {
	case len(pos) != 1:
		return usageErr("give one input file (REQUESTS.jsonl, or - for standard input), got %d", len(pos))
	case o.wait && o.output == "":
		return usageErr("no results file: add -o results.jsonl (or --wait=false to only publish)")
	case o.kind != "generate" && o.kind != "embed":
		return usageErr("--kind %q: use generate or embed", o.kind)
	case o.maxInFlight < 1:
		return usageErr("--max-in-flight must be at least 1, got %d", o.maxInFlight)
	}
	o.input = pos[0]
	code, err := runSubmit(ctx, o, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "gembatch submit: %v\n", err)
	}
	return code
}

// submitStats are the counters shown in progress lines.
type submitStats struct {
	sent, answered, errors, skipped, batches atomic.Int64
	// awaited counts the keys sent by an earlier run whose answers have not come yet.
	awaited atomic.Int64
	// firstSent and lastAnswer are Unix nanoseconds, 0 before the first.
	firstSent, lastAnswer atomic.Int64
}

func (s *submitStats) line(started, now time.Time) string {
	return fmt.Sprintf("sent %d · answered %d · errors %d · %s · skipped %d · %s",
		s.sent.Load(), s.answered.Load(), s.errors.Load(), plural(s.batches.Load(), "batch", "batches"), s.skipped.Load(),
		now.Sub(started).Round(time.Second))
}

// runSubmit does the work of submit and returns the exit status.
func runSubmit(ctx context.Context, o submitOptions, stdout, stderr io.Writer) (int, error) {
	in := io.Reader(os.Stdin)
	if o.input != "-" {
		f, err := os.Open(o.input)
		if err != nil {
			return 2, fmt.Errorf("cannot read the input: %w", err)
		}
		defer f.Close()
		in = f
	}
	nc, err := nats.Connect(o.natsURL, nats.Name("gembatch submit"), nats.Timeout(5*time.Second), nats.MaxReconnects(-1))
	if err != nil {
		return 1, fmt.Errorf("cannot reach NATS at %s: is gembatchd's NATS running? set GEMBATCH_NATS_URL or --nats (%v)", o.natsURL, err)
	}
	defer nc.Close()
	if !o.wait {
		return publishOnly(ctx, o, nc, in, stdout, stderr)
	}
	return submitAndWait(ctx, o, nc, in, stdout, stderr)
}

// newSubmitClient is the client of a run: subjects and model from the flags.
func newSubmitClient(nc *nats.Conn, o submitOptions, replyPrefix string, more ...client.Option) (*client.Client, error) {
	generate, embed := client.DefaultGenerateSubject, client.DefaultEmbedSubject
	if o.subject != "" {
		if client.Kind(o.kind) == client.KindEmbed {
			embed = o.subject
		} else {
			generate = o.subject
		}
	}
	opts := []client.Option{client.WithSubjects(generate, embed), client.WithDefaultModel(o.model)}
	if replyPrefix != "" {
		opts = append(opts, client.WithReplyPrefix(replyPrefix))
	}
	return client.New(nc, append(opts, more...)...)
}

// publishOnly is --wait=false: publish every request, read no answer.
func publishOnly(ctx context.Context, o submitOptions, nc *nats.Conn, in io.Reader, stdout, stderr io.Writer) (int, error) {
	c, err := newSubmitClient(nc, o, o.replyPrefix)
	if err != nil {
		return 1, err
	}
	defer c.Close()
	var st submitStats
	stopProgress := progress(&st, time.Now(), isTerminal(stderr), o.progressEvery, stderr, nil)
	_, err = readRequests(ctx, in, o.input, func(string) bool { return false }, func(line int, req client.Request, problem string) error {
		if problem != "" {
			fmt.Fprintf(stderr, "%s:%d: not sent: %s\n", o.input, line, problem)
			return nil
		}
		if _, err := c.Publish(ctx, req); errors.Is(err, client.ErrInvalidRequest) {
			fmt.Fprintf(stderr, "%s:%d: not sent: %v\n", o.input, line, err)
			return nil
		} else if err != nil {
			return err
		}
		st.sent.Add(1)
		return nil
	})
	if err == nil {
		err = nc.Flush()
	}
	stopProgress()
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(stdout, "published %d requests; replies go to %s.* (subscribe there to read them)\n", st.sent.Load(), c.ReplyPrefix())
	return 0, nil
}

// delivery is one answer for the writer; slot says it holds a --max-in-flight slot.
type delivery struct {
	r    *client.Reply
	slot bool
}

// waitRun is a submit that waits for its answers: requests go out from the input, answers
// come in on the client's subscription (this run's keys) and from the earlier-run collector,
// and one writer goroutine appends them to the results file.
type waitRun struct {
	o    submitOptions
	c    *client.Client
	out  *os.File
	sent *sentFile
	st   submitStats
	// Each request of this run holds a slot from being sent until its reply is written:
	// memory stays bounded.
	slots       chan struct{}
	replies     chan delivery
	outstanding sync.WaitGroup
	writeErr    error
	stderr      io.Writer
	// cost sums what the answers cost and what batching saved; read once write is done.
	cost *costTally
}

// submitAndWait sends the requests not yet sent, waits for every answer (this run's and those
// sent by an earlier run) and writes them.
func submitAndWait(ctx context.Context, o submitOptions, nc *nats.Conn, in io.Reader, stdout, stderr io.Writer) (int, error) {
	started := time.Now()
	done, oldErrors, err := answeredKeys(o.output)
	if err != nil {
		return 2, fmt.Errorf("cannot resume from %s: %w (give another -o, or move the file away)", o.output, err)
	}
	sent, awaited, err := openSent(o.output, o.replyPrefix)
	if err != nil {
		return 2, fmt.Errorf("cannot resume from %s: %w", o.output, err)
	}
	complete := false
	defer func() { _ = sent.close(complete) }()
	if err := sent.unanswered(awaited, done, o.resend); err != nil {
		return 1, err
	}
	out, err := os.OpenFile(o.output, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return 2, fmt.Errorf("cannot write the results: %w", err)
	}
	defer out.Close()
	stream, err := ensureCapture(ctx, nc, sent)
	if err != nil {
		return 1, err
	}
	if stream == nil {
		fmt.Fprintf(stderr, "no JetStream at %s: answers that come while submit is not running are lost (see README)\n", o.natsURL)
	}
	if len(done) > 0 || len(awaited) > 0 {
		fmt.Fprintf(stderr, "resuming: %d keys already answered in %s are skipped; %d sent by an earlier run are awaited, not sent again\n",
			len(done), o.output, len(awaited))
	}
	c, err := newSubmitClient(nc, o, sent.Prefix, client.WithResultReferences())
	if err != nil {
		return 1, err
	}
	defer c.Close()

	r := &waitRun{o: o, c: c, out: out, sent: sent, stderr: stderr, cost: newCostTally(pricing.Default(), o.model),
		slots: make(chan struct{}, o.maxInFlight), replies: make(chan delivery, o.maxInFlight)}
	writerDone := make(chan struct{})
	go r.write(ctx, writerDone)
	fromEarlier := len(awaited)
	r.st.awaited.Store(int64(fromEarlier))
	sentBefore := maps.Clone(awaited) // the collector takes awaited as its own
	old, err := collectEarlier(ctx, nc, stream, sent.Prefix, awaited, func(rep *client.Reply) {
		r.st.awaited.Add(-1)
		r.replies <- delivery{r: rep}
	})
	if err != nil {
		close(r.replies)
		<-writerDone
		return 1, err
	}
	// The records are read as often as the progress line is printed, from every 200 ms to every 2 s.
	jw := watchJobs(ctx, nc, sent.Started.Add(-time.Second), min(max(o.progressEvery, 200*time.Millisecond), 2*time.Second))
	defer jw.stop()
	maxWait := batchMaxWait()
	stopProgress := progress(&r.st, started, isTerminal(stderr), o.progressEvery, stderr, func(now time.Time) string {
		return waitingOn(r.waitInput(now, started, jw.jobs(), maxWait))
	})
	n, err := readRequests(ctx, in, o.input, func(key string) bool {
		if _, ok := done[key]; ok {
			r.st.skipped.Add(1)
			return true
		}
		_, ok := sentBefore[key]
		return ok
	}, func(line int, req client.Request, problem string) error { return r.send(ctx, line, req, problem) })
	if err == nil {
		err = nc.Flush()
	}
	r.await(ctx, err == nil, old)
	<-writerDone
	stopProgress()

	total := int64(n + fromEarlier)
	answered, errs := r.st.answered.Load(), r.st.errors.Load()
	if r.writeErr != nil {
		return 1, fmt.Errorf("cannot write the results to %s: %w", o.output, r.writeErr)
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = errors.New("interrupted")
		}
		return 1, fmt.Errorf("%v with %d of %d requests answered; run the same command again to resume (answered keys are skipped, keys already sent are not sent again)", err, answered, total)
	}
	if answered < total {
		return 1, fmt.Errorf("only %d of %d requests answered; run the same command again for the rest", answered, total)
	}
	complete = true
	if stream != nil { // the stream goes with the state file: nothing is left to resume
		if err := deleteStream(ctx, nc, stream); err != nil {
			fmt.Fprintf(stderr, "cannot delete the stream of captured answers: %v\n", err)
		}
	}
	fmt.Fprintf(stdout, "%d requests answered (%d skipped as already answered) in %s, %s; results in %s; %s\n",
		answered, r.st.skipped.Load(), plural(r.st.batches.Load(), "batch", "batches"), time.Since(started).Round(100*time.Millisecond), o.output, r.cost)
	if n := errs + int64(oldErrors); n > 0 {
		fmt.Fprintf(stdout, "%d answers are errors: they are the lines with \"error\" in %s\n", n, o.output)
		return 1, nil
	}
	return 0, nil
}

// deleteStream deletes the capture stream once the run is complete.
func deleteStream(ctx context.Context, nc *nats.Conn, stream jetstream.Stream) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return js.DeleteStream(ctx, stream.CachedInfo().Config.Name)
}

// plural is "1 batch", "2 batches".
func plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.FormatInt(n, 10) + " " + many
}

// waitInput is what the progress line says the run waits on, now.
func (r *waitRun) waitInput(now, started time.Time, jobs jobView, maxWait time.Duration) waitInput {
	first := started
	if ns := r.st.firstSent.Load(); ns != 0 {
		first = time.Unix(0, ns)
	}
	return waitInput{
		jobs: jobs, outstanding: int64(r.c.InFlight()) + r.st.awaited.Load(), answered: r.st.answered.Load(),
		sinceFirstSend: now.Sub(first), maxWait: maxWait,
		answeredRecently: now.Sub(time.Unix(0, r.st.lastAnswer.Load())) < 3*time.Second,
	}
}

// send sends one request of this run, or answers it here when it cannot be sent. The key is
// recorded as sent before it is published.
func (r *waitRun) send(ctx context.Context, line int, req client.Request, problem string) error {
	select {
	case r.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.outstanding.Add(1)
	if problem != "" { // answered here, without sending it
		msg := fmt.Sprintf("%s line %d: %s", r.o.input, line, problem)
		r.deliver(&client.Reply{Key: req.Key, Line: errorLine(req.Key, 3, "INVALID_ARGUMENT", msg), Err: &client.Error{}}, nil)
		return nil
	}
	if err := r.sent.mark(req.Key, true); err != nil {
		r.release()
		return fmt.Errorf("record the keys sent: %w", err)
	}
	_, err := r.c.SubmitFunc(ctx, req, r.deliver)
	if err == nil {
		r.st.sent.Add(1)
		r.st.firstSent.CompareAndSwap(0, time.Now().UnixNano())
		return nil
	}
	if errors.Is(err, client.ErrDuplicateKey) { // in flight from this run: it stays sent
		r.deliver(&client.Reply{Key: req.Key, Line: errorLine(req.Key, 6, "ALREADY_EXISTS", "key "+strconv.Quote(req.Key)+" appears twice in the input"), Err: &client.Error{}}, nil)
		return nil
	}
	if merr := r.sent.mark(req.Key, false); merr != nil {
		r.release()
		return fmt.Errorf("record the keys sent: %w", merr)
	}
	if errors.Is(err, client.ErrInvalidRequest) { // a key gembatchd would refuse
		r.deliver(&client.Reply{Key: req.Key, Line: errorLine(req.Key, 3, "INVALID_ARGUMENT", fmt.Sprintf("%s line %d: %v", r.o.input, line, err)), Err: &client.Error{}}, nil)
		return nil
	}
	r.release()
	return err
}

// deliver hands an answer of this run to the writer (nil: given up). It never blocks: the
// channel holds as many answers as there are slots.
func (r *waitRun) deliver(rep *client.Reply, _ error) { r.replies <- delivery{r: rep, slot: true} }

// release gives back the slot of a request that will get no answer.
func (r *waitRun) release() {
	<-r.slots
	r.outstanding.Done()
}

// await waits for every answer (unless ctx ends first, or wait is false), then stops taking
// them and lets the writer finish.
func (r *waitRun) await(ctx context.Context, wait bool, old *earlier) {
	thisRun := make(chan struct{})
	go func() { r.outstanding.Wait(); close(thisRun) }()
	for pending := []<-chan struct{}{thisRun, old.empty}; wait && len(pending) > 0; {
		select {
		case <-pending[0]:
			pending = pending[1:]
		case <-ctx.Done():
			wait = false
		}
	}
	_ = r.c.Close() // gives up whatever is still waiting
	old.close()
	<-thisRun
	close(r.replies)
}

// write appends each answer to the results file, flushing whenever no other is waiting so
// that the file is current for a resume. It closes done when replies is closed and drained.
func (r *waitRun) write(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	w := bufio.NewWriterSize(r.out, 256<<10)
	batches := map[string]struct{}{}
	for d := range r.replies {
		if d.r != nil && r.writeErr == nil {
			written, err := r.writeAnswer(ctx, w, d.r)
			r.writeErr = err
			if written {
				r.st.answered.Add(1)
				r.cost.add(d.r.Response)
				r.st.lastAnswer.Store(time.Now().UnixNano())
				if d.r.Err != nil {
					r.st.errors.Add(1)
				}
				if _, seen := batches[d.r.Batch]; !seen && d.r.Batch != "" {
					batches[d.r.Batch] = struct{}{}
					r.st.batches.Add(1)
				}
			}
		}
		if len(r.replies) == 0 && r.writeErr == nil {
			r.writeErr = w.Flush()
		}
		if d.slot {
			r.release()
		}
	}
	if r.writeErr == nil {
		r.writeErr = w.Flush()
	}
}

// writeAnswer writes one result line. An answer sent by reference is streamed from the object
// store; when it cannot be read whole, what was written of it is cut off, and it is left for a
// resume to read again (the capture stream keeps its reference).
func (r *waitRun) writeAnswer(ctx context.Context, w *bufio.Writer, rep *client.Reply) (bool, error) {
	if rep.Object == nil {
		if _, err := w.Write(rep.Line); err != nil {
			return false, err
		}
		return true, w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		return false, err
	}
	start, err := r.out.Seek(0, io.SeekEnd)
	if err != nil {
		return false, err
	}
	lw := &lastByteWriter{w: w}
	err = r.c.ReadResult(ctx, rep.Object, lw)
	if err == nil && lw.last != '\n' {
		err = w.WriteByte('\n')
	}
	if err == nil {
		err = w.Flush()
	}
	if err == nil || lw.err != nil {
		return err == nil, err
	}
	w.Reset(r.out)
	if err := r.out.Truncate(start); err != nil {
		return false, err
	}
	if ctx.Err() == nil {
		fmt.Fprintf(r.stderr, "key %q: %v; run the same command again to read it again\n", rep.Key, err)
	}
	return false, nil
}

// lastByteWriter remembers the last byte written and the writer's own error.
type lastByteWriter struct {
	w    io.Writer
	last byte
	err  error
}

func (l *lastByteWriter) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	if n > 0 {
		l.last = p[n-1]
	}
	if err != nil {
		l.err = err
	}
	return n, err
}

// progress prints the counters, and what the run waits on when status is not nil: a line
// redrawn in place on a terminal, plain lines every interval otherwise. The returned function
// prints the last line and stops.
func progress(st *submitStats, started time.Time, tty bool, every time.Duration, w io.Writer, status func(now time.Time) string) func() {
	if tty {
		every = 200 * time.Millisecond
	}
	line := func() string {
		now := time.Now()
		l := st.line(started, now)
		if status != nil {
			if s := status(now); s != "" {
				l += " · " + s
			}
		}
		return l
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				if tty {
					fmt.Fprintf(w, "\r\x1b[K%s\n", line())
				} else {
					fmt.Fprintln(w, line())
				}
				return
			case <-t.C:
				if tty {
					fmt.Fprintf(w, "\r\x1b[K%s", line())
				} else {
					fmt.Fprintln(w, line())
				}
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(stop); <-stopped }) }
}

// maxLine is the longest input or result line read.
const maxLine = 64 << 20

// readRequests streams the input, calling send for each request not skipped. A line
// that cannot be sent is passed with the problem. It returns how many lines it passed on.
func readRequests(ctx context.Context, in io.Reader, name string, skip func(key string) bool,
	send func(line int, req client.Request, problem string) error) (int, error) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	n, line := 0, 0
	for sc.Scan() {
		line++
		if err := ctx.Err(); err != nil {
			return n, err
		}
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		key, body, problem := parseInputLine(b, line)
		if skip(key) {
			continue
		}
		req := client.Request{Key: key}
		if problem == "" {
			req.Body = bytes.Clone(body) // the scanner reuses its buffer: the body must outlive this line
		}
		if err := send(line, req, problem); err != nil {
			return n, err
		}
		n++
	}
	if err := sc.Err(); err != nil {
		return n, fmt.Errorf("reading %s after line %d: %w", name, line, err)
	}
	return n, nil
}

// parseInputLine reads one {"key":...,"request":{...}} line. A missing key is the line number.
func parseInputLine(b []byte, line int) (key string, body json.RawMessage, problem string) {
	var l struct {
		Key     json.RawMessage `json:"key"`
		Request json.RawMessage `json:"request"`
	}
	key = strconv.Itoa(line)
	if err := json.Unmarshal(b, &l); err != nil {
		return key, nil, fmt.Sprintf("not a JSON object: %v", err)
	}
	switch k := bytes.TrimSpace(l.Key); {
	case len(k) == 0 || string(k) == "null":
	case k[0] == '"':
		if err := json.Unmarshal(k, &key); err != nil || key == "" {
			key = strconv.Itoa(line)
		}
	default:
		key = string(k) // a number, as written
	}
	if r := bytes.TrimSpace(l.Request); len(r) == 0 || r[0] != '{' {
		return key, nil, `no "request" object`
	}
	return key, l.Request, ""
}

// errorLine is a result line for a request answered here, without sending it.
func errorLine(key string, code int, status, message string) []byte {
	b, _ := json.Marshal(struct {
		Key   string        `json:"key"`
		Error *client.Error `json:"error"`
	}{key, &client.Error{Code: code, Status: status, Message: message}})
	return b
}

// answeredKeys reads the keys of an existing results file, and how many of its lines are
// errors. A last line cut short by a crash is removed, so that appending starts on a new line.
func answeredKeys(path string) (map[string]struct{}, int, error) {
	keys := map[string]struct{}{}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return keys, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	var good int64
	errs, lineNo := 0, 0
	for {
		b, err := r.ReadSlice('\n')
		for errors.Is(err, bufio.ErrBufferFull) {
			var more []byte
			more, err = r.ReadSlice('\n')
			b = append(bytes.Clone(b), more...)
			if len(b) > maxLine {
				return nil, 0, fmt.Errorf("line %d is longer than %d bytes", lineNo+1, maxLine)
			}
		}
		if err == io.EOF {
			break // a last line without its newline is incomplete: dropped below
		}
		if err != nil {
			return nil, 0, err
		}
		lineNo++
		good += int64(len(b))
		var l struct {
			Key   string          `json:"key"`
			Error json.RawMessage `json:"error"`
		}
		if json.Unmarshal(b, &l) != nil {
			return nil, 0, fmt.Errorf("line %d is not a result line", lineNo)
		}
		keys[l.Key] = struct{}{}
		if len(l.Error) > 0 && string(l.Error) != "null" {
			errs++
		}
	}
	if err := f.Truncate(good); err != nil {
		return nil, 0, err
	}
	return keys, errs, nil
}
