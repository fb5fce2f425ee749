package gemini_test

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/gembatch/gembatch/gemini"
)

// fakeFiles implements the resumable upload and the download of the File API, keeping only a
// CRC of what it receives so that it can take gigabytes.
type fakeFiles struct {
	sessionURL string // X-Goog-Upload-URL to hand out; "" for an absolute URL on this server

	// Faults, by index of the upload command (0 = first chunk): keep only the first n bytes of
	// that chunk, then answer 503. loseFinal processes the finalize and then answers 503.
	keepOnly  map[int]int
	loseFinal bool

	downloadSize int64

	mu       sync.Mutex
	log      []string // one line per request
	keys     []string // the key header of each request
	received int64
	crc      uint32
	final    bool
	uploads  int
}

const fileJSON = `{"file":{"name":"files/up1","displayName":"d","mimeType":"application/jsonl","sizeBytes":"%d","state":"ACTIVE"}}`

func (s *fakeFiles) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = append(s.keys, r.Header.Get("x-goog-api-key"))
	cmd := r.Header.Get("X-Goog-Upload-Command")
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/upload/v1beta/files" && cmd == "start":
		body, _ := io.ReadAll(r.Body)
		s.log = append(s.log, fmt.Sprintf("start %s type=%s len=%s", body,
			r.Header.Get("X-Goog-Upload-Header-Content-Type"), r.Header.Get("X-Goog-Upload-Header-Content-Length")))
		u := s.sessionURL
		if u == "" {
			u = "http://" + r.Host + "/upload/session"
		}
		w.Header().Set("X-Goog-Upload-URL", u)
		w.Header().Set("X-Goog-Upload-Status", "active")
	case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/upload/session"):
		s.session(w, r, cmd)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/download/v1beta/files/") && r.URL.Query().Get("alt") == "media":
		s.log = append(s.log, "download "+r.URL.Path)
		w.Header().Set("Content-Length", strconv.FormatInt(s.downloadSize, 10))
		for left := s.downloadSize; left > 0; {
			n, err := w.Write(pattern[:min(left, int64(len(pattern)))])
			if err != nil {
				return
			}
			left -= int64(n)
		}
	default:
		writeJSON(w, 404, `{"error":{"code":404,"status":"NOT_FOUND"}}`)
	}
}

func (s *fakeFiles) session(w http.ResponseWriter, r *http.Request, cmd string) {
	if cmd == "query" {
		s.log = append(s.log, "query")
		w.Header().Set("X-Goog-Upload-Size-Received", strconv.FormatInt(s.received, 10))
		if s.final {
			w.Header().Set("X-Goog-Upload-Status", "final")
			fmt.Fprintf(w, fileJSON, s.received)
			return
		}
		w.Header().Set("X-Goog-Upload-Status", "active")
		return
	}
	off, _ := strconv.ParseInt(r.Header.Get("X-Goog-Upload-Offset"), 10, 64)
	s.log = append(s.log, fmt.Sprintf("%s %d+%d", cmd, off, r.ContentLength))
	if s.final || off != s.received || (cmd != "upload" && cmd != "upload, finalize") {
		writeJSON(w, 400, `{"error":{"code":400,"message":"bad offset or command","status":"INVALID_ARGUMENT"}}`)
		return
	}
	i := s.uploads
	s.uploads++
	keep, fault := s.keepOnly[i]
	var n int64
	if fault {
		n, _ = io.CopyN(crcWriter{&s.crc}, r.Body, int64(keep))
	} else {
		n, _ = io.Copy(crcWriter{&s.crc}, r.Body)
	}
	s.received += n
	if fault {
		writeJSON(w, 503, "upstream hiccup")
		return
	}
	if cmd == "upload" {
		w.Header().Set("X-Goog-Upload-Status", "active")
		return
	}
	s.final = true
	if s.loseFinal {
		writeJSON(w, 503, "lost")
		return
	}
	w.Header().Set("X-Goog-Upload-Status", "final")
	fmt.Fprintf(w, fileJSON, s.received)
}

// crcWriter keeps a running CRC-32 of what is written.
type crcWriter struct{ crc *uint32 }

func (w crcWriter) Write(p []byte) (int, error) {
	*w.crc = crc32.Update(*w.crc, crc32.IEEETable, p)
	return len(p), nil
}

// patternCRC is the CRC-32 of n bytes of the pattern.
func patternCRC(n int64) uint32 {
	var crc uint32
	_, _ = io.Copy(crcWriter{&crc}, &patternReader{n: n})
	return crc
}

// pattern is the content the fake serves and the tests upload, repeated.
var pattern = func() []byte {
	b := make([]byte, 64<<10)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}()

// patternReader yields n bytes of the repeated pattern without holding them.
type patternReader struct{ n, off int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	k := min(int64(len(b)), p.n-p.off)
	copied := 0
	for int64(copied) < k {
		i := (p.off + int64(copied)) % int64(len(pattern))
		copied += copy(b[copied:k], pattern[i:])
	}
	p.off += k
	return int(k), nil
}

func TestUploadChunks(t *testing.T) {
	const chunk = 1024
	for _, tc := range []struct {
		name string
		size int64 // content length
		sent int64 // size passed to UploadFile
		want []string
	}{
		{"known size", 2*chunk + 512, 2*chunk + 512, []string{
			`start {"file":{"displayName":"d"}}` + "\n type=application/jsonl len=2560",
			"upload 0+1024", "upload 1024+1024", "upload, finalize 2048+512"}},
		{"exact multiple", 2 * chunk, 2 * chunk, []string{
			`start {"file":{"displayName":"d"}}` + "\n type=application/jsonl len=2048",
			"upload 0+1024", "upload 1024+1024", "upload, finalize 2048+0"}},
		{"unknown size, exact multiple", 2 * chunk, -1, []string{
			`start {"file":{"displayName":"d"}}` + "\n type=application/jsonl len=",
			"upload 0+1024", "upload 1024+1024", "upload, finalize 2048+0"}},
		{"unknown size", chunk + 1, -1, []string{
			`start {"file":{"displayName":"d"}}` + "\n type=application/jsonl len=",
			"upload 0+1024", "upload, finalize 1024+1"}},
		{"empty", 0, 0, []string{
			`start {"file":{"displayName":"d"}}` + "\n type=application/jsonl len=0",
			"upload, finalize 0+0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := &fakeFiles{}
			srv := serve(t, fs.ServeHTTP)
			c, reg := newClient(srv.URL, gemini.WithChunkSize(chunk))
			f, err := c.UploadFile(t.Context(), &patternReader{n: tc.size}, tc.sent, "d", "application/jsonl")
			if err != nil {
				t.Fatal(err)
			}
			if f.Name != "files/up1" || int64(f.SizeBytes) != tc.size {
				t.Errorf("file %+v", f)
			}
			if strings.Join(fs.log, "|") != strings.Join(tc.want, "|") {
				t.Errorf("requests\n%q\nwant\n%q", fs.log, tc.want)
			}
			if fs.crc != patternCRC(tc.size) {
				t.Error("content differs")
			}
			if got := metric(t, reg, "gembatch_gemini_upload_bytes_total"); got != float64(tc.size) {
				t.Errorf("upload bytes %v", got)
			}
			for _, k := range fs.keys {
				if k != testKey {
					t.Errorf("key header %q", k)
				}
			}
		})
	}
}

func TestUploadResumesAfterFailedChunk(t *testing.T) {
	const chunk = 1000
	fs := &fakeFiles{keepOnly: map[int]int{1: 300}} // the second chunk: 300 bytes land, then 503
	srv := serve(t, fs.ServeHTTP)
	c, reg := newClient(srv.URL, gemini.WithChunkSize(chunk))
	data := bytes.Repeat([]byte("0123456789"), 250) // 2500 bytes
	f, err := c.UploadFile(t.Context(), bytes.NewReader(data), int64(len(data)), "d", "application/jsonl")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"upload 0+1000", "upload 1000+1000", "query", "upload 1300+700", "upload, finalize 2000+500"}
	if strings.Join(fs.log[1:], "|") != strings.Join(want, "|") {
		t.Errorf("requests\n%q\nwant\n%q", fs.log[1:], want)
	}
	if f.SizeBytes != 2500 || fs.received != 2500 || fs.crc != crc32.ChecksumIEEE(data) {
		t.Errorf("file %+v, server holds %d", f, fs.received)
	}
	if got := metric(t, reg, "gembatch_gemini_api_retries_total", "operation", "files.upload.chunk"); got != 1 {
		t.Errorf("retries %v", got)
	}
	if got := metric(t, reg, "gembatch_gemini_upload_bytes_total"); got != 2500 {
		t.Errorf("upload bytes %v", got)
	}
}

func TestUploadFinalAnswerLost(t *testing.T) {
	fs := &fakeFiles{loseFinal: true}
	srv := serve(t, fs.ServeHTTP)
	c, _ := newClient(srv.URL, gemini.WithChunkSize(1000))
	f, err := c.UploadFile(t.Context(), &patternReader{n: 1500}, -1, "d", "application/jsonl")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"upload 0+1000", "upload, finalize 1000+500", "query"}
	if strings.Join(fs.log[1:], "|") != strings.Join(want, "|") || f.Name != "files/up1" {
		t.Errorf("requests %q, file %+v", fs.log[1:], f)
	}
}

func TestUploadFailures(t *testing.T) {
	t.Run("input shorter than declared", func(t *testing.T) {
		fs := &fakeFiles{}
		srv := serve(t, fs.ServeHTTP)
		c, _ := newClient(srv.URL, gemini.WithChunkSize(1000))
		_, err := c.UploadFile(t.Context(), &patternReader{n: 1500}, 2000, "d", "m")
		if err == nil || strings.Contains(strings.Join(fs.log, "|"), "finalize") {
			t.Errorf("got %v after %q", err, fs.log)
		}
	})
	t.Run("input longer than declared", func(t *testing.T) {
		fs := &fakeFiles{}
		srv := serve(t, fs.ServeHTTP)
		c, _ := newClient(srv.URL, gemini.WithChunkSize(1000))
		if _, err := c.UploadFile(t.Context(), &patternReader{n: 1500}, 1200, "d", "m"); err == nil {
			t.Error("accepted")
		}
	})
	t.Run("read error", func(t *testing.T) {
		fs := &fakeFiles{}
		srv := serve(t, fs.ServeHTTP)
		c, _ := newClient(srv.URL)
		boom := errors.New("disk on fire")
		_, err := c.UploadFile(t.Context(), io.MultiReader(&patternReader{n: 10}, errReader{boom}), -1, "d", "m")
		if !errors.Is(err, boom) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("no session URL", func(t *testing.T) {
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {})
		c, _ := newClient(srv.URL)
		_, err := c.UploadFile(t.Context(), &patternReader{n: 1}, 1, "d", "m")
		if err == nil || !strings.Contains(err.Error(), "X-Goog-Upload-URL") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("chunk refused", func(t *testing.T) {
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Goog-Upload-Command") == "start" {
				w.Header().Set("X-Goog-Upload-URL", "/upload/session") // relative: resolved against the base
				return
			}
			if r.URL.Path != "/upload/session" {
				t.Errorf("path %s", r.URL.Path)
			}
			writeJSON(w, 400, `{"error":{"code":400,"message":"nope","status":"INVALID_ARGUMENT"}}`)
		})
		c, _ := newClient(srv.URL)
		_, err := c.UploadFile(t.Context(), &patternReader{n: 1}, 1, "d", "m")
		var ae *gemini.APIError
		if !errors.As(err, &ae) || ae.Op != "files.upload.chunk" || ae.HTTPStatus != 400 {
			t.Errorf("got %v", err)
		}
	})
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// TestUploadSessionElsewhere: a session URL on another host gets the chunks but not the key.
func TestUploadSessionElsewhere(t *testing.T) {
	store := &fakeFiles{}
	other := serve(t, store.ServeHTTP)
	api := &fakeFiles{sessionURL: other.URL + "/upload/session?upload_id=1"}
	srv := serve(t, api.ServeHTTP)
	c, _ := newClient(srv.URL, gemini.WithChunkSize(1000))
	if _, err := c.UploadFile(t.Context(), &patternReader{n: 1500}, 1500, "d", "m"); err != nil {
		t.Fatal(err)
	}
	if len(store.keys) != 2 || store.keys[0] != "" || store.keys[1] != "" || api.keys[0] != testKey {
		t.Errorf("keys: api %q, other host %q", api.keys, store.keys)
	}
}

func TestDownload(t *testing.T) {
	var calls int
	fs := &fakeFiles{downloadSize: 300 << 10}
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		calls++
		if calls == 1 {
			writeJSON(w, 503, `{"error":{"code":503}}`)
			return
		}
		fs.ServeHTTP(w, r)
	})
	c, reg := newClient(srv.URL)
	rc, err := c.Download(t.Context(), "files/batch-0123456789abcdefghijklmnopqrstuvwxyz")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	want, _ := io.ReadAll(&patternReader{n: 300 << 10})
	if !bytes.Equal(got, want) {
		t.Error("content differs")
	}
	if fs.log[0] != "download /download/v1beta/files/batch-0123456789abcdefghijklmnopqrstuvwxyz:download" || calls != 2 {
		t.Errorf("requests %q, %d calls", fs.log, calls)
	}
	if n := metric(t, reg, "gembatch_gemini_download_bytes_total"); n != 300<<10 {
		t.Errorf("download bytes %v", n)
	}
}

func TestDownloadNon200IsError(t *testing.T) {
	for _, status := range []int{404, 403, 500} {
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, status, `{"error":{"code":`+strconv.Itoa(status)+`,"message":"not for you"}}`)
		})
		c, _ := newClient(srv.URL)
		rc, err := c.Download(t.Context(), "files/x")
		var ae *gemini.APIError
		if rc != nil || !errors.As(err, &ae) || ae.HTTPStatus != status || ae.Op != "files.download" {
			t.Errorf("%d: got %v, %v", status, rc, err)
		}
	}
}

func TestDownloadCutMidway(t *testing.T) {
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		_, _ = w.Write(pattern[:1000])
	})
	c, _ := newClient(srv.URL)
	rc, err := c.Download(t.Context(), "files/x")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if n != 1000 || !gemini.IsRetryable(err) || !strings.Contains(err.Error(), "files.download") {
		t.Errorf("read %d, %v", n, err)
	}
}
