package daemon

import (
	"fmt"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// readElsewhere are GEMBATCH_* variables gembatchd reads outside Config (internal/failpoint and
// internal/clock, for the fault tests), or that the project's test runs set around it and it
// must let pass: gembatchd runs in those tests' environment.
var readElsewhere = []string{"GEMBATCH_FAILPOINT", "GEMBATCH_TEST_CLOCK_OFFSET",
	"GEMBATCH_FAULT_REPORT", "GEMBATCH_FAULT_SEED", "GEMBATCH_FAULT_TRIALS", "GEMBATCH_FAULT_LOGS", "GEMBATCH_TEST_RUN"}

// serviceLink matches the variables Kubernetes sets in every pod for a Service named gembatch
// (GEMBATCH_SERVICE_HOST, GEMBATCH_PORT_9090_TCP_ADDR...): not the user's mistakes.
var serviceLink = regexp.MustCompile(`^GEMBATCH_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(ADDR|PORT|PROTO))?)?)$`)

// Variables lists the name of every variable in Config.
func Variables() []string {
	typ := reflect.TypeFor[Config]()
	out := make([]string, 0, typ.NumField())
	for i := range typ.NumField() {
		out = append(out, typ.Field(i).Tag.Get("envconfig"))
	}
	return out
}

// checkNames refuses a GEMBATCH_* variable gembatchd does not know, naming the closest one it
// does: a typo silently ignored leaves a setting at its default.
func checkNames(environ []string) error {
	known := append(Variables(), readElsewhere...)
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, Prefix+"_") || slices.Contains(known, name) || serviceLink.MatchString(name) {
			continue
		}
		return fmt.Errorf("%s is not a gembatchd variable; did you mean %s? (gembatchd --help lists them)", name, closest(name, known))
	}
	return nil
}

// closest is the name in names most like s: the shortest that contains what s has after the
// prefix (GEMBATCH_API_KEY: GEMBATCH_GEMINI_API_KEY), else the one at the least edit distance.
func closest(s string, names []string) string {
	part := strings.TrimPrefix(s, Prefix+"_")
	best, bestContains, bestD := "", false, 0
	for _, n := range names {
		contains, d := strings.Contains(n, part), editDistance(s, n)
		if contains {
			d = len(n)
		}
		if best == "" || (contains && !bestContains) || (contains == bestContains && d < bestD) {
			best, bestContains, bestD = n, contains, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b (bytes: the names are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var (
	// natsPattern is a subscription subject: tokens, "*" for one, a last ">" for the rest.
	natsPattern = regexp.MustCompile(`^(>|([^.\s*>]+|\*)(\.([^.\s*>]+|\*))*(\.>)?)$`)
	noSpace     = regexp.MustCompile(`^\S+$`)
)

// validateNames checks the addresses, URLs, subjects and names, which otherwise fail only once
// gembatchd connects (or, for the metrics address, after it has).
func (c *Config) validateNames(bad func(name, format string, args ...any) error) error {
	if err := checkListenAddr(c.MetricsAddr); err != nil {
		return bad("METRICS_ADDR", "%q is not host:port (e.g. :9090 or 127.0.0.1:9090): %v", c.MetricsAddr, err)
	}
	for u := range strings.SplitSeq(c.NATSURL, ",") {
		if !natsURL(strings.TrimSpace(u)) {
			return bad("NATS_URL", "%q is not a NATS URL (nats://host:4222, tls://, ws:// or wss://)", redactURL(u))
		}
	}
	if u, err := url.Parse(c.GeminiBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return bad("GEMINI_BASE_URL", "%q is not an http(s) URL", c.GeminiBaseURL)
	}
	for _, s := range []struct{ name, value string }{
		{"SUBJECT_GENERATE", c.SubjectGenerate}, {"SUBJECT_EMBED", c.SubjectEmbed}, {"STREAM_SUBJECT", c.StreamSubject},
	} {
		if !natsSubject.MatchString(s.value) {
			return bad(s.name, "%q is not a subject to publish to (no spaces or wildcards)", s.value)
		}
	}
	for _, s := range []struct{ name, value string }{{"SUBJECT_GENERATE", c.SubjectGenerate}, {"SUBJECT_EMBED", c.SubjectEmbed}} {
		if strings.HasPrefix(s.value, c.StreamSubject+".") {
			return bad(s.name, "%q is under %s_STREAM_SUBJECT (%s.>), where requests are stored: each would be taken twice", s.value, Prefix, c.StreamSubject)
		}
	}
	for _, p := range c.ReplyAllow {
		if !natsPattern.MatchString(p) {
			return bad("REPLY_ALLOW", "%q is not a subject pattern", p)
		}
	}
	if !noSpace.MatchString(c.Queue) {
		return bad("QUEUE", "%q is not a queue group name (no spaces)", c.Queue)
	}
	for _, b := range []struct{ name, value string }{{"RECORDS_BUCKET", c.RecordsBucket}, {"REQUESTS_BUCKET", c.RequestsBucket}, {"BODIES_BUCKET", c.BodiesBucket}, {"RESULTS_BUCKET", c.ResultsBucket}, {"LEASES_BUCKET", c.LeasesBucket}} {
		if !natsName.MatchString(b.value) {
			return bad(b.name, "%q is not a bucket name (letters, digits, - and _)", b.value)
		}
	}
	if c.BodiesBucket == c.RequestsBucket {
		return bad("BODIES_BUCKET", "must differ from REQUESTS_BUCKET (%q): producers write to it", c.RequestsBucket)
	}
	return nil
}

// checkListenAddr accepts what net.Listen("tcp", addr) takes: host:port with a port number.
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

// natsURL accepts a server URL as nats.go does: a scheme it speaks (nats:// when none), a host.
func natsURL(s string) bool {
	if !strings.Contains(s, "://") {
		s = "nats://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Hostname() == "" {
		return false
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return false
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return false
		}
	}
	return true
}
