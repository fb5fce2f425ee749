package emulator_test

import (
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/gemini"
)

var (
	batchName = regexp.MustCompile(`^batches/[a-z0-9]{36}$`)
	timestamp = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$`)
)

func TestInlineLifecycle(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: 400 * time.Millisecond})
	good := item("k1", "hello <world>")
	good["request"].(map[string]any)["systemInstruction"] = map[string]any{"parts": []any{map[string]any{"text": "be brief"}}}
	good["request"].(map[string]any)["generationConfig"] = map[string]any{"temperature": 0.2}
	bad := map[string]any{"request": map[string]any{"contents": []any{}, "foo": 1}, "metadata": map[string]any{"key": "k2"}}
	body := inlineBody("lifecycle", good, bad, item("k3", "fail me [[emulator:error=13]]"))
	body["batch"].(map[string]any)["priority"] = "5"

	created := a.do("POST", generatePath, body).ok(t)
	c := raw(t, created)
	name, _ := c["name"].(string)
	if !batchName.MatchString(name) {
		t.Fatalf("name %q is not batches/<36 of [a-z0-9]>", name)
	}
	for path, want := range map[string]any{
		"metadata.@type":       "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
		"metadata.name":        name,
		"metadata.model":       "models/gemini-2.5-flash",
		"metadata.displayName": "lifecycle",
		"metadata.state":       "BATCH_STATE_PENDING",
		"metadata.priority":    "5",
		"metadata.batchStats":  map[string]any{"requestCount": "3", "pendingRequestCount": "3"},
	} {
		if got := at(c, strings.Split(path, ".")...); compact(t, got) != compact(t, want) {
			t.Errorf("create %s = %s, want %s", path, compact(t, got), compact(t, want))
		}
	}
	if c["done"] != nil || at(c, "metadata", "endTime") != nil || at(c, "metadata", "output") != nil {
		t.Errorf("a new job has done, endTime or output: %s", created.body)
	}
	if ct, _ := at(c, "metadata", "createTime").(string); !timestamp.MatchString(ct) {
		t.Errorf("createTime %q is not RFC 3339 in UTC", ct)
	}

	r, op, seen := a.wait(name, gemini.StateSucceeded)
	if want := []gemini.State{gemini.StatePending, gemini.StateRunning, gemini.StateSucceeded}; !slices.Equal(seen, want) {
		t.Errorf("states %v, want %v", seen, want)
	}
	done := raw(t, r)
	if done["done"] != true {
		t.Errorf("done = %v, want true", done["done"])
	}
	if got := compact(t, at(done, "metadata", "batchStats")); got != `{"failedRequestCount":"2","requestCount":"3","successfulRequestCount":"1"}` {
		t.Errorf("final batchStats %s", got)
	}
	for _, f := range []string{"createTime", "updateTime", "endTime"} {
		if v, _ := at(done, "metadata", f).(string); !timestamp.MatchString(v) {
			t.Errorf("%s %q is not RFC 3339 in UTC", f, v)
		}
	}
	if got := at(done, "response", "@type"); got != "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput" {
		t.Errorf("response @type %v", got)
	}
	mirror := at(done, "response").(map[string]any)
	delete(mirror, "@type")
	if compact(t, mirror) != compact(t, at(done, "metadata", "output")) {
		t.Errorf("response %s does not mirror metadata.output %s", compact(t, mirror), compact(t, at(done, "metadata", "output")))
	}

	rs := op.Output().InlinedResponses.InlinedResponses
	if got := keys(rs); !slices.Equal(got, []string{"k1", "k2", "k3"}) {
		t.Fatalf("keys %v", got)
	}
	var resp struct {
		Candidates []struct {
			Content struct {
				Parts []struct{ Text string }
				Role  string
			}
			FinishReason string
		}
		UsageMetadata gemini.UsageMetadata
		ModelVersion  string
	}
	if err := json.Unmarshal(rs[0].Response, &resp); err != nil {
		t.Fatal(err)
	}
	reqJSON, _ := json.Marshal(good["request"])
	if got, want := resp.Candidates[0].Content.Parts[0].Text, emulator.ExpectedText(reqJSON); got != want || !strings.Contains(got, "hello <world>") {
		t.Errorf("text %q, want %q", got, want)
	}
	u := resp.UsageMetadata
	if resp.Candidates[0].FinishReason != "STOP" || resp.Candidates[0].Content.Role != "model" ||
		resp.ModelVersion != "gemini-2.5-flash" || u.PromptTokenCount == 0 || u.TotalTokenCount != u.PromptTokenCount+u.CandidatesTokenCount {
		t.Errorf("response %s", rs[0].Response)
	}
	if rs[1].Error == nil || rs[1].Error.Code != gemini.CodeInvalidArgument || !strings.Contains(rs[1].Error.Message, "foo") {
		t.Errorf("invalid request answered %+v, want per-item error 3 naming the field", rs[1])
	}
	if rs[2].Error == nil || rs[2].Error.Code != gemini.CodeInternal || !strings.Contains(rs[2].Error.Message, "INTERNAL") {
		t.Errorf("directed item answered %+v, want per-item error 13", rs[2])
	}

	if got := a.emu.Creates("lifecycle"); got != 1 {
		t.Errorf("Creates = %d, want 1", got)
	}
	if ops := a.emu.Batches(); len(ops) != 1 || ops[0].Name != name || ops[0].State() != gemini.StateSucceeded {
		t.Errorf("Batches() = %+v", ops)
	}
}

func TestZeroDelayEndsOnNextGet(t *testing.T) {
	a := start(t, emulator.Options{})
	op := a.create("zero", item("k", "x"))
	if op.State() != gemini.StatePending {
		t.Fatalf("create answered %s, want PENDING", op.State())
	}
	if _, op = a.get(op.Name); op.State() != gemini.StateSucceeded {
		t.Fatalf("next get answered %s, want SUCCEEDED", op.State())
	}
}

func TestEmbedInline(t *testing.T) {
	a := start(t, emulator.Options{})
	eight := map[string]any{"content": map[string]any{"parts": []any{map[string]any{"text": "vector me"}}}, "taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": 8}
	dflt := map[string]any{"content": map[string]any{"parts": []any{map[string]any{"text": "default size"}}}, "task_type": "RETRIEVAL_QUERY"}
	none := map[string]any{"taskType": "RETRIEVAL_QUERY"}
	body := inlineBody("embed",
		map[string]any{"request": eight, "metadata": map[string]any{"key": "e8"}},
		map[string]any{"request": dflt, "metadata": map[string]any{"key": "e16"}},
		map[string]any{"request": none, "metadata": map[string]any{"key": "none"}},
	)
	c := raw(t, a.do("POST", "/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent", body).ok(t))
	if got := at(c, "metadata", "@type"); got != "type.googleapis.com/google.ai.generativelanguage.v1main.EmbedContentBatch" {
		t.Errorf("@type %v", got)
	}
	r, op, _ := a.wait(c["name"].(string), gemini.StateSucceeded)
	if got := at(raw(t, r), "response", "@type"); got != "type.googleapis.com/google.ai.generativelanguage.v1main.EmbedContentBatchOutput" {
		t.Errorf("response @type %v", got)
	}
	rs := op.Output().InlinedResponses.InlinedResponses
	for i, req := range []map[string]any{eight, dflt} {
		var resp struct {
			Embedding struct{ Values []float32 }
		}
		if err := json.Unmarshal(rs[i].Response, &resp); err != nil {
			t.Fatal(err)
		}
		reqJSON, _ := json.Marshal(req)
		want := emulator.ExpectedEmbedding(reqJSON)
		if !slices.Equal(resp.Embedding.Values, want) || len(want) != []int{8, 16}[i] {
			t.Errorf("%s: %v, want %d values %v", keys(rs)[i], resp.Embedding.Values, len(want), want)
		}
	}
	if rs[2].Error == nil || rs[2].Error.Code != gemini.CodeInvalidArgument {
		t.Errorf("embed request without content answered %+v, want per-item error 3", rs[2])
	}
}

func TestCreateSnakeCase(t *testing.T) {
	a := start(t, emulator.Options{})
	body := `{"batch":{"display_name":"snake","priority":7,"input_config":{"requests":{"requests":[
		{"request":{"contents":[{"parts":[{"text":"hi"}]}],"system_instruction":{"parts":[{"text":"s"}]},
		 "generation_config":{"max_output_tokens":5},"safety_settings":[]},"metadata":{"key":"a","extra":1}}]}}}}`
	c := raw(t, a.do("POST", generatePath, body).ok(t))
	if at(c, "metadata", "displayName") != "snake" || at(c, "metadata", "priority") != "7" {
		t.Errorf("snake_case create read as %s", compact(t, c))
	}
	_, op, _ := a.wait(c["name"].(string), gemini.StateSucceeded)
	if rs := op.Output().InlinedResponses.InlinedResponses; len(rs) != 1 || rs[0].Error != nil || rs[0].Metadata.Key != "a" {
		t.Errorf("snake_case request answered %+v", rs)
	}
}

func TestCreateRefused(t *testing.T) {
	a := start(t, emulator.Options{InlineMaxBytes: 2000})
	for _, tc := range []struct {
		name, body string
		code       int
		status     string
	}{
		{"not JSON", `{"batch":`, 400, "INVALID_ARGUMENT"},
		{"no batch", `{}`, 400, "INVALID_ARGUMENT"},
		{"unknown field", `{"batch":{"frob":1,"inputConfig":{"fileName":"files/x"}}}`, 400, "INVALID_ARGUMENT"},
		{"no input", `{"batch":{"displayName":"x"}}`, 400, "INVALID_ARGUMENT"},
		{"both inputs", `{"batch":{"inputConfig":{"fileName":"files/x","requests":{"requests":[{"request":{}}]}}}}`, 400, "INVALID_ARGUMENT"},
		{"no requests", `{"batch":{"inputConfig":{"requests":{"requests":[]}}}}`, 400, "INVALID_ARGUMENT"},
		{"bad priority", `{"batch":{"priority":"high","inputConfig":{"fileName":"files/x"}}}`, 400, "INVALID_ARGUMENT"},
		{"missing file", `{"batch":{"inputConfig":{"fileName":"files/nosuchfile"}}}`, 404, "NOT_FOUND"},
		{"too large", `{"batch":{"displayName":"` + strings.Repeat("x", 3000) + `","inputConfig":{"fileName":"files/x"}}}`, 400, "INVALID_ARGUMENT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := a.do("POST", generatePath, tc.body).status(t, tc.code, tc.status)
			if tc.name == "too large" && !strings.Contains(st.Message, "payload size exceeds the limit") {
				t.Errorf("message %q", st.Message)
			}
		})
	}
	if n := len(a.emu.Batches()); n != 0 {
		t.Errorf("%d batches made by refused creates", n)
	}
}

func TestList(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: time.Hour})
	if r := a.do("GET", "/v1beta/batches").ok(t); string(r.body) != "{}\n" {
		t.Errorf("empty list answered %q, want {}", r.body)
	}
	var made []string
	for range 5 {
		made = append(made, a.create("list", item("k", "x")).Name)
	}
	slices.Reverse(made) // newest first

	var listed []string
	token := ""
	for pages := 0; ; pages++ {
		if pages > 3 {
			t.Fatal("paging does not end")
		}
		page := decode[gemini.ListBatchesResponse](t, a.do("GET", "/v1beta/batches?pageSize=2&pageToken="+token).ok(t))
		if len(page.Operations) > 2 {
			t.Fatalf("page of %d, want at most 2", len(page.Operations))
		}
		for _, op := range page.Operations {
			listed = append(listed, op.Name)
		}
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	if !slices.Equal(listed, made) {
		t.Errorf("listed %v, want %v", listed, made)
	}
	if all := decode[gemini.ListBatchesResponse](t, a.do("GET", "/v1beta/batches").ok(t)); len(all.Operations) != 5 || all.NextPageToken != "" {
		t.Errorf("default page: %d operations, token %q", len(all.Operations), all.NextPageToken)
	}
	a.do("GET", "/v1beta/batches?pageToken=bogus").status(t, 400, "INVALID_ARGUMENT")
	a.do("GET", "/v1beta/batches?pageSize=-1").status(t, 400, "INVALID_ARGUMENT")

	a.emu.SetFaults(emulator.Faults{ListLag: time.Hour})
	if r := a.do("GET", "/v1beta/batches").ok(t); string(r.body) != "{}\n" {
		t.Errorf("list with lag answered %s, want {}", r.body)
	}
	a.get(made[0]) // get still sees it
}

func TestCancel(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: time.Hour})
	op := a.create("cancel", item("k", "x"))
	if r := a.do("POST", "/v1beta/"+op.Name+":cancel", nil).ok(t); string(r.body) != "{}\n" {
		t.Errorf("cancel answered %s, want {}", r.body)
	}
	r, op := a.get(op.Name)
	if op.State() != gemini.StateCancelled || !op.Done || op.Error == nil || op.Error.Code != gemini.CodeCancelled || op.Output() != nil {
		t.Errorf("cancelled job: %s", r.body)
	}
	if op.Metadata.EndTime.IsZero() {
		t.Error("cancelled job has no endTime")
	}
	a.do("POST", "/v1beta/"+op.Name+":cancel", nil).status(t, 400, "FAILED_PRECONDITION")
	a.do("POST", "/v1beta/batches/nosuchbatch:cancel", nil).status(t, 404, "NOT_FOUND")
}

func TestDelete(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: time.Hour})
	keep := a.create("keep", item("k", "x"))
	gone := a.create("gone", item("k", "x"))
	if r := a.do("DELETE", "/v1beta/"+gone.Name).ok(t); string(r.body) != "{}\n" {
		t.Errorf("delete answered %s", r.body)
	}
	a.do("GET", "/v1beta/"+gone.Name).status(t, 404, "NOT_FOUND")
	a.do("DELETE", "/v1beta/"+gone.Name).status(t, 404, "NOT_FOUND")
	list := decode[gemini.ListBatchesResponse](t, a.do("GET", "/v1beta/batches").ok(t))
	if len(list.Operations) != 1 || list.Operations[0].Name != keep.Name {
		t.Errorf("list after delete: %+v", list.Operations)
	}
}

func TestUpdate(t *testing.T) {
	a := start(t, emulator.Options{JobDelay: time.Hour})
	op := a.create("before", item("k", "x"))
	path := "/v1beta/" + op.Name + ":updateGenerateContentBatch?updateMask=displayName,priority"
	r := raw(t, a.do("PATCH", path, `{"displayName":"after","priority":"9","model":"ignored"}`).ok(t))
	if r["name"] != op.Name || r["displayName"] != "after" || r["priority"] != "9" || r["@type"] != nil || r["state"] != "BATCH_STATE_PENDING" {
		t.Errorf("update answered %s", compact(t, r))
	}
	if _, got := a.get(op.Name); got.Metadata.DisplayName != "after" || got.Metadata.Priority != 9 {
		t.Errorf("get after update: %+v", got.Metadata)
	}
	a.do("PATCH", "/v1beta/"+op.Name+":updateGenerateContentBatch?update_mask=display_name", `{"display_name":"snake"}`).ok(t)
	if _, got := a.get(op.Name); got.Metadata.DisplayName != "snake" {
		t.Errorf("snake_case update: %+v", got.Metadata)
	}
	a.do("PATCH", "/v1beta/"+op.Name+":updateGenerateContentBatch?updateMask=inputConfig", `{}`).status(t, 400, "INVALID_ARGUMENT")
	a.do("PATCH", "/v1beta/"+op.Name+":updateEmbedContentBatch?updateMask=priority", `{"priority":1}`).status(t, 400, "INVALID_ARGUMENT")
	a.do("PATCH", "/v1beta/batches/nosuch:updateGenerateContentBatch?updateMask=priority", `{"priority":1}`).status(t, 404, "NOT_FOUND")
}

func TestRouting(t *testing.T) {
	a := start(t, emulator.Options{})
	a.do("GET", "/v1beta/nothing").status(t, 404, "NOT_FOUND")
	a.do("GET", "/v1beta/batches/nosuchbatch").status(t, 404, "NOT_FOUND")
	a.do("POST", "/v1beta/batches/x:frobnicate").status(t, 404, "NOT_FOUND")
	a.do("GET", "/v1beta/batches/").status(t, 404, "NOT_FOUND")
	r := a.do("GET", generatePath)
	r.status(t, 405, "UNIMPLEMENTED")
	if r.header.Get("Allow") != http.MethodPost {
		t.Errorf("Allow %q", r.header.Get("Allow"))
	}
	a.do("PUT", "/v1beta/batches/x").status(t, 405, "UNIMPLEMENTED")
}

func TestAPIKey(t *testing.T) {
	a := start(t, emulator.Options{APIKey: "secret"})
	a.do("GET", "/v1beta/batches").status(t, 403, "PERMISSION_DENIED")
	a.do("GET", "/v1beta/batches", nil, "x-goog-api-key", "wrong").status(t, 400, "INVALID_ARGUMENT")
	a.do("GET", "/v1beta/batches", nil, "x-goog-api-key", "secret").ok(t)
	a.do("GET", "/v1beta/batches?key=secret").ok(t)
	a.do("POST", "/upload/v1beta/files", nil, "X-Goog-Upload-Protocol", "resumable", "X-Goog-Upload-Command", "start").
		status(t, 403, "PERMISSION_DENIED")
}

func TestClose(t *testing.T) {
	a := start(t, emulator.Options{})
	a.emu.Close()
	a.do("GET", "/v1beta/batches").status(t, 503, "UNAVAILABLE")
}

// A finished job's answer, encoded once and kept, is the same on every get and follows an
// update made after the end.
func TestFinishedJobAnswerFollowsUpdates(t *testing.T) {
	a := start(t, emulator.Options{})
	op := a.create("before", item("k", "x"))
	first, done := a.get(op.Name)
	if done.State() != gemini.StateSucceeded {
		t.Fatalf("got %s, want SUCCEEDED", done.State())
	}
	if again, _ := a.get(op.Name); string(again.body) != string(first.body) {
		t.Errorf("a finished job answered two gets differently:\n%s\n%s", first.body, again.body)
	}
	a.do("PATCH", "/v1beta/"+op.Name+":updateGenerateContentBatch?updateMask=displayName", `{"displayName":"after"}`).ok(t)
	if _, got := a.get(op.Name); got.Metadata.DisplayName != "after" || got.State() != gemini.StateSucceeded {
		t.Errorf("get after an update of a finished job: %s %+v", got.State(), got.Metadata)
	}
}
