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
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/pricing"
)

const submitUsage = `Usage: gembatch submit [flags] REQUESTS.jsonl -o RESULTS.jsonl

Sends every request of a Gemini batch input file to gembatchd over NATS and writes every
answer to RESULTS.jsonl in the Gemini batch result format, one line per request, in the order
the answers come. The input has one {"key":"...","request":{...}} object a line (a line with no
key gets its line number as key); REQUESTS.jsonl may be - for standard input.

Run it again with the same output to resume: keys already answered there are skipped and new
answers are appended. Exit status: 0 when every request succeeded, 1 when some answers are
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
}

func (s *submitStats) line(started time.Time) string {
	return fmt.Sprintf("sent %d · answered %d · errors %d · batches %d · skipped %d · %s",
		s.sent.Load(), s.answered.Load(), s.errors.Load(), s.batches.Load(), s.skipped.Load(),
		time.Since(started).Round(time.Second))
}

// runSubmit does the work of submit and returns the exit status.
func runSubmit(ctx context.Context, o submitOptions, stdout, stderr io.Writer) (int, error) {
	started := time.Now()
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

	var (
		done      map[string]struct{}
		oldErrors int
		out       *os.File
	)
	if o.wait {
		var err error
		done, oldErrors, err = answeredKeys(o.output)
		if err != nil {
			return 2, fmt.Errorf("cannot resume from %s: %w (give another -o, or move the file away)", o.output, err)
		}
		out, err = os.OpenFile(o.output, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return 2, fmt.Errorf("cannot write the results: %w", err)
		}
		defer out.Close()
		if len(done) > 0 {
			fmt.Fprintf(stderr, "resuming: %d keys already answered in %s are skipped\n", len(done), o.output)
		}
	}

	generate, embed := client.DefaultGenerateSubject, client.DefaultEmbedSubject
	kind := client.Kind(o.kind)
	if o.subject != "" {
		if kind == client.KindEmbed {
			embed = o.subject
		} else {
			generate = o.subject
		}
	}
	opts := []client.Option{client.WithSubjects(generate, embed), client.WithDefaultModel(o.model)}
	if o.replyPrefix != "" {
		opts = append(opts, client.WithReplyPrefix(o.replyPrefix))
	}
	c, err := client.New(nc, opts...)
	if err != nil {
		return 1, err
	}
	defer c.Close()

	var st submitStats
	tty := isTerminal(stderr)
	stopProgress := progress(&st, started, tty, o.progressEvery, stderr)

	if !o.wait {
		_, err := readRequests(ctx, in, o.input, done, &st, func(line int, req client.Request, problem string) error {
			if problem != "" {
				fmt.Fprintf(stderr, "%s:%d: not sent: %s\n", o.input, line, problem)
				return nil
			}
			if _, err := c.Publish(req); errors.Is(err, client.ErrInvalidRequest) {
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

	// Replies come in on the client's subscription goroutine; one writer writes them out. Each
	// request holds a slot from being sent until its reply is written: memory stays bounded.
	slots := make(chan struct{}, o.maxInFlight)
	replies := make(chan *client.Reply, o.maxInFlight)
	var outstanding sync.WaitGroup
	var writeErr error
	var cost string // what the answers cost and saved, set when the writer ends
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		w := bufio.NewWriterSize(out, 256<<10)
		batches := map[string]struct{}{}
		tally := newCostTally(pricing.Default(), o.model)
		defer func() { cost = tally.String() }()
		for r := range replies {
			if r != nil && writeErr == nil {
				if _, err := w.Write(r.Line); err != nil {
					writeErr = err
				} else if err := w.WriteByte('\n'); err != nil {
					writeErr = err
				}
				st.answered.Add(1)
				tally.add(r.Response)
				if r.Err != nil {
					st.errors.Add(1)
				}
				if _, seen := batches[r.Batch]; !seen && r.Batch != "" {
					batches[r.Batch] = struct{}{}
					st.batches.Add(1)
				}
			}
			if len(replies) == 0 && writeErr == nil {
				writeErr = w.Flush() // keep the file current for a resume
			}
			<-slots
			outstanding.Done()
		}
		if writeErr == nil {
			writeErr = w.Flush()
		}
	}()
	deliver := func(r *client.Reply, _ error) { replies <- r } // never blocks: capacity is the slot count

	total, err := readRequests(ctx, in, o.input, done, &st, func(line int, req client.Request, problem string) error {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		outstanding.Add(1)
		if problem != "" { // answered here, without sending it
			msg := fmt.Sprintf("%s line %d: %s", o.input, line, problem)
			deliver(&client.Reply{Key: req.Key, Line: errorLine(req.Key, 3, "INVALID_ARGUMENT", msg), Err: &client.Error{}}, nil)
			return nil
		}
		if _, err := c.SubmitFunc(ctx, req, deliver); err != nil {
			switch {
			case errors.Is(err, client.ErrDuplicateKey):
				deliver(&client.Reply{Key: req.Key, Line: errorLine(req.Key, 6, "ALREADY_EXISTS", "key "+strconv.Quote(req.Key)+" appears twice in the input"), Err: &client.Error{}}, nil)
				return nil
			case errors.Is(err, client.ErrInvalidRequest): // a key gembatchd would refuse
				deliver(&client.Reply{Key: req.Key, Line: errorLine(req.Key, 3, "INVALID_ARGUMENT", fmt.Sprintf("%s line %d: %v", o.input, line, err)), Err: &client.Error{}}, nil)
				return nil
			}
			<-slots
			outstanding.Done()
			return err
		}
		st.sent.Add(1)
		return nil
	})
	if err == nil {
		err = nc.Flush()
	}
	allIn := make(chan struct{})
	go func() { outstanding.Wait(); close(allIn) }()
	if err == nil {
		select {
		case <-allIn:
		case <-ctx.Done():
		}
	}
	_ = c.Close() // gives up whatever is still waiting
	<-allIn
	close(replies)
	<-writerDone
	stopProgress()

	answered, errs := st.answered.Load(), st.errors.Load()
	if writeErr != nil {
		return 1, fmt.Errorf("cannot write the results to %s: %w", o.output, writeErr)
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = errors.New("interrupted")
		}
		return 1, fmt.Errorf("%v with %d of %d requests answered; run the same command again to resume (answered keys are skipped)", err, answered, total)
	}
	if answered < int64(total) {
		return 1, fmt.Errorf("only %d of %d requests answered", answered, total)
	}
	fmt.Fprintf(stdout, "%d requests answered (%d skipped as already answered) in %d batches, %s; results in %s; %s\n",
		answered, st.skipped.Load(), st.batches.Load(), time.Since(started).Round(100*time.Millisecond), o.output, cost)
	if n := errs + int64(oldErrors); n > 0 {
		fmt.Fprintf(stdout, "%d answers are errors: they are the lines with \"error\" in %s\n", n, o.output)
		return 1, nil
	}
	return 0, nil
}

// progress prints the counters: a line redrawn in place on a terminal, plain lines every
// interval otherwise. The returned function prints the last line and stops.
func progress(st *submitStats, started time.Time, tty bool, every time.Duration, w io.Writer) func() {
	if tty {
		every = 200 * time.Millisecond
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
					fmt.Fprintf(w, "\r%s   \n", st.line(started))
				} else {
					fmt.Fprintln(w, st.line(started))
				}
				return
			case <-t.C:
				if tty {
					fmt.Fprintf(w, "\r%s   ", st.line(started))
				} else {
					fmt.Fprintln(w, st.line(started))
				}
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(stop); <-stopped }) }
}

// maxLine is the longest input or result line read.
const maxLine = 64 << 20

// readRequests streams the input, calling send for each request not already answered. A line
// that cannot be sent is passed with the problem. It returns how many lines it passed on.
func readRequests(ctx context.Context, in io.Reader, name string, done map[string]struct{}, st *submitStats,
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
		if _, ok := done[key]; ok {
			st.skipped.Add(1)
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
