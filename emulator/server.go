package emulator

import (
	"cmp"
	"crypto/subtle"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
)

// Limits of the real service, used when Options leaves them zero.
const (
	DefaultInlineMaxBytes = 20 << 20 // 20 MiB: the largest inline create body
	DefaultFileMaxBytes   = 2 << 30  // 2 GiB: the largest uploaded file
)

// Options configures a Server. The zero value is a working emulator whose jobs end at once.
type Options struct {
	// APIKey, if set, must come with every request (x-goog-api-key header or ?key=).
	// A missing key answers 403 PERMISSION_DENIED, a wrong one 400 INVALID_ARGUMENT, as the
	// service does. If empty, any key or none is accepted.
	APIKey string
	// JobDelay is how long a job takes from create to its end: PENDING for the first half,
	// RUNNING for the second. Zero ends a job on the first read after its create.
	JobDelay time.Duration
	// InlineMaxBytes caps a create body (default 20 MiB); a larger one answers 400.
	InlineMaxBytes int64
	// FileMaxBytes caps an uploaded file (default 2 GiB); a larger one answers 400.
	FileMaxBytes int64
	// Faults are the injected failures at start; SetFaults changes them later.
	Faults Faults
	// Logger gets one debug line per request. The zero Logger logs nothing.
	Logger zerolog.Logger
	// ImageBytes is the size, about, of the PNG answered to a request whose
	// generationConfig.responseModalities holds IMAGE (default DefaultImageBytes).
	ImageBytes int
	// BaseURL is the public URL that upload URLs and file URIs are built on.
	// If empty, it is taken from each request's Host.
	BaseURL string
}

// Server is the emulated Batch and File API. It is an http.Handler; create it with New and
// release its temporary files with Close.
type Server struct {
	opts   Options
	log    zerolog.Logger
	dir    string
	now    func() time.Time
	routes map[string]methods

	mu      sync.Mutex
	closed  bool
	faults  Faults
	rng     *rand.Rand // draws for the rate faults, seeded by Faults.Seed
	seq     int64      // creation order of batches and files, for listing
	batches map[string]*batch
	files   map[string]*file
	uploads map[string]*upload
	creates map[string]int
	// calls counts the requests routed, by "METHOD route", for tests of how much a client asks.
	calls map[string]int

	directed   map[string]int   // times each request text with a counted error directive was answered
	throttled  int              // creates answered 429, any cause
	peakActive int              // most jobs active at once, measured at each create
	peakTokens map[string]int64 // most estimated tokens active at once, per model

	billing billing // every answer billed, by request
}

// New returns a Server. It panics if it cannot make its temporary directory, as
// httptest.NewServer panics when it cannot listen.
func New(opts Options) *Server {
	if opts.InlineMaxBytes <= 0 {
		opts.InlineMaxBytes = DefaultInlineMaxBytes
	}
	if opts.FileMaxBytes <= 0 {
		opts.FileMaxBytes = DefaultFileMaxBytes
	}
	if opts.ImageBytes <= 0 {
		opts.ImageBytes = DefaultImageBytes
	}
	opts.ImageBytes = min(opts.ImageBytes, MaxImageBytes)
	opts.BaseURL = strings.TrimSuffix(opts.BaseURL, "/")
	dir, err := os.MkdirTemp("", "gemini-emulator-")
	if err != nil {
		panic(fmt.Sprintf("emulator: temporary directory: %v", err))
	}
	s := &Server{
		opts:    opts,
		log:     opts.Logger,
		dir:     dir,
		now:     time.Now,
		batches: make(map[string]*batch),
		files:   make(map[string]*file),
		uploads: make(map[string]*upload),
		creates: make(map[string]int),
		calls:   make(map[string]int),

		directed:   make(map[string]int),
		peakTokens: make(map[string]int64),
	}
	s.routes = map[string]methods{
		"/v1beta/models/{}:batchGenerateContent": {http.MethodPost: func(w http.ResponseWriter, r *http.Request, model string) {
			s.createBatch(w, r, model, gemini.KindGenerate)
		}},
		"/v1beta/models/{}:asyncBatchEmbedContent": {http.MethodPost: func(w http.ResponseWriter, r *http.Request, model string) {
			s.createBatch(w, r, model, gemini.KindEmbed)
		}},
		"/v1beta/batches":           {http.MethodGet: s.listBatches},
		"/v1beta/batches/{}":        {http.MethodGet: s.getBatch, http.MethodDelete: s.deleteBatch},
		"/v1beta/batches/{}:cancel": {http.MethodPost: s.cancelBatch},
		"/v1beta/batches/{}:updateGenerateContentBatch": {http.MethodPatch: func(w http.ResponseWriter, r *http.Request, id string) {
			s.updateBatch(w, r, id, gemini.KindGenerate)
		}},
		"/v1beta/batches/{}:updateEmbedContentBatch": {http.MethodPatch: func(w http.ResponseWriter, r *http.Request, id string) {
			s.updateBatch(w, r, id, gemini.KindEmbed)
		}},
		"/upload/v1beta/files":               {http.MethodPost: s.upload},
		"/v1beta/files":                      {http.MethodGet: s.listFiles},
		"/v1beta/files/{}":                   {http.MethodGet: s.getFile, http.MethodDelete: s.deleteFile},
		"/v1beta/files/{}:download":          {http.MethodGet: s.download},
		"/download/v1beta/files/{}:download": {http.MethodGet: s.download},
		"/emulator/ledger":                   {http.MethodGet: s.ledger},
	}
	s.SetFaults(opts.Faults)
	return s
}

// Close removes the temporary files. Requests after Close answer 503. It is safe to call twice.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if err := os.RemoveAll(s.dir); err != nil {
		s.log.Warn().Err(err).Msg("remove temporary directory")
	}
}

// Creates reports how many batches were created with displayName, counting creates whose
// answer was lost (Faults.LoseCreateAnswers): it proves whether a client created twice.
func (s *Server) Creates(displayName string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.creates[displayName]
}

// CreateCounts returns how many batches were created per display name.
func (s *Server) CreateCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	counts := make(map[string]int, len(s.creates))
	for name, n := range s.creates {
		counts[name] = n
	}
	return counts
}

// Throttled reports how many creates were answered 429 RESOURCE_EXHAUSTED, whether by
// Faults.CreateThrottleRate or by a quota (Faults.MaxActiveJobs, Faults.EnqueuedTokenLimit).
func (s *Server) Throttled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.throttled
}

// PeakActive reports the most jobs that were active (PENDING or RUNNING) at once, as counted at
// each create, the only moment the count can grow.
func (s *Server) PeakActive() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peakActive
}

// PeakEnqueuedTokens reports the most estimated tokens that the active jobs of model held at
// once, as counted at each create. Tokens are estimated as with Faults.EnqueuedTokenLimit; the
// model may be given with or without "models/".
func (s *Server) PeakEnqueuedTokens(model string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peakTokens[gemini.ModelName(model)]
}

// Batches returns every batch not deleted, oldest first, as batches.get would answer now.
func (s *Server) Batches() []gemini.Operation {
	now := s.now()
	s.mu.Lock()
	all := make([]*batch, 0, len(s.batches))
	for _, b := range s.batches {
		all = append(all, b)
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(a, b *batch) int { return cmp.Compare(a.seq, b.seq) })
	ops := make([]gemini.Operation, len(all))
	for i, b := range all {
		ops[i] = s.view(b, now)
	}
	return ops
}

// methods maps an HTTP method to the handler of one route; the handler gets the name in the path.
type methods map[string]func(w http.ResponseWriter, r *http.Request, name string)

// ServeHTTP routes a request and logs it at debug level. The query is not logged: it may hold the key.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w, status: http.StatusOK}
	s.serve(rec, r)
	s.log.Debug().Str("method", r.Method).Str("path", r.URL.Path).Int("status", rec.status).
		Int64("bytes", rec.bytes).Float64("took_seconds", time.Since(start).Seconds()).Msg("request")
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		writeError(w, http.StatusServiceUnavailable, gemini.CodeUnavailable, "The emulator is shutting down.")
		return
	}
	if !s.authorized(w, r) {
		return
	}
	key, name := routeKey(canonicalPath(r.URL.Path))
	route, ok := s.routes[key]
	if !ok || (strings.Contains(key, "{}") && name == "") {
		writeError(w, http.StatusNotFound, gemini.CodeNotFound, "No route for %s %s.", r.Method, r.URL.Path)
		return
	}
	h, ok := route[r.Method]
	if !ok {
		allow := slices.Sorted(maps.Keys(route))
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, gemini.CodeUnimplemented, "Method %s is not allowed on %s.", r.Method, r.URL.Path)
		return
	}
	s.mu.Lock()
	s.calls[r.Method+" "+key]++
	s.mu.Unlock()
	h(w, r, name)
}

// Calls is how many requests the emulator routed to one method and route, the route written
// as in v1beta with {} for a name: Calls("GET", "/v1beta/batches") counts list calls.
func (s *Server) Calls(method, route string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method+" "+route]
}

// apiVersions are the version prefixes the official SDKs use: Python and Go send v1beta,
// @google/genai 3.x sends v1 by default, and all three can be told v1alpha. The emulator
// answers the same API under each; its routes are written with v1beta.
var apiVersions = []string{"v1beta", "v1", "v1alpha"}

// canonicalPath turns "/v1/batches", "/upload/v1alpha/files", ... into their v1beta form.
func canonicalPath(path string) string {
	for _, area := range []string{"/", "/upload/", "/download/"} {
		rest, ok := strings.CutPrefix(path, area)
		if !ok {
			continue
		}
		version, tail, _ := strings.Cut(rest, "/")
		if version != "v1beta" && slices.Contains(apiVersions, version) {
			return area + "v1beta/" + tail
		}
	}
	return path
}

// apiVersion is the version prefix a request came with ("v1beta" when none is known), so that
// the URLs the emulator hands out keep to the client's version.
func apiVersion(path string) string {
	for _, area := range []string{"/", "/upload/", "/download/"} {
		if rest, ok := strings.CutPrefix(path, area); ok {
			if version, _, _ := strings.Cut(rest, "/"); slices.Contains(apiVersions, version) {
				return version
			}
		}
	}
	return "v1beta"
}

// collections are the paths whose last segment is a resource name, optionally with a ":verb".
var collections = []string{"/v1beta/models", "/v1beta/batches", "/v1beta/files", "/download/v1beta/files"}

// routeKey turns "/v1beta/batches/abc:cancel" into ("/v1beta/batches/{}:cancel", "abc").
// ServeMux patterns cannot match a segment with a ":verb" suffix, hence this.
func routeKey(path string) (key, name string) {
	i := strings.LastIndexByte(path, '/')
	if i < 0 || !slices.Contains(collections, path[:i]) {
		return path, ""
	}
	name, verb, hasVerb := strings.Cut(path[i+1:], ":")
	key = path[:i] + "/{}"
	if hasVerb {
		key += ":" + verb
	}
	return key, name
}

func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	if s.opts.APIKey == "" {
		return true
	}
	key := r.Header.Get("X-Goog-Api-Key")
	if key == "" {
		key = r.URL.Query().Get("key")
	}
	switch {
	case key == "":
		writeError(w, http.StatusForbidden, gemini.CodePermissionDenied,
			"Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.")
		return false
	case subtle.ConstantTimeCompare([]byte(key), []byte(s.opts.APIKey)) != 1:
		writeError(w, http.StatusBadRequest, gemini.CodeInvalidArgument, "API key not valid. Please pass a valid API key.")
		return false
	}
	return true
}

// baseURL is where clients reach this server, for upload URLs and file URIs.
func (s *Server) baseURL(r *http.Request) string {
	if s.opts.BaseURL != "" {
		return s.opts.BaseURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// recorder notes the status and size of an answer for the request log.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	wrote  bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the real writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
