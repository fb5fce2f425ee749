package emulator

import (
	"cmp"
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gembatch/gembatch/gemini"
)

const typePrefix = "type.googleapis.com/google.ai.generativelanguage.v1main."

// batchFields are the fields of the batch resource; output-only ones are accepted and ignored.
var batchFields = []string{"name", "model", "displayName", "inputConfig", "priority", "webhookConfig", "output", "createTime", "endTime", "updateTime", "batchStats", "state"}

// batch is one job. Its fields are guarded by Server.mu, except the input, which is fixed at
// create and read without the lock when the results are made.
type batch struct {
	seq         int64
	id          string // 36 characters of [a-z0-9]
	kind        gemini.Kind
	model       string // with "models/"
	displayName string
	priority    int64
	base        string // the base URL the job was created through, for its result file's uri
	created     time.Time
	updated     time.Time // last update call, zero if none

	// the job faults, as they were at create
	delay         time.Duration
	expireAfter   time.Duration
	stuck, fail   bool
	reverse       bool
	itemErrorRate float64
	partial       float64 // Faults.PartialResults
	seed          int64

	requests  []gemini.InlinedRequest // inline input
	inputPath string                  // file input: a hard link to the uploaded file
	count     int64                   // number of requests
	tokens    int64                   // estimated tokens of the input, for the enqueued-token quota

	closing *ending   // the end decided (by time or cancel) while its results are being made
	end     *ending   // set once the job has ended and its results, if any, are made
	results sync.Once // makes the results once, on the first read after the end is decided
	deleted bool
	// ended is a finished job's answer to a get, encoded once (an inline job's holds every
	// answer, twice, and is read by every poll and by the answer's reader); an update drops it.
	ended []byte
}

// ending is how and when a job ended.
type ending struct {
	state             gemini.State
	at                time.Time
	output            *gemini.Output
	err               *gemini.Status
	succeeded, failed int64
}

func (b *batch) name() string { return "batches/" + b.id }

// answered is how many requests, the first in input order, a job that ends in st answers.
func (b *batch) answered(st gemini.State) int64 {
	switch st {
	case gemini.StateSucceeded:
		return b.count
	case gemini.StateExpired, gemini.StateCancelled:
		return int64(math.Round(b.partial * float64(b.count)))
	}
	return 0
}

// scheduled is the job's state at t and since when it holds. Jobs advance by time alone, so
// nothing needs to run while nobody looks.
func (b *batch) scheduled(t time.Time) (gemini.State, time.Time) {
	if b.end != nil {
		return b.end.state, b.end.at
	}
	if b.closing != nil {
		return b.closing.state, b.closing.at
	}
	age := t.Sub(b.created)
	if age >= b.expireAfter && (b.stuck || b.expireAfter < b.delay) {
		return gemini.StateExpired, b.created.Add(b.expireAfter)
	}
	switch {
	case age <= 0 || b.stuck || age < b.delay/2:
		return gemini.StatePending, b.created
	case age < b.delay:
		return gemini.StateRunning, b.created.Add(b.delay / 2)
	case b.fail:
		return gemini.StateFailed, b.created.Add(b.delay)
	}
	return gemini.StateSucceeded, b.created.Add(b.delay)
}

// operation renders the job at t; the caller holds Server.mu and has settled the job.
func (b *batch) operation(t time.Time) gemini.Operation {
	st, since := b.scheduled(t)
	if b.updated.After(since) {
		since = b.updated
	}
	md := &gemini.BatchMetadata{
		Type:        typePrefix + "GenerateContentBatch",
		Name:        b.name(),
		Model:       b.model,
		DisplayName: b.displayName,
		CreateTime:  b.created.UTC(),
		UpdateTime:  since.UTC(),
		State:       st,
		Priority:    gemini.Int64(b.priority),
		BatchStats:  &gemini.BatchStats{RequestCount: gemini.Int64(b.count)},
	}
	outType := typePrefix + "GenerateContentBatchOutput"
	if b.kind == gemini.KindEmbed {
		md.Type, outType = typePrefix+"EmbedContentBatch", typePrefix+"EmbedContentBatchOutput"
	}
	op := gemini.Operation{Name: b.name(), Metadata: md}
	if b.end == nil {
		md.BatchStats.PendingRequestCount = gemini.Int64(b.count)
		return op
	}
	md.EndTime = b.end.at.UTC()
	md.BatchStats.SuccessfulRequestCount = gemini.Int64(b.end.succeeded)
	md.BatchStats.FailedRequestCount = gemini.Int64(b.end.failed)
	op.Done, op.Error = true, b.end.err
	if out := b.end.output; out != nil {
		md.Output = out
		op.Response = &gemini.OperationResponse{Type: outType, Output: *out}
	}
	return op
}

// view returns the job as it is at now, making its results first if its end has just come.
func (s *Server) view(b *batch, now time.Time) gemini.Operation {
	s.mu.Lock()
	closing := s.settle(b, now)
	if closing == nil {
		defer s.mu.Unlock()
		return b.operation(now)
	}
	s.mu.Unlock()
	b.results.Do(func() { s.produce(b, closing) })
	s.mu.Lock()
	defer s.mu.Unlock()
	return b.operation(now)
}

// settle records an end that time has brought. It returns the end if the job's results must
// still be made, nil otherwise; the caller holds s.mu.
func (s *Server) settle(b *batch, now time.Time) *ending {
	if b.end != nil || b.closing != nil {
		return b.closing
	}
	st, at := b.scheduled(now)
	e := &ending{state: st, at: at}
	switch st {
	case gemini.StateSucceeded:
	case gemini.StateFailed:
		e.failed = b.count
		e.err = &gemini.Status{Code: gemini.CodeInternal, Message: "The batch failed (emulated fault)."}
	case gemini.StateExpired:
		e.err = &gemini.Status{Code: gemini.CodeDeadlineExceeded, Message: "The batch expired before it could be processed."}
	default:
		return nil
	}
	s.conclude(b, e)
	return b.closing
}

// conclude records how a job ends; the caller holds s.mu. A job that answers requests on its
// way out (a success, or an expiry or cancel with Faults.PartialResults) keeps its input and
// waits in closing until produce has made the results; any other ends at once.
func (s *Server) conclude(b *batch, e *ending) {
	if b.answered(e.state) > 0 {
		b.closing = e
		return
	}
	b.end = e
	s.dropInput(b)
}

// produce makes the results of a job whose end has come, answering its first
// b.answered(closing.state) requests, without holding s.mu: a big input file takes a while and
// must not stall other requests.
func (s *Server) produce(b *batch, closing *ending) {
	end := &ending{state: closing.state, at: closing.at, err: closing.err}
	n := b.answered(end.state)
	rng := rand.New(rand.NewPCG(uint64(b.seed), uint64(b.seq)))
	fail := func() bool { return b.itemErrorRate > 0 && rng.Float64() < b.itemErrorRate }
	var (
		result *file
		err    error
	)
	if b.inputPath != "" {
		result, err = s.answerFile(b, end, n, fail)
	} else {
		s.answerInline(b, end, n, fail)
	}
	if err != nil {
		s.log.Error().Err(err).Str("batch", b.name()).Msg("make results")
		end = &ending{state: closing.state, at: end.at, err: closing.err}
		if end.state == gemini.StateSucceeded {
			end.state, end.failed = gemini.StateFailed, b.count
			end.err = &gemini.Status{Code: gemini.CodeInternal, Message: "The batch failed writing its results."}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.end != nil || b.deleted { // deleted while the results were being made
		if result != nil {
			_ = os.Remove(result.path)
		}
		return
	}
	if result != nil {
		s.addFile(result)
	}
	b.end, b.closing = end, nil
	s.dropInput(b)
}

// answer answers the request with key of job b, and bills it; fail is the draw of the item
// error rate.
func (s *Server) answer(b *batch, key string, request json.RawMessage, fail bool) (json.RawMessage, *gemini.Status) {
	m := model{name: b.model, imageBytes: s.opts.ImageBytes, directed: s.directedFails}
	resp, st := m.answer(b.kind, request, fail)
	s.billing.bill(key, request, resp, st)
	return resp, st
}

// directedFails counts one answer to a request whose text carries a counted error directive
// ("[[emulator:error=N,times=K]]") and reports whether it is among the first times, which fail.
// Counts are kept per text across all jobs, since a client sends a failed request again in a
// later batch.
func (s *Server) directedFails(text string, times int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.directed[text] >= times {
		return false
	}
	s.directed[text]++
	return true
}

// dropInput frees a job's input once it has ended; the caller holds s.mu.
func (s *Server) dropInput(b *batch) {
	b.requests = nil
	if b.inputPath != "" {
		_ = os.Remove(b.inputPath) // gone already if the job was deleted or cancelled
	}
}

// answerInline answers the first n inline requests.
func (s *Server) answerInline(b *batch, end *ending, n int64, fail func() bool) {
	out := make([]gemini.InlinedResponse, n)
	for i, req := range b.requests[:n] {
		var key string
		if req.Metadata != nil {
			key = req.Metadata.Key
		}
		resp, st := s.answer(b, key, req.Request, fail())
		out[i] = gemini.InlinedResponse{Response: resp, Error: st}
		if req.Metadata != nil {
			out[i].Metadata = &gemini.ResponseMetadata{Key: key}
		}
		if st != nil {
			end.failed++
		} else {
			end.succeeded++
		}
	}
	if b.reverse {
		slices.Reverse(out)
	}
	end.output = &gemini.Output{InlinedResponses: &gemini.InlinedResponses{InlinedResponses: out}}
}

func (s *Server) createBatch(w http.ResponseWriter, r *http.Request, model string, kind gemini.Kind) {
	body, err := readBody(r, s.opts.InlineMaxBytes)
	if err != nil {
		invalid(w, "%v", err)
		return
	}
	spec, err := parseCreate(body)
	if err != nil {
		invalid(w, "%v", err)
		return
	}
	if s.throttle(w) {
		return
	}
	b := &batch{
		id:          randomID(36),
		kind:        kind,
		model:       gemini.ModelName(model),
		displayName: spec.displayName,
		priority:    spec.priority,
		base:        s.baseURL(r),
		requests:    spec.requests,
		count:       int64(len(spec.requests)),
	}
	for _, req := range spec.requests {
		b.tokens += int64(len(req.Request))
	}
	if spec.fileName != "" {
		if !s.attachInput(w, b, spec.fileName) {
			return
		}
	}
	b.tokens = (b.tokens + 3) / 4 // four bytes a token, rounded up
	op, lost, quota := s.register(b)
	if quota != "" {
		if b.inputPath != "" {
			_ = os.Remove(b.inputPath)
		}
		s.refuse(w, quota)
		return
	}
	if lost {
		writeError(w, http.StatusServiceUnavailable, gemini.CodeUnavailable, "The service is currently unavailable.")
		return
	}
	writeJSON(w, op)
}

// attachInput links an uploaded file as the job's input, so that deleting the file later does
// not take the job's input with it, and counts its requests.
func (s *Server) attachInput(w http.ResponseWriter, b *batch, name string) bool {
	f := s.lookupFile(strings.TrimPrefix(name, "files/"))
	if f == nil {
		notFound(w, "File %s not found.", name)
		return false
	}
	b.inputPath = filepath.Join(s.dir, "input-"+b.id)
	if err := os.Link(f.path, b.inputPath); err != nil {
		notFound(w, "File %s not found.", name) // deleted since the lookup
		return false
	}
	n, err := countLines(b.inputPath)
	if err == nil && n == 0 {
		err = errorf("The input file %s holds no requests.", name)
	}
	if err != nil {
		_ = os.Remove(b.inputPath)
		invalid(w, "%v", err)
		return false
	}
	b.count, b.tokens = n, int64(f.meta.SizeBytes)
	return true
}

// register adds a new job with the job faults of now, unless it would break a quota, whose
// message it then returns without adding anything. It reports whether the create's answer is
// to be lost.
func (s *Server) register(b *batch) (op gemini.Operation, lost bool, quota string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if quota = s.overQuota(b, now); quota != "" {
		return op, false, quota
	}
	f := s.faults
	s.seq++
	b.seq, b.created = s.seq, now
	b.delay, b.expireAfter = s.opts.JobDelay, cmp.Or(f.ExpireAfter, serviceExpiry)
	b.stuck, b.fail, b.reverse = f.StuckPending, f.FailJobs, f.OutOfOrder
	b.itemErrorRate, b.partial, b.seed = f.ItemErrorRate, min(max(f.PartialResults, 0), 1), f.Seed
	s.batches[b.id] = b
	s.creates[b.displayName]++
	jobs, tokens := s.load(now, b.model)
	s.peakActive = max(s.peakActive, jobs)
	s.peakTokens[b.model] = max(s.peakTokens[b.model], tokens)
	lost = s.faults.LoseCreateAnswers > 0
	if lost {
		s.faults.LoseCreateAnswers--
	}
	return b.operation(b.created), lost, ""
}

func (s *Server) batch(id string) *batch {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.batches[id]
}

func (s *Server) getBatch(w http.ResponseWriter, r *http.Request, id string) {
	if s.failGet(w) {
		return
	}
	b := s.batch(id)
	if b == nil {
		notFound(w, "Batch batches/%s not found.", id)
		return
	}
	body, err := s.encoded(b)
	if err != nil {
		writeError(w, http.StatusInternalServerError, gemini.CodeInternal, "Encoding the answer failed: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	_, _ = w.Write(body)
}

// encoded is the job's answer to a get, as it is now: a finished job's is encoded once and kept
// until an update changes it.
func (s *Server) encoded(b *batch) ([]byte, error) {
	s.mu.Lock()
	cached, updated := b.ended, b.updated
	s.mu.Unlock()
	if cached != nil {
		return cached, nil
	}
	op := s.view(b, s.now())
	body, err := marshal(op)
	if err != nil || !op.Done {
		return body, err
	}
	s.mu.Lock()
	if b.updated.Equal(updated) { // no update since the job was rendered
		b.ended = body
	}
	s.mu.Unlock()
	return body, nil
}

// listBatches answers newest first; a page token is the sequence number of the last one sent.
func (s *Server) listBatches(w http.ResponseWriter, r *http.Request, _ string) {
	size, after, err := page(r, 50, 1000)
	if err != nil {
		invalid(w, "%v", err)
		return
	}
	now := s.now()
	s.mu.Lock()
	var all []*batch
	for _, b := range s.batches {
		if now.Sub(b.created) >= s.faults.ListLag && (after == 0 || b.seq < after) {
			all = append(all, b)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(a, b *batch) int { return cmp.Compare(b.seq, a.seq) })
	var resp gemini.ListBatchesResponse
	if len(all) > size {
		all = all[:size]
		resp.NextPageToken = pageToken(all[size-1].seq)
	}
	for _, b := range all {
		resp.Operations = append(resp.Operations, s.view(b, now))
	}
	writeJSON(w, resp)
}

// cancelBatch ends a PENDING or RUNNING job CANCELLED. A job that has already ended cannot be
// cancelled: that answers 400 FAILED_PRECONDITION. With Faults.PartialResults, the results of
// the part answered are made on the next read, as those of a success are.
func (s *Server) cancelBatch(w http.ResponseWriter, r *http.Request, id string) {
	s.mu.Lock()
	b := s.batches[id]
	if b == nil {
		s.mu.Unlock()
		notFound(w, "Batch batches/%s not found.", id)
		return
	}
	now := s.now()
	if st, _ := b.scheduled(now); st.Terminal() {
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, gemini.CodeFailedPrecondition, "Batch batches/%s has already ended (%s) and cannot be cancelled.", id, st)
		return
	}
	s.conclude(b, &ending{state: gemini.StateCancelled, at: now,
		err: &gemini.Status{Code: gemini.CodeCancelled, Message: "The batch was cancelled."}})
	s.mu.Unlock()
	writeJSON(w, struct{}{})
}

// deleteBatch stops a job and forgets it: get answers 404 and list leaves it out.
func (s *Server) deleteBatch(w http.ResponseWriter, r *http.Request, id string) {
	s.mu.Lock()
	b := s.batches[id]
	if b != nil {
		delete(s.batches, id)
		b.deleted = true
		if b.inputPath != "" {
			_ = os.Remove(b.inputPath) // its results, if being made, are dropped when done
		}
	}
	s.mu.Unlock()
	if b == nil {
		notFound(w, "Batch batches/%s not found.", id)
		return
	}
	writeJSON(w, struct{}{})
}

// updateBatch changes displayName and priority, the fields updateMask may name, and answers
// the batch resource (not an Operation). An empty mask updates the fields the body sets.
func (s *Server) updateBatch(w http.ResponseWriter, r *http.Request, id string, kind gemini.Kind) {
	body, err := readBody(r, 1<<20)
	if err != nil {
		invalid(w, "%v", err)
		return
	}
	f, err := fields(body, "batch", batchFields...)
	if err != nil {
		invalid(w, "%v", err)
		return
	}
	mask := r.URL.Query().Get("updateMask")
	if mask == "" {
		mask = r.URL.Query().Get("update_mask")
	}
	var paths []string
	for _, p := range strings.Split(mask, ",") {
		if p = camel(strings.TrimSpace(p)); p != "" {
			paths = append(paths, p)
		}
	}
	if len(paths) == 0 {
		for _, p := range []string{"displayName", "priority"} {
			if f[p] != nil {
				paths = append(paths, p)
			}
		}
	}
	var (
		name string
		prio gemini.Int64
	)
	for _, p := range paths {
		switch p {
		case "displayName":
			err = decodeField(f, p, "batch", &name)
		case "priority":
			err = decodeField(f, p, "batch", &prio)
		default:
			err = errorf("* update_mask: field %q cannot be updated", p)
		}
		if err != nil {
			invalid(w, "%v", err)
			return
		}
	}

	s.mu.Lock()
	b := s.batches[id]
	switch {
	case b == nil:
		s.mu.Unlock()
		notFound(w, "Batch batches/%s not found.", id)
		return
	case b.kind != kind:
		s.mu.Unlock()
		invalid(w, "Batch batches/%s is not a %s batch.", id, kind)
		return
	}
	for _, p := range paths {
		if p == "displayName" {
			b.displayName = name
		} else {
			b.priority = int64(prio)
		}
	}
	now := s.now()
	b.updated, b.ended = now, nil
	s.mu.Unlock()
	md := *s.view(b, now).Metadata
	md.Type = "" // the batch resource itself carries no @type
	writeJSON(w, md)
}
