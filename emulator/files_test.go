package emulator_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"hash"
	"net/http"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
)

var fileName = regexp.MustCompile(`^files/[a-z0-9]{12}$`)

// startUpload begins a resumable upload and returns its URL.
func (a *api) startUpload(size int, displayName string) string {
	a.t.Helper()
	r := a.do("POST", "/upload/v1beta/files", `{"file":{"displayName":"`+displayName+`"}}`,
		"X-Goog-Upload-Protocol", "resumable", "X-Goog-Upload-Command", "start",
		"X-Goog-Upload-Header-Content-Type", "jsonl",
		"X-Goog-Upload-Header-Content-Length", strconv.Itoa(size)).ok(a.t)
	if r.header.Get("X-Goog-Upload-Status") != "active" || r.header.Get("X-Goog-Upload-Chunk-Granularity") != "8388608" {
		a.t.Fatalf("start answered headers %v", r.header)
	}
	u := r.header.Get("X-Goog-Upload-URL")
	if !strings.HasPrefix(u, a.url+"/upload/v1beta/files?") {
		a.t.Fatalf("upload URL %q is not on %s", u, a.url)
	}
	return u
}

func (a *api) chunk(url, command string, offset int, data []byte) reply {
	a.t.Helper()
	return a.do("POST", url, data, "X-Goog-Upload-Command", command, "X-Goog-Upload-Offset", strconv.Itoa(offset))
}

func (a *api) query(url string) int {
	a.t.Helper()
	r := a.do("POST", url, nil, "X-Goog-Upload-Command", "query").ok(a.t)
	n, err := strconv.Atoi(r.header.Get("X-Goog-Upload-Size-Received"))
	if err != nil {
		a.t.Fatalf("query answered no size: %v", r.header)
	}
	return n
}

// uploadFile uploads data in chunks of size chunk, as the SDKs do, and returns the File.
func (a *api) uploadFile(data []byte, chunk int) gemini.File {
	a.t.Helper()
	url := a.startUpload(len(data), "input")
	for off := 0; ; off += chunk {
		end := min(off+chunk, len(data))
		cmd := "upload"
		if end == len(data) {
			cmd = "upload, finalize"
		}
		r := a.chunk(url, cmd, off, data[off:end]).ok(a.t)
		if cmd != "upload" {
			if r.header.Get("X-Goog-Upload-Status") != "final" {
				a.t.Fatalf("finalize answered status %q", r.header.Get("X-Goog-Upload-Status"))
			}
			return decode[struct{ File gemini.File }](a.t, r).File
		}
		if r.header.Get("X-Goog-Upload-Status") != "active" {
			a.t.Fatalf("chunk answered status %q", r.header.Get("X-Goog-Upload-Status"))
		}
	}
}

func sha256Hash(data []byte) string {
	sum := sha256.Sum256(data)
	return base64.StdEncoding.EncodeToString([]byte(hex.EncodeToString(sum[:])))
}

func TestFileFlow(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: 200 * time.Millisecond})
	lines := []string{
		`{"key":"k1","request":{"contents":[{"parts":[{"text":"one"}],"role":"user"}]}}`,
		`{"key":"k2","request":{"contents":[{"parts":[{"text":"two"}]}],"system_instruction":{"parts":[{"text":"s"}]}}}` + "\r",
		``,
		`{not json`,
		`{"key":"k4","request":{"contents":[{"parts":[{"text":"[[emulator:error=5]]"}]}]}}`,
		`{"key":"k5","request":{"contents":[{"parts":[{"text":"x"}]}],"bogus":true}}`,
	}
	data := []byte(strings.Join(lines, "\n") + "\n")

	url := a.startUpload(len(data), "input")
	a.chunk(url, "upload", 0, data[:100]).ok(t)
	if n := a.query(url); n != 100 {
		t.Fatalf("query after 100 bytes answered %d", n)
	}
	a.chunk(url, "upload", 100, data[100:200]).ok(t)
	fin := a.chunk(url, "upload, finalize", 200, data[200:]).ok(t)
	if fin.header.Get("X-Goog-Upload-Status") != "final" {
		t.Fatalf("finalize status %q", fin.header.Get("X-Goog-Upload-Status"))
	}
	fr := raw(t, fin)["file"].(map[string]any)
	name := fr["name"].(string)
	id := strings.TrimPrefix(name, "files/")
	for k, want := range map[string]any{
		"displayName": "input", "mimeType": "jsonl", "sizeBytes": strconv.Itoa(len(data)),
		"sha256Hash": sha256Hash(data), "uri": a.url + "/v1beta/files/" + id, "state": "ACTIVE", "source": "UPLOADED",
	} {
		if fr[k] != want {
			t.Errorf("file %s = %v, want %v", k, fr[k], want)
		}
	}
	if !fileName.MatchString(name) {
		t.Errorf("file name %q, want files/<12 of [a-z0-9]>", name)
	}
	f := decode[struct{ File gemini.File }](t, fin).File
	if !f.ExpirationTime.Equal(f.CreateTime.Add(48*time.Hour)) || !timestamp.MatchString(fr["createTime"].(string)) {
		t.Errorf("createTime %v, expirationTime %v", f.CreateTime, f.ExpirationTime)
	}
	if n := a.query(url); n != len(data) {
		t.Errorf("query after finalize answered %d", n)
	}
	a.chunk(url, "upload", len(data), []byte("more")).status(t, 400, "INVALID_ARGUMENT")

	if got := decode[gemini.File](t, a.do("GET", "/v1beta/"+name).ok(t)); got.Sha256Hash != f.Sha256Hash {
		t.Errorf("files.get answered %+v", got)
	}
	a.do("GET", "/v1beta/"+name+":download?alt=media").status(t, 400, "INVALID_ARGUMENT")

	// The SDKs send snake_case for batches from a file.
	body := `{"batch":{"display_name":"from-file","input_config":{"file_name":"` + name + `"}}}`
	op := decode[gemini.Operation](t, a.do("POST", generatePath, body).ok(t))
	if op.Metadata.BatchStats.RequestCount != 5 || op.Metadata.DisplayName != "from-file" {
		t.Errorf("create from file: %+v", op.Metadata)
	}
	// The job keeps its input when the uploaded file goes.
	a.do("DELETE", "/v1beta/"+name).ok(t)
	a.do("GET", "/v1beta/"+name).status(t, 404, "NOT_FOUND")

	r, op, _ := a.wait(op.Name, gemini.StateSucceeded)
	result := "files/batch-" + strings.TrimPrefix(op.Name, "batches/")
	if got := at(raw(t, r), "metadata", "output", "responsesFile"); got != result {
		t.Errorf("responsesFile %v, want %s", got, result)
	}
	if op.Response == nil || op.Response.ResponsesFile != result {
		t.Errorf("response mirror %+v", op.Response)
	}
	if got := compact(t, at(raw(t, r), "metadata", "batchStats")); got != `{"failedRequestCount":"3","requestCount":"5","successfulRequestCount":"2"}` {
		t.Errorf("batchStats %s", got)
	}

	a.do("GET", "/v1beta/"+result).status(t, 400, "INVALID_ARGUMENT")
	a.do("GET", "/v1beta/"+result+":download").status(t, 400, "INVALID_ARGUMENT")
	sdk := a.do("GET", "/v1beta/"+result+":download?alt=media").ok(t)
	docs := a.do("GET", "/download/v1beta/"+result+":download?alt=media").ok(t)
	if !bytes.Equal(sdk.body, docs.body) {
		t.Fatal("the two download paths answer different bytes")
	}
	if part := a.do("GET", "/v1beta/"+result+":download?alt=media", nil, "Range", "bytes=5-"); part.code != http.StatusPartialContent || !bytes.Equal(part.body, sdk.body[5:]) {
		t.Errorf("a ranged download answered %d %q", part.code, part.body)
	}
	got := map[string]map[string]json.RawMessage{}
	var order []string
	sc := bufio.NewScanner(bytes.NewReader(sdk.body))
	for sc.Scan() {
		var line map[string]json.RawMessage
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("result line %q: %v", sc.Bytes(), err)
		}
		var key string
		_ = json.Unmarshal(line["key"], &key)
		got[key], order = line, append(order, key)
	}
	if !slices.Equal(order, []string{"k1", "k2", "", "k4", "k5"}) {
		t.Fatalf("result keys %v", order)
	}
	var one struct {
		Candidates []struct {
			Content struct{ Parts []struct{ Text string } }
		}
	}
	if err := json.Unmarshal(got["k1"]["response"], &one); err != nil {
		t.Fatal(err)
	}
	want := emulator.ExpectedText(json.RawMessage(`{"contents":[{"parts":[{"text":"one"}],"role":"user"}]}`))
	if one.Candidates[0].Content.Parts[0].Text != want {
		t.Errorf("k1 text %q, want %q", one.Candidates[0].Content.Parts[0].Text, want)
	}
	for key, code := range map[string]int{"": 3, "k4": 5, "k5": 3} {
		var st gemini.Status
		if err := json.Unmarshal(got[key]["error"], &st); err != nil || st.Code != code || got[key]["response"] != nil {
			t.Errorf("%q answered %s, want error %d", key, compact(t, got[key]), code)
		}
	}
	if got["k2"]["error"] != nil {
		t.Errorf("k2 (snake_case fields, CRLF) answered %s", got["k2"]["error"])
	}

	list := decode[gemini.ListFilesResponse](t, a.do("GET", "/v1beta/files").ok(t))
	if len(list.Files) != 1 || list.Files[0].Name != result || list.Files[0].Source != "GENERATED" ||
		list.Files[0].SizeBytes != gemini.Int64(len(sdk.body)) {
		t.Errorf("files.list: %+v", list.Files)
	}
}

func TestFilesList(t *testing.T) {
	a := start(t, emulator.Options{})
	if r := a.do("GET", "/v1beta/files").ok(t); string(r.body) != "{}\n" {
		t.Errorf("empty files.list answered %s", r.body)
	}
	var made []string
	for i := range 3 {
		made = append(made, a.uploadFile([]byte(strings.Repeat("x", i+1)), 10).Name)
	}
	slices.Reverse(made)
	var listed []string
	for token, pages := "", 0; pages == 0 || token != ""; pages++ {
		p := decode[gemini.ListFilesResponse](t, a.do("GET", "/v1beta/files?pageSize=2&pageToken="+token).ok(t))
		for _, f := range p.Files {
			listed = append(listed, f.Name)
		}
		token = p.NextPageToken
	}
	if !slices.Equal(listed, made) {
		t.Errorf("listed %v, want %v", listed, made)
	}
}

// TestUploadResume checks the two ways a client gets past a chunk that failed after storing
// half of itself: ask how much arrived and go on from there, or send the chunk again.
func TestUploadResume(t *testing.T) {
	data := []byte(strings.Repeat("0123456789", 100))
	for _, resend := range []bool{false, true} {
		t.Run(map[bool]string{false: "query", true: "resend"}[resend], func(t *testing.T) {
			a := start(t, emulator.Options{Faults: emulator.Faults{UploadChunkFailures: 1}})
			url := a.startUpload(len(data), "resume")
			r := a.chunk(url, "upload", 0, data[:400])
			r.status(t, 503, "UNAVAILABLE")
			if r.header.Get("X-Goog-Upload-Status") != "" {
				t.Errorf("a failed chunk answered X-Goog-Upload-Status %q; the SDKs would not retry", r.header.Get("X-Goog-Upload-Status"))
			}
			off := a.query(url)
			if off != 200 {
				t.Fatalf("query answered %d, want 200 (half the chunk)", off)
			}
			if resend {
				off = 0
			}
			a.chunk(url, "upload", off, data[off:600]).ok(t)
			f := decode[struct{ File gemini.File }](t, a.chunk(url, "upload, finalize", 600, data[600:]).ok(t)).File
			if f.SizeBytes != gemini.Int64(len(data)) || f.Sha256Hash != sha256Hash(data) {
				t.Errorf("file %+v, want %d bytes hashing %s", f, len(data), sha256Hash(data))
			}
		})
	}
}

func TestUploadRefused(t *testing.T) {
	a := start(t, emulator.Options{FileMaxBytes: 100})
	start := func(extra ...any) reply {
		return a.do("POST", "/upload/v1beta/files", append([]any{nil, "X-Goog-Upload-Protocol", "resumable", "X-Goog-Upload-Command", "start"}, extra...)...)
	}
	a.do("POST", "/upload/v1beta/files", "data").status(t, 400, "INVALID_ARGUMENT") // not resumable
	start("X-Goog-Upload-Header-Content-Length", "101").status(t, 400, "INVALID_ARGUMENT")
	a.do("POST", "/upload/v1beta/files?upload_id=nosuch&upload_protocol=resumable", nil, "X-Goog-Upload-Command", "query").
		status(t, 404, "NOT_FOUND")

	url := start().ok(t).header.Get("X-Goog-Upload-URL")
	a.chunk(url, "upload", 0, make([]byte, 60)).ok(t)
	gap := a.chunk(url, "upload", 70, make([]byte, 10))
	gap.status(t, 400, "INVALID_ARGUMENT")
	if gap.header.Get("X-Goog-Upload-Size-Received") != "60" {
		t.Errorf("a gap answered Size-Received %q, want 60", gap.header.Get("X-Goog-Upload-Size-Received"))
	}
	a.chunk(url, "frobnicate", 60, nil).status(t, 400, "INVALID_ARGUMENT")
	a.chunk(url, "upload", 60, make([]byte, 41)).status(t, 400, "INVALID_ARGUMENT") // 101 bytes
	a.do("POST", url, nil, "X-Goog-Upload-Command", "query").status(t, 404, "NOT_FOUND")

	url = start("X-Goog-Upload-Header-Content-Length", "50").ok(t).header.Get("X-Goog-Upload-URL")
	a.chunk(url, "upload, finalize", 0, make([]byte, 40)).status(t, 400, "INVALID_ARGUMENT") // 40 of 50
}

// TestLongLines feeds lines of several megabytes through a file job.
func TestLongLines(t *testing.T) {
	a := start(t, emulator.Options{})
	var data []byte
	var texts []string
	for i := range 3 {
		text := strings.Repeat(strconv.Itoa(i), 3<<20)
		texts = append(texts, text)
		data = append(data, `{"key":"k`+strconv.Itoa(i)+`","request":{"contents":[{"parts":[{"text":"`+text+`"}]}]}}`+"\n"...)
	}
	f := a.uploadFile(data, 8<<20)
	op := decode[gemini.Operation](t, a.do("POST", generatePath, `{"batch":{"inputConfig":{"fileName":"`+f.Name+`"}}}`).ok(t))
	_, op, _ = a.wait(op.Name, gemini.StateSucceeded)
	body := a.do("GET", "/v1beta/"+op.Output().ResponsesFile+":download?alt=media").ok(t).body
	for i, line := range strings.Split(strings.TrimSpace(string(body)), "\n") {
		req := `{"contents":[{"parts":[{"text":"` + texts[i] + `"}]}]}`
		if want := emulator.ExpectedText(json.RawMessage(req)); !strings.Contains(line, want) {
			t.Errorf("line %d does not answer %q: %.200s", i, want, line)
		}
	}
}

// TestLargeUploadStreams uploads 256 MiB in 8 MiB chunks and checks that the server did not
// hold it in memory.
func TestLargeUploadStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB upload")
	}
	const size, chunk = 256 << 20, 8 << 20
	a := start(t, emulator.Options{})
	url := a.startUpload(size, "big")
	buf := make([]byte, chunk)
	var sum hash.Hash = sha256.New()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var final reply
	for off := 0; off < size; off += chunk {
		for i := range buf {
			buf[i] = byte(off/chunk + i)
		}
		sum.Write(buf)
		cmd := "upload"
		if off+chunk == size {
			cmd = "upload, finalize"
		}
		final = a.chunk(url, cmd, off, buf).ok(t)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
		t.Errorf("a 256 MiB upload allocated %d MiB", grew>>20)
	}
	f := decode[struct{ File gemini.File }](t, final).File
	want := base64.StdEncoding.EncodeToString([]byte(hex.EncodeToString(sum.Sum(nil))))
	if f.SizeBytes != size || f.Sha256Hash != want {
		t.Errorf("file %+v", f)
	}
	a.do(http.MethodDelete, "/v1beta/"+f.Name).ok(t)
}
