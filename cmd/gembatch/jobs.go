package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/kvsnap"
	"github.com/gembatch/gembatch/record"
)

const jobsUsage = `Usage: gembatch jobs [flags]

Lists the batches gembatchd is tracking, read from its records in JetStream (durable mode):
id, remote batch name, model, mode (inline or file), state, remote state, requests and age.

Example:
  gembatch jobs
  gembatch jobs --watch
  gembatch jobs -o json | jq '.[] | select(.state == "submitted") | .remoteName'

Flags:
`

const showUsage = `Usage: gembatch show [flags] ID|batches/NAME

Shows one batch: gembatchd's record and the remote job's state and statistics, as the Gemini
API reports them (key from GEMINI_API_KEY or GEMBATCH_GEMINI_API_KEY).

Example:
  gembatch show batches/abc123
  GEMBATCH_GEMINI_BASE_URL=http://127.0.0.1:8085 gembatch show 2QZ8pJ0aH5mYcXgT1kLr9s -o json

Flags:
`

const cancelUsage = `Usage: gembatch cancel [flags] ID|batches/NAME

Asks the Gemini API to cancel a batch job. gembatchd sees it end CANCELLED and answers each of
its requests with a CANCELLED error (requests already served may still get their answers).

Example:
  gembatch cancel batches/abc123
  gembatch cancel 2QZ8pJ0aH5mYcXgT1kLr9s

Flags:
`

// jobsFlags are the flags shared by jobs, show and cancel.
type jobsFlags struct {
	natsURL, bucket, output string
	baseURL                 string
	watch                   bool
	interval                time.Duration
}

func newJobsFlagSet(name string, stderr io.Writer, f *jobsFlags, gem bool) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.natsURL, "nats", natsURLDefault(), "NATS server URL (env GEMBATCH_NATS_URL)")
	fs.StringVar(&f.bucket, "bucket", envOr("GEMBATCH_RECORDS_BUCKET", "gembatch-records"), "KV bucket of gembatchd's records (GEMBATCH_RECORDS_BUCKET)")
	if gem {
		fs.StringVar(&f.baseURL, "gemini-base-url", envOr("GEMBATCH_GEMINI_BASE_URL", gemini.DefaultBaseURL), "Gemini API base URL (env GEMBATCH_GEMINI_BASE_URL)")
	}
	fs.Usage = func() {} // flagError prints it
	return fs
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// parseCommand parses a command's flags and checks its positional arguments; ok false means
// return code.
func parseCommand(fs *flag.FlagSet, args []string, nargs int, what, usage string, stdout, stderr io.Writer) (pos []string, code int, ok bool) {
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return nil, flagError(fs, err, usage, stdout, stderr), false
	}
	if len(pos) != nargs {
		fmt.Fprintf(stderr, "gembatch %s: %s\nRun \"gembatch %s --help\" for an example.\n", fs.Name(), what, fs.Name())
		return nil, 2, false
	}
	return pos, 0, true
}

func jobs(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f jobsFlags
	fs := newJobsFlagSet("jobs", stderr, &f, false)
	fs.StringVar(&f.output, "o", "table", "output format: table or json")
	fs.BoolVar(&f.watch, "watch", false, "refresh every --interval until interrupted")
	fs.DurationVar(&f.interval, "interval", 2*time.Second, "refresh interval of --watch")
	if _, code, ok := parseCommand(fs, args, 0, "takes no arguments", jobsUsage, stdout, stderr); !ok {
		return code
	}
	if f.output != "table" && f.output != "json" {
		fmt.Fprintf(stderr, "gembatch jobs: -o %q: use table or json\n", f.output)
		return 2
	}
	b, closeNATS, err := openRecords(ctx, f.natsURL, f.bucket)
	if err != nil {
		fmt.Fprintf(stderr, "gembatch jobs: %v\n", err)
		return 1
	}
	defer closeNATS()
	tty := isTerminal(stdout)
	for {
		recs, err := listRecords(ctx, b)
		if err != nil {
			if f.watch && ctx.Err() != nil {
				return 0
			}
			fmt.Fprintf(stderr, "gembatch jobs: %v\n", err)
			return 1
		}
		if f.watch && tty {
			fmt.Fprint(stdout, "\x1b[H\x1b[2J") // clear the screen
		}
		if f.output == "json" {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(recs); err != nil {
				return 1
			}
		} else {
			printTable(stdout, recs, time.Now())
			if f.watch {
				fmt.Fprintf(stdout, "\n%s · every %s · Ctrl-C to stop\n", time.Now().Format(time.TimeOnly), f.interval)
			}
		}
		if !f.watch {
			return 0
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(f.interval):
		}
	}
}

func printTable(w io.Writer, recs []*record.Record, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tREMOTE\tMODEL\tMODE\tSTATE\tREMOTE STATE\tREQUESTS\tAGE")
	for _, r := range recs {
		remote := r.RemoteName
		if remote == "" {
			remote = "-"
		}
		rs := r.RemoteState.Short()
		if rs == "" {
			rs = "-"
		}
		mode := string(r.Mode)
		if mode == "" {
			mode = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.ID, remote, strings.TrimPrefix(r.Group.Model, "models/"),
			mode, r.State, rs, r.Count, age(now.Sub(r.Sealed)))
	}
	_ = tw.Flush()
	if len(recs) == 0 {
		fmt.Fprintln(w, "(no batches recorded)")
	}
}

// age is a duration rounded for people: 45s, 12m, 3h05m, 2d04h.
func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

// recordsBucket is gembatchd's records bucket, with the JetStream context that lists its keys.
type recordsBucket struct {
	js jetstream.JetStream
	kv jetstream.KeyValue
}

// openRecords connects to NATS and opens the records bucket.
func openRecords(ctx context.Context, url, bucket string) (recordsBucket, func(), error) {
	nc, err := nats.Connect(url, nats.Name("gembatch"), nats.Timeout(5*time.Second))
	if err != nil {
		return recordsBucket{}, nil, fmt.Errorf("cannot reach NATS at %s: is gembatchd's NATS running? set GEMBATCH_NATS_URL or --nats (%v)", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return recordsBucket{}, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(cctx, bucket)
	if err != nil {
		nc.Close()
		if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
			return recordsBucket{}, nil, fmt.Errorf("no records bucket %q at %s: gembatchd keeps records only in durable mode (JetStream; GEMBATCH_DURABLE); set --bucket if GEMBATCH_RECORDS_BUCKET names another (%v)", bucket, url, err)
		}
		return recordsBucket{}, nil, fmt.Errorf("records bucket %q: %w", bucket, err)
	}
	return recordsBucket{js, kv}, nc.Close, nil
}

// listRecords reads every record in the bucket, oldest first.
func listRecords(ctx context.Context, b recordsBucket) ([]*record.Record, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var recs []*record.Record
	err := kvsnap.Each(cctx, b.js, b.kv, func(e jetstream.KeyValueEntry) error {
		r, err := decodeRecord(e.Value())
		if err != nil {
			return fmt.Errorf("record %s: %w", e.Key(), err)
		}
		r.Revision = e.Revision()
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list records: %w", err)
	}
	slices.SortFunc(recs, func(a, b *record.Record) int { return a.Sealed.Compare(b.Sealed) })
	return recs, nil
}

// decodeRecord reads a record as gembatchd stores it (the record's fields, plus the request
// sequences, which are left out).
func decodeRecord(b []byte) (*record.Record, error) {
	var r record.Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// findRecord resolves "ID" or "batches/NAME" to a record; for a batch name with no record it
// returns nil and no error.
func findRecord(ctx context.Context, b recordsBucket, arg string) (*record.Record, error) {
	if !strings.HasPrefix(arg, "batches/") {
		e, err := b.kv.Get(ctx, arg)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, fmt.Errorf("no record %q: run \"gembatch jobs\" for the ids, or give the remote name batches/NAME", arg)
		}
		if err != nil {
			return nil, fmt.Errorf("record %s: %w", arg, err)
		}
		r, err := decodeRecord(e.Value())
		if err != nil {
			return nil, fmt.Errorf("record %s: %w", arg, err)
		}
		r.Revision = e.Revision()
		return r, nil
	}
	recs, err := listRecords(ctx, b)
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		if r.RemoteName == arg {
			return r, nil
		}
	}
	return nil, nil
}

// geminiClient builds the Gemini client of show and cancel.
func geminiClient(baseURL string) (*gemini.Client, error) {
	key := os.Getenv("GEMBATCH_GEMINI_API_KEY")
	if key == "" {
		key = os.Getenv("GEMINI_API_KEY")
	}
	if key == "" && baseURL == gemini.DefaultBaseURL {
		return nil, errors.New("no Gemini API key: set GEMINI_API_KEY (or GEMBATCH_GEMINI_API_KEY); for the emulator set GEMBATCH_GEMINI_BASE_URL or --gemini-base-url")
	}
	return gemini.New(key, gemini.WithBaseURL(baseURL), gemini.WithCallTimeout(30*time.Second)), nil
}

// resolve finds the record (if any) and the remote batch name of "ID" or "batches/NAME". A
// batch name is usable without NATS; a record id needs it.
func resolve(ctx context.Context, f *jobsFlags, arg string) (*record.Record, string, error) {
	b, closeNATS, err := openRecords(ctx, f.natsURL, f.bucket)
	if err != nil {
		if strings.HasPrefix(arg, "batches/") {
			return nil, arg, nil // the remote job alone
		}
		return nil, "", err
	}
	defer closeNATS()
	r, err := findRecord(ctx, b, arg)
	if err != nil {
		return nil, "", err
	}
	if r == nil {
		return nil, arg, nil
	}
	return r, r.RemoteName, nil
}

func show(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f jobsFlags
	fs := newJobsFlagSet("show", stderr, &f, true)
	fs.StringVar(&f.output, "o", "text", "output format: text or json")
	pos, code, ok := parseCommand(fs, args, 1, "give one batch: a record id or batches/NAME", showUsage, stdout, stderr)
	if !ok {
		return code
	}
	fail := func(err error) int { fmt.Fprintf(stderr, "gembatch show: %v\n", err); return 1 }
	rec, remote, err := resolve(ctx, &f, pos[0])
	if err != nil {
		return fail(err)
	}
	var op *gemini.Operation
	var remoteErr error
	if remote != "" {
		gc, err := geminiClient(f.baseURL)
		if err != nil {
			return fail(err)
		}
		op, remoteErr = gc.GetBatch(ctx, remote)
	}
	if f.output == "json" {
		out := struct {
			Record      *record.Record    `json:"record,omitempty"`
			Remote      *gemini.Operation `json:"remote,omitempty"`
			RemoteError string            `json:"remoteError,omitempty"`
		}{Record: rec, Remote: op}
		if remoteErr != nil {
			out.RemoteError = remoteErr.Error()
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return 1
		}
	} else {
		printShow(stdout, rec, remote, op, remoteErr, time.Now())
	}
	if remoteErr != nil && rec == nil {
		return 1
	}
	return 0
}

func printShow(w io.Writer, rec *record.Record, remote string, op *gemini.Operation, remoteErr error, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return fmt.Sprintf("%s (%s ago)", t.Local().Format(time.DateTime), age(now.Sub(t)))
	}
	if rec != nil {
		fmt.Fprintln(tw, "Record")
		row("  id", rec.ID)
		row("  state", string(rec.State))
		row("  kind", string(rec.Group.Kind))
		row("  model", rec.Group.Model)
		row("  priority", fmt.Sprint(rec.Group.Priority))
		row("  requests", fmt.Sprintf("%d (%d bytes), %d replied", rec.Count, rec.Bytes, rec.Replied))
		row("  mode", string(rec.Mode))
		row("  closed by", rec.CloseReason)
		row("  resubmits", rec.RetryOf)
		if rec.StuckCancelled {
			row("  stuck", "cancelled by gembatchd; its unfinished requests are resubmitted")
		}
		row("  sealed", ts(rec.Sealed))
		row("  submitted", ts(rec.Submitted))
		row("  finished", ts(rec.Finished))
		row("  remote", rec.RemoteName)
		row("  remote state", string(rec.RemoteState))
		row("  input file", rec.InputFile)
		row("  results file", rec.ResultsFile)
		if rec.Error != nil {
			row("  error", rec.Error.Error())
		}
		if rec.Owner != "" {
			row("  owner", fmt.Sprintf("%s (epoch %d)", rec.Owner, rec.Epoch))
		}
	} else {
		fmt.Fprintf(tw, "Record\t(none: gembatchd has no record of %s)\n", remote)
	}
	switch {
	case remote == "":
		fmt.Fprintln(tw, "Remote job\t(none yet)")
	case remoteErr != nil:
		fmt.Fprintf(tw, "Remote job\t%s: %v\n", remote, remoteErr)
	case op != nil:
		fmt.Fprintln(tw, "Remote job")
		row("  name", op.Name)
		row("  state", string(op.State()))
		if m := op.Metadata; m != nil {
			row("  display name", m.DisplayName)
			row("  model", m.Model)
			row("  created", ts(m.CreateTime))
			row("  updated", ts(m.UpdateTime))
			row("  ended", ts(m.EndTime))
			if s := m.BatchStats; s != nil {
				row("  requests", fmt.Sprintf("%d: %d succeeded, %d failed, %d pending",
					s.RequestCount, s.SuccessfulRequestCount, s.FailedRequestCount, s.PendingRequestCount))
			}
		}
		if op.Error != nil {
			row("  error", op.Error.Error())
		}
	}
	_ = tw.Flush()
}

func cancelJob(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f jobsFlags
	fs := newJobsFlagSet("cancel", stderr, &f, true)
	pos, code, ok := parseCommand(fs, args, 1, "give one batch: a record id or batches/NAME", cancelUsage, stdout, stderr)
	if !ok {
		return code
	}
	fail := func(err error) int { fmt.Fprintf(stderr, "gembatch cancel: %v\n", err); return 1 }
	rec, remote, err := resolve(ctx, &f, pos[0])
	if err != nil {
		return fail(err)
	}
	if remote == "" {
		return fail(fmt.Errorf("batch %s has no remote job yet (state %s): run the command again once \"gembatch jobs\" shows its remote name", rec.ID, rec.State))
	}
	gc, err := geminiClient(f.baseURL)
	if err != nil {
		return fail(err)
	}
	if err := gc.CancelBatch(ctx, remote); err != nil {
		return fail(fmt.Errorf("cancel %s: %w", remote, err))
	}
	who := remote
	if rec != nil {
		who = fmt.Sprintf("%s (record %s, %d requests)", remote, rec.ID, rec.Count)
	}
	fmt.Fprintf(stdout, "cancel requested for %s; gembatchd answers its requests with CANCELLED errors once the job ends\n", who)
	return 0
}
