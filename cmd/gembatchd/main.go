// Command gembatchd is the gembatch daemon: it batches Gemini requests from NATS into Gemini
// Batch API jobs and publishes each answer to its request's reply subject.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/metrics"
)

// Set with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "none"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help":
			fmt.Fprintf(stdout, "gembatchd %s: batch Gemini requests from NATS into Gemini Batch API jobs.\n\n"+
				"Usage: gembatchd\n\nConfigured by environment variables (GEMBATCH_* only, and GEMINI_API_KEY);\n"+
				"an unknown GEMBATCH_* variable stops start-up:\n\n%s\n"+
				"Example:\n  GEMBATCH_NATS_URL=nats://127.0.0.1:4222 GEMINI_API_KEY=... gembatchd\n", version, daemon.Usage())
			return 0
		case "-version", "--version":
			fmt.Fprintf(stdout, "gembatchd %s (%s)\n", version, commit)
			return 0
		default:
			fmt.Fprintf(stderr, "gembatchd: unknown argument %q; configuration is by environment (see --help)\n", a)
			return 2
		}
	}
	cfg, err := daemon.LoadConfig()
	if err != nil {
		fmt.Fprintf(stderr, "gembatchd: bad configuration: %v\n", err)
		return 2
	}
	log, err := daemon.NewLogger(cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "gembatchd: bad configuration: %v\n", err)
		return 2
	}
	log.Info().Str("version", version).Str("commit", commit).Interface("config", cfg.Effective()).Msg("gembatchd starting")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	m := daemon.NewMain(cfg, log, metrics.Build{Version: version, Commit: commit})
	if err := m.Run(ctx); err != nil {
		log.Error().Err(err).Msg("gembatchd failed")
		return 1
	}
	return 0
}
