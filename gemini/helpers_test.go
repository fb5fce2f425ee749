package gemini_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/metrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testKey = "test-key-5f1c0e"

// fastRetry keeps unit tests quick while still going through the backoff path.
var fastRetry = gemini.RetryPolicy{MaxAttempts: 4, Initial: time.Millisecond, Max: 4 * time.Millisecond}

// newClient returns a client for base with fast retries and its own metrics registry.
func newClient(base string, opts ...gemini.Option) (*gemini.Client, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	all := []gemini.Option{gemini.WithBaseURL(base), gemini.WithRetry(fastRetry), gemini.WithMetrics(gemini.NewMetrics(reg))}
	return gemini.New(testKey, append(all, opts...)...), reg
}

// serve starts h on a loopback server that closes at the end of the test.
func serve(t testing.TB, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// handlerTransport serves requests in-process, with no sockets, so that a testing/synctest
// bubble can advance its clock through the client's waits.
type handlerTransport struct{ h http.Handler }

func (ht handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		defer r.Body.Close()
	}
	if err := r.Context().Err(); err != nil {
		return nil, err
	}
	rec := httptest.NewRecorder()
	ht.h.ServeHTTP(rec, r)
	if err := r.Context().Err(); err != nil {
		return nil, err // the attempt ended while the handler ran
	}
	return rec.Result(), nil
}

// inProcess returns a client whose requests h serves in-process.
func inProcess(h http.HandlerFunc, opts ...gemini.Option) (*gemini.Client, *prometheus.Registry) {
	opts = append([]gemini.Option{gemini.WithHTTPClient(&http.Client{Transport: handlerTransport{h}})}, opts...)
	return newClient("http://gemini.test", opts...)
}

// metric returns a counter's value, or a histogram's sample count, for the given labels.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	v, err := metrics.Sum(reg, name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// writeJSON answers with status and a JSON body.
func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

const opJSON = `{"name":"batches/abc","metadata":{"name":"batches/abc","state":"BATCH_STATE_RUNNING"}}`
