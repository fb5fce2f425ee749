package emulator

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gembatch/gembatch/gemini"
)

const (
	fileLifetime    = 48 * time.Hour // the service deletes files after this
	maxFileIDLength = 40             // files.get refuses longer ids, such as result files'
	sourceUploaded  = "UPLOADED"
	sourceGenerated = "GENERATED"
)

// file is a File API resource and where its bytes are on disk. Immutable once made.
type file struct {
	id   string // without "files/"
	seq  int64
	meta gemini.File
	path string
}

// newFile describes a finished file; sum is the raw SHA-256 of its bytes.
func newFile(base, id, displayName, mime, source, path string, size int64, sum []byte, at time.Time) *file {
	at = at.UTC()
	return &file{id: id, path: path, meta: gemini.File{
		Name:           "files/" + id,
		DisplayName:    displayName,
		MimeType:       mime,
		SizeBytes:      gemini.Int64(size),
		CreateTime:     at,
		UpdateTime:     at,
		ExpirationTime: at.Add(fileLifetime),
		// the service gives the base64 of the hex digest, not of the digest itself
		Sha256Hash: base64.StdEncoding.EncodeToString([]byte(hex.EncodeToString(sum))),
		URI:        base + "/v1beta/files/" + id,
		State:      "ACTIVE",
		Source:     source,
	}}
}

// addFile files f; the caller holds s.mu.
func (s *Server) addFile(f *file) {
	s.seq++
	f.seq = s.seq
	s.files[f.id] = f
}

// lookupFile returns the file with this id, or nil if there is none or it has expired.
func (s *Server) lookupFile(id string) *file {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.files[id]
	if f != nil && s.now().After(f.meta.ExpirationTime) {
		delete(s.files, id)
		_ = os.Remove(f.path)
		return nil
	}
	return f
}

// fileNameOK refuses ids the service refuses, result file ids among them (files/batch-<36>).
func fileNameOK(w http.ResponseWriter, method, id string) bool {
	ok := len(id) <= maxFileIDLength && !strings.HasPrefix(id, "-") && !strings.HasSuffix(id, "-") &&
		strings.Trim(id, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
	if !ok {
		invalid(w, "* %s.name: File name \"files/%s\" is invalid: it may be at most %d lowercase letters, digits and dashes, and cannot begin or end with a dash.",
			method, id, maxFileIDLength)
	}
	return ok
}

func (s *Server) getFile(w http.ResponseWriter, r *http.Request, id string) {
	if !fileNameOK(w, "GetFileRequest", id) {
		return
	}
	f := s.lookupFile(id)
	if f == nil {
		notFound(w, "File files/%s not found.", id)
		return
	}
	writeJSON(w, f.meta)
}

func (s *Server) deleteFile(w http.ResponseWriter, r *http.Request, id string) {
	if !fileNameOK(w, "DeleteFileRequest", id) {
		return
	}
	s.mu.Lock()
	f := s.files[id]
	delete(s.files, id)
	s.mu.Unlock()
	if f == nil {
		notFound(w, "File files/%s not found.", id)
		return
	}
	_ = os.Remove(f.path) // a download in progress keeps its open handle
	writeJSON(w, struct{}{})
}

// listFiles answers newest first, 10 a page by default and 100 at most, as the service does.
func (s *Server) listFiles(w http.ResponseWriter, r *http.Request, _ string) {
	size, after, err := page(r, 10, 100)
	if err != nil {
		invalid(w, "%v", err)
		return
	}
	s.mu.Lock()
	var all []*file
	for _, f := range s.files {
		if after == 0 || f.seq < after {
			all = append(all, f)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(a, b *file) int { return cmp.Compare(b.seq, a.seq) })
	var resp gemini.ListFilesResponse
	if len(all) > size {
		all = all[:size]
		resp.NextPageToken = pageToken(all[size-1].seq)
	}
	for _, f := range all {
		resp.Files = append(resp.Files, f.meta)
	}
	writeJSON(w, resp)
}

// download streams a result file from disk; Range requests work, so a client can resume.
// Only GENERATED files can be downloaded, as with the service.
func (s *Server) download(w http.ResponseWriter, r *http.Request, id string) {
	if r.URL.Query().Get("alt") != "media" {
		invalid(w, "Downloading a file needs alt=media.")
		return
	}
	f := s.lookupFile(id)
	if f == nil {
		notFound(w, "File files/%s not found.", id)
		return
	}
	if f.meta.Source != sourceGenerated {
		invalid(w, "Only generated files can be downloaded; files/%s was uploaded.", id)
		return
	}
	fh, err := os.Open(f.path)
	if err != nil {
		notFound(w, "File files/%s not found.", id) // deleted since the lookup
		return
	}
	defer fh.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", f.meta.CreateTime, fh)
}

// resultLine is one line of a result file.
type resultLine struct {
	Key      string          `json:"key"`
	Response json.RawMessage `json:"response,omitempty"`
	Error    *gemini.Status  `json:"error,omitempty"`
}

// answerFile streams the first n requests of a JSONL input file line by line into the job's
// result file. Lines may be megabytes long; neither file is ever held whole in memory. A line
// that is not valid JSON is answered with a per-item error without a key rather than failing
// the job.
func (s *Server) answerFile(b *batch, end *ending, n int64, fail func() bool) (*file, error) {
	in, err := os.Open(b.inputPath)
	if err != nil {
		return nil, fmt.Errorf("open input: %w", err)
	}
	defer in.Close()
	id := "batch-" + b.id
	path := filepath.Join(s.dir, "result-"+b.id)
	out, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create result file: %w", err)
	}
	sum := sha256.New()
	size, err := s.writeResults(io.MultiWriter(out, sum), in, b, end, n, fail)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("write results of %s: %w", b.name(), err)
	}
	f := newFile(b.base, id, "", "application/jsonl", sourceGenerated, path, size, sum.Sum(nil), end.at)
	end.output = &gemini.Output{ResponsesFile: f.meta.Name}
	return f, nil
}

func (s *Server) writeResults(w io.Writer, in io.Reader, b *batch, end *ending, n int64, fail func() bool) (int64, error) {
	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 1<<20)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	br := bufio.NewReaderSize(in, 1<<20)
	for end.succeeded+end.failed < n {
		line, rerr := br.ReadBytes('\n')
		if rerr != nil && rerr != io.EOF {
			return 0, rerr
		}
		if line = bytes.TrimSpace(line); len(line) > 0 {
			res := s.answerLine(b, line, fail())
			if res.Error != nil {
				end.failed++
			} else {
				end.succeeded++
			}
			if err := enc.Encode(res); err != nil { // Encode ends each line with '\n'
				return 0, err
			}
		}
		if rerr == io.EOF {
			break
		}
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return cw.n, nil
}

func (s *Server) answerLine(b *batch, line []byte, fail bool) resultLine {
	var in gemini.InputLine
	if err := json.Unmarshal(line, &in); err != nil {
		return resultLine{Error: &gemini.Status{Code: gemini.CodeInvalidArgument, Message: "Invalid JSON payload received: " + err.Error()}}
	}
	resp, st := s.answer(b, in.Key, in.Request, fail)
	return resultLine{Key: in.Key, Response: resp, Error: st}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// countLines counts the non-blank lines of a file without holding a line in memory.
func countLines(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("open input: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<16)
	var n int64
	blank := true
	for {
		chunk, err := br.ReadSlice('\n')
		if len(bytes.TrimSpace(chunk)) > 0 {
			blank = false
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err != nil && err != io.EOF:
			return 0, fmt.Errorf("read input: %w", err)
		}
		if !blank {
			n++
		}
		blank = true
		if err == io.EOF {
			return n, nil
		}
	}
}

// hashFile returns the raw SHA-256 and size of a file, streamed.
func hashFile(path string) ([]byte, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, 0, err
	}
	return h.Sum(nil), n, nil
}
