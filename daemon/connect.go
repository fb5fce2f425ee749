package daemon

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// connect opens the NATS connection with the configured credentials. It reconnects forever with
// capped, jittered waits and logs every disconnect and reconnect.
func (m *Main) connect() (*nats.Conn, error) {
	cfg := m.Config
	log := m.Log.With().Str("component", "nats").Logger()
	opts := []nats.Option{
		nats.Name("gembatchd"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(500*time.Millisecond, 2*time.Second),
		nats.ReconnectBufSize(64 << 20),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil when we close the connection ourselves
				log.Warn().Err(err).Msg("disconnected from NATS; reconnecting")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("reconnected to NATS")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) && sub != nil {
				dropped, _ := sub.Dropped()
				log.Warn().Str("subject", sub.Subject).Int("dropped_total", dropped).
					Msg("messages arrive faster than gembatchd takes them in: NATS drops the newest past the buffer (GEMBATCH_INTAKE_BUFFER_BYTES for requests), and a dropped request gets no reply; pace the producers, or publish to the stream with JetStream")
				return
			}
			ev := log.Error().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("NATS async error")
		}),
	}
	if cfg.NATSUser != "" {
		opts = append(opts, nats.UserInfo(cfg.NATSUser, string(cfg.NATSPassword)))
	}
	if cfg.NATSToken != "" {
		opts = append(opts, nats.Token(string(cfg.NATSToken)))
	}
	if cfg.NATSCredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATSCredsFile))
	}
	if cfg.NATSNKeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(cfg.NATSNKeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s_NATS_NKEY_FILE: %w", Prefix, err)
		}
		opts = append(opts, opt)
	}
	if cfg.NATSTLSServerName != "" {
		// Before the CA and client certificate options, which fill in this configuration.
		opts = append(opts, nats.Secure(&tls.Config{ServerName: cfg.NATSTLSServerName, MinVersion: tls.VersionTLS12}))
	}
	if cfg.NATSTLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.NATSTLSCA))
	}
	if cfg.NATSTLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.NATSTLSCert, cfg.NATSTLSKey))
	}
	nc, err := nats.Connect(cfg.NATSURL, opts...)
	switch {
	case errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked):
		return nil, fmt.Errorf("NATS at %s refused the credentials: %w (check %s_NATS_USER and _PASSWORD, _TOKEN, _NKEY_FILE or _CREDS_FILE)",
			redactURL(cfg.NATSURL), err, Prefix)
	case err != nil:
		return nil, fmt.Errorf("cannot reach NATS at %s: %w (is NATS running? set %s_NATS_URL; TLS: %s_NATS_TLS_*)", redactURL(cfg.NATSURL), err, Prefix, Prefix)
	}
	log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("connected to NATS")
	return nc, nil
}

// redactURL hides passwords in NATS URLs before they reach a log or an error.
func redactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if scheme := strings.Index(u, "://"); scheme >= 0 && scheme < at {
				parts[i] = u[:scheme+3] + "[redacted]" + u[at:]
			}
		}
	}
	return strings.Join(parts, ",")
}

// NewLogger builds the zerolog logger the configuration asks for.
func NewLogger(cfg Config, w io.Writer) (zerolog.Logger, error) {
	lvl, err := parseLevel(cfg.LogLevel)
	if err != nil {
		return zerolog.Nop(), err
	}
	out := w
	if cfg.LogFormat == "console" {
		// Colour codes only for a terminal: in a file or a pipe they are noise.
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: !isTerminal(w)}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger(), nil
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func parseLevel(s string) (zerolog.Level, error) {
	switch s {
	case "debug", "info", "warn", "error":
		return zerolog.ParseLevel(s)
	}
	return zerolog.NoLevel, fmt.Errorf("must be debug, info, warn or error, got %q", s)
}

// connectionMetrics exports the NATS connection's state and reconnects.
func connectionMetrics(reg prometheus.Registerer, nc *nats.Conn) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gembatch_nats_connected",
			Help: "1 while the NATS connection is up, 0 while it is reconnecting.",
		}, func() float64 {
			if nc.IsConnected() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gembatch_nats_reconnects_total",
			Help: "Reconnections to NATS since start.",
		}, func() float64 { return float64(nc.Stats().Reconnects) }),
	)
}
