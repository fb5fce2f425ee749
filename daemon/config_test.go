package daemon

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultsMatchEnvconfig(t *testing.T) {
	cleanEnv(t)
	got, err := LoadConfig()
	if err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	want := Defaults()
	if got.BatchMaxBytes != want.BatchMaxBytes || got.BatchMaxWait != want.BatchMaxWait || got.NATSURL != want.NATSURL ||
		strings.Join(got.ReplyAllow, ",") != strings.Join(want.ReplyAllow, ",") || got.InlineMaxBytes != 19<<20 {
		t.Fatalf("Defaults() = %+v\nLoadConfig() = %+v", want, got)
	}
}

func TestBadValuesNameTheVariable(t *testing.T) {
	tests := []struct {
		env, value, want string
	}{
		{"GEMBATCH_BATCH_MAX_WAIT", "soon", `GEMBATCH_BATCH_MAX_WAIT="soon"`},
		{"GEMBATCH_BATCH_MAX_REQUESTS", "many", `GEMBATCH_BATCH_MAX_REQUESTS="many": not a number`},
		{"GEMBATCH_BATCH_MAX_REQUESTS", "0", "GEMBATCH_BATCH_MAX_REQUESTS: must be at least 1"},
		{"GEMBATCH_BATCH_MAX_BYTES", "3GiB", "GEMBATCH_BATCH_MAX_BYTES: must be between 1 and 2GiB"},
		{"GEMBATCH_INLINE_MAX_BYTES", "lots", `GEMBATCH_INLINE_MAX_BYTES="lots": not a size`},
		{"GEMBATCH_INLINE_MAX_BYTES", "21MiB", "GEMBATCH_INLINE_MAX_BYTES: must be between 0 and 20MiB"},
		{"GEMBATCH_POLL_MAX_INTERVAL", "1s", "GEMBATCH_POLL_MAX_INTERVAL: must be at least POLL_INTERVAL"},
		{"GEMBATCH_INTAKE_BUFFER_BYTES", "1KiB", "GEMBATCH_INTAKE_BUFFER_BYTES: must be at least MAX_REQUEST_BYTES"},
		{"GEMBATCH_LOG_LEVEL", "loud", "GEMBATCH_LOG_LEVEL: must be debug, info, warn or error"},
		{"GEMBATCH_LOG_FORMAT", "xml", "GEMBATCH_LOG_FORMAT: must be json or console"},
		{"GEMBATCH_MAX_REQUEST_BYTES", "200MiB", "GEMBATCH_MAX_REQUEST_BYTES: must be between 1 and BATCH_MAX_BYTES"},
		{"GEMBATCH_GEMINI_API_KEY_FILE", "/nonexistent/key", "GEMBATCH_GEMINI_API_KEY_FILE: open /nonexistent/key"},
		{"GEMBATCH_MAX_ATTEMPTS", "0", "GEMBATCH_MAX_ATTEMPTS: must be between 1 and 100"},
		{"GEMBATCH_STUCK_AFTER", "-1h", "GEMBATCH_STUCK_AFTER: must not be negative"},
		{"GEMBATCH_MAX_ACTIVE_JOBS", "-1", "GEMBATCH_MAX_ACTIVE_JOBS: must not be negative"},
		{"GEMBATCH_TOKEN_BUDGET", "gemini-2.5-flash=lots", `GEMBATCH_TOKEN_BUDGET="gemini-2.5-flash=lots": "gemini-2.5-flash=lots" is not model=tokens`},
		{"GEMBATCH_TOKEN_BUDGET", "gemini-2.5-flash", `is not model=tokens with a positive number of tokens`},
		{"GEMBATCH_DEAD_LETTER_SUBJECT", "dead.>", `GEMBATCH_DEAD_LETTER_SUBJECT: "dead.>" is not a subject to publish to`},
		{"GEMBATCH_DEAD_LETTER_SUBJECT", "gembatch.generate", `GEMBATCH_DEAD_LETTER_SUBJECT: "gembatch.generate" must not be a subject gembatch takes requests on`},
		{"GEMBATCH_METRICS_ADDR", "notanaddr", `GEMBATCH_METRICS_ADDR: "notanaddr" is not host:port`},
		{"GEMBATCH_METRICS_ADDR", ":99999", `GEMBATCH_METRICS_ADDR: ":99999" is not host:port`},
		{"GEMBATCH_NATS_URL", "http://example.com", `GEMBATCH_NATS_URL: "http://example.com" is not a NATS URL`},
		{"GEMBATCH_NATS_URL", "nats://", `GEMBATCH_NATS_URL: "nats://" is not a NATS URL`},
		{"GEMBATCH_GEMINI_BASE_URL", "generativelanguage.googleapis.com", `GEMBATCH_GEMINI_BASE_URL: "generativelanguage.googleapis.com" is not an http(s) URL`},
		{"GEMBATCH_PRICES_FILE", "/nonexistent/prices.json", "GEMBATCH_PRICES_FILE: open /nonexistent/prices.json"},
		{"GEMBATCH_NATS_NKEY_FILE", "/nonexistent/seed", "GEMBATCH_NATS_NKEY_FILE: open /nonexistent/seed"},
		{"GEMBATCH_NATS_CREDS_FILE", "/nonexistent/creds", "GEMBATCH_NATS_CREDS_FILE: open /nonexistent/creds"},
		{"GEMBATCH_NATS_TLS_CA", "/nonexistent/ca.pem", "GEMBATCH_NATS_TLS_CA: open /nonexistent/ca.pem"},
		{"GEMBATCH_SUBJECT_GENERATE", "gembatch.*", `GEMBATCH_SUBJECT_GENERATE: "gembatch.*" is not a subject`},
		{"GEMBATCH_REPLY_ALLOW", "_INBOX.>,bad subject", `GEMBATCH_REPLY_ALLOW: "bad subject" is not a subject pattern`},
		{"GEMBATCH_QUEUE", "a queue", `GEMBATCH_QUEUE: "a queue" is not a queue group name`},
		{"GEMBATCH_RECORDS_BUCKET", "records.v1", `GEMBATCH_RECORDS_BUCKET: "records.v1" is not a bucket name`},
		{"GEMBATCH_STREAM_SUBJECT", "gembatch.>", `GEMBATCH_STREAM_SUBJECT: "gembatch.>" is not a subject`},
		{"GEMBATCH_LEASES_BUCKET", "leases.v1", `GEMBATCH_LEASES_BUCKET: "leases.v1" is not a bucket name`},
		{"GEMBATCH_STREAM", "requests.v1", `GEMBATCH_STREAM: "requests.v1" is not a stream name`},
		{"GEMBATCH_CONSUMER", "gembatch.v1", `GEMBATCH_CONSUMER: "gembatch.v1" is not a consumer name`},
		{"GEMBATCH_KEEP_JOBS", "maybe", `GEMBATCH_KEEP_JOBS="maybe": not true or false`},
		{"GEMBATCH_NATS_TLS_KEY", "/etc/hostname", "GEMBATCH_NATS_TLS_KEY: needs GEMBATCH_NATS_TLS_CERT too"},
		{"GEMBATCH_SUBJECT_GENERATE", "gembatch.stream.generate", `GEMBATCH_SUBJECT_GENERATE: "gembatch.stream.generate" is under GEMBATCH_STREAM_SUBJECT`},
		{"GEMBATCH_STREAM_SUBJECT", "gembatch", `GEMBATCH_SUBJECT_GENERATE: "gembatch.generate" is under GEMBATCH_STREAM_SUBJECT`},
	}
	for _, tt := range tests {
		t.Run(tt.env+"="+tt.value, func(t *testing.T) {
			cleanEnv(t)
			t.Setenv(tt.env, tt.value)
			_, err := LoadConfig()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadConfig() error = %v, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\\n") {
				t.Fatalf("error spans lines: %q", err)
			}
		})
	}
}

func TestTokenBudget(t *testing.T) {
	var b TokenBudget
	if err := b.Decode(" gemini-2.5-flash=3000000, models/gemini-2.5-pro=5000000,"); err != nil {
		t.Fatal(err)
	}
	if len(b) != 2 || b["models/gemini-2.5-flash"] != 3_000_000 || b["models/gemini-2.5-pro"] != 5_000_000 {
		t.Fatalf("budget %v", b)
	}
	cleanEnv(t)
	t.Setenv("GEMBATCH_STUCK_AFTER", "0")
	t.Setenv("GEMBATCH_STUCK_CANCEL", "true")
	if _, err := LoadConfig(); err == nil || !strings.Contains(err.Error(), "GEMBATCH_STUCK_CANCEL: needs STUCK_AFTER above 0") {
		t.Fatalf("STUCK_CANCEL without STUCK_AFTER: %v", err)
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "512KiB": 512 << 10, "19MiB": 19 << 20, "2GiB": 2 << 30, "20MB": 20e6, "7 B": 7} {
		var b ByteSize
		if err := b.Decode(in); err != nil || int64(b) != want {
			t.Errorf("Decode(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5MiB", "MiB", "12XB"} {
		var b ByteSize
		if err := b.Decode(in); err == nil {
			t.Errorf("Decode(%q) accepted %d", in, b)
		}
	}
}

func TestSecretsNeverPrint(t *testing.T) {
	cleanEnv(t)
	t.Setenv("GEMBATCH_GEMINI_API_KEY", "AIza-secret-key")
	t.Setenv("GEMBATCH_NATS_PASSWORD", "hunter2")
	t.Setenv("GEMBATCH_NATS_TOKEN", "tok-secret")
	c, err := LoadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if string(c.GeminiAPIKey) != "AIza-secret-key" {
		t.Fatalf("API key not loaded")
	}
	for k, v := range c.Effective() {
		for _, secret := range []string{"AIza-secret-key", "hunter2", "tok-secret"} {
			if strings.Contains(v, secret) {
				t.Fatalf("%s shows a secret: %q", k, v)
			}
		}
	}
	if got := c.Effective()["GEMBATCH_BATCH_MAX_WAIT"]; got != (time.Minute).String() {
		t.Fatalf("BATCH_MAX_WAIT shows as %q", got)
	}
}

func TestRedactURL(t *testing.T) {
	got := redactURL("nats://user:pw@a:4222,nats://b:4222")
	if got != "nats://[redacted]@a:4222,nats://b:4222" {
		t.Fatalf("redactURL = %q", got)
	}
}

// TestREADMEListsEveryVariable keeps the README's configuration table in step with the code.
func TestREADMEListsEveryVariable(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	d := Defaults()
	for name, value := range d.Effective() {
		row := "| `" + name + "` |"
		if !strings.Contains(string(readme), row) {
			t.Errorf("README.md has no row for %s", name)
		}
		if _, ok := reflectDefault(name); ok && value != "" && !strings.Contains(string(readme), row+" `") {
			t.Errorf("README.md row for %s shows no default", name)
		}
	}
}

// reflectDefault reports whether a variable has a default tag.
func reflectDefault(name string) (string, bool) {
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		if tag := typ.Field(i).Tag; tag.Get("envconfig") == name {
			def, ok := tag.Lookup("default")
			return def, ok && def != ""
		}
	}
	return "", false
}

// FuzzLoadConfig feeds arbitrary values to variables of each type: LoadConfig must not panic,
// and a refusal is one line naming the variable.
func FuzzLoadConfig(f *testing.F) {
	f.Add("10000", "100MiB", "1m", "auto", "_INBOX.>")
	f.Add("-1", "3GiB", "-5s", "yes", "")
	f.Add("9999999999999999999", "1.5MiB", "1h1h", "true", ",,,")
	f.Fuzz(func(t *testing.T, requests, bytes, wait, durable, allow string) {
		cleanEnv(t)
		vars := map[string]string{
			"GEMBATCH_BATCH_MAX_REQUESTS": requests, "GEMBATCH_BATCH_MAX_BYTES": bytes,
			"GEMBATCH_BATCH_MAX_WAIT": wait, "GEMBATCH_DURABLE": durable, "GEMBATCH_REPLY_ALLOW": allow,
		}
		for k, v := range vars {
			if strings.ContainsRune(v, 0) {
				return // the environment cannot hold NUL
			}
			t.Setenv(k, v)
		}
		_, err := LoadConfig()
		if err == nil {
			return
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") || !strings.Contains(msg, "GEMBATCH_") {
			t.Fatalf("refusal %q is not one line naming a variable", msg)
		}
	})
}

// cleanEnv unsets every GEMBATCH_* variable and GEMINI_API_KEY for the test (restored after it),
// so that what the shell or CI exports does not change what LoadConfig sees.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "GEMBATCH_") || k == "GEMINI_API_KEY" {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

// TestOnlyPrefixedVariablesAreRead: common names in a pod's environment (LOG_LEVEL, STREAM,
// QUEUE...) must not change the configuration; only GEMBATCH_* and GEMINI_API_KEY count.
func TestOnlyPrefixedVariablesAreRead(t *testing.T) {
	cleanEnv(t)
	for k, v := range map[string]string{
		"LOG_LEVEL": "banana", "LOG_FORMAT": "xml", "STREAM": "OTHER", "QUEUE": "other", "INSTANCE": "pod-7",
		"CONSUMER": "other", "NATS_URL": "nats://elsewhere:4222", "BATCH_MAX_WAIT": "5s", "GEMINI_API_KEY_FILE": "/nonexistent",
	} {
		t.Setenv(k, v)
	}
	c, err := LoadConfig()
	if err != nil {
		t.Fatalf("unprefixed variables changed the outcome: %v", err)
	}
	want := Defaults()
	if c.LogLevel != want.LogLevel || c.LogFormat != want.LogFormat || c.Stream != want.Stream || c.Queue != want.Queue ||
		c.Instance != "" || c.Consumer != want.Consumer || c.NATSURL != want.NATSURL || c.BatchMaxWait != want.BatchMaxWait {
		t.Fatalf("unprefixed variables were read: %+v", c)
	}
	t.Setenv("GEMINI_API_KEY", "from-the-sdk-variable")
	if c, err := LoadConfig(); err != nil || c.GeminiAPIKey != "from-the-sdk-variable" {
		t.Fatalf("GEMINI_API_KEY not read: %v", err)
	}
}

// TestUnknownVariableIsRefused: a misspelt GEMBATCH_* variable stops start-up with one line
// naming it and the closest known name; the variables Kubernetes sets for a Service named
// gembatch are not mistakes.
func TestUnknownVariableIsRefused(t *testing.T) {
	for _, tt := range []struct{ env, want string }{
		{"GEMBATCH_BATCH_MAX_WIAT", "GEMBATCH_BATCH_MAX_WIAT is not a gembatchd variable; did you mean GEMBATCH_BATCH_MAX_WAIT?"},
		{"GEMBATCH_LOGLEVEL", "did you mean GEMBATCH_LOG_LEVEL?"},
		{"GEMBATCH_API_KEY", "did you mean GEMBATCH_GEMINI_API_KEY?"},
	} {
		t.Run(tt.env, func(t *testing.T) {
			cleanEnv(t)
			t.Setenv(tt.env, "1")
			_, err := LoadConfig()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadConfig() error = %v, want %q", err, tt.want)
			}
		})
	}
	t.Run("kubernetes service links", func(t *testing.T) {
		cleanEnv(t)
		for _, k := range []string{"GEMBATCH_SERVICE_HOST", "GEMBATCH_SERVICE_PORT", "GEMBATCH_SERVICE_PORT_METRICS",
			"GEMBATCH_PORT", "GEMBATCH_PORT_9090_TCP", "GEMBATCH_PORT_9090_TCP_ADDR", "GEMBATCH_PORT_9090_TCP_PORT", "GEMBATCH_PORT_9090_TCP_PROTO"} {
			t.Setenv(k, "10.0.0.1")
		}
		t.Setenv("GEMBATCH_FAILPOINT", "") // read by the crash tests' failpoints
		if _, err := LoadConfig(); err != nil {
			t.Fatal(err)
		}
	})
}
