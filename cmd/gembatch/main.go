// Command gembatch is the command-line tool for people who use gembatch.
//
//	gembatch demo    run NATS, the Gemini emulator and gembatchd in-process and send sample requests
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usage = `gembatch: batch Gemini requests through gembatchd.

Usage:
  gembatch demo [flags]    run everything in-process (NATS, the emulator, gembatchd) and send sample requests

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
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "gembatch: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
