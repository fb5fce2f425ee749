package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/client"
	"github.com/gembatch/gembatch/internal/stacktest"
	"github.com/gembatch/gembatch/record"
)

// TestJobsShowCancel: records listed from the durable store, one shown with its remote job, one
// cancelled: its requests are answered with CANCELLED errors.
func TestJobsShowCancel(t *testing.T) {
	s := startStack(t, 5*time.Second, nil)
	t.Setenv("GEMBATCH_GEMINI_BASE_URL", s.geminiURL)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	nc, err := nats.Connect(s.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var pending []*client.Pending
	for i := range 3 {
		p, err := c.SubmitAsync(ctx, client.Request{Key: fmt.Sprintf("flash-%d", i), Model: "gemini-2.5-flash", Body: client.GenerateText("hi")})
		if err != nil {
			t.Fatal(err)
		}
		pending = append(pending, p)
	}
	for i := range 2 {
		if _, err := c.SubmitAsync(ctx, client.Request{Key: fmt.Sprintf("pro-%d", i), Model: "gemini-2.5-pro", Body: client.GenerateText("hi")}); err != nil {
			t.Fatal(err)
		}
	}

	// Wait until both batches are submitted.
	var recs []*record.Record
	for {
		code, stdout, stderr := cmd(ctx, "jobs", "-o", "json", "--nats", s.natsURL)
		if code != 0 {
			t.Fatalf("jobs -o json: exit %d: %s", code, stderr)
		}
		recs = nil
		if err := json.Unmarshal([]byte(stdout), &recs); err != nil {
			t.Fatalf("jobs -o json: %v: %s", err, stdout)
		}
		submitted := 0
		for _, r := range recs {
			if r.RemoteName != "" {
				submitted++
			}
		}
		if submitted == 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("batches not submitted: %s", stdout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var flash, pro *record.Record
	for _, r := range recs {
		switch r.Group.Model {
		case "models/gemini-2.5-flash":
			flash = r
		case "models/gemini-2.5-pro":
			pro = r
		}
	}
	if flash == nil || pro == nil || flash.Count != 3 || pro.Count != 2 || flash.State != record.Submitted || !strings.HasPrefix(flash.RemoteName, "batches/") {
		t.Fatalf("records: %+v %+v", flash, pro)
	}

	code, stdout, stderr := cmd(ctx, "jobs", "--nats", s.natsURL)
	if code != 0 || !strings.Contains(stdout, "REMOTE STATE") || !strings.Contains(stdout, flash.ID) || !strings.Contains(stdout, flash.RemoteName) ||
		!strings.Contains(stdout, "gemini-2.5-pro") {
		t.Fatalf("jobs: exit %d\n%s\n%s", code, stdout, stderr)
	}
	t.Logf("gembatch jobs:\n%s", stdout)

	code, stdout, stderr = cmd(ctx, "show", pro.RemoteName, "--nats", s.natsURL)
	if code != 0 || !strings.Contains(stdout, pro.ID) || !strings.Contains(stdout, "BATCH_STATE_") || !strings.Contains(stdout, "2 (") {
		t.Fatalf("show: exit %d\n%s\n%s", code, stdout, stderr)
	}
	t.Logf("gembatch show:\n%s", stdout)
	code, stdout, _ = cmd(ctx, "show", flash.ID, "-o", "json", "--nats", s.natsURL)
	var shown struct {
		Record *record.Record `json:"record"`
		Remote *struct {
			Name string `json:"name"`
		} `json:"remote"`
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &shown) != nil || shown.Record.ID != flash.ID || shown.Remote.Name != flash.RemoteName {
		t.Fatalf("show -o json: exit %d: %s", code, stdout)
	}
	if code, _, stderr := cmd(ctx, "show", "nosuchid", "--nats", s.natsURL); code != 1 || !strings.Contains(stderr, `no record "nosuchid"`) {
		t.Fatalf("show of an unknown id: exit %d: %s", code, stderr)
	}

	code, stdout, stderr = cmd(ctx, "cancel", flash.ID, "--nats", s.natsURL)
	if code != 0 || !strings.Contains(stdout, "cancel requested for "+flash.RemoteName) {
		t.Fatalf("cancel: exit %d\n%s\n%s", code, stdout, stderr)
	}
	for _, p := range pending {
		_, err := p.Wait(ctx)
		e, ok := errors.AsType[*client.Error](err)
		if !ok || e.Code != 1 || e.Status != "CANCELLED" {
			t.Fatalf("%s: %v, want a CANCELLED error", p.Key, err)
		}
	}
	code, stdout, _ = cmd(ctx, "jobs", "-o", "json", "--nats", s.natsURL)
	if code != 0 || !strings.Contains(stdout, "BATCH_STATE_CANCELLED") {
		t.Fatalf("jobs after cancel: %s", stdout)
	}

	if code, _, stderr := cmd(ctx, "jobs", "--bucket", "nosuch", "--nats", s.natsURL); code != 1 || !strings.Contains(stderr, `no records bucket "nosuch"`) || !strings.Contains(stderr, "durable mode") {
		t.Fatalf("jobs with no bucket: exit %d: %s", code, stderr)
	}

	// --watch refreshes until interrupted.
	wctx, stop := context.WithTimeout(ctx, 300*time.Millisecond)
	defer stop()
	code, stdout, _ = cmd(wctx, "jobs", "--watch", "--interval", "50ms", "--nats", s.natsURL)
	if code != 0 || strings.Count(stdout, "REMOTE STATE") < 2 {
		t.Fatalf("jobs --watch: exit %d\n%s", code, stdout)
	}
}

// TestShowResubmission: a record that resubmits another's requests, or was cancelled as stuck,
// says so.
func TestShowResubmission(t *testing.T) {
	var b strings.Builder
	rec := &record.Record{ID: "x-r", State: record.Sealed, RetryOf: "x", StuckCancelled: true}
	printShow(&b, rec, "", nil, nil, time.Now())
	for _, want := range []string{"resubmits  x", "stuck      cancelled by gembatchd"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("show output lacks %q:\n%s", want, b.String())
		}
	}
}

// TestJobsListsEveryRecordWhileOneIsWritten: `gembatch jobs` lists every record, though
// gembatchd writes one of them all the while (CI once met a cancelled batch missing from the
// list while its replies were recorded).
func TestJobsListsEveryRecordWhileOneIsWritten(t *testing.T) {
	nc := stacktest.NATS(t)
	ctx := t.Context()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "gembatch-records", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		b, _ := json.Marshal(record.Record{ID: fmt.Sprintf("r%d", i), State: record.Submitted, Sealed: time.Unix(int64(i), 0)})
		if _, err := kv.Put(ctx, fmt.Sprintf("r%d", i), b); err != nil {
			t.Fatal(err)
		}
	}
	wctx, stop := context.WithCancel(ctx)
	written := make(chan struct{})
	go func() {
		defer close(written)
		b, _ := json.Marshal(record.Record{ID: "r2", State: record.Finished, Sealed: time.Unix(2, 0)})
		for wctx.Err() == nil {
			_, _ = kv.Put(wctx, "r2", b)
		}
	}()
	defer func() { stop(); <-written }()
	for try := range 100 {
		code, stdout, stderr := cmd(ctx, "jobs", "-o", "json", "--nats", nc.ConnectedUrl())
		var recs []*record.Record
		if code != 0 || json.Unmarshal([]byte(stdout), &recs) != nil {
			t.Fatalf("jobs -o json: exit %d: %s%s", code, stdout, stderr)
		}
		if len(recs) != 3 {
			t.Fatalf("list %d while r2 is written: %d records, want 3:\n%s", try, len(recs), stdout)
		}
	}
}
