// Command gembatch is the command-line tool for people who use gembatch.
//
//	gembatch demo    run NATS, the Gemini emulator and gembatchd in-process and send sample requests
//	gembatch submit  send a JSONL file of requests through gembatchd and write the answers
//	gembatch jobs    list the batches gembatchd is tracking
//	gembatch show    show one batch: its record and the remote job
//	gembatch cancel  cancel a batch job
//	gembatch bench   measure gembatchd against raw NATS, JetStream and HTTP, in-process
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usage = `gembatch: batch Gemini requests through gembatchd.

Usage:
  gembatch demo [flags]                          run everything in-process (NATS, the emulator, gembatchd) and send sample requests
  gembatch submit REQUESTS.jsonl -o RESULTS.jsonl  send a Gemini batch input file through gembatchd; write the answers
  gembatch jobs [--watch] [-o json]              list the batches gembatchd is tracking (durable mode)
  gembatch show ID|batches/NAME                  one batch: gembatchd's record, the remote job's state and statistics
  gembatch cancel ID|batches/NAME                cancel a batch job; its requests are answered with CANCELLED errors
  gembatch bench [--quick] [-o json]             measure gembatchd against raw NATS, JetStream and HTTP, in-process

Run "gembatch COMMAND --help" for a command's flags.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "demo":
		return demo(ctx, args[1:], stdout, stderr)
	case "submit":
		return submit(ctx, args[1:], stdout, stderr)
	case "jobs":
		return jobs(ctx, args[1:], stdout, stderr)
	case "show":
		return show(ctx, args[1:], stdout, stderr)
	case "cancel":
		return cancelJob(ctx, args[1:], stdout, stderr)
	case "bench":
		return bench(ctx, args[1:], stdout, stderr)
	case benchDaemonCommand:
		return benchDaemon(ctx, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "gembatch: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

// flagError ends a command whose flags did not parse: asked for help (-h, --help), it prints
// usage and the flags to stdout and returns 0; after a bad flag (which the flag package has
// named on stderr) it points to --help and returns 2. Commands set fs.Usage to do nothing, so
// that usage is printed here, where the two cases are told apart.
func flagError(fs *flag.FlagSet, err error, usage string, stdout, stderr io.Writer) int {
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return 0
	}
	fmt.Fprintf(stderr, "Run \"gembatch %s --help\" for its flags.\n", fs.Name())
	return 2
}
