// Command gemini-emulator serves a local stand-in for the Gemini Batch API and File API, for
// tests, demos and users' own tests. See emulator/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/emulator"
)

const shutdownGrace = 10 * time.Second

func main() { os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)) }

type config struct {
	addr     string
	logLevel string
	opts     emulator.Options
}

// run serves until ctx ends or SIGINT or SIGTERM comes, then shuts down within shutdownGrace.
// It returns the exit code: 0 after a clean stop or --help (written to stdout, so that it pages),
// 2 for bad flags, 1 otherwise. Logs go to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	log, err := newLogger(stderr, cfg.logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "gemini-emulator: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		log.Error().Err(err).Msg("listen")
		return 1
	}
	cfg.opts.Logger = log
	emu := emulator.New(cfg.opts)
	defer emu.Close()
	srv := &http.Server{
		Handler:           emu,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          stdlog.New(log.With().Str("component", "http").Logger(), "", 0),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info().Str("addr", ln.Addr().String()).Str("url", "http://"+ln.Addr().String()).
		Float64("job_delay_seconds", cfg.opts.JobDelay.Seconds()).Bool("api_key_required", cfg.opts.APIKey != "").
		Msg("gemini emulator listening")

	select {
	case err := <-served:
		log.Error().Err(err).Msg("serve")
		return 1
	case <-ctx.Done():
	}
	log.Info().Msg("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Msg("shutdown deadline passed; closing connections")
		_ = srv.Close()
	}
	<-served // http.ErrServerClosed
	log.Info().Msg("stopped")
	return 0
}

// parseFlags reads the flags; --help writes the usage to stdout, a bad flag says so on stderr.
func parseFlags(args []string, stdout, stderr io.Writer) (config, error) {
	var (
		cfg config
		f   = &cfg.opts.Faults
		fs  = flag.NewFlagSet("gemini-emulator", flag.ContinueOnError)
	)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:8085", "`host:port` to listen on (port 0 picks a free one)")
	fs.StringVar(&cfg.opts.APIKey, "api-key", "", "API key that requests must carry (x-goog-api-key or ?key=); empty accepts any")
	fs.DurationVar(&cfg.opts.JobDelay, "job-delay", 2*time.Second, "time from create to a job's end: PENDING for the first half, RUNNING for the second")
	fs.Int64Var(&cfg.opts.InlineMaxBytes, "inline-max-bytes", emulator.DefaultInlineMaxBytes, "largest create body; a larger one answers 400")
	fs.Int64Var(&cfg.opts.FileMaxBytes, "file-max-bytes", emulator.DefaultFileMaxBytes, "largest uploaded file; a larger one answers 400")
	fs.IntVar(&cfg.opts.ImageBytes, "image-bytes", emulator.DefaultImageBytes, "about how large the PNG answered to a request for IMAGE is, in bytes")
	fs.StringVar(&cfg.opts.BaseURL, "base-url", "", "public `URL` for upload URLs and file URIs (default: from each request's Host)")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "log `level`: debug (one line per request), info, warn, error")

	fs.Float64Var(&f.CreateThrottleRate, "create-429-rate", 0, "share of creates answered 429 RESOURCE_EXHAUSTED with RetryInfo (0..1)")
	fs.DurationVar(&f.ThrottleDelay, "throttle-delay", time.Second, "retryDelay of a throttled create")
	fs.Float64Var(&f.GetErrorRate, "get-error-rate", 0, "share of batches.get answered 500 INTERNAL or 503 UNAVAILABLE (0..1)")
	fs.IntVar(&f.UploadChunkFailures, "upload-chunk-failures", 0, "the next `N` upload chunks store half their bytes and answer 503")
	fs.Float64Var(&f.ItemErrorRate, "item-error-rate", 0, "share of items answered with per-item error 13 INTERNAL (0..1)")
	fs.BoolVar(&f.StuckPending, "stuck-pending", false, "jobs never leave PENDING (until --expire-after)")
	fs.DurationVar(&f.ExpireAfter, "expire-after", 0, "a job not done this long after create ends EXPIRED (0: the service's 48h)")
	fs.BoolVar(&f.FailJobs, "fail-jobs", false, "jobs end FAILED with error 13 INTERNAL")
	fs.BoolVar(&f.OutOfOrder, "out-of-order", false, "inline results come in reverse order")
	fs.Float64Var(&f.PartialResults, "partial-results", 0, "share of an expired or cancelled job's requests, the first ones, answered as its output (0..1)")
	fs.IntVar(&f.MaxActiveJobs, "max-active-jobs", 0, "creates past `N` PENDING or RUNNING jobs answer 429 RESOURCE_EXHAUSTED (0: no limit)")
	fs.Int64Var(&f.EnqueuedTokenLimit, "enqueued-token-limit", 0, "creates past `N` estimated tokens in a model's active jobs answer 429 (0: no limit)")
	fs.DurationVar(&f.ListLag, "list-lag", 0, "batches.list leaves out batches created less than this long ago")
	fs.IntVar(&f.LoseCreateAnswers, "lose-create-answers", 0, "the next `N` creates make their job but answer 503")
	fs.Int64Var(&f.Seed, "seed", 0, "seed of the fault rates, to repeat a run")
	fs.Usage = func() {} // said below: to stdout for --help, a hint on stderr after a bad flag

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(fs, stdout)
		} else {
			fmt.Fprintln(stderr, "Run 'gemini-emulator --help' for the flags.")
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "gemini-emulator: unexpected argument %q\n", fs.Arg(0))
		return cfg, errors.New("unexpected argument")
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{"create-429-rate", f.CreateThrottleRate}, {"get-error-rate", f.GetErrorRate}, {"item-error-rate", f.ItemErrorRate}, {"partial-results", f.PartialResults}} {
		if r.v < 0 || r.v > 1 {
			fmt.Fprintf(stderr, "gemini-emulator: --%s %v is not between 0 and 1\n", r.name, r.v)
			return cfg, errors.New("bad rate")
		}
	}
	if cfg.opts.ImageBytes < 1 || cfg.opts.ImageBytes > emulator.MaxImageBytes {
		fmt.Fprintf(stderr, "gemini-emulator: --image-bytes %d is not between 1 and %d\n", cfg.opts.ImageBytes, emulator.MaxImageBytes)
		return cfg, errors.New("bad image size")
	}
	if f.MaxActiveJobs < 0 || f.EnqueuedTokenLimit < 0 {
		fmt.Fprintln(stderr, "gemini-emulator: --max-active-jobs and --enqueued-token-limit cannot be negative")
		return cfg, errors.New("bad limit")
	}
	return cfg, nil
}

func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `gemini-emulator serves a local stand-in for the Gemini Batch API and File API.

Usage: gemini-emulator [flags]

It answers under /v1, /v1beta and /v1alpha. Jobs go PENDING, RUNNING, then SUCCEEDED over
--job-delay. Answers are deterministic: text, JSON valid against responseSchema or
responseJsonSchema, a PNG of about --image-bytes when responseModalities holds IMAGE, and
cached and thinking tokens when cachedContent or thinkingConfig ask for them.
A request whose text contains [[emulator:error=N]] fails with per-item error code N (a gRPC
code, 1-16); with [[emulator:error=N,times=K]] only the first K times a request with that text
is answered. [[emulator:image-bytes=N]] sets the size of that request's image.
Point a client at it with its base URL, e.g. GEMBATCH_GEMINI_BASE_URL=http://127.0.0.1:8085.

Flags:
`)
	fs.VisitAll(func(fl *flag.Flag) {
		name, text := flag.UnquoteUsage(fl)
		fmt.Fprintf(w, "  --%s", fl.Name)
		if name != "" {
			fmt.Fprintf(w, " %s", name)
		}
		fmt.Fprintf(w, "\n      %s", text)
		if fl.DefValue != "" && fl.DefValue != "0" && fl.DefValue != "0s" && fl.DefValue != "false" {
			fmt.Fprintf(w, " (default %s)", fl.DefValue)
		}
		fmt.Fprintln(w)
	})
	fmt.Fprint(w, `
Example: jobs of 5 seconds, a tenth of the creates throttled, one upload chunk lost:

  gemini-emulator --addr 127.0.0.1:8085 --job-delay 5s --create-429-rate 0.1 \
    --upload-chunk-failures 1 --seed 42 --log-level debug

It stops cleanly on SIGINT or SIGTERM.
`)
}

// newLogger logs JSON to w, or readable lines when w is a terminal.
func newLogger(w io.Writer, level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(strings.ToLower(level))
	if err != nil || level == "" {
		return zerolog.Logger{}, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
		}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}
