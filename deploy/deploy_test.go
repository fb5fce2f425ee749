// Package deploy_test checks deploy/ against the daemon: every metric the alert rules and the
// Grafana dashboard query is exposed by a gembatchd that served real traffic, the exposition is
// clean under promlint (what `promtool check metrics` runs), the docs cover every metric and
// alert, and the Kubernetes configuration names only real variables.
//
// With GEMBATCH_METRICS_OUT set, TestMetrics writes the daemon's /metrics there, for
// `promtool check metrics` in .ci/deploy-check.
package deploy_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/stacktest"
)

const (
	dashboardFile = "grafana/gembatch.json"
	rulesFile     = "prometheus/gembatch-rules.yaml"
	rulesTestFile = "prometheus/gembatch-rules.test.yaml"
)

// planned are metrics the dashboard already shows that the daemon does not export yet. A name
// here that the daemon does export fails the test: take it off the list.
var planned = map[string]bool{}

var (
	metricName = regexp.MustCompile(`\bgembatch_[a-z_]*[a-z]`)
	selector   = regexp.MustCompile(`\b([a-z_]+)\{([^}]*)\}`)
	matcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	alertLine  = regexp.MustCompile(`(?m)^\s*-\s*alert:\s*(\S+)\s*$`)
)

// TestMetrics runs gembatchd in-process with real traffic and checks its /metrics against the
// rules and the dashboard.
func TestMetrics(t *testing.T) {
	families := scrape(t)

	if out := os.Getenv("GEMBATCH_METRICS_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(families.text), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("promlint", func(t *testing.T) {
		problems, err := promlint.New(strings.NewReader(families.text)).Lint()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	})

	for _, file := range []string{rulesFile, rulesTestFile, dashboardFile} {
		t.Run(file, func(t *testing.T) {
			text := read(t, file)
			for _, name := range uniq(metricName.FindAllString(text, -1)) {
				if planned[name] {
					if families.has(name) {
						t.Errorf("%s is exported now: take it off the planned list", name)
					}
					continue
				}
				if !families.has(name) {
					t.Errorf("%s is not exported by gembatchd", name)
				}
			}
			checkLabels(t, families, text)
		})
	}

	t.Run("dashboard standard metrics", func(t *testing.T) {
		std := regexp.MustCompile(`\b(?:process|go)_[a-z_]*[a-z]`)
		for _, expr := range dashboardExprs(t) {
			for _, name := range std.FindAllString(expr, -1) {
				if !families.has(name) {
					t.Errorf("%s (in %q) is not exported by gembatchd", name, expr)
				}
			}
		}
	})

	t.Run("documented", func(t *testing.T) {
		docs := operatingDocs(t)
		for name := range families.byName {
			if strings.HasPrefix(name, "gembatch_") && !strings.Contains(docs, "`"+name+"`") {
				t.Errorf("metric %s is not in the Operating docs' metrics table", name)
			}
		}
		for name := range planned {
			if !strings.Contains(docs, "`"+name+"`") {
				t.Errorf("planned metric %s is not in the Operating docs", name)
			}
		}
	})
}

// exposition is a parsed /metrics.
type exposition struct {
	text   string
	byName map[string]*dto.MetricFamily
}

// has reports whether name is a family, or a histogram's or summary's _bucket, _sum or _count.
func (e exposition) has(name string) bool {
	if _, ok := e.byName[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if mf, ok := e.byName[base]; ok && (mf.GetType() == dto.MetricType_HISTOGRAM || mf.GetType() == dto.MetricType_SUMMARY) {
			return suffix != "_bucket" || mf.GetType() == dto.MetricType_HISTOGRAM
		}
	}
	return false
}

// labels are the label names of a family (for a _bucket also "le").
func (e exposition) labels(name string) map[string]bool {
	out := map[string]bool{}
	mf := e.byName[name]
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && mf == nil && e.byName[base] != nil {
			mf = e.byName[base]
			out["le"] = suffix == "_bucket"
		}
	}
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			out[l.GetName()] = true
		}
	}
	return out
}

// checkLabels checks that each gembatch_* selector in text matches on labels the metric has
// (the target labels job and instance aside).
func checkLabels(t *testing.T, e exposition, text string) {
	t.Helper()
	for _, m := range selector.FindAllStringSubmatch(text, -1) {
		name := m[1]
		if !strings.HasPrefix(name, "gembatch_") || planned[name] || !e.has(name) {
			continue
		}
		have := e.labels(name)
		for _, l := range matcher.FindAllStringSubmatch(m[2], -1) {
			if l[1] == "job" || l[1] == "instance" || l[1] == "__name__" {
				continue
			}
			if !have[l[1]] {
				t.Errorf("%s has no label %q (selector %s)", name, l[1], m[0])
			}
		}
	}
}

// scrape starts NATS, the emulator and gembatchd in-process, sends traffic that reaches every
// stage (inline and file batches, a rejected request, an API fault the client retries), waits for
// every reply and returns the daemon's /metrics.
func scrape(t *testing.T) exposition {
	t.Helper()
	cfg := stacktest.Config()
	cfg.InlineMaxBytes = 4 << 10 // the big request's batch goes by file
	cfg.ReplyAllow = []string{"test.>"}
	st := stacktest.Start(t, cfg, emulator.Options{
		JobDelay: 200 * time.Millisecond,
		// One failed upload chunk: the client retries it, so the retry metrics have a series.
		Faults: emulator.Faults{UploadChunkFailures: 1},
	})
	m := st.Main

	nc, err := nats.Connect(st.NATS.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	var mu sync.Mutex
	replies := map[string]string{}
	if _, err := nc.Subscribe("test.reply.>", func(msg *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		replies[msg.Header.Get("Gembatch-Key")] = msg.Header.Get("Gembatch-Status")
	}); err != nil {
		t.Fatal(err)
	}

	generate := func(text string) string {
		b, _ := json.Marshal(text)
		return `{"contents":[{"role":"user","parts":[{"text":` + string(b) + `}]}]}`
	}
	requests := []struct{ subject, key, model, body, status string }{
		{"gembatch.generate", "g1", "gemini-2.5-flash", generate("one"), "ok"},
		{"gembatch.generate", "g2", "gemini-2.5-flash", generate("two"), "ok"},
		{"gembatch.generate", "g3", "gemini-2.5-flash", generate("three"), "ok"},
		{"gembatch.generate", "big", "gemini-2.5-pro", generate(strings.Repeat("a long prompt ", 800)), "ok"},
		{"gembatch.embed", "e1", "gemini-embedding-001", `{"content":{"parts":[{"text":"embed me"}]}}`, "ok"},
		{"gembatch.generate", "bad", "", `not json`, "error"},
	}
	for _, r := range requests {
		msg := nats.NewMsg(r.subject)
		msg.Reply = "test.reply." + r.key
		msg.Data = []byte(r.body)
		msg.Header.Set("Gembatch-Key", r.key)
		if r.model != "" {
			msg.Header.Set("Gembatch-Model", r.model)
		}
		if err := nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	deadline := sent.Add(60 * time.Second)
	for {
		mu.Lock()
		n := len(replies)
		mu.Unlock()
		if n == len(requests) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d requests answered after 60s: %v", n, len(requests), replies)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("every request answered after %s", time.Since(sent).Round(time.Millisecond))
	mu.Lock()
	for _, r := range requests {
		if replies[r.key] != r.status {
			t.Errorf("request %s answered %q, want %q", r.key, replies[r.key], r.status)
		}
	}
	mu.Unlock()

	// A batch is counted as replied just after its last reply goes out.
	var e exposition
	for range 50 {
		e = get(t, "http://"+m.MetricsAddr+"/metrics")
		if e.has("gembatch_publisher_batches_replied_total") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return e
}

func get(t *testing.T, url string) exposition {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	byName, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return exposition{text: string(body), byName: byName}
}

// TestDashboard checks the dashboard's structure: a datasource variable used by every query,
// unique panel ids, panels within the grid.
func TestDashboard(t *testing.T) {
	var d struct {
		UID           string `json:"uid"`
		SchemaVersion int    `json:"schemaVersion"`
		Templating    struct {
			List []struct{ Name, Type string } `json:"list"`
		} `json:"templating"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal([]byte(read(t, dashboardFile)), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || d.SchemaVersion < 36 {
		t.Errorf("uid %q, schemaVersion %d", d.UID, d.SchemaVersion)
	}
	if !slices.ContainsFunc(d.Templating.List, func(v struct{ Name, Type string }) bool {
		return v.Name == "datasource" && v.Type == "datasource"
	}) {
		t.Error("no datasource variable")
	}
	ids := map[int]bool{}
	queries := 0
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.X < 0 || p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H <= 0 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || len(p.Targets) == 0 {
			t.Errorf("panel %d %q has no title or no query", p.ID, p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			if tg.Datasource.UID != "${datasource}" || tg.Expr == "" {
				t.Errorf("panel %q: query %s has datasource %q, expr %q", p.Title, tg.RefID, tg.Datasource.UID, tg.Expr)
			}
		}
	}
	if queries < 20 {
		t.Errorf("only %d queries", queries)
	}
}

type panel struct {
	ID      int                      `json:"id"`
	Type    string                   `json:"type"`
	Title   string                   `json:"title"`
	GridPos struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		RefID      string `json:"refId"`
		Expr       string `json:"expr"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	} `json:"targets"`
}

// TestDashboardShowsCostAndSaving: README's Cost section says the dashboard has a panel for
// what the answers cost and one for what batching saved.
func TestDashboardShowsCostAndSaving(t *testing.T) {
	for _, metric := range []string{"gembatch_publisher_cost_usd_total", "gembatch_publisher_cost_saved_usd_total"} {
		if !slices.ContainsFunc(dashboardExprs(t), func(e string) bool { return strings.Contains(e, metric+"{") }) {
			t.Errorf("no dashboard query of %s", metric)
		}
	}
}

func dashboardExprs(t *testing.T) []string {
	t.Helper()
	var d struct{ Panels []panel }
	if err := json.Unmarshal([]byte(read(t, dashboardFile)), &d); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	return out
}

// TestAlertsDocumented checks that each alert has a section in the Operating docs, which its
// runbook_url points to.
func TestAlertsDocumented(t *testing.T) {
	rules := read(t, rulesFile)
	docs := operatingDocs(t)
	alerts := alertLine.FindAllStringSubmatch(rules, -1)
	if len(alerts) == 0 {
		t.Fatal("no alerts found")
	}
	tests := read(t, rulesTestFile)
	for _, a := range alerts {
		name := a[1]
		if !regexp.MustCompile(`(?m)^#+ ` + name + `$`).MatchString(docs) {
			t.Errorf("alert %s has no heading in the Operating docs", name)
		}
		if !strings.Contains(rules, "#"+strings.ToLower(name)+"\n") {
			t.Errorf("alert %s: runbook_url does not point to #%s", name, strings.ToLower(name))
		}
		if !strings.Contains(tests, "alertname: "+name+"\n") {
			t.Errorf("alert %s has no unit test in %s", name, rulesTestFile)
		}
	}
}

// TestKubernetesConfig checks that the ConfigMap sets only variables gembatchd reads and that
// the pod's termination grace period covers GEMBATCH_SHUTDOWN_GRACE.
func TestKubernetesConfig(t *testing.T) {
	known := map[string]bool{}
	for _, name := range daemon.Variables() {
		known[name] = true
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(read(t, "kubernetes/base/config.env")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		vars[k] = v
	}
	overlay := regexp.MustCompile(`(?m)^\s*-\s*(GEMBATCH_[A-Z_]+)=(.*)$`)
	for _, m := range overlay.FindAllStringSubmatch(read(t, "kubernetes/overlays/example/kustomization.yaml"), -1) {
		vars[m[1]] = m[2]
	}
	for k := range vars {
		if !known[k] {
			t.Errorf("%s is not a gembatchd variable", k)
		}
	}

	grace, err := time.ParseDuration(vars["GEMBATCH_SHUTDOWN_GRACE"])
	if err != nil {
		t.Fatalf("GEMBATCH_SHUTDOWN_GRACE: %v", err)
	}
	m := regexp.MustCompile(`terminationGracePeriodSeconds: (\d+)`).FindStringSubmatch(read(t, "kubernetes/base/deployment.yaml"))
	if m == nil {
		t.Fatal("deployment.yaml sets no terminationGracePeriodSeconds")
	}
	period, _ := strconv.Atoi(m[1])
	if time.Duration(period)*time.Second < grace+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds %d leaves under 5s over GEMBATCH_SHUTDOWN_GRACE %s", period, grace)
	}
}

// operatingDocs is the README's Operating section.
func operatingDocs(t *testing.T) string {
	t.Helper()
	readme := read(t, "../README.md")
	i := strings.Index(readme, "\n## Operating")
	if i < 0 {
		t.Fatal("README.md has no Operating section")
	}
	return readme[i:]
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func uniq(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// TestComposeFiles checks that the files compose.yaml mounts and builds from exist, and that
// Prometheus scrapes the compose service under the job the rules select.
func TestComposeFiles(t *testing.T) {
	compose := read(t, "compose.yaml")
	mounts := regexp.MustCompile(`(?m)^\s*-\s*(\./[^:]+):`).FindAllStringSubmatch(compose, -1)
	if len(mounts) < 4 {
		t.Fatalf("found %d bind mounts in compose.yaml", len(mounts))
	}
	for _, m := range mounts {
		if _, err := os.Stat(m[1]); err != nil {
			t.Errorf("compose.yaml mounts %s: %v", m[1], err)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^\s*dockerfile:\s*(\S+)`).FindAllStringSubmatch(compose, -1) {
		if _, err := os.Stat("../" + m[1]); err != nil {
			t.Errorf("compose.yaml builds from %s: %v", m[1], err)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^\s*target:\s*(\S+)`).FindAllStringSubmatch(compose, -1) {
		if !regexp.MustCompile(`(?m)^FROM .* AS ` + m[1] + `$`).MatchString(read(t, "Dockerfile")) {
			t.Errorf("compose.yaml builds target %s, which the Dockerfile lacks", m[1])
		}
	}
	prom := read(t, "compose/prometheus/prometheus.yml")
	if !strings.Contains(prom, "job_name: gembatch\n") || !strings.Contains(prom, `"gembatchd:9090"`) {
		t.Error(`compose Prometheus does not scrape gembatchd:9090 as job "gembatch"`)
	}
}

// TestMetricsFromStart: every metric in the README's metrics table is on /metrics of a daemon
// that has served nothing yet, so that dashboards and absent() alerts work from the start.
func TestMetricsFromStart(t *testing.T) {
	st := stacktest.Start(t, stacktest.Config(), emulator.Options{})
	e := get(t, "http://"+st.Main.MetricsAddr+"/metrics")
	docs := operatingDocs(t)
	table := docs[strings.Index(docs, "### Metrics"):]
	table = table[:strings.Index(table, "\n### ")]
	row := regexp.MustCompile("(?m)^\\| `(gembatch_[a-z_]+)` \\|")
	names := row.FindAllStringSubmatch(table, -1)
	if len(names) < 40 {
		t.Fatalf("found %d metrics in the README's table", len(names))
	}
	for _, m := range names {
		if !e.has(m[1]) {
			t.Errorf("%s is documented but not on /metrics of a fresh daemon", m[1])
		}
	}
	// The metrics table sends readers to the Replies section for the refusal reasons.
	readme := read(t, "../README.md")
	replies := readme[strings.Index(readme, "### Replies"):]
	replies = replies[:strings.Index(replies, "\n### ")]
	for _, s := range e.byName["gembatch_intake_requests_rejected_total"].GetMetric() {
		for _, l := range s.GetLabel() {
			if l.GetName() == "reason" && !strings.Contains(replies, "| `"+l.GetValue()+"` |") {
				t.Errorf("refusal reason %q has no row under README's Replies", l.GetValue())
			}
		}
	}
}
