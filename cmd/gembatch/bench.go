package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"strings"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/internal/benchkit"
	"github.com/gembatch/gembatch/metrics"
)

const benchUsage = `Usage: gembatch bench [flags]

Measures gembatchd against the raw operations it is built on, in this process and this run:
an in-process NATS server (JetStream on, temporary directory) unless --nats names yours, the
Gemini emulator over real HTTP with jobs that end at once, and gembatchd itself. Each measure
runs interleaved rounds of its baseline and of gembatchd and prints the median and the
spread (min–max) of each figure and of their ratio:

  intake    core intake, 8 producers: raw publish→subscribe vs accepted/s
  durable   durable intake, plain producers (forwarded) and JetStream producers publishing to
            the stream: JetStream publish + consume-and-ack vs accepted (recorded and acked)/s
  fanout    replies of one 10,000-request batch, first reply to last: raw publish of the same replies
  results   reading a result file of embeddings, MB/s and replies/s: raw HTTP read of the same file
  pending   heap and RSS per pending request above its body, 100,000 pending (core mode)
  rss       peak RSS of gembatchd in its own process sending one batch by file of 128 MB
            (--full: 1 GB), once of 5 MB requests (each by object, through the bodies bucket),
            once of 32 KiB requests (through the stream); baseline: the same process ready and idle
  bigreply  answers of 2 MB delivered by object store, and the peak RSS growth delivering 500
            of them (--quick: 20): object-store put + get of the same objects
  polling   API calls per minute and process CPU with 100 active jobs and 10,000 records in the store

It takes a few minutes on 2 cores (--quick: well under one), leaves nothing running, and
removes its temporary files; on your server (--nats) it deletes the streams it created.

Examples:
  go run ./cmd/gembatch bench
  go run ./cmd/gembatch bench --only intake,durable --rounds 5
  go run ./cmd/gembatch bench --quick -o json

Flags:
`

func bench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var opts benchkit.Options
	fs.StringVar(&opts.NATSURL, "nats", "", "measure on this NATS server (JetStream on) instead of an in-process one")
	fs.IntVar(&opts.Rounds, "rounds", 3, "interleaved rounds of each measure")
	fs.BoolVar(&opts.Quick, "quick", false, "CI sizes: every measure shrunk to seconds")
	fs.BoolVar(&opts.Full, "full", false, "the full sizes: a 1 GiB batch and a 1 GiB result file")
	fs.DurationVar(&opts.PollWindow, "poll-window", 0, "how long the polling measure counts calls and CPU (default 1m, --quick 3s); polls back off, so a longer window shows the steady rate")
	only := fs.String("only", "", "comma-separated measures to run: "+strings.Join(benchkit.Groups, ","))
	output := fs.String("o", "table", "output: table (Markdown) or json")
	quiet := fs.Bool("q", false, "no progress lines on stderr")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (daemon, NATS and baselines) to this file")
	fs.Usage = func() { fmt.Fprint(stderr, benchUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "gembatch bench: -o must be table or json, got %q\n", *output)
		return 2
	}
	if *only != "" {
		opts.Only = strings.Split(*only, ",")
	}
	if !*quiet {
		opts.Progress = stderr
	}
	opts.Gembatchd = func() *exec.Cmd {
		exe, err := os.Executable()
		if err != nil {
			exe = os.Args[0]
		}
		return exec.Command(exe, benchDaemonCommand)
	}
	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "gembatch bench: %v\n", err)
			return 1
		}
		defer stop()
	}
	rep, err := benchkit.Run(ctx, opts)
	if err != nil {
		fmt.Fprintf(stderr, "gembatch bench: %v\n", err)
		return 1
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = benchkit.WriteTable(stdout, rep)
	}
	if err != nil {
		fmt.Fprintf(stderr, "gembatch bench: %v\n", err)
		return 1
	}
	return 0
}

// startCPUProfile profiles the process until the returned function is called.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// benchDaemonCommand is the hidden command by which the bench runs gembatchd in a process of
// its own (this same executable), for the peak-RSS measure.
const benchDaemonCommand = "bench-gembatchd"

// benchDaemon runs gembatchd configured by the environment until ctx ends, as gembatchd does.
func benchDaemon(ctx context.Context, stderr io.Writer) int {
	cfg, err := daemon.LoadConfig()
	if err != nil {
		fmt.Fprintf(stderr, "gembatch %s: %v\n", benchDaemonCommand, err)
		return 2
	}
	log, err := daemon.NewLogger(cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "gembatch %s: %v\n", benchDaemonCommand, err)
		return 2
	}
	if err := daemon.NewMain(cfg, log, metrics.Build{Version: "bench"}).Run(ctx); err != nil {
		log.Error().Err(err).Msg("gembatchd failed")
		return 1
	}
	return 0
}
