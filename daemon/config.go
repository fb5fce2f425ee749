package daemon

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/pricing"
)

// Config is gembatchd's configuration, read from GEMBATCH_* environment variables. Each tag
// holds the variable's full name: LoadConfig reads those names only.
type Config struct {
	NATSURL           string `envconfig:"GEMBATCH_NATS_URL" default:"nats://127.0.0.1:4222" desc:"NATS server URL(s), comma-separated"`
	NATSUser          string `envconfig:"GEMBATCH_NATS_USER" desc:"NATS user name (with GEMBATCH_NATS_PASSWORD)"`
	NATSPassword      Secret `envconfig:"GEMBATCH_NATS_PASSWORD" desc:"NATS password"`
	NATSToken         Secret `envconfig:"GEMBATCH_NATS_TOKEN" desc:"NATS authentication token"`
	NATSNKeyFile      string `envconfig:"GEMBATCH_NATS_NKEY_FILE" desc:"file holding an NKey seed"`
	NATSCredsFile     string `envconfig:"GEMBATCH_NATS_CREDS_FILE" desc:"NATS credentials (.creds) file"`
	NATSTLSCA         string `envconfig:"GEMBATCH_NATS_TLS_CA" desc:"CA certificate file to verify the NATS server"`
	NATSTLSCert       string `envconfig:"GEMBATCH_NATS_TLS_CERT" desc:"client certificate file for NATS TLS"`
	NATSTLSKey        string `envconfig:"GEMBATCH_NATS_TLS_KEY" desc:"client key file for NATS TLS"`
	NATSTLSServerName string `envconfig:"GEMBATCH_NATS_TLS_SERVER_NAME" desc:"server name expected in the NATS server's certificate"`

	SubjectGenerate string `envconfig:"GEMBATCH_SUBJECT_GENERATE" default:"gembatch.generate" desc:"subject of GenerateContentRequest messages"`
	SubjectEmbed    string `envconfig:"GEMBATCH_SUBJECT_EMBED" default:"gembatch.embed" desc:"subject of EmbedContentRequest messages"`
	Queue           string `envconfig:"GEMBATCH_QUEUE" default:"gembatch" desc:"NATS queue group shared by all replicas"`
	DefaultModel    string `envconfig:"GEMBATCH_DEFAULT_MODEL" default:"gemini-2.5-flash" desc:"model for requests that name none"`

	BatchMaxRequests int           `envconfig:"GEMBATCH_BATCH_MAX_REQUESTS" default:"10000" desc:"a batch closes at this many requests"`
	BatchMaxBytes    ByteSize      `envconfig:"GEMBATCH_BATCH_MAX_BYTES" default:"100MiB" desc:"a batch closes at this many encoded bytes (at most 2GB)"`
	BatchMaxWait     time.Duration `envconfig:"GEMBATCH_BATCH_MAX_WAIT" default:"1m" desc:"a batch closes this long after its first request"`
	InlineMaxBytes   ByteSize      `envconfig:"GEMBATCH_INLINE_MAX_BYTES" default:"19MiB" desc:"batches up to this size are sent inline, larger ones as a JSONL file (the API's inline limit is 20MB); in durable mode an open batch keeps up to this many bytes of the bodies it took off the stream, to be sent without reading them back"`

	PollInterval     time.Duration `envconfig:"GEMBATCH_POLL_INTERVAL" default:"15s" desc:"first wait before polling a submitted batch"`
	PollMaxInterval  time.Duration `envconfig:"GEMBATCH_POLL_MAX_INTERVAL" default:"5m" desc:"longest wait between polls of one batch"`
	PollConcurrency  int           `envconfig:"GEMBATCH_POLL_CONCURRENCY" default:"8" desc:"batch get calls in flight at once"`
	SubmitConcurrent int           `envconfig:"GEMBATCH_SUBMIT_CONCURRENCY" default:"4" desc:"batches being submitted at once"`
	CreateGrace      time.Duration `envconfig:"GEMBATCH_CREATE_GRACE" default:"1m" desc:"how long a create with a lost answer may take to appear in the batch list before it is sent again"`

	GeminiBaseURL    string `envconfig:"GEMBATCH_GEMINI_BASE_URL" default:"https://generativelanguage.googleapis.com" desc:"Gemini API base URL (point it at gemini-emulator for tests)"`
	GeminiAPIKey     Secret `envconfig:"GEMBATCH_GEMINI_API_KEY" desc:"Gemini API key; GEMINI_API_KEY (no prefix) is read too"`
	GeminiAPIKeyFile string `envconfig:"GEMBATCH_GEMINI_API_KEY_FILE" desc:"file holding the Gemini API key"`

	ReplyAllow      []string `envconfig:"GEMBATCH_REPLY_ALLOW" default:"_INBOX.>" desc:"comma-separated subject patterns replies may be sent to ($SYS.> and the request subjects never)"`
	MaxRequestBytes ByteSize `envconfig:"GEMBATCH_MAX_REQUEST_BYTES" default:"8MiB" desc:"largest request message accepted"`
	MaxPending      int64    `envconfig:"GEMBATCH_MAX_PENDING" default:"100000" desc:"requests held in memory (open batches and sealed ones not yet submitted) before new ones wait (durable) or are refused (core)"`
	MaxPendingBytes ByteSize `envconfig:"GEMBATCH_MAX_PENDING_BYTES" default:"1GiB" desc:"bytes held in memory before new requests wait (durable) or are refused (core)"`
	// IntakeBufferBytes bounds what NATS hands gembatchd faster than it takes it in: core NATS
	// has no flow control, so a burst from plain producers waits in the client's buffer.
	IntakeBufferBytes ByteSize `envconfig:"GEMBATCH_INTAKE_BUFFER_BYTES" default:"64MiB" desc:"request messages received and not yet taken in (durable: not yet stored in the stream), per request subject; past it NATS drops the newest (slow consumer): they get no reply and gembatch_intake_requests_dropped_total counts them"`

	Durable         string        `envconfig:"GEMBATCH_DURABLE" default:"auto" desc:"auto (durable when the NATS server has JetStream), true or false"`
	Stream          string        `envconfig:"GEMBATCH_STREAM" default:"GEMBATCH" desc:"JetStream stream holding requests until their batch is recorded"`
	StreamSubject   string        `envconfig:"GEMBATCH_STREAM_SUBJECT" default:"gembatch.stream" desc:"requests are stored on <this>.generate and <this>.embed; producers may publish there with JetStream (reply subject in header Gembatch-Reply); the SUBJECT_* variables must not be under it"`
	StreamReplicas  int           `envconfig:"GEMBATCH_STREAM_REPLICAS" default:"1" desc:"replicas of the stream and buckets (1 to 5)"`
	StreamStorage   string        `envconfig:"GEMBATCH_STREAM_STORAGE" default:"file" desc:"file or memory, for the stream and buckets"`
	StreamMaxAge    time.Duration `envconfig:"GEMBATCH_STREAM_MAX_AGE" default:"72h" desc:"oldest request the stream keeps"`
	StreamUpdate    bool          `envconfig:"GEMBATCH_STREAM_UPDATE" default:"false" desc:"allow changing a stream gembatch did not create"`
	Consumer        string        `envconfig:"GEMBATCH_CONSUMER" default:"gembatch" desc:"durable consumer shared by every replica"`
	AckWait         time.Duration `envconfig:"GEMBATCH_ACK_WAIT" default:"0s" desc:"redelivery wait of unacknowledged requests (0: BATCH_MAX_WAIT plus one minute)"`
	LeasesBucket    string        `envconfig:"GEMBATCH_LEASES_BUCKET" default:"gembatch-leases" desc:"KV bucket of the replicas' leases"`
	KeepJobs        bool          `envconfig:"GEMBATCH_KEEP_JOBS" default:"false" desc:"leave finished jobs listed in the API instead of deleting them once answered"`
	RecordsBucket   string        `envconfig:"GEMBATCH_RECORDS_BUCKET" default:"gembatch-records" desc:"KV bucket of batch records"`
	RequestsBucket  string        `envconfig:"GEMBATCH_REQUESTS_BUCKET" default:"gembatch-requests" desc:"object store of each batch's request lines and JSONL input"`
	BodiesBucket    string        `envconfig:"GEMBATCH_BODIES_BUCKET" default:"gembatch-bodies" desc:"object store where producers put request bodies too large for a NATS message (header Gembatch-Body-Object); objects expire after STREAM_MAX_AGE"`
	ResultsBucket   string        `envconfig:"GEMBATCH_RESULTS_BUCKET" default:"gembatch-results" desc:"object store of answers too large for a NATS message, which replies name (durable mode)"`
	ResultTTL       time.Duration `envconfig:"GEMBATCH_RESULT_TTL" default:"72h" desc:"how long an answer stays in RESULTS_BUCKET"`
	ReplyMaxBytes   ByteSize      `envconfig:"GEMBATCH_REPLY_MAX_BYTES" default:"0" desc:"largest reply body published as it is, if lower than the connection's max payload (0: the max payload); larger answers go by RESULTS_BUCKET"`
	RecordRetention time.Duration `envconfig:"GEMBATCH_RECORD_RETENTION" default:"168h" desc:"how long a finished record is kept"`
	Instance        string        `envconfig:"GEMBATCH_INSTANCE" desc:"this replica's name (default: the host name); a restart under the same name resumes its batches at once"`
	LeaseTTL        time.Duration `envconfig:"GEMBATCH_LEASE_TTL" default:"30s" desc:"a replica's batches are taken over this long after it stops renewing them"`

	MaxAttempts       int           `envconfig:"GEMBATCH_MAX_ATTEMPTS" default:"3" desc:"batches a request may be sent in: requests that fail with a retryable error (13, 14, 4, 8) or that an expired or stuck job left unfinished go into a later batch until then (1: never resubmit)"`
	ResubmitExpired   bool          `envconfig:"GEMBATCH_RESUBMIT_EXPIRED" default:"true" desc:"resubmit the unfinished requests of an EXPIRED job (false: answer them with DEADLINE_EXCEEDED)"`
	ResubmitCancelled bool          `envconfig:"GEMBATCH_RESUBMIT_CANCELLED" default:"false" desc:"resubmit the unfinished requests of a job cancelled outside gembatch (false: answer them with CANCELLED)"`
	StuckAfter        time.Duration `envconfig:"GEMBATCH_STUCK_AFTER" default:"24h" desc:"a job still PENDING or RUNNING this long after its create is reported stuck (metric, log); 0 never"`
	StuckCancel       bool          `envconfig:"GEMBATCH_STUCK_CANCEL" default:"false" desc:"cancel stuck jobs and resubmit their unfinished requests"`
	DeadLetterSubject string        `envconfig:"GEMBATCH_DEAD_LETTER_SUBJECT" desc:"subject that receives every request that finally failed, with its last error (none if empty)"`
	MaxActiveJobs     int           `envconfig:"GEMBATCH_MAX_ACTIVE_JOBS" default:"100" desc:"remote jobs not yet ended, across every replica, before sealed batches wait (the service's limit is 100); 0 no cap"`
	TokenBudget       TokenBudget   `envconfig:"GEMBATCH_TOKEN_BUDGET" desc:"per-model cap on the estimated input tokens of active jobs, as model=tokens,... (e.g. gemini-2.5-flash=3000000); none if empty"`
	PricesFile        string        `envconfig:"GEMBATCH_PRICES_FILE" desc:"JSON price table for the cost and saving estimates (default: the shipped batch and interactive prices)"`

	MetricsAddr   string        `envconfig:"GEMBATCH_METRICS_ADDR" default:":9090" desc:"address of /metrics, /healthz and /readyz"`
	LogLevel      string        `envconfig:"GEMBATCH_LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	LogFormat     string        `envconfig:"GEMBATCH_LOG_FORMAT" default:"json" desc:"json or console"`
	ShutdownGrace time.Duration `envconfig:"GEMBATCH_SHUTDOWN_GRACE" default:"25s" desc:"on SIGTERM, time to flush and submit open batches before exiting"`
}

// Prefix is the environment prefix of every variable.
const Prefix = "GEMBATCH"

// fileLimit is the API's input file limit.
const fileLimit = 2 << 30

// LoadConfig reads the environment: GEMBATCH_* variables, and GEMINI_API_KEY as the SDKs read
// it. Its error is one line naming the variable at fault; an unknown GEMBATCH_* variable (a
// typo) is one too, with the closest known name.
func LoadConfig() (Config, error) {
	var c Config
	if err := checkNames(os.Environ()); err != nil {
		return c, err
	}
	// An empty prefix and full names in the tags: envconfig then reads nothing but those names
	// (with a prefix it falls back to the bare name, so LOG_LEVEL would be read).
	if err := envconfig.Process("", &c); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return c, fmt.Errorf("%s=%q: %v", pe.KeyName, pe.Value, unwrapParse(pe.Err))
		}
		return c, err
	}
	if c.GeminiAPIKey == "" {
		c.GeminiAPIKey = Secret(os.Getenv("GEMINI_API_KEY"))
	}
	if c.GeminiAPIKeyFile != "" {
		b, err := os.ReadFile(c.GeminiAPIKeyFile)
		if err != nil {
			return c, fmt.Errorf("%s_GEMINI_API_KEY_FILE: %w", Prefix, err)
		}
		c.GeminiAPIKey = Secret(strings.TrimSpace(string(b)))
	}
	if err := c.Validate(); err != nil {
		return c, err
	}
	return c, c.checkFiles()
}

// checkFiles reads each file the configuration names, so that a missing or broken one stops
// start-up before anything connects.
func (c *Config) checkFiles() error {
	if c.PricesFile != "" {
		if _, err := pricing.Load(c.PricesFile); err != nil {
			return fmt.Errorf("%s_PRICES_FILE: %w", Prefix, err)
		}
	}
	for _, f := range []struct{ name, path string }{
		{"NATS_NKEY_FILE", c.NATSNKeyFile}, {"NATS_CREDS_FILE", c.NATSCredsFile},
		{"NATS_TLS_CA", c.NATSTLSCA}, {"NATS_TLS_CERT", c.NATSTLSCert}, {"NATS_TLS_KEY", c.NATSTLSKey},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.ReadFile(f.path); err != nil {
			return fmt.Errorf("%s_%s: %w", Prefix, f.name, err)
		}
	}
	return nil
}

// Defaults returns the configuration with every variable at its default, whatever the
// environment holds: the base for in-process runs (tests, the demo).
func Defaults() Config {
	var c Config
	v := reflect.ValueOf(&c).Elem()
	for i := range v.NumField() {
		def, ok := v.Type().Field(i).Tag.Lookup("default")
		if !ok {
			continue
		}
		f := v.Field(i)
		var err error
		switch p := f.Addr().Interface().(type) {
		case *ByteSize:
			err = p.Decode(def)
		case *time.Duration:
			*p, err = time.ParseDuration(def)
		case *[]string:
			*p = strings.Split(def, ",")
		case *string:
			*p = def
		case *int:
			*p, err = strconv.Atoi(def)
		case *int64:
			*p, err = strconv.ParseInt(def, 10, 64)
		case *bool:
			*p, err = strconv.ParseBool(def)
		default:
			err = fmt.Errorf("no default decoder for %T", p)
		}
		if err != nil {
			panic(fmt.Sprintf("daemon: default of %s: %v", v.Type().Field(i).Name, err))
		}
	}
	return c
}

// Validate checks values that parse but make no sense.
func (c *Config) Validate() error {
	bad := func(name, format string, args ...any) error {
		return fmt.Errorf("%s_%s: %s", Prefix, name, fmt.Sprintf(format, args...))
	}
	switch {
	case c.BatchMaxRequests < 1:
		return bad("BATCH_MAX_REQUESTS", "must be at least 1, got %d", c.BatchMaxRequests)
	case c.BatchMaxBytes < 1 || c.BatchMaxBytes > fileLimit:
		return bad("BATCH_MAX_BYTES", "must be between 1 and 2GiB, got %d", c.BatchMaxBytes)
	case c.BatchMaxWait <= 0:
		return bad("BATCH_MAX_WAIT", "must be positive, got %s", c.BatchMaxWait)
	case c.InlineMaxBytes < 0 || c.InlineMaxBytes > 20<<20:
		return bad("INLINE_MAX_BYTES", "must be between 0 and 20MiB (the API's inline limit), got %d", c.InlineMaxBytes)
	case c.PollInterval <= 0:
		return bad("POLL_INTERVAL", "must be positive, got %s", c.PollInterval)
	case c.PollMaxInterval < c.PollInterval:
		return bad("POLL_MAX_INTERVAL", "must be at least POLL_INTERVAL (%s), got %s", c.PollInterval, c.PollMaxInterval)
	case c.PollConcurrency < 1:
		return bad("POLL_CONCURRENCY", "must be at least 1, got %d", c.PollConcurrency)
	case c.SubmitConcurrent < 1:
		return bad("SUBMIT_CONCURRENCY", "must be at least 1, got %d", c.SubmitConcurrent)
	case c.MaxRequestBytes < 1 || c.MaxRequestBytes > c.BatchMaxBytes:
		return bad("MAX_REQUEST_BYTES", "must be between 1 and BATCH_MAX_BYTES (%d), got %d", c.BatchMaxBytes, c.MaxRequestBytes)
	case c.MaxPending < 1:
		return bad("MAX_PENDING", "must be at least 1, got %d", c.MaxPending)
	case c.MaxPendingBytes < c.MaxRequestBytes:
		return bad("MAX_PENDING_BYTES", "must be at least MAX_REQUEST_BYTES (%d), got %d", c.MaxRequestBytes, c.MaxPendingBytes)
	case c.IntakeBufferBytes < c.MaxRequestBytes:
		return bad("INTAKE_BUFFER_BYTES", "must be at least MAX_REQUEST_BYTES (%d), got %d", c.MaxRequestBytes, c.IntakeBufferBytes)
	case c.ShutdownGrace <= 0:
		return bad("SHUTDOWN_GRACE", "must be positive, got %s", c.ShutdownGrace)
	case c.SubjectGenerate == "" || c.SubjectEmbed == "" || c.SubjectGenerate == c.SubjectEmbed:
		return bad("SUBJECT_GENERATE", "and SUBJECT_EMBED must be set and differ")
	case len(c.ReplyAllow) == 0:
		return bad("REPLY_ALLOW", "must name at least one subject pattern")
	}
	if err := c.validateNames(bad); err != nil {
		return err
	}
	switch {
	case c.Durable != "auto" && c.Durable != "true" && c.Durable != "false":
		return bad("DURABLE", "must be auto, true or false, got %q", c.Durable)
	case c.StreamReplicas < 1 || c.StreamReplicas > 5:
		return bad("STREAM_REPLICAS", "must be between 1 and 5, got %d", c.StreamReplicas)
	case c.StreamStorage != "file" && c.StreamStorage != "memory":
		return bad("STREAM_STORAGE", "must be file or memory, got %q", c.StreamStorage)
	case c.StreamMaxAge <= 0:
		return bad("STREAM_MAX_AGE", "must be positive, got %s", c.StreamMaxAge)
	case c.AckWait < 0:
		return bad("ACK_WAIT", "must not be negative, got %s", c.AckWait)
	case c.AckWait > 0 && c.AckWait <= c.BatchMaxWait:
		return bad("ACK_WAIT", "must be longer than BATCH_MAX_WAIT (%s), got %s", c.BatchMaxWait, c.AckWait)
	case c.ResultTTL < time.Minute:
		return bad("RESULT_TTL", "must be at least 1m, got %s", c.ResultTTL)
	case c.ReplyMaxBytes < 0 || (c.ReplyMaxBytes > 0 && c.ReplyMaxBytes < 1024):
		return bad("REPLY_MAX_BYTES", "must be 0 or at least 1KiB, got %d", c.ReplyMaxBytes)
	case c.RecordRetention < 72*time.Hour:
		return bad("RECORD_RETENTION", "must be at least 72h (a job may take 48h), got %s", c.RecordRetention)
	case c.LeaseTTL < time.Second:
		return bad("LEASE_TTL", "must be at least 1s, got %s", c.LeaseTTL)
	case c.EffectiveAckWait() <= c.LeaseTTL:
		return bad("ACK_WAIT", "must be longer than LEASE_TTL (%s), so that a request is delivered elsewhere only once its holder's lease lapsed; got %s", c.LeaseTTL, c.EffectiveAckWait())
	case !natsName.MatchString(c.Stream):
		return bad("STREAM", "%q is not a stream name (letters, digits, - and _)", c.Stream)
	case !natsName.MatchString(c.Consumer):
		return bad("CONSUMER", "%q is not a consumer name (letters, digits, - and _)", c.Consumer)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return bad("LOG_LEVEL", "%v", err)
	}
	if c.LogFormat != "json" && c.LogFormat != "console" {
		return bad("LOG_FORMAT", "must be json or console, got %q", c.LogFormat)
	}
	if c.NATSTLSCert != "" && c.NATSTLSKey == "" {
		return bad("NATS_TLS_CERT", "needs %s_NATS_TLS_KEY too", Prefix)
	}
	if c.NATSTLSKey != "" && c.NATSTLSCert == "" {
		return bad("NATS_TLS_KEY", "needs %s_NATS_TLS_CERT too", Prefix)
	}
	switch {
	case c.MaxAttempts < 1 || c.MaxAttempts > 100:
		return bad("MAX_ATTEMPTS", "must be between 1 and 100, got %d", c.MaxAttempts)
	case c.StuckAfter < 0:
		return bad("STUCK_AFTER", "must not be negative, got %s", c.StuckAfter)
	case c.StuckCancel && c.StuckAfter == 0:
		return bad("STUCK_CANCEL", "needs STUCK_AFTER above 0")
	case c.MaxActiveJobs < 0:
		return bad("MAX_ACTIVE_JOBS", "must not be negative, got %d", c.MaxActiveJobs)
	case c.DeadLetterSubject != "" && !natsSubject.MatchString(c.DeadLetterSubject):
		return bad("DEAD_LETTER_SUBJECT", "%q is not a subject to publish to (no spaces or wildcards)", c.DeadLetterSubject)
	case c.DeadLetterSubject != "" && (c.DeadLetterSubject == c.SubjectGenerate || c.DeadLetterSubject == c.SubjectEmbed ||
		strings.HasPrefix(c.DeadLetterSubject, c.StreamSubject+".")):
		return bad("DEAD_LETTER_SUBJECT", "%q must not be a subject gembatch takes requests on", c.DeadLetterSubject)
	}
	return nil
}

var natsSubject = regexp.MustCompile(`^[^.\s*>]+(\.[^.\s*>]+)*$`)

// TokenBudget is a token cap per model, read from "gemini-2.5-flash=3000000,models/x=10".
type TokenBudget map[string]int64

// Decode implements envconfig.Decoder.
func (t *TokenBudget) Decode(v string) error {
	out := TokenBudget{}
	for item := range strings.SplitSeq(v, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		model, n, ok := strings.Cut(item, "=")
		tokens, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
		model = strings.TrimSpace(model)
		if !ok || model == "" || err != nil || tokens < 1 {
			return fmt.Errorf("%q is not model=tokens with a positive number of tokens", item)
		}
		out[gemini.ModelName(model)] = tokens
	}
	*t = out
	return nil
}

// String writes the budget as it is read, models sorted: "models/a=10,models/b=20" ("" if none).
func (t TokenBudget) String() string {
	var b strings.Builder
	for _, model := range slices.Sorted(maps.Keys(t)) {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%d", model, t[model])
	}
	return b.String()
}

func unwrapParse(err error) error {
	var ne *strconv.NumError
	if errors.As(err, &ne) && ne.Func == "ParseBool" {
		return fmt.Errorf("not true or false")
	}
	if errors.As(err, &ne) {
		return fmt.Errorf("not a number")
	}
	return err
}

// Effective returns every variable with its value as the daemon uses it, secrets redacted,
// for the start-up log line.
func (c Config) Effective() map[string]string {
	out := make(map[string]string)
	v := reflect.ValueOf(c)
	for i := range v.NumField() {
		name := v.Type().Field(i).Tag.Get("envconfig")
		f := v.Field(i).Interface()
		if l, ok := f.([]string); ok {
			f = strings.Join(l, ",")
		}
		// fmt.Sprint uses String methods: ByteSize, TokenBudget, Secret and Duration show units.
		out[name] = fmt.Sprint(f)
	}
	return out
}

var natsName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// EffectiveAckWait is ACK_WAIT, or BATCH_MAX_WAIT plus a minute for sealing and recording.
func (c *Config) EffectiveAckWait() time.Duration {
	if c.AckWait > 0 {
		return c.AckWait
	}
	return c.BatchMaxWait + time.Minute
}

// Usage lists every variable with its default and description, in aligned columns.
func Usage() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  VARIABLE\tDEFAULT\tMEANING")
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		tag := typ.Field(i).Tag
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", tag.Get("envconfig"), tag.Get("default"), tag.Get("desc"))
	}
	_ = tw.Flush() // a strings.Builder does not fail
	return b.String()
}

// ByteSize is a size in bytes read from "1048576", "512KiB", "100MiB", "2GiB" or "20MB".
type ByteSize int64

// Decode implements envconfig.Decoder.
func (s *ByteSize) Decode(v string) error {
	v = strings.TrimSpace(v)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSpace(strings.TrimSuffix(v, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("not a size: use bytes or a number with KiB, MiB, GiB, KB, MB or GB")
	}
	*s = ByteSize(n * mult)
	return nil
}

// String writes the size in the largest binary unit that divides it: "100MiB", "1000B".
func (s ByteSize) String() string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if s != 0 && int64(s)%u.mult == 0 {
			return strconv.FormatInt(int64(s)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}

// Secret is a string that never prints.
type Secret string

// String redacts the secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// MarshalText redacts the secret in logs and JSON.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
