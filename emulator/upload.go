package emulator

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/gembatch/gembatch/gemini"
)

// chunkGranularity is the chunk size the service announces and the SDKs use: 8 MiB.
const chunkGranularity = 8 << 20

// upload is one resumable upload session. Its chunks are written straight to disk.
type upload struct {
	mu          sync.Mutex // serialises the chunks of this upload
	id          string
	path        string
	base        string
	displayName string
	mime        string
	declared    int64 // X-Goog-Upload-Header-Content-Length, or -1
	size        int64 // bytes received
	done        *file // set by finalize
}

// upload serves POST /upload/v1beta/files: a start without upload_id, a chunk, finalize or
// query with the upload_id of the URL that the start answered.
func (s *Server) upload(w http.ResponseWriter, r *http.Request, _ string) {
	if id := r.URL.Query().Get("upload_id"); id != "" {
		s.uploadChunk(w, r, id)
		return
	}
	s.startUpload(w, r)
}

func (s *Server) startUpload(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("X-Goog-Upload-Protocol"), "resumable") ||
		!strings.EqualFold(strings.TrimSpace(r.Header.Get("X-Goog-Upload-Command")), "start") {
		invalid(w, "The emulator takes resumable uploads only: X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start.")
		return
	}
	u := &upload{id: randomID(32), base: s.baseURL(r), declared: -1}
	if err := readUploadMeta(r, u); err != nil {
		invalid(w, "%v", err)
		return
	}
	if v := r.Header.Get("X-Goog-Upload-Header-Content-Length"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			invalid(w, "Invalid X-Goog-Upload-Header-Content-Length %q.", v)
			return
		}
		if n > s.opts.FileMaxBytes {
			invalid(w, "File size %d exceeds the limit of %d bytes.", n, s.opts.FileMaxBytes)
			return
		}
		u.declared = n
	}
	u.path = filepath.Join(s.dir, "upload-"+u.id)
	f, err := os.Create(u.path)
	if err != nil {
		writeError(w, http.StatusInternalServerError, gemini.CodeInternal, "Creating the upload failed: %v", err)
		return
	}
	_ = f.Close()
	s.mu.Lock()
	s.uploads[u.id] = u
	s.mu.Unlock()
	h := w.Header()
	h.Set("X-Goog-Upload-URL", u.base+"/upload/"+apiVersion(r.URL.Path)+"/files?upload_id="+u.id+"&upload_protocol=resumable")
	h.Set("X-Goog-Upload-Status", "active")
	h.Set("X-Goog-Upload-Chunk-Granularity", strconv.Itoa(chunkGranularity))
	w.WriteHeader(http.StatusOK)
}

// readUploadMeta reads the optional {"file":{"displayName","mimeType"}} of a start; the
// X-Goog-Upload-Header-Content-Type header wins over mimeType.
func readUploadMeta(r *http.Request, u *upload) error {
	body, err := readBody(r, 1<<20)
	if err != nil {
		return err
	}
	if len(body) > 0 {
		top, err := fields(body, "")
		if err != nil {
			return err
		}
		if top["file"] != nil {
			meta, err := fields(top["file"], "file")
			if err != nil {
				return err
			}
			if err := decodeField(meta, "displayName", "file", &u.displayName); err != nil {
				return err
			}
			if err := decodeField(meta, "mimeType", "file", &u.mime); err != nil {
				return err
			}
		}
	}
	if v := r.Header.Get("X-Goog-Upload-Header-Content-Type"); v != "" {
		u.mime = v
	}
	if u.mime == "" {
		u.mime = "application/octet-stream"
	}
	return nil
}

// uploadChunk serves the commands "upload", "upload, finalize", "finalize" and "query".
// A chunk must start where the received bytes end (X-Goog-Upload-Offset).
func (s *Server) uploadChunk(w http.ResponseWriter, r *http.Request, id string) {
	s.mu.Lock()
	u := s.uploads[id]
	s.mu.Unlock()
	if u == nil {
		notFound(w, "Upload %s not found.", id)
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	var doUpload, finalize, query bool
	for _, c := range strings.Split(r.Header.Get("X-Goog-Upload-Command"), ",") {
		switch strings.ToLower(strings.TrimSpace(c)) {
		case "upload":
			doUpload = true
		case "finalize":
			finalize = true
		case "query":
			query = true
		default:
			invalid(w, "Unknown X-Goog-Upload-Command %q.", r.Header.Get("X-Goog-Upload-Command"))
			return
		}
	}
	h := w.Header()
	switch {
	case query:
		h.Set("X-Goog-Upload-Status", "active")
		if u.done != nil {
			h.Set("X-Goog-Upload-Status", "final")
		}
		h.Set("X-Goog-Upload-Size-Received", strconv.FormatInt(u.size, 10))
		w.WriteHeader(http.StatusOK)
		return
	case u.done != nil:
		h.Set("X-Goog-Upload-Status", "final")
		invalid(w, "The upload is already finalized.")
		return
	}
	if doUpload && !s.writeChunk(w, r, u) {
		return
	}
	if !finalize {
		h.Set("X-Goog-Upload-Status", "active")
		h.Set("X-Goog-Upload-Size-Received", strconv.FormatInt(u.size, 10))
		w.WriteHeader(http.StatusOK)
		return
	}
	if u.declared >= 0 && u.size != u.declared {
		invalid(w, "Received %d bytes, but X-Goog-Upload-Header-Content-Length said %d.", u.size, u.declared)
		return
	}
	sum, size, err := hashFile(u.path)
	if err != nil {
		writeError(w, http.StatusInternalServerError, gemini.CodeInternal, "Reading the upload failed: %v", err)
		return
	}
	f := newFile(u.base, randomID(12), u.displayName, u.mime, sourceUploaded, u.path, size, sum, s.now())
	s.mu.Lock()
	s.addFile(f)
	s.mu.Unlock()
	u.done = f
	h.Set("X-Goog-Upload-Status", "final")
	writeJSON(w, struct {
		File gemini.File `json:"file"`
	}{f.meta})
}

// writeChunk appends one chunk to the upload's file, streaming it to disk. It answers and
// reports false when the chunk is refused or fails.
//
// A chunk may start before the end of what was received: the bytes already held are skipped.
// That is what makes the SDKs' retry of a failed chunk at the same offset work. A chunk that
// would leave a gap is refused. Failures that leave the session usable carry no
// X-Goog-Upload-Status, which is what tells the SDKs to retry.
func (s *Server) writeChunk(w http.ResponseWriter, r *http.Request, u *upload) bool {
	offset, err := strconv.ParseInt(r.Header.Get("X-Goog-Upload-Offset"), 10, 64)
	if err != nil || offset < 0 || offset > u.size {
		w.Header().Set("X-Goog-Upload-Status", "active")
		w.Header().Set("X-Goog-Upload-Size-Received", strconv.FormatInt(u.size, 10))
		invalid(w, "X-Goog-Upload-Offset %q does not match the %d bytes received.", r.Header.Get("X-Goog-Upload-Offset"), u.size)
		return false
	}
	if skip := u.size - offset; skip > 0 {
		switch _, err := io.CopyN(io.Discard, r.Body, skip); {
		case err == io.EOF:
			return true // the whole chunk was here already
		case err != nil:
			invalid(w, "Reading the chunk failed: %v", err)
			return false
		}
	}
	f, err := os.OpenFile(u.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		writeError(w, http.StatusInternalServerError, gemini.CodeInternal, "Opening the upload failed: %v", err)
		return false
	}
	defer f.Close()
	room := s.opts.FileMaxBytes - u.size
	n, err := io.Copy(f, io.LimitReader(r.Body, room+1))
	switch {
	case n > room:
		s.abandon(u)
		w.Header().Set("X-Goog-Upload-Status", "cancelled")
		invalid(w, "The file exceeds the limit of %d bytes.", s.opts.FileMaxBytes)
		return false
	case err != nil:
		u.size += n // what arrived stays, as with the service: the client queries and resumes
		invalid(w, "Reading the chunk failed after %d bytes: %v", n, err)
		return false
	case s.take(&s.faults.UploadChunkFailures):
		kept := n / 2
		if err := f.Truncate(u.size + kept); err != nil {
			writeError(w, http.StatusInternalServerError, gemini.CodeInternal, "Truncating the upload failed: %v", err)
			return false
		}
		u.size += kept
		writeError(w, http.StatusServiceUnavailable, gemini.CodeUnavailable,
			"Emulated chunk failure: %d of %d bytes stored; query the upload and resume.", kept, n)
		return false
	}
	u.size += n
	return true
}

// abandon forgets an upload that can no longer succeed.
func (s *Server) abandon(u *upload) {
	s.mu.Lock()
	delete(s.uploads, u.id)
	s.mu.Unlock()
	_ = os.Remove(u.path)
}
