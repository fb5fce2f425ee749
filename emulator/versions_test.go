package emulator_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
)

// TestAPIVersions: the API is served under v1 (what @google/genai 3.x sends by default),
// v1beta and v1alpha alike, uploads and downloads included, and an upload URL keeps the
// client's version.
func TestAPIVersions(t *testing.T) {
	a := start(t, emulator.Options{})
	for _, v := range []string{"v1", "v1beta", "v1alpha"} {
		t.Run(v, func(t *testing.T) {
			op := decode[gemini.Operation](t, a.do("POST", "/"+v+"/models/gemini-2.5-flash:batchGenerateContent", inlineBody(v, item("k", "hi"))).ok(t))
			a.do("GET", "/"+v+"/"+op.Name).ok(t)
			list := decode[gemini.ListBatchesResponse](t, a.do("GET", "/"+v+"/batches?pageSize=1").ok(t))
			if len(list.Operations) != 1 || list.Operations[0].Name != op.Name {
				t.Errorf("list under %s: %+v", v, list.Operations)
			}

			line := `{"key":"f","request":{"contents":[{"parts":[{"text":"from a file"}]}]}}` + "\n"
			start := a.do("POST", "/upload/"+v+"/files", `{"file":{"displayName":"in"}}`,
				"X-Goog-Upload-Protocol", "resumable", "X-Goog-Upload-Command", "start").ok(t)
			url := start.header.Get("X-Goog-Upload-URL")
			if !strings.HasPrefix(url, a.url+"/upload/"+v+"/files?") {
				t.Fatalf("upload URL %q does not keep %s", url, v)
			}
			f := decode[struct{ File gemini.File }](t, a.chunk(url, "upload, finalize", 0, []byte(line)).ok(t)).File
			a.do("GET", "/"+v+"/"+f.Name).ok(t)
			fop := decode[gemini.Operation](t, a.do("POST", "/"+v+"/models/gemini-2.5-flash:batchGenerateContent",
				`{"batch":{"displayName":"file","inputConfig":{"fileName":"`+f.Name+`"}}}`).ok(t))
			_, fop, _ = a.wait(fop.Name, gemini.StateSucceeded)
			res := fop.Output().ResponsesFile
			for _, path := range []string{"/" + v + "/" + res + ":download?alt=media", "/download/" + v + "/" + res + ":download?alt=media"} {
				if body := a.do("GET", path).ok(t).body; !strings.Contains(string(body), `"key":"f"`) {
					t.Errorf("%s answered %q", path, body)
				}
			}
			a.do("POST", "/"+v+"/"+op.Name+":cancel", nil)
			a.do("DELETE", "/"+v+"/"+op.Name).ok(t)
			a.do("GET", "/"+v+"/"+op.Name).status(t, 404, "NOT_FOUND")
		})
	}
	a.do("GET", "/v2/batches").status(t, 404, "NOT_FOUND")
	a.do("GET", "/v1beta1/batches").status(t, 404, "NOT_FOUND")
}

// TestListNewestFirstAfterDelete: batches.list pages newest first, as the service does, and a
// deleted job is gone from get and from every page, even mid-paging.
func TestListNewestFirstAfterDelete(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: time.Hour})
	var made []string
	for range 7 {
		made = append(made, a.create("list", item("k", "x")).Name)
	}
	first := decode[gemini.ListBatchesResponse](t, a.do("GET", "/v1beta/batches?pageSize=3").ok(t))
	if got := opNames(first.Operations); !slices.Equal(got, []string{made[6], made[5], made[4]}) {
		t.Fatalf("first page %v, want the three newest %v", got, []string{made[6], made[5], made[4]})
	}
	// delete one already listed and one not yet listed, then read on from the token
	a.do("DELETE", "/v1beta/"+made[5]).ok(t)
	a.do("DELETE", "/v1beta/"+made[2]).ok(t)
	listed := opNames(first.Operations)
	for token := first.NextPageToken; token != ""; {
		page := decode[gemini.ListBatchesResponse](t, a.do("GET", "/v1beta/batches?pageSize=3&pageToken="+token).ok(t))
		listed = append(listed, opNames(page.Operations)...)
		token = page.NextPageToken
	}
	if want := []string{made[6], made[5], made[4], made[3], made[1], made[0]}; !slices.Equal(listed, want) {
		t.Errorf("listed %v, want %v", listed, want)
	}
	all := decode[gemini.ListBatchesResponse](t, a.do("GET", "/v1beta/batches").ok(t))
	if got := opNames(all.Operations); slices.Contains(got, made[5]) || slices.Contains(got, made[2]) || len(got) != 5 {
		t.Errorf("list after deletes %v", got)
	}
	for _, gone := range []string{made[5], made[2]} {
		a.do("GET", "/v1beta/"+gone).status(t, 404, "NOT_FOUND")
		a.do("POST", "/v1beta/"+gone+":cancel", nil).status(t, 404, "NOT_FOUND")
	}
}

func opNames(ops []gemini.Operation) []string {
	out := make([]string, len(ops))
	for i, op := range ops {
		out[i] = op.Name
	}
	return out
}
